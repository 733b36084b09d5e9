"""Layers with weights: Conv, Gemm and MatMul with a constant operand (the weights).

Every rule here is gradient-times-input on a copy of the node: z = f(x', w') computes the contributions' sum,
and the gradient rule of f (ConvTranspose, transposed Gemm...) carries S = R / z back, so
R_x = sum over (x', w') of x' * J_{w'}^T S. For z+ / alpha-beta, the pairs are the sign parts of inputs and
weights: positive contributions come from (x+, w+) and (x-, w-), negative ones from (x+, w-) and (x-, w+)
(Bach et al. 2015; Montavon et al. 2019). The bias is left out of the denominators unless options.bias is set.
"""

from __future__ import annotations

import numpy as np

from onnxcam.graph.builder import Builder
from onnxcam.graph.protos import NodeProto
from onnxcam.graph.reverse.gradients import Grads, Node
from onnxcam.graph.reverse.relevance import LrpOptions, copy_node, divide, gradient_rule, lrp_rule

# Ops through which a graph input reaches a first convolution (layout changes and in-graph normalisation).
_PREPROCESSING = {"Transpose", "Identity", "Reshape", "Cast", "Sub", "Div", "Mul", "Add", "Pad", "Flatten",
                  "Squeeze", "Unsqueeze"}
# Ops whose output is >= 0 whenever their data input is (so a Relu's non-negativity survives them).
_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Identity",
               "Transpose", "Squeeze", "Unsqueeze", "Dropout", "Concat", "Slice", "Split", "ReduceMean",
               "ReduceMax", "ReduceSum", "Resize", "Upsample"}
_NONNEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid"}


def _producers(b: Builder) -> dict[str, NodeProto]:
    return {out: node for node in b.graph.node for out in node.output}


def nonnegative(b: Builder, x: str) -> bool:
    """True when x is >= 0 by construction (a Relu output, possibly pooled or reshaped): its negative part is zero
    and its terms can be skipped."""
    producers = _producers(b)
    while x in producers:
        node = producers[x]
        if node.op_type in _NONNEGATIVE:
            return True
        if node.op_type == "Clip":
            low = b.constant_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            return low is not None and float(np.min(low)) >= 0
        if node.op_type not in _KEEPS_SIGN:
            return False
        x = node.input[0]
    return False


def reads_image(b: Builder, x: str) -> bool:
    """True when x is a graph input, reached through layout changes and normalisation only (a first layer)."""
    producers = _producers(b)
    inputs = {value.name for value in b.graph.input} - set(b.initializers)
    while x in producers:
        node = producers[x]
        varying = [i for i in node.input if i and i not in b.initializers]
        if node.op_type not in _PREPROCESSING or len(varying) != 1:
            return False
        x = varying[0]
    return x in inputs


def positive(b: Builder, t: str) -> str:
    value = b.constant_value(t)
    return b.const(np.maximum(value, 0)) if value is not None else b.op("Relu", t)


def negative(b: Builder, t: str) -> str:
    value = b.constant_value(t)
    return b.const(np.minimum(value, 0)) if value is not None else b.op("Min", t, b.scalar_like(0.0, t))


class _Linear:
    """One linear node: its data input (index `data`), its weight input and, for Conv/Gemm, its bias."""

    def __init__(self, b: Builder, node: Node, data: int, weight: int, bias: int | None) -> None:
        self.b, self.node, self.data, self.weight = b, node, data, weight
        self.bias = node.input(bias) if bias is not None else None

    def contributions(self, x: str, w: str, bias: str | None = None) -> str:
        """f(x, w) (+ bias): the node recomputed on other inputs."""
        inputs = list(self.node.inputs[:max(self.data, self.weight) + 1])
        inputs[self.data], inputs[self.weight] = x, w
        original = self.node.inputs[self.data]
        self.b.set_shape(x, self.b.static_shape(original), self.b.elem_type(original))
        if bias is not None:
            inputs.append(bias)
        return copy_node(self.b, self.node, inputs, "lrp_z").outputs[0]

    def back(self, w: str, s: str) -> str:
        """J_w^T s: the gradient rule of the node, with weights w, applied to s."""
        inputs = list(self.node.inputs[:max(self.data, self.weight) + 1])
        inputs[self.weight] = w
        copy = copy_node(self.b, self.node, inputs, "lrp_fwd")
        grads = gradient_rule(self.node.op_type).fn(self.b, copy, [s])
        result = grads[self.data]
        assert result is not None
        return result


def _share(b: Builder, layer: _Linear, r: str, pairs: list[tuple[str, str]], bias: str | None,
           epsilon: float) -> str:
    """sum over pairs of x' * J_{w'}^T (R / z), z = sum over pairs of f(x', w') (+ bias)."""
    z = None
    for k, (xs, ws) in enumerate(pairs):
        part = layer.contributions(xs, ws, bias if k == 0 else None)
        z = part if z is None else b.op("Add", z, part)
    assert z is not None
    s = divide(b, r, z, epsilon)
    total = None
    for xs, ws in pairs:
        part = b.op("Mul", xs, layer.back(ws, s))
        total = part if total is None else b.op("Add", total, part)
    assert total is not None
    return total


