"""Detectors whose predictions come from several feature maps: which rows of the output each scale owns.

YOLO (v5 to v11), and most anchor-free heads, run one small head per feature map of the neck (strides 8, 16 and
32) and concatenate the flattened per-cell predictions: at 640 x 640, rows 0-6399 of YOLOv8's output come from
stride 8, 6400-7999 from stride 16 and 8000-8399 from stride 32. A detection's score depends on its own scale's
feature map (and on the finer maps it was computed from), never on the coarser ones, so no single layer explains
every detection.

The graph tells the scales: a Concat among the output's ancestors whose inputs' lengths along its axis add up to
the output's row count (with no row selection, TopK or NMS, between it and the output). Each input's head is found
along its dominators (onnxcam.graph.dominators): it starts at the feature map the neck hands to it; the
input's length is that map's h x w cells times a whole number of anchors.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnxcam.graph.catalogue import TensorInfo, catalogue
from onnxcam.graph.contract import Scale
from onnxcam.graph.dominators import dominator_chain, dominators, value_ancestors
from onnxcam.graph.load import at_input_size
from onnxcam.graph.protos import ModelProto, NodeProto
from onnxcam.graph.topo import Shape, ancestors
from onnxcam.graph.topo import static_shapes as _static_shapes

# Ops that pick some rows of their input: after one of these, rows no longer map to the concatenated scales.
_ROW_SELECTIONS = {"TopK", "NonMaxSuppression", "GatherElements", "GatherND"}


def detection_scales(model: ModelProto, output: str, infos: list[TensorInfo] | None = None,
                     input_hw: tuple[int, int] | None = None, selected: bool = False) -> list[Scale]:
    """The scales whose concatenated predictions make the rows of `output` (one image: boxes x attributes either
    way round), finest first as the rows run; [] when the rows do not come from several feature maps.

    selected: also when the rows of `output` are picked from the concatenated candidates (TopK in NMS-free
    end-to-end heads such as YOLOv10's, NMS in the graph): the scales' rows then index those candidates, and
    which scale an output row came from is known only at run time (its gradient reaches that scale's map).

    input_hw: the image's (H, W), for the strides and, when the model's sizes are dynamic, to fix them (default:
    the image input's static size).
    """
    infos = catalogue(model) if infos is None else infos
    shapes = _static_shapes(model.graph)
    rows = _row_count(_known_shape(model, output))
    image_info = next((t for t in infos if not t.op_type and t.layout), None)
    if input_hw is not None and image_info is not None and image_info.layout is not None and \
            not all(isinstance(d, int) for d in image_info.shape or (None,)):
        # dynamic sizes: the same graph at this input size (tensor names stay, so the answer holds for `model`)
        model = at_input_size(model, image_info.name, input_hw, image_info.layout)
        infos = catalogue(model)
        shapes = _static_shapes(model.graph)
        rows = _row_count(_known_shape(model, output))
    if rows is None:
        return []
    input_hw = input_hw or _input_size(infos)
    nodes = list(model.graph.node)
    needed = ancestors(nodes, output)
    spatial = {t.name: t for t in infos if t.spatial and t.op_type}
    image = next((t.name for t in infos if not t.op_type and t.layout), None)
    if image is None:
        return []
    idom = dominators(model, image)
    for node in reversed(nodes):  # the concat nearest the output first
        if node.op_type != "Concat" or node.output[0] not in needed or len(node.input) < 2:
            continue
        picked = _selected_between(nodes, node.output[0], output)
        if picked and not selected:
            continue
        scales = _concat_scales(model, node, shapes, spatial, None if picked else rows, input_hw, idom)
        if scales:
            return scales
    return []


def scale_of_row(scales: Sequence[Scale], row: int) -> Scale | None:
    """The scale that predicts output row `row`, or None."""
    return next((s for s in scales if s.start <= row < s.stop), None)


def describe_scales(scales: Sequence[Scale]) -> list[str]:
    """Lines for `onnxcam inspect`: one per scale, its stride, grid, rows and feature map."""
    lines = []
    for s in scales:
        stride = str(s.stride[0]) if s.stride[0] == s.stride[1] else f"{s.stride[0]}x{s.stride[1]}"
        anchors = f", {s.anchors} anchors per cell" if s.anchors > 1 else ""
        lines.append(f"stride {stride}: grid {s.grid[0]}x{s.grid[1]}{anchors}, rows {s.start}-{s.stop - 1} "
                     f"({s.stop - s.start}), feature {s.feature} {_shape_text(s.shape)}")
    return lines


# --- helpers ------------------------------------------------------------------------------------------------------
def _row_count(shape: Shape | None) -> int | None:
    """Boxes per image of a detection output (batch, a, b): the longer of a and b (attributes are fewer)."""
    if shape is None or len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return max(int(shape[1]), int(shape[2]))  # type: ignore[arg-type]


def _known_shape(model: ModelProto, name: str) -> Shape | None:
    """The most specific shape recorded for `name`: a tensor exposed as an output (onnxcam's raw predictions
    before NMS) is declared there by rank only, while its value_info keeps the sizes."""
    known = []
    for value in list(model.graph.value_info) + list(model.graph.output):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            known.append(tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in value.type.tensor_type.shape.dim))
    return max(known, key=lambda s: sum(isinstance(d, int) for d in s), default=None)


def _input_size(infos: list[TensorInfo]) -> tuple[int, int] | None:
    image = next((t for t in infos if not t.op_type and t.layout and t.shape is not None), None)
    if image is None or image.shape is None:
        return None
    h, w = image.shape[2:4] if image.layout == "NCHW" else image.shape[1:3]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def _selected_between(nodes: list[NodeProto], start: str, end: str) -> bool:
    """Whether a row-selecting op lies on a path from tensor `start` to tensor `end`."""
    after = {start}
    before = ancestors(nodes, end)
    for node in nodes:
        if any(i in after for i in node.input):
            after.update(o for o in node.output if o)
            if node.op_type in _ROW_SELECTIONS and any(o in before for o in node.output):
                return True
    return False


def _concat_scales(model: ModelProto, concat: NodeProto, shapes: dict[str, Shape],
                   spatial: dict[str, TensorInfo], rows: int | None,
                   input_hw: tuple[int, int] | None, idom: dict[str, str | None]) -> list[Scale]:
    """The scales of one Concat, if its inputs are the flattened predictions of several feature maps making
    `rows` rows (None: any number, for candidates that a selection picks from)."""
    axis = next((int(a.i) for a in concat.attribute if a.name == "axis"), 0)
    lengths = []
    for name in concat.input:
        shape = shapes.get(name)
        if shape is None or not shape or not isinstance(shape[axis % len(shape)], int):
            return []
        lengths.append(int(shape[axis % len(shape)]))  # type: ignore[arg-type]
    if (rows is not None and sum(lengths) != rows) or any(name not in idom for name in concat.input):
        return []
    features = _head_inputs(model, list(concat.input), idom)
    if features is None:
        return []
    scales: list[Scale] = []
    start = 0
    for feature, length in zip(features, lengths):
        scale = _scale(spatial[feature], length, start, input_hw) if feature in spatial else None
        if scale is None:
            return []
        scales.append(scale)
        start += length
    if len({s.grid for s in scales}) < 2:  # one feature map (or equal ones): not a multi-scale head
        return []
    return scales


def _head_inputs(model: ModelProto, sources: list[str], idom: dict[str, str | None]) -> list[str] | None:
    """The tensor each per-scale head starts from, one per concatenated input (None if the heads do not match).

    Walking back from a concatenated input along its dominators (tensors every path from the image passes), the
    head of a scale ends where its chain meets a tensor another scale also depends on: there the neck hands this
    scale's feature map to its head (and, in an FPN or PAN, to the neighbouring scale). The scale at the end of
    the neck has no such point (its feature map feeds no other scale, its chain meets the others only inside the
    neck); the heads being alike, every head starts as many dominators back as the shortest such walk, at
    tensors made by the same op.
    """
    chains = [dominator_chain(name, idom) for name in sources]
    reads = [value_ancestors(model, name) for name in sources]
    depths = []
    for i, chain in enumerate(chains):
        others = set().union(*(r for j, r in enumerate(reads) if j != i))
        shared = next((k for k, name in enumerate(chain) if name in others), None)
        if shared is not None:
            depths.append(shared)
    if not depths:
        return None
    depth = min(depths)  # the end of the neck meets the others further back, in the neck itself
    if depth == 0 or any(len(chain) <= depth for chain in chains):
        return None
    features = [chain[depth] for chain in chains]
    producer = {o: node.op_type for node in model.graph.node for o in node.output}
    if len({producer.get(name) for name in features}) != 1:
        return None
    return features


def _scale(info: TensorInfo, length: int, start: int, input_hw: tuple[int, int] | None) -> Scale | None:
    shape = info.shape
    if shape is None or info.layout is None:
        return None
    h, w = shape[2:4] if info.layout == "NCHW" else shape[1:3]
    if not (isinstance(h, int) and isinstance(w, int)) or h * w == 0 or length % (h * w):
        return None
    stride = (input_hw[0] // h, input_hw[1] // w) if input_hw is not None else (0, 0)
    return Scale(info.name, shape, info.layout, (h, w), stride, start, start + length, length // (h * w))


def _shape_text(shape: Shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
