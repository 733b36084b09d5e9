"""The tensor catalogue: every intermediate tensor, its producer, shape and layout; the default layer and score."""

from __future__ import annotations

from onnxcam.errors import LayerError, ModelError
from onnxcam.graph import tokens
from onnxcam.graph.contract import TensorInfo, guess_layout
from onnxcam.graph.dominators import dominator_chain, dominators
from onnxcam.graph.load import FLOAT_TYPES
from onnxcam.graph.protos import ModelProto, NodeProto, TensorProto
from onnxcam.graph.topo import Shape, ancestors, elem_types, static_shapes

# Ops that keep the layout of their (first) input.
_LAYOUT_KEEPING = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh",
    "Softplus", "Erf", "Gelu", "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Abs",
    "Max", "Min", "Sum", "Mean", "Identity", "Dropout", "Cast", "Mish", "QuantizeLinear", "DequantizeLinear", "Pad",
    "Resize", "Upsample", "Where", "Concat", "Slice", "Split", "Softsign",
}
_NCHW_PRODUCERS = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization", "InstanceNormalization",
    "LRN", "GroupNormalization", "ConvInteger", "QLinearConv", "DepthToSpace", "SpaceToDepth",
}
# Ops after which the activation is a probability: scores are taken before them.
NORMALISERS = {"Softmax", "LogSoftmax", "Sigmoid"}
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


def catalogue(model: ModelProto) -> list[TensorInfo]:
    """Graph inputs and every node output, in graph order."""
    graph = model.graph
    shapes, types = static_shapes(graph), elem_types(graph)
    layouts: dict[str, str | None] = {}
    infos: list[TensorInfo] = []

    def add(name: str, op_type: str, node_name: str, layout_hint: str | None) -> None:
        shape = shapes.get(name)
        is_float = types.get(name, TensorProto.FLOAT) in FLOAT_TYPES
        # Inputs keep their layout whatever their dtype: uint8 images are images too.
        image_hint = layout_hint if layout_hint in ("NCHW", "NHWC") else None
        grid = _layout(shape, image_hint)
        layout = grid if is_float or not op_type else None
        if layout is not None and op_type and not _plausible_grid(shape, layout, image):
            layout = None
        if layout is None and is_float and op_type and shape is not None:
            # transformers: token tensors (B x T x C, B x C x T) and Swin's channels-last grids
            layout = _token_layout(shape, layout_hint, next((i for i in infos if i.layout and not i.op_type), None))
        # a quantised (integer) feature map is no layer, but passes its layout on to its DequantizeLinear
        layouts[name] = layout if layout is not None else grid
        infos.append(TensorInfo(name, op_type, node_name, shape, is_float, layout))

    weights = {t.name for t in graph.initializer}
    image: TensorInfo | None = None
    for value in graph.input:
        if value.name not in weights:
            add(value.name, "", "", guess_layout(shapes.get(value.name)))
            image = image or (infos[-1] if infos[-1].layout else None)
    for node in graph.node:
        hint = _layout_hint(node, layouts)
        for out in node.output:
            if out:
                add(out, node.op_type, node.name, hint)
    return infos


def _layout_hint(node: NodeProto, layouts: dict[str, str | None]) -> str | None:
    if node.op_type in _NCHW_PRODUCERS:
        return "NCHW"
    if node.op_type in _LAYOUT_KEEPING:
        return next((layouts[i] for i in node.input if layouts.get(i)), None)
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        source = layouts.get(node.input[0])
        if perm == [0, 2, 3, 1] and source != "NHWC":
            return "NHWC"
        if perm == [0, 3, 1, 2] and source != "NCHW":
            return "NCHW"
    return tokens.rank3_hint(node, layouts)


def _token_layout(shape: Shape, hint: str | None, image: TensorInfo | None) -> str | None:
    """A token layout ("BTC", "BCT") or "NHWC" for a Swin-style grid not made by a conv, judged against the
    image input's size (onnxcam.tokens)."""
    if image is None or image.shape is None:
        return None
    size = image.shape[2:4] if image.layout == "NCHW" else image.shape[1:3]
    input_hw = (size[0], size[1])
    if len(shape) == 3:
        return tokens.rank3_layout(shape, hint, input_hw, image.shape[0])
    if len(shape) == 4 and hint is None and tokens.grid_nhwc(shape, input_hw, image.shape[0]):
        return "NHWC"
    return None


# How much the strides of a feature map's two axes may differ (in input pixels per cell): a map made by a
# network's convolutions shrinks both axes alike; a box tensor reshaped for a Conv (YOLOv8's DFL: 4 x boxes) does not.
_MAX_STRIDE_RATIO = 8


