"""Reductions: ReduceSum/Mean/Max/Min/L1/L2/SumSquare/LogSumExp/LogSum.

Each gradient is keep(g) * d y / d x, where keep() restores the reduced axes as size-1 axes so that the gradient
broadcasts against x. Axes may be an attribute (before opset 13/18), a constant or run-time input, or absent (all
axes, or none with noop_with_empty_axes, which onnxruntime treats as an elementwise reduction over zero axes).
ReduceMax/Min split the gradient equally among tied extrema.
"""

from __future__ import annotations

import math

from onnxcam.graph.builder import Builder
from onnxcam.graph.reverse.gradients import Grads, Node, rule

# A list of ints ([] reduces nothing), the name of a run-time axes tensor, or None for all axes.
Axes = list[int] | str | None


def _axes(b: Builder, node: Node) -> Axes:
    axes = node.attr("axes")
    if axes is None and node.input(1):
        value = b.constant_value(node.input(1) or "")
        if value is None:
            return node.input(1)
        axes = [int(a) for a in value.reshape(-1)]
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else None
    return list(axes)


def _keep(b: Builder, node: Node, t: str, axes: Axes) -> str:
    """`t` shaped like the output with keepdims=1, so it broadcasts against the input."""
    if node.attr("keepdims", 1) or axes is None or axes == []:
        return t  # with all axes reduced and keepdims=0 the output is a scalar, which broadcasts too
    return b.unsqueeze(t, axes) if isinstance(axes, list) else b.op("Unsqueeze", t, axes)


def _sum_kept(b: Builder, node: Node, t: str, axes: Axes) -> str:
    """ReduceSum over the node's axes with keepdims=1."""
    if isinstance(axes, str):
        return b.op("ReduceSum", t, axes, keepdims=1, noop_with_empty_axes=node.attr("noop_with_empty_axes", 0))
    return b.reduce("ReduceSum", t, None, keepdims=True) if axes is None else b.reduce_sum(t, axes, keepdims=True)


def _static_size(b: Builder, name: str) -> int | None:
    shape = b.static_shape(name)
    dims = [d for d in shape or () if isinstance(d, int)]
    return math.prod(dims) if shape is not None and len(dims) == len(shape) else None


def _times_local(b: Builder, node: Node, grads: list[str | None], local: str) -> Grads:
    return [b.op("Mul", _keep(b, node, grads[0] or "", _axes(b, node)), local)]


@rule("ReduceSum", inputs=(0,))
def reduce_sum(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x = node.inputs[0]
    return [b.op("Expand", _keep(b, node, grads[0] or "", _axes(b, node)), b.op("Shape", x))]


@rule("ReduceMean", inputs=(0,))
def reduce_mean(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, y = node.inputs[0], node.outputs[0]
    sizes = [_static_size(b, x), _static_size(b, y)]
    if sizes[0] is not None and sizes[1] is not None:
        count = b.scalar_like(sizes[0] / max(sizes[1], 1), x)
    else:
        count = b.op("Div", b.cast_like(b.op("Size", x), x), b.cast_like(b.op("Size", y), x))
    share = b.op("Div", _keep(b, node, grads[0] or "", _axes(b, node)), count)
    return [b.op("Expand", share, b.op("Shape", x))]


@rule("ReduceMax", "ReduceMin", inputs=(0,))
def reduce_max_min(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """The gradient goes to the extrema, shared equally between ties (as Max/Min do)."""
    x, axes = node.inputs[0], _axes(b, node)
    mask = b.cast_like(b.op("Equal", x, _keep(b, node, node.outputs[0], axes)), x)
    share = b.op("Div", _keep(b, node, grads[0] or "", axes), _sum_kept(b, node, mask, axes))
    return [b.op("Mul", mask, share)]


@rule("ReduceSumSquare", inputs=(0,))
def reduce_sum_square(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x = node.inputs[0]
    return _times_local(b, node, grads, b.op("Mul", x, b.scalar_like(2.0, x)))


@rule("ReduceL1", inputs=(0,))
def reduce_l1(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    return _times_local(b, node, grads, b.op("Sign", node.inputs[0]))


@rule("ReduceL2", inputs=(0,))
def reduce_l2(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """x / y, taken as 0 where y = 0 (x is all zeros there; the norm has no gradient)."""
    x, y = node.inputs[0], node.outputs[0]
    safe = b.op("Where", b.op("Equal", y, b.scalar_like(0.0, y)), b.scalar_like(1.0, y), y)
    return _times_local(b, node, grads, b.op("Div", x, _keep(b, node, safe, _axes(b, node))))


@rule("ReduceLogSumExp", inputs=(0,))
def reduce_log_sum_exp(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, y = node.inputs[0], node.outputs[0]
    return _times_local(b, node, grads, b.op("Exp", b.op("Sub", x, _keep(b, node, y, _axes(b, node)))))


@rule("ReduceLogSum", inputs=(0,))
def reduce_log_sum(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """d log(sum x) / dx = 1 / sum x = exp(-y)."""
    x, y = node.inputs[0], node.outputs[0]
    return _times_local(b, node, grads, b.op("Expand", b.op("Exp", b.op("Neg", _keep(b, node, y, _axes(b, node)))),
                                             b.op("Shape", x)))