def _relevance(b: Builder, layer: _Linear, r: str, options: LrpOptions) -> str:
    x, w = layer.node.inputs[layer.data], layer.node.inputs[layer.weight]
    bias = layer.bias if options.bias else None
    if options.rule == "epsilon":
        return _share(b, layer, r, [(x, w)], bias, options.epsilon)
    w_pos, w_neg = positive(b, w), negative(b, w)
    b_pos = positive(b, bias) if bias else None
    b_neg = negative(b, bias) if bias else None
    alpha, beta = (1.0, 0.0) if options.rule == "z+" else (options.alpha, options.beta)
    if nonnegative(b, x):
        active, inhibiting = [(x, w_pos)], [(x, w_neg)]
    else:
        x_pos, x_neg = positive(b, x), negative(b, x)
        active, inhibiting = [(x_pos, w_pos), (x_neg, w_neg)], [(x_pos, w_neg), (x_neg, w_pos)]
    result = _share(b, layer, r, active, b_pos, options.epsilon)
    if alpha != 1.0:
        result = b.op("Mul", result, b.scalar_like(alpha, x))
    if beta:
        inhibition = _share(b, layer, r, inhibiting, b_neg, options.epsilon)
        result = b.op("Sub", result, b.op("Mul", inhibition, b.scalar_like(beta, x)))
    return result


def _bounded(b: Builder, layer: _Linear, r: str, options: LrpOptions) -> str:
    """z^B rule (Montavon et al. 2017) for a layer reading pixels in [low, high] (per image: the official code
    takes the input's own minimum and maximum): z = x w - low w+ - high w-, R_x = x J_w^T S - low J_{w+}^T S -
    high J_{w-}^T S."""
    x, w = layer.node.inputs[layer.data], layer.node.inputs[layer.weight]
    rank = b.rank(x)
    axes = list(range(1, rank)) if rank else None
    if axes is None:
        return _relevance(b, layer, r, LrpOptions(options.rule, options.alpha, options.beta, options.epsilon,
                                                  options.bias, "same"))
    shape = b.op("Shape", x)
    low = b.op("Expand", b.reduce("ReduceMin", x, axes, keepdims=True), shape)
    high = b.op("Expand", b.reduce("ReduceMax", x, axes, keepdims=True), shape)
    w_pos, w_neg = positive(b, w), negative(b, w)
    z = b.op("Sub", b.op("Sub", layer.contributions(x, w), layer.contributions(low, w_pos)),
             layer.contributions(high, w_neg))
    s = divide(b, r, z, options.epsilon)
    return b.op("Sub", b.op("Sub", b.op("Mul", x, layer.back(w, s)), b.op("Mul", low, layer.back(w_pos, s))),
                b.op("Mul", high, layer.back(w_neg, s)))


@lrp_rule("Conv", inputs=(0,))
def conv(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    r = rel[0]
    assert r is not None
    layer = _Linear(b, node, 0, 1, 2)
    if options.first_layer == "zb" and reads_image(b, node.inputs[0]):
        return [_bounded(b, layer, r, options)]
    return [_relevance(b, layer, r, options)]


@lrp_rule("Gemm")
def gemm(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    r = rel[0]
    assert r is not None
    a, w = node.inputs[:2]
    if b.constant_value(w) is not None:
        return [_relevance(b, _Linear(b, node, 0, 1, 2), r, options), None, None]
    if b.constant_value(a) is not None:
        return [None, _relevance(b, _Linear(b, node, 1, 0, 2), r, options), None]
    return [*_bilinear(b, node, r, options), None]


@lrp_rule("MatMul")
def matmul(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    r = rel[0]
    assert r is not None
    a, w = node.inputs
    if b.constant_value(w) is not None:
        return [_relevance(b, _Linear(b, node, 0, 1, None), r, options), None]
    if b.constant_value(a) is not None:
        return [None, _relevance(b, _Linear(b, node, 1, 0, None), r, options)]
    return _bilinear(b, node, r, options)


def _bilinear(b: Builder, node: Node, r: str, options: LrpOptions) -> list[str | None]:
    """A product of two computed tensors (attention: Q K^T, A V): each operand gets its z-rule share
    x * J_x^T (R / z), halved, as Chefer et al. (CVPR 2021) propagate through attention's matmuls. For (Gemm)
    with its own bias, the bias is left out of z like everywhere else."""
    a, w = node.inputs[:2]
    bare = copy_node(b, node, [a, w], "lrp_z") if node.input(2) else None
    z = bare.outputs[0] if bare is not None else node.outputs[0]
    s = divide(b, r, z, options.epsilon)
    grads = gradient_rule(node.op_type).fn(b, bare or node, [s])
    half = b.scalar_like(0.5, r)
    return [None if g is None else b.op("Mul", b.op("Mul", x, g), half) for x, g in zip((a, w), grads[:2])]
