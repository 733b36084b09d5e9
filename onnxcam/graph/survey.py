"""JSON answers about a parsed model, for onnxcam.facts: what a model view and a reverse runner need to know
before their first run, computed once per model and read back from the cache by later runs.

Each function returns plain JSON values (lists, dicts, strings, numbers); onnxcam.graph.contract's
`tensor_infos` and `scales_from` turn the catalogue and the scales back into their dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from onnxcam.errors import LayerError
from onnxcam.graph.catalogue import catalogue, default_layer, find_score
from onnxcam.graph.contract import TensorInfo
from onnxcam.graph.dense import nms_classes, selection_nodes
from onnxcam.graph.protos import ModelProto
from onnxcam.graph.quantized import is_quantized
from onnxcam.graph.reverse.model import image_input
from onnxcam.graph.scales import detection_scales
from onnxcam.graph.topo import static_shapes


def survey(model: ModelProto, output: str | None, probabilities: bool) -> dict[str, Any]:
    """The tensor catalogue, the score and the output it stands for, the default layer (or why there is none),
    the image input and its element type, the output's shape, and what a detector's layout reads from the graph."""
    tensors = catalogue(model)
    score, out = find_score(model, output, probabilities)
    try:
        layer, problem = default_layer(model, score, tensors), None
    except LayerError as e:  # the user may still name a layer: said only when none is given
        layer, problem = None, str(e)
    name = image_input(model)
    value = next(i for i in model.graph.input if i.name == name)
    has_nms = any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    return {
        "tensors": [[t.name, t.op_type, t.node, _shape(t.shape), t.float, t.layout] for t in tensors],
        "score": score, "output": out, "default_layer": layer, "default_layer_problem": problem,
        "input_name": name, "input_elem_type": value.type.tensor_type.elem_type,
        "output_shape": _shape(static_shapes(model.graph).get(out)), "quantized": is_quantized(model),
        "post_nms": bool(selection_nodes(model, out)) if has_nms else None,
        "nms_classes": nms_classes(model) if has_nms else None,
        "graph_outputs": [o.name for o in model.graph.output],
    }


def scales(model: ModelProto, output: str, tensors: list[TensorInfo], hw: tuple[int, int] | None,
           selected: bool) -> list[dict[str, Any]]:
    return [asdict(s) for s in detection_scales(model, output, tensors, hw, selected=selected)]


def _shape(shape: Sequence[Any] | None) -> list[Any] | None:
    return None if shape is None else list(shape)
