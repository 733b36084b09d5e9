"""Graph facts for dense-prediction models (segmentation, detection): the input of the prediction head, and the
raw predictions that feed a NonMaxSuppression inside the graph."""

from __future__ import annotations

from onnxcam.graph.catalogue import TensorInfo
from onnxcam.graph.protos import ModelProto, NodeProto
from onnxcam.graph.reverse.model import expose
from onnxcam.graph.topo import ancestors, static_shapes

# Post-processing after which the outputs are picked rows (indices), not differentiable predictions.
SELECTION_OPS = {"NonMaxSuppression", "TopK"}


def head_input(model: ModelProto, score: str, infos: list[TensorInfo]) -> str | None:
    """The spatial input of the last Conv the score depends on: for a segmentation or detection model, the feature
    map its class head reads (the last spatial tensor is usually the head's own output: per-class logits)."""
    needed = ancestors(list(model.graph.node), score)
    spatial = {t.name for t in infos if t.spatial and t.op_type}
    for node in reversed(model.graph.node):
        if node.op_type == "Conv" and any(o in needed for o in node.output) and node.input[0] in spatial:
            return node.input[0]
    return None


def shared_head_input(model: ModelProto, score: str, infos: list[TensorInfo]) -> str | None:
    """The last spatial tensor that every final convolution before the score depends on (a final convolution
    feeds no other convolution on the way to the score).

    With one prediction head this is head_input's answer. A multi-scale detector (YOLOv5/v8: one head per
    stride, concatenated) has a final convolution per scale; head_input then picks one scale's branch, whose
    gradient is zero for every detection made at the other scales (about 95% of YOLOv8's rows at 320 px). The
    tensor shared by all scales is the highest-resolution neck output (Ultralytics' model.15)."""
    nodes = list(model.graph.node)
    needed = ancestors(nodes, score)
    spatial = [t.name for t in infos if t.spatial and t.op_type]
    spatial_set = set(spatial)
    convs = [n for n in nodes if n.op_type == "Conv" and n.output[0] in needed and n.input[0] in spatial_set]
    conv_inputs = {n.input[0] for n in convs}
    feeds_conv: set[str] = set()  # tensors from which some convolution of `convs` is reached
    for node in reversed(nodes):
        if any(name in conv_inputs or name in feeds_conv for name in node.output):
            feeds_conv.update(name for name in node.input if name)
    finals = [n for n in convs if n.output[0] not in feeds_conv]
    if not finals:
        return None
    shared = set.intersection(*(ancestors(nodes, n.input[0]) for n in finals))
    return next((name for name in reversed(spatial) if name in shared), None)


def selection_nodes(model: ModelProto, output: str) -> list[NodeProto]:
    """The NonMaxSuppression / TopK nodes that `output` depends on."""
    needed = ancestors(list(model.graph.node), output)
    return [n for n in model.graph.node if n.op_type in SELECTION_OPS and any(o in needed for o in n.output)]


def pre_nms_tensor(model: ModelProto, output: str) -> str | None:
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


def prefer_pre_nms(model: ModelProto, output: str | None) -> tuple[ModelProto, str | None, list[str]]:
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
        return model, output, [f"output '{first}' holds rows selected by NonMaxSuppression/TopK and no raw "
                               "prediction tensor was found: the selected rows are explained, their gradients "
                               "reaching the raw predictions through the selection (if maps come out flat, use "
                               "eigencam or ablationcam)"]
    exposed = expose(model, [raw])
    # The raw predictions become the first output, so find_score picks them.
    outputs = list(exposed.graph.output)
    outputs.sort(key=lambda o: o.name != raw)
    del exposed.graph.output[:]
    exposed.graph.output.extend(outputs)
    return exposed, raw, [f"output '{first}' comes after NonMaxSuppression: explaining the raw predictions "
                          f"'{raw}' before it"]


def nms_classes(model: ModelProto) -> int | None:
    """The class count of the first NonMaxSuppression's scores input (batch, classes, boxes), when static."""
    nms = next((n for n in model.graph.node if n.op_type == "NonMaxSuppression"), None)
    shape = static_shapes(model.graph).get(nms.input[1]) if nms is not None and len(nms.input) > 1 else None
    return shape[1] if shape is not None and len(shape) == 3 and isinstance(shape[1], int) else None
