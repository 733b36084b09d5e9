"""Pooling. MaxPool routes each output gradient to the input its Indices output names; average and Lp pooling
spread scaled gradients back over their windows with a ones-kernel ConvTranspose (see conv.window_adjoint)."""

from __future__ import annotations

import numpy as np

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.protos import TensorProto, attribute_value, from_array
from onnxcam.graph.reverse.gradients import Grads, Node, rule
from onnxcam.graph.reverse.gradients.conv import Window, pad, shape_of, window, window_adjoint


@rule("MaxPool", inputs=(0,))
def max_pool(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x = node.inputs[0]
    g = grads[0]
    assert g is not None
    if node.attr("storage_order", 0):
        raise GradientError(f"MaxPool node '{node.name}': storage_order=1 (column-major indices) is not supported")
    if len(node.proto.output) < 2 or not node.proto.output[1]:
        # Ask the forward node for its argmax; onnxruntime's indices are flat over the whole tensor.
        indices = b.fresh("maxpool_indices")
        if len(node.proto.output) < 2:
            node.proto.output.append(indices)
        else:
            node.proto.output[1] = indices
        b.set_shape(indices, b.static_shape(node.outputs[0]), TensorProto.INT64)
    flat = b.ints([-1])
    zeros = b.op("ConstantOfShape", b.op("Reshape", b.op("Size", x), b.ints([1])),
                 value=from_array(np.zeros(1, b.np_dtype(x))))
    # reduction="add": windows overlap, so one input can be the maximum of several outputs.
    dx = b.op("ScatterElements", zeros, b.op("Reshape", node.outputs[1], flat), b.op("Reshape", g, flat), axis=0,
              reduction="add")
    return [b.op("Reshape", dx, shape_of(b, x))]


def _spread(b: Builder, node: Node, g: str, scale: str) -> str:
    """Sum g * scale over each input's windows: a ones-kernel ConvTranspose, channels folded into the batch."""
    x = node.inputs[0]
    win = window(b, node, x)
    ones = b.const(np.ones([1, 1] + win.kernel, b.np_dtype(x)))
    rank = len(win.kernel) + 2
    folded = b.op("Reshape", b.op("Mul", g, scale), b.ints([-1, 1] + [0] * (rank - 2)))
    return b.op("Reshape", window_adjoint(b, folded, ones, x, win), shape_of(b, x))


def _count(b: Builder, win: Window, plane: str, like: str) -> str:
    """How many window positions of each output fall inside the input (shaped like `like`, (1, 1, *out))."""
    ones = b.const(np.ones([1, 1] + win.kernel, b.np_dtype(plane)))
    n = len(win.kernel)
    # Ceil mode adds a last, partial window: pad enough zeros for it, then keep as many outputs as the op made.
    more = [s - 1 for s in win.strides] if win.ceil_mode else [0] * n
    end = [e + m for e, m in zip(win.end, more)] if isinstance(win.end, list) else b.op("Add", win.end, b.ints(more))
    count = b.op("Conv", pad(b, plane, win.begin, end), ones, **win.attrs())
    if win.ceil_mode:
        count = b.op("Slice", count, b.ints([0] * n), b.shape(like, 2), b.ints(list(range(2, n + 2))))
    return count


def _plane(b: Builder, x: str) -> str:
    """Ones shaped (1, 1, *spatial of x)."""
    shape = b.static_shape(x)
    if shape is not None and all(isinstance(d, int) for d in shape[2:]):
        return b.const(np.ones([1, 1] + list(shape[2:]), b.np_dtype(x)))
    return b.op("ConstantOfShape", b.op("Concat", b.ints([1, 1]), b.shape(x, 2), axis=0),
                value=from_array(np.ones(1, b.np_dtype(x))))


@rule("AveragePool")
def average_pool(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x = node.inputs[0]
    g = grads[0]
    assert g is not None
    win = window(b, node, x)
    plane = _plane(b, x)
    # The same op over ones gives count/divisor per output, whatever divisor convention (count_include_pad, ceil
    # mode clipping) the runtime uses; dividing by the count of in-range positions leaves 1/divisor.
    attrs = {a.name: attribute_value(a) for a in node.proto.attribute}
    pooled = b.op("AveragePool", plane, **attrs)
    count = _count(b, win, plane, pooled)
    scale = b.op("Div", pooled, b.op("Max", count, b.scalar_like(1.0, x)))
    return [_spread(b, node, g, scale)]


@rule("LpPool")
def lp_pool(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """y = (sum |x|^p)^(1/p): dx = sign(x) |x|^(p-1) * sum over windows of g * y^(1-p); 0 where y is 0."""
    x, y = node.inputs[0], node.outputs[0]
    g = grads[0]
    assert g is not None
    p = float(node.attr("p", 2))
    zero = b.scalar_like(0.0, y)
    positive = b.op("Greater", y, zero)
    safe = b.op("Where", positive, y, b.scalar_like(1.0, y))
    scale = b.op("Where", positive, b.op("Pow", safe, b.scalar_like(1.0 - p, y)), zero)
    local = b.op("Mul", b.op("Sign", x), b.op("Pow", b.op("Abs", x), b.scalar_like(p - 1.0, x)))
    return [b.op("Mul", local, _spread(b, node, g, scale))]


@rule("GlobalAveragePool")
def global_average_pool(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, y = node.inputs[0], node.outputs[0]
    g = grads[0]
    assert g is not None
    shape = b.static_shape(x)
    if shape is not None and all(isinstance(d, int) for d in shape[2:]):
        share = b.scalar_like(1.0 / float(np.prod(shape[2:])), x)  # type: ignore[arg-type]
    else:  # 1 / (H * W) = size(y) / size(x)
        share = b.op("Div", b.cast_like(b.op("Size", y), x), b.cast_like(b.op("Size", x), x))
    return [b.op("Expand", b.op("Mul", g, share), b.shape(x))]


@rule("GlobalMaxPool")
def global_max_pool(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """The gradient goes to the maximum of each plane, split equally between ties (like Max/Min)."""
    x, y = node.inputs[0], node.outputs[0]
    g = grads[0]
    assert g is not None
    rank = b.rank(x) or b.rank(y)
    if rank is None:
        raise GradientError(f"GlobalMaxPool node '{node.name}': input rank unknown; run shape inference")
    mask = b.cast_like(b.op("Equal", x, y), x)
    count = b.reduce_sum(mask, list(range(2, rank)), keepdims=True)
    return [b.op("Mul", mask, b.op("Div", g, count))]