def _plausible_grid(shape: Shape | None, layout: str, image: TensorInfo | None) -> bool:
    """Whether a rank-4 tensor's h x w can be a grid over the image input (unknown sizes: yes)."""
    if image is None or image.shape is None or shape is None:
        return True
    size = image.shape[2:4] if image.layout == "NCHW" else image.shape[1:3]
    grid = shape[2:4] if layout == "NCHW" else shape[1:3]
    dims = [d for d in (*size, *grid) if isinstance(d, int) and d > 0]
    if len(dims) != 4:
        return True
    strides = [dims[0] / dims[2], dims[1] / dims[3]]
    return max(strides) / min(strides) <= _MAX_STRIDE_RATIO


def _layout(shape: Shape | None, hint: str | None) -> str | None:
    """The layout of a rank-4 tensor with a real spatial extent (not 1x1), or None."""
    if shape is None or len(shape) != 4:
        return None
    if hint is None:
        return None
    spatial = shape[2:] if hint == "NCHW" else shape[1:3]
    if all(d == 1 for d in spatial) or any(d == 0 for d in spatial):
        return None
    return hint


def find_score(model: ModelProto, output: str | None = None, probabilities: bool = False) -> tuple[str, str]:
    """The tensor to differentiate and the graph output it stands for.

    Picks `output` or the first float graph output of rank 2 (else the first float output). When that output is
    a Softmax/Sigmoid/LogSoftmax, possibly followed by reshapes, returns the normaliser's input (the logits)
    unless `probabilities` is set. The logits may then still need a reshape to the output's shape. A quantised
    model's output quantisation (QuantizeLinear -> DequantizeLinear, before or after the normaliser) is stepped
    over the same way: the score is the float value before it.
    """
    graph = model.graph
    shapes, types = static_shapes(graph), elem_types(graph)
    names = [o.name for o in graph.output]
    if output is not None:
        if output not in names:
            raise LayerError(f"model has no output '{output}'; outputs are: {', '.join(names)}")
        chosen = output
    else:
        floats = [n for n in names if types.get(n, TensorProto.FLOAT) in FLOAT_TYPES]
        if not floats:
            raise ModelError("the model has no float output to explain")
        ranked = [n for n in floats if len(shapes.get(n) or ()) == 2]
        chosen = (ranked or floats)[0]
    if probabilities:
        return chosen, chosen
    producer = {out: node for node in graph.node for out in node.output}
    name = _before_output_quantization(chosen, producer)
    while name in producer and producer[name].op_type in _PASS_THROUGH:
        name = producer[name].input[0]
    if name in producer and producer[name].op_type in NORMALISERS:
        return _before_output_quantization(producer[name].input[0], producer), chosen
    return name if name != chosen and _quantized_output(chosen, producer) else chosen, chosen


def _quantized_output(name: str, producer: dict[str, NodeProto]) -> bool:
    node = producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return False
    before = producer.get(node.input[0])
    return before is not None and before.op_type == "QuantizeLinear"


def _before_output_quantization(name: str, producer: dict[str, NodeProto]) -> str:
    """The float tensor before a final QuantizeLinear -> DequantizeLinear pair: int8 models quantise their
    logits too, and a logit above the calibrated range would otherwise have no gradient at all."""
    if not _quantized_output(name, producer):
        return name
    return producer[producer[name].input[0]].input[0]


def default_layer(model: ModelProto, score: str, infos: list[TensorInfo] | None = None) -> str:
    """The last spatial feature map (in graph order) that the score depends on and that every path from the image
    to the score passes through; for a transformer whose head reads the class token, the last token tensor before
    the last attention (see tokens.class_token_default).

    Passing through every path keeps the default out of residual branches: an attention block, an MLP or a
    ResNet block's convolutions are bypassed by their skip connection, while the blocks' outputs are not."""
    infos = catalogue(model) if infos is None else infos
    nodes = list(model.graph.node)
    needed = ancestors(nodes, score)
    spatial = [t for t in infos if t.spatial and t.name in needed and t.op_type]
    if not spatial:
        raise LayerError("the model has no spatial feature map (a rank-4 NCHW or NHWC tensor, or transformer tokens) "
                         "before its score; CAM methods need one: pass --layer with a tensor name, or explain another "
                         "model")
    attention = tokens.has_attention(model, needed)
    if not attention:
        # no transformer: token-shaped tensors after the last feature map are a head's output (detection boxes)
        spatial = [t for t in spatial if t.layout not in tokens.TOKEN_LAYOUTS] or spatial
    token_layers = [(t.name, t.shape) for t in spatial if t.layout == "BTC" and t.shape is not None]
    chosen = tokens.class_token_default(model, needed, token_layers)
    if chosen is not None:
        return chosen
    image = next((t.name for t in infos if not t.op_type and t.layout), None)
    on_every_path = set(dominator_chain(score, dominators(model, image))) if image is not None else set()
    return ([t for t in spatial if t.name in on_every_path] or spatial)[-1].name
