"""Graph facts for dense-prediction models (segmentation, detection): the input of the prediction head, and the
raw predictions that feed a NonMaxSuppression inside the graph."""

from __future__ import annotations

import onnx

from onnxcam.graph.catalogue import TensorInfo
from onnxcam.graph.reverse.model import expose
from onnxcam.graph.topo import ancestors, static_shapes

# Post-processing after which the outputs are picked rows (indices), not differentiable predictions.
SELECTION_OPS = {"NonMaxSuppression", "TopK"}


def head_input(model: onnx.ModelProto, score: str, infos: list[TensorInfo]) -> str | None:
    """The spatial input of the last Conv the score depends on: for a segmentation or detection model, the feature
    map its class head reads (the last spatial tensor is usually the head's own output: per-class logits)."""
    needed = ancestors(list(model.graph.node), score)
    spatial = {t.name for t in infos if t.spatial and t.op_type}
    for node in reversed(model.graph.node):
        if node.op_type == "Conv" and any(o in needed for o in node.output) and node.input[0] in spatial:
            return node.input[0]
    return None


def selection_nodes(model: onnx.ModelProto, output: str) -> list[onnx.NodeProto]:
    """The NonMaxSuppression / TopK nodes that `output` depends on."""
    needed = ancestors(list(model.graph.node), output)
    return [n for n in model.graph.node if n.op_type in SELECTION_OPS and any(o in needed for o in n.output)]


def pre_nms_tensor(model: onnx.ModelProto, output: str) -> str | None:
    """The raw prediction tensor (rank 3: batch x boxes x attributes, either way round) that both the boxes and
    the scores of the NMS before `output` come from: the last such tensor in graph order, or None."""
    nms = [n for n in selection_nodes(model, output) if n.op_type == "NonMaxSuppression"]
    if not nms:
        return None
    nodes = list(model.graph.node)
    common = ancestors(nodes, nms[0].input[0]) & ancestors(nodes, nms[0].input[1])
    shapes = static_shapes(model.graph)
    produced = [o for n in nodes for o in n.output if o]
    candidates = [name for name in produced if name in common and len(shapes.get(name) or ()) == 3]
    return candidates[-1] if candidates else None


def prefer_pre_nms(model: onnx.ModelProto, output: str | None) -> tuple[onnx.ModelProto, str | None, list[str]]:
    """With no output chosen and NMS inside the graph: the model with the raw predictions exposed as an output,
    that output's name, and a note saying so; otherwise the arguments unchanged (and a note when NMS has no raw
    tensor to fall back on)."""
    if output is not None or not model.graph.output:
        return model, output, []
    first = model.graph.output[0].name
    if not selection_nodes(model, first):
        return model, output, []
    raw = pre_nms_tensor(model, first)
    if raw is None:
        return model, output, [f"output '{first}' comes after NonMaxSuppression/TopK and no raw prediction tensor "
                               "was found: gradients do not pass the selection; use eigencam or ablationcam"]
    exposed = expose(model, [raw])
    # The raw predictions become the first output, so find_score picks them.
    outputs = list(exposed.graph.output)
    outputs.sort(key=lambda o: o.name != raw)
    del exposed.graph.output[:]
    exposed.graph.output.extend(outputs)
    return exposed, raw, [f"output '{first}' comes after NonMaxSuppression: explaining the raw predictions "
                          f"'{raw}' before it"]


def nms_classes(model: onnx.ModelProto) -> int | None:
    """The class count of the first NonMaxSuppression's scores input (batch, classes, boxes), when static."""
    nms = next((n for n in model.graph.node if n.op_type == "NonMaxSuppression"), None)
    shape = static_shapes(model.graph).get(nms.input[1]) if nms is not None and len(nms.input) > 1 else None
    return shape[1] if shape is not None and len(shape) == 3 and isinstance(shape[1], int) else None
