"""Elementwise ops. Activations and normalisations pass relevance through unchanged (the official Relevance-CAM
code does so for ReLU, BatchNorm and Dropout); sums split it between their summands; products with a constant
(a BatchNorm scale, a folded normalisation) give it all to the computed operand."""

from __future__ import annotations

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.reverse.gradients import Grads, Node
from onnxcam.graph.reverse.relevance import LrpOptions, divide, lrp_rule

IDENTITY_OPS = (
    "Identity", "Dropout", "Cast", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Clip", "HardSwish",
    "HardSigmoid", "Sigmoid", "Tanh", "Softplus", "Softsign", "Mish", "Erf", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "LayerNormalization", "LRN", "Softmax",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",  # a value and its quantised form: the same share
)


@lrp_rule(*IDENTITY_OPS, inputs=(0,))
def identity(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    return [rel[0]]


def _computed(b: Builder, node: Node) -> list[int]:
    """Indices of the inputs that are not constants."""
    return [i for i, name in enumerate(node.inputs) if name and b.constant_value(name) is None]


def _batch_axes(b: Builder, x: str, out: str, node: Node) -> list[int]:
    """The axes to total a summand's relevance over, per image: all but the batch axis (all of them for a summand
    broadcast across the batch)."""
    rank, out_rank = b.rank(x), b.rank(out)
    if rank is None or out_rank is None:
        raise GradientError(f"the relevance rule of {node.op_type} node '{node.name}' needs the rank of its "
                            "inputs, which shape inference could not find; give the model's inputs a fixed rank")
    return list(range(1, rank)) if rank == out_rank and rank > 1 else list(range(rank))


@lrp_rule("Add", "Sum", "Sub")
def add(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    """Residual sums as in the official code: each summand first gets its z-rule share x_i * R / z, then the
    shares are rescaled so that summand i receives |sum of its share| / sum_j |sum of share j| of the total
    relevance (per image). A constant summand (a bias) gets none: the rest passes through unchanged."""
    r = rel[0]
    assert r is not None
    computed = _computed(b, node)
    if len(computed) == 1:
        return [r if i == computed[0] else None for i in range(len(node.inputs))]
    out = node.outputs[0]
    s = divide(b, r, out, options.epsilon)
    shares: list[str | None] = []
    sums: list[str | None] = []
    for i, x in enumerate(node.inputs):
        if i not in computed:
            shares.append(None)
            sums.append(None)
            continue
        signed = b.op("Neg", x) if node.op_type == "Sub" and i == 1 else x
        share = b.op("Mul", signed, b.unbroadcast(s, x, out))
        shares.append(share)
        sums.append(b.reduce_sum(share, _batch_axes(b, x, out, node), keepdims=True))
    magnitudes = [b.op("Abs", t) for t in sums if t is not None]
    norm = magnitudes[0] if len(magnitudes) == 1 else b.op("Sum", *magnitudes)
    total = b.reduce_sum(r, list(range(1, b.rank(out) or 1)), keepdims=True)
    result: list[str | None] = []
    for share, summed in zip(shares, sums):
        if share is None or summed is None:
            result.append(None)
            continue
        target = b.op("Mul", divide(b, b.op("Abs", summed), norm, 0.0), total)
        result.append(b.op("Mul", share, divide(b, target, summed, 0.0)))
    return result


@lrp_rule("Mul", "Div")
def mul(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    """x * constant and x / constant pass relevance to x. Of two computed operands, the larger (the signal, e.g.
    the features of a squeeze-excitation gate) takes it all; equal sizes split it in half (x * sigmoid(x) then
    returns all of it to x through both paths). Div gives it to the numerator."""
    r = rel[0]
    assert r is not None
    computed = _computed(b, node)
    if len(computed) == 1:
        return [r if i == computed[0] else None for i in range(len(node.inputs))]
    x, y = node.inputs
    if node.op_type == "Div":
        return [r, None]
    sx, sy = b.static_shape(x), b.static_shape(y)
    if sx is not None and sy is not None:
        if sx == sy:
            half = b.op("Mul", r, b.scalar_like(0.5, r))
            return [half, half]
        if _broadcasts_into(sy, sx):
            return [r, None]
        if _broadcasts_into(sx, sy):
            return [None, r]
    raise GradientError(f"no relevance rule for {node.op_type} node '{node.name}' of two computed tensors whose "
                        "shapes are unknown or both broadcast; pick a layer after this node, or use a gradient "
                        "method")


def _broadcasts_into(small: tuple, big: tuple) -> bool:  # type: ignore[type-arg]
    return len(small) <= len(big) and all(d == 1 or d == e for d, e in zip(reversed(small), reversed(big)))
