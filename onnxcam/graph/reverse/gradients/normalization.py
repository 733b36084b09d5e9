"""Normalisations: BatchNormalization, InstanceNormalization, GroupNormalization, LayerNormalization, LRN, Softmax.

Gradients go through the statistics (mean and variance) wherever the forward pass computes them; only
BatchNormalization in inference mode uses its running statistics as constants, as its forward pass does. Each rule
first reshapes the input to a small fixed-rank view ((N, C, -1), (N, G, -1) or Flatten's 2-D) so that the
statistics are taken over fixed axes, whatever the input's rank and whichever of its dims are dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.reverse.gradients import Grads, Node, rule


def _wanted(b: Builder, name: str | None) -> bool:
    """Whether a gradient for this input may be used: weights held as initializers never need one."""
    return name is not None and b.constant_value(name) is None


def _view(b: Builder, x: str, dims: Sequence[int]) -> str:
    """Reshape with 0 = keep that dim and -1 = the rest."""
    return b.op("Reshape", x, b.ints(dims))


def _rstd(b: Builder, var: str, eps: float) -> str:
    return b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar_like(eps, var))))


def _stats(b: Builder, x: str, axes: Sequence[int], eps: float) -> tuple[str, str]:
    """x normalised over `axes`, and 1/sqrt(var + eps) (axes kept)."""
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, axes))
    rstd = _rstd(b, b.reduce("ReduceMean", b.op("Mul", centred, centred), axes), eps)
    return b.op("Mul", centred, rstd), rstd


def _through_stats(b: Builder, gh: str, xhat: str, rstd: str, axes: Sequence[int]) -> str:
    """d/dx of xhat = (x - mean) * rstd, given gh = dL/dxhat: rstd * (gh - mean(gh) - xhat * mean(gh * xhat))."""
    centred_g = b.op("Sub", gh, b.reduce("ReduceMean", gh, axes))
    along = b.op("Mul", xhat, b.reduce("ReduceMean", b.op("Mul", gh, xhat), axes))
    return b.op("Mul", rstd, b.op("Sub", centred_g, along))


def _per_channel(b: Builder, g: str, xhat: str, scale: str | None, bias: str | None) -> list[str | None]:
    """Gradients of (C,) scale and bias applied to the (N, C, L) views g and xhat."""
    dscale = b.reduce_sum(b.op("Mul", g, xhat), [0, 2], keepdims=False) if _wanted(b, scale) else None
    dbias = b.reduce_sum(g, [0, 2], keepdims=False) if _wanted(b, bias) else None
    return [dscale, dbias]


def _only_first_output(node: Node, grads: list[str | None]) -> str:
    g = grads[0]
    if g is None or any(other is not None for other in grads[1:]):
        raise GradientError(f"{node.op_type} node '{node.name}': only its first output carries a gradient, but "
                            "the score depends on another one; pick a layer after this node")
    return g


@rule("BatchNormalization")
def batch_norm(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, scale, bias, mean, var = node.inputs[:5]
    g = _only_first_output(node, grads)
    eps = node.attr("epsilon", 1e-5)
    gv = _view(b, g, [0, 0, -1])
    if node.attr("training_mode", 0):  # batch statistics over N and the spatial dims
        xhat, rstd = _stats(b, _view(b, x, [0, 0, -1]), [0, 2], eps)
        dx = _through_stats(b, b.op("Mul", gv, b.unsqueeze(scale, [1])), xhat, rstd, [0, 2])
        return [b.op("Reshape", dx, b.shape(x)), *_per_channel(b, gv, xhat, scale, bias), None, None]
    rstd = _rstd(b, var, eps)
    slope = b.op("Mul", scale, rstd)  # dy/dx, per channel
    dx = b.op("Reshape", b.op("Mul", gv, b.unsqueeze(slope, [1])), b.shape(x))
    sum_g = sum_g_xhat = dmean = dvar = None
    if _wanted(b, bias) or _wanted(b, mean):
        sum_g = b.reduce_sum(gv, [0, 2], keepdims=False)
    if _wanted(b, scale) or _wanted(b, var):
        xhat = b.op("Mul", b.op("Sub", _view(b, x, [0, 0, -1]), b.unsqueeze(mean, [1])), b.unsqueeze(rstd, [1]))
        sum_g_xhat = b.reduce_sum(b.op("Mul", gv, xhat), [0, 2], keepdims=False)
    if _wanted(b, mean):  # -slope * sum(g)
        dmean = b.op("Neg", b.op("Mul", slope, sum_g))
    if _wanted(b, var):  # -slope * rstd / 2 * sum(g * xhat)
        dvar = b.op("Mul", sum_g_xhat, b.op("Mul", slope, b.op("Mul", rstd, b.scalar_like(-0.5, var))))
    return [dx, sum_g_xhat if _wanted(b, scale) else None, sum_g if _wanted(b, bias) else None, dmean, dvar]


@rule("InstanceNormalization")
def instance_norm(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, scale, bias = node.inputs[:3]
    g = grads[0]
    assert g is not None
    xv, gv = _view(b, x, [0, 0, -1]), _view(b, g, [0, 0, -1])
    xhat, rstd = _stats(b, xv, [2], node.attr("epsilon", 1e-5))
    dx = _through_stats(b, b.op("Mul", gv, b.unsqueeze(scale, [1])), xhat, rstd, [2])
    return [b.op("Reshape", dx, b.shape(x)), *_per_channel(b, gv, xhat, scale, bias)]


@rule("GroupNormalization")
def group_norm(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """Statistics per (sample, group); scale and bias are per group at opset 18-20, per channel from 21."""
    x, scale, bias = node.inputs[:3]
    g = grads[0]
    assert g is not None
    groups = [0, node.attr("num_groups"), -1]
    xhat, rstd = _stats(b, _view(b, x, groups), [2], node.attr("epsilon", 1e-5))
    if b.opset >= 21:
        gv = _view(b, g, [0, 0, -1])
        gh = _view(b, b.op("Mul", gv, b.unsqueeze(scale, [1])), groups)
        xhat_c = b.op("Reshape", xhat, b.shape(gv)) if _wanted(b, scale) else xhat  # only dscale reads it
        params = _per_channel(b, gv, xhat_c, scale, bias)
    else:
        gv = _view(b, g, groups)
        gh = b.op("Mul", gv, b.unsqueeze(scale, [1]))
        params = _per_channel(b, gv, xhat, scale, bias)
    dx = _through_stats(b, gh, xhat, rstd, [2])
    return [b.op("Reshape", dx, b.shape(x)), *params]


@rule("LayerNormalization")
def layer_norm(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """Statistics over dims axis..-1 (Flatten's second dim); outputs 1 and 2 (Mean, InvStdDev) carry gradient too."""
    x, scale, bias = node.inputs[0], node.inputs[1], node.input(2)
    g, g_mean, g_rstd = (list(grads) + [None, None])[:3]
    axis, y = node.attr("axis", -1), node.outputs[0]
    flat = b.op("Flatten", x, axis=axis)
    xhat, rstd = _stats(b, flat, [1], node.attr("epsilon", 1e-5))
    parts = []
    dscale = dbias = None
    if g is not None:
        parts.append(_through_stats(b, b.op("Flatten", b.op("Mul", g, scale), axis=axis), xhat, rstd, [1]))
        if _wanted(b, scale):
            dscale = b.unbroadcast(b.op("Mul", g, b.op("Reshape", xhat, b.shape(x))), scale, y)
        if _wanted(b, bias):
            dbias = b.unbroadcast(g, bias or "", y)
    if g_mean is not None or g_rstd is not None:
        # d mean / dx = 1/K; d rstd / dx = -rstd^2 * xhat / K, with K the size of the normalised dims
        terms = [] if g_mean is None else [b.op("Flatten", g_mean, axis=-1)]
        if g_rstd is not None:
            by_rstd = b.op("Mul", b.op("Flatten", g_rstd, axis=-1), b.op("Neg", b.op("Mul", rstd, rstd)))
            terms.append(b.op("Mul", by_rstd, xhat))
        stats = b.op("Add", *terms) if len(terms) == 2 else terms[0]
        stats = stats if g_rstd is not None else b.op("Expand", stats, b.shape(flat))
        parts.append(b.op("Div", stats, b.cast_like(b.shape(flat, 1, 2), x)))
    dx2 = parts[0] if len(parts) == 1 else b.op("Add", *parts)
    return [b.op("Reshape", dx2, b.shape(x)), dscale, dbias]


@rule("LRN")
def lrn(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """y = x * s^-beta, s = bias + alpha/size * (window sum of x^2 over channels)."""
    x, y = node.inputs[0], node.outputs[0]
    g = grads[0]
    assert g is not None
    size = node.attr("size")
    alpha, beta = node.attr("alpha", 1e-4), node.attr("beta", 0.75)
    before = (size - 1) // 2
    ones = b.const(np.ones((1, 1, size, 1), dtype=b.np_dtype(x)))

    def window(t: str, lo: int, hi: int) -> str:
        """Sum of t over channels c-lo..c+hi: a Conv with a (size, 1) kernel of ones on (N, 1, C, -1)."""
        view = b.unsqueeze(_view(b, t, [0, 0, -1]), [1])
        return b.op("Reshape", b.op("Conv", view, ones, pads=[lo, 0, hi, 0]), b.shape(t))

    s = b.op("Add", b.op("Mul", window(b.op("Mul", x, x), before, size - 1 - before),
                         b.scalar_like(alpha / size, x)), b.scalar_like(node.attr("bias", 1.0), x))
    direct = b.op("Mul", g, b.op("Pow", s, b.scalar_like(-beta, x)))
    # through s: channel c feeds the windows of c-hi..c+lo, so the transposed window swaps the two reaches
    through = window(b.op("Div", b.op("Mul", g, y), s), size - 1 - before, before)
    return [b.op("Add", direct, b.op("Mul", b.op("Mul", x, through), b.scalar_like(-2 * alpha * beta / size, x)))]


@rule("Softmax")
def softmax(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    y, g = node.outputs[0], grads[0]
    gy = b.op("Mul", g, y)
    return [b.op("Sub", gy, b.op("Mul", y, b.reduce_sum(gy, [node.attr("axis", -1)])))]


@rule("LogSoftmax")
def log_softmax(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    y, g = node.outputs[0], grads[0] or ""
    return [b.op("Sub", g, b.op("Mul", b.op("Exp", y), b.reduce_sum(g, [node.attr("axis", -1)])))]
