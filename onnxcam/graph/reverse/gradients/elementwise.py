"""Elementwise arithmetic with broadcasting: Add, Sub, Mul, Div, Pow, Max/Min, Sum, Mean, Where."""

from __future__ import annotations

from onnxcam.graph.builder import Builder
from onnxcam.graph.reverse.gradients import Grads, Node, rule


def _each(b: Builder, node: Node, grads: list[str | None], factors: list[str | None]) -> Grads:
    """Unbroadcast grad * factor for every input (factor None means 1)."""
    g = grads[0]
    assert g is not None
    out = node.outputs[0]
    result: list[str | None] = []
    for x, factor in zip(node.inputs, factors):
        local = g if factor is None else b.op("Mul", g, factor)
        result.append(b.unbroadcast(local, x, out))
    return result


@rule("Add", "Sum")
def add(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    return _each(b, node, grads, [None] * len(node.inputs))


@rule("Sub")
def sub(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    g = grads[0]
    assert g is not None
    return [b.unbroadcast(g, node.inputs[0], node.outputs[0]),
            b.unbroadcast(b.op("Neg", g), node.inputs[1], node.outputs[0])]


@rule("Mean")
def mean(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    share = b.scalar_like(1.0 / len(node.inputs), node.outputs[0])
    return _each(b, node, grads, [share] * len(node.inputs))


@rule("Mul")
def mul(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, y = node.inputs
    return _each(b, node, grads, [y, x])


@rule("Div")
def div(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, y = node.inputs
    g = grads[0]
    assert g is not None
    out = node.outputs[0]
    gx = b.op("Div", g, y)
    gy = b.op("Neg", b.op("Mul", gx, out))  # -g * x / y^2 = -(g / y) * (x / y)
    return [b.unbroadcast(gx, x, out), b.unbroadcast(gy, y, out)]


@rule("Pow")
def pow_(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, y = node.inputs
    g = grads[0]
    assert g is not None
    out = node.outputs[0]
    y_like = b.cast_like(y, x)
    # d/dx x^y = y * x^(y-1); d/dy = x^y * log(x), taken where x > 0 (elsewhere the real power has no gradient)
    dx = b.op("Mul", y_like, b.op("Pow", x, b.op("Sub", y_like, b.scalar_like(1.0, x))))
    positive = b.op("Greater", x, b.scalar_like(0.0, x))
    safe_x = b.op("Where", positive, x, b.scalar_like(1.0, x))
    dy = b.op("Mul", out, b.op("Log", safe_x))
    gy = b.unbroadcast(b.op("Mul", g, dy), y, out)
    return [b.unbroadcast(b.op("Mul", g, dx), x, out), b.cast_like(gy, y)]


@rule("Max", "Min")
def max_min(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """The gradient goes to the input(s) equal to the result, shared equally between ties."""
    g = grads[0]
    assert g is not None
    out = node.outputs[0]
    masks = [b.cast_like(b.op("Equal", x, out), out) for x in node.inputs]
    count = masks[0] if len(masks) == 1 else b.op("Sum", *masks)
    share = b.op("Div", g, count)
    return [b.unbroadcast(b.op("Mul", share, m), x, out) for x, m in zip(node.inputs, masks)]


@rule("Where", inputs=(1, 2))
def where(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    cond, x, y = node.inputs
    g = grads[0]
    assert g is not None
    out = node.outputs[0]
    zero = b.scalar_like(0.0, out)
    return [None, b.unbroadcast(b.op("Where", cond, g, zero), x, out),
            b.unbroadcast(b.op("Where", cond, zero, g), y, out)]
