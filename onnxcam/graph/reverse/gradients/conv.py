"""Convolutions. Conv and ConvTranspose are each other's adjoint: the data gradient of one is the other, with the
same weights, strides, dilations and groups; only the padding has to be worked out so that the result lands on
the input's grid. Weight gradients correlate the input with the output gradient, batch acting as channels.

The window geometry here (`Window`, `window_adjoint`) is shared with the pooling rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.reverse.gradients import Grads, Node, rule

# Pads are static (a list of ints) or computed at run time (an int64 tensor name, one entry per spatial axis).
Pads = list[int] | str


@dataclass
class Window:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begin: Pads
    end: Pads
    ceil_mode: bool = False

    @property
    def extent(self) -> list[int]:
        """The dilated kernel size per axis."""
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    def attrs(self) -> dict[str, Any]:
        return {"strides": self.strides, "dilations": self.dilations}


def window(b: Builder, node: Node, x: str, kernel: list[int] | None = None) -> Window:
    """Kernel, strides, dilations and resolved pads of a Conv/pool node (auto_pad turned into explicit pads)."""
    kernel = list(kernel or node.attr("kernel_shape") or [])
    if not kernel:
        raise GradientError(f"{node.op_type} node '{node.name}': kernel shape unknown (no kernel_shape attribute "
                            "and weights of unknown shape); run shape inference on the model or set kernel_shape")
    n = len(kernel)
    win = Window(kernel, list(node.attr("strides") or [1] * n), list(node.attr("dilations") or [1] * n),
                 [0] * n, [0] * n, bool(node.attr("ceil_mode", 0)))
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = list(node.attr("pads") or [0] * 2 * n)
        win.begin, win.end = pads[:n], pads[n:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        win.begin, win.end = _same_pads(b, x, win, upper=auto_pad == "SAME_UPPER")
    return win


def _same_pads(b: Builder, x: str, win: Window, upper: bool) -> tuple[Pads, Pads]:
    """Output ceil(in / stride); the total padding needed for that, clamped at 0 as onnxruntime does."""
    sizes = spatial_sizes(b, x)
    if sizes is not None:
        totals = [max(0, (-(-i // s) - 1) * s + e - i) for i, s, e in zip(sizes, win.strides, win.extent)]
        begin = [t // 2 if upper else t - t // 2 for t in totals]
        return begin, [t - p for t, p in zip(totals, begin)]
    size = b.shape(x, 2)
    strides = b.ints(win.strides)
    out = b.op("Div", b.op("Add", size, b.ints([s - 1 for s in win.strides])), strides)
    needed = b.op("Sub", b.op("Add", b.op("Mul", b.op("Sub", out, b.ints([1])), strides), b.ints(win.extent)), size)
    total = b.op("Max", needed, b.ints([0]))
    half = b.op("Div", total, b.ints([2]))
    begin = half if upper else b.op("Sub", total, half)
    return begin, b.op("Sub", total, begin)


def spatial_sizes(b: Builder, x: str) -> list[int] | None:
    shape = b.static_shape(x)
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return [int(d) for d in shape[2:]]  # type: ignore[arg-type]


def out_size(size: int, begin: int, end: int, extent: int, stride: int, ceil_mode: bool) -> int:
    """onnxruntime's output length of a window op; in ceil mode the last window must start inside the input."""
    span = size + begin + end - extent
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + begin else out


def pad(b: Builder, x: str, begin: Pads, end: Pads) -> str:
    """Pad (or, with negative amounts, crop) the spatial axes of x."""
    if isinstance(begin, list) and isinstance(end, list):
        if not any(begin) and not any(end):
            return x
        return b.op("Pad", x, b.ints([0, 0] + begin + [0, 0] + end))
    parts = [b.ints(p) if isinstance(p, list) else p for p in (begin, end)]
    return b.op("Pad", x, b.op("Concat", b.ints([0, 0]), parts[0], b.ints([0, 0]), parts[1], axis=0))


def shape_of(b: Builder, x: str) -> str:
    shape = b.static_shape(x)
    if shape is not None and all(isinstance(d, int) and d > 0 for d in shape):
        return b.ints(shape)  # type: ignore[arg-type]
    return b.shape(x)


def window_adjoint(b: Builder, dy: str, w: str, x: str, win: Window, group: int = 1) -> str:
    """ConvTranspose of dy that lands exactly on x's spatial grid: the adjoint of Conv(x, w) (or of any strided
    window op with that geometry). Windows reaching past the input only lose their out-of-range part."""
    sizes = spatial_sizes(b, x)
    if sizes is not None and isinstance(win.begin, list) and isinstance(win.end, list):
        # Full transpose length F = (out-1)*stride + extent; crop `begin` in front and adjust the end to `size`.
        fulls = [(out_size(i, p, q, e, s, win.ceil_mode) - 1) * s + e for i, p, q, e, s in
                 zip(sizes, win.begin, win.end, win.extent, win.strides)]
        cut = [f - p - i for f, p, i in zip(fulls, win.begin, sizes)]
        if all(p >= 0 for p in win.begin) and all(-c < s for c, s in zip(cut, win.strides)):
            return b.op("ConvTranspose", dy, w, group=group, pads=win.begin + [max(0, c) for c in cut],
                        output_padding=[max(0, -c) for c in cut], **win.attrs())
    if isinstance(win.begin, list) and all(p >= 0 for p in win.begin):  # sizes known only at run time
        full = b.op("ConvTranspose", dy, w, group=group, pads=win.begin + [0] * len(win.begin), **win.attrs())
        return pad(b, full, [0] * len(win.begin), b.op("Sub", b.shape(x, 2), b.shape(full, 2)))
    # Pads known only at run time (or negative): transpose unpadded, then crop `begin` and fit the end to `size`.
    full = b.op("ConvTranspose", dy, w, group=group, **win.attrs())
    begin = b.ints(win.begin) if isinstance(win.begin, list) else win.begin
    return pad(b, full, b.op("Neg", begin), b.op("Sub", b.op("Add", b.shape(x, 2), begin), b.shape(full, 2)))


def _swap_batch(b: Builder, x: str, rank: int) -> str:
    return b.op("Transpose", x, perm=[1, 0] + list(range(2, rank)))


def _weight_grad(b: Builder, corr: str, w: str, group: int, kernel: list[int]) -> str:
    """From the (A, B, *k) correlation of all channel pairs to the gradient of w, shaped (B, A / group, *k):
    transposed, and with groups keeping only their diagonal blocks."""
    rank = len(kernel) + 2
    if group == 1:
        return _swap_batch(b, corr, rank)
    w_shape = b.static_shape(w)
    if w_shape is not None and isinstance(w_shape[1], int):
        target = b.ints([group, w_shape[1], group, -1] + kernel)
    else:
        target = b.op("Concat", b.ints([group]), b.shape(w, 1, 2), b.ints([group, -1] + kernel), axis=0)
    blocks = b.op("Reshape", corr, target)  # (g, A/g, g, B/g, *k)
    eye = np.eye(group, dtype=b.np_dtype(w)).reshape([group, 1, group] + [1] * (rank - 1))
    diagonal = b.reduce_sum(b.op("Mul", blocks, b.const(eye)), [2], keepdims=False)
    return b.op("Reshape", b.op("Transpose", diagonal, perm=[0, 2, 1] + list(range(3, rank + 1))), shape_of(b, w))


def _kernel(b: Builder, node: Node) -> list[int] | None:
    if node.attr("kernel_shape"):
        return list(node.attr("kernel_shape"))
    shape = b.static_shape(node.inputs[1])
    if shape is not None and all(isinstance(d, int) for d in shape[2:]):
        return [int(d) for d in shape[2:]]  # type: ignore[arg-type]
    return None


def _bias_grad(b: Builder, node: Node, g: str, rank: int) -> str | None:
    bias = node.input(2)
    return b.reduce_sum(g, [0] + list(range(2, rank)), keepdims=False) if bias and _varies(b, bias) else None


def _varies(b: Builder, name: str) -> bool:
    """False for tensors computed from initializers alone: their gradient would be dropped, and onnxruntime
    does not prune the dead nodes, so weight gradients of constant weights are not built at all."""
    producers = {out: node for node in b.graph.node for out in node.output}
    inputs = {value.name for value in b.graph.input}
    pending, seen = [name], set()
    while pending:
        tensor = pending.pop()
        if not tensor or tensor in seen or tensor in b.initializers:
            continue
        if tensor in inputs or tensor not in producers:
            return True
        seen.add(tensor)
        pending.extend(producers[tensor].input)
    return False


@rule("Conv", inputs=(0, 1, 2))
def conv(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, w = node.inputs[:2]
    g = grads[0]
    assert g is not None
    group = node.attr("group", 1)
    win = window(b, node, x, _kernel(b, node))
    rank = len(win.kernel) + 2
    dx = _data_grad(b, g, w, x, win, group) if _varies(b, x) else None
    return [dx, _conv_weight_grad(b, x, w, g, win, group) if _varies(b, w) else None, _bias_grad(b, node, g, rank)]


def _data_grad(b: Builder, g: str, w: str, x: str, win: Window, group: int) -> str:
    """dX of Conv(x, w). With stride 1 and constant weights it is itself a Conv, over g with the weights flipped
    in space and their in/out channels swapped (per group), padded by extent - 1 - pad on each side so that it
    lands on x's grid: onnxruntime's CPU Conv is 15-40% faster than its ConvTranspose on a network's layers.
    Otherwise the ConvTranspose that `window_adjoint` builds."""
    begin, end = win.begin, win.end
    if isinstance(begin, list) and isinstance(end, list) and all(s == 1 for s in win.strides) \
            and w in b.initializers:
        pads = [e - 1 - p for e, p in zip(win.extent, begin)] + [e - 1 - p for e, p in zip(win.extent, end)]
        flipped = _flipped_weights(b, w, group) if min(pads) >= 0 else None
        if flipped is not None:
            return b.op("Conv", g, flipped, group=group, pads=pads, dilations=win.dilations)
    return window_adjoint(b, g, w, x, win, group)


def _flipped_weights(b: Builder, w: str, group: int) -> str | None:
    """The (C, M / group, *k) weights of Conv's data gradient from its (M, C / group, *k) weights."""
    weights = b.constant_value(w)
    if weights is None or weights.ndim < 3 or weights.shape[0] % group:
        return None
    out_channels, in_per_group, kernel = weights.shape[0], weights.shape[1], weights.shape[2:]
    blocks = weights.reshape(group, out_channels // group, in_per_group, *kernel).swapaxes(1, 2)
    swapped = blocks.reshape(group * in_per_group, out_channels // group, *kernel)
    return b.weight(swapped[(slice(None), slice(None)) + (slice(None, None, -1),) * len(kernel)], "conv_adjoint_w")


def _conv_weight_grad(b: Builder, x: str, w: str, g: str, win: Window, group: int) -> str:
    """dW[m, c, k] = sum_{n, o} dY[n, m, o] * Xpad[n, c, o*stride + k*dilation]: a Conv over batch-as-channels."""
    n = len(win.kernel)
    xt, gt = _swap_batch(b, x, n + 2), _swap_batch(b, g, n + 2)
    swapped: dict[str, Any] = {"strides": win.dilations, "dilations": win.strides}
    if isinstance(win.begin, list) and isinstance(win.end, list) and min(win.begin + win.end) >= 0:
        corr = b.op("Conv", xt, gt, pads=win.begin + win.end, **swapped)
    else:
        corr = b.op("Conv", pad(b, xt, win.begin, win.end), gt, **swapped)
    corr = b.op("Slice", corr, b.ints([0] * n), b.ints(win.kernel), b.ints(list(range(2, n + 2))))
    return _weight_grad(b, corr, w, group, win.kernel)


@rule("ConvTranspose", inputs=(0, 1, 2))
def conv_transpose(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, w = node.inputs[:2]
    g = grads[0]
    assert g is not None
    group = node.attr("group", 1)
    kernel = _kernel(b, node)
    if kernel is None:
        raise GradientError(f"ConvTranspose node '{node.name}': kernel shape unknown; set kernel_shape")
    n = len(kernel)
    win = Window(kernel, list(node.attr("strides") or [1] * n), list(node.attr("dilations") or [1] * n), [], [])
    begin, end = _transpose_pads(b, node, x, win)
    # Y is the full transpose (length F) shifted by `begin`: pad dY back onto F positions, then correlate with W.
    padded = pad(b, g, begin, end)
    dx = b.op("Conv", padded, w, group=group, **win.attrs()) if _varies(b, x) else None
    dw = None
    if _varies(b, w):
        # dW[c, m, k] = sum_{n, i} X[n, c, i] * dYpad[n, m, i*stride + k*dilation], batch acting as channels.
        corr = b.op("Conv", _swap_batch(b, padded, n + 2), _swap_batch(b, x, n + 2), strides=win.dilations,
                    dilations=win.strides)
        dw = _weight_grad(b, corr, w, group, kernel)
    return [dx, dw, _bias_grad(b, node, g, n + 2)]


def _transpose_pads(b: Builder, node: Node, x: str, win: Window) -> tuple[list[int], list[int]]:
    """Where the output starts in the full transpose (length F), and how much dY needs at its end to reach F.

    onnxruntime's rule: with output_shape or SAME_*, the total padding is max(0, F + output_padding - target)
    (target: output_shape, else in * stride), more of it at the start for SAME_LOWER and for a plain
    output_shape, more at the end for SAME_UPPER; the output is output_shape, else F + output_padding - total.
    Otherwise the pads are as given. onnx's shape inference disagrees in some cases, so sizes are worked out here.
    """
    n = len(win.kernel)
    extra = list(node.attr("output_padding") or [0] * n)
    auto_pad = node.attr("auto_pad", "NOTSET")
    output_shape = list(node.attr("output_shape") or [])[-n:]
    if not output_shape and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        pads = list(node.attr("pads") or [0] * 2 * n) if auto_pad == "NOTSET" else [0] * 2 * n
        # out = F + output_padding - begin - end, so F - begin - out = end - output_padding for any input size.
        return pads[:n], [q - e for q, e in zip(pads[n:], extra)]
    sizes = spatial_sizes(b, x)
    if sizes is None and output_shape:
        raise GradientError(f"ConvTranspose node '{node.name}': output_shape with an input of unknown spatial size "
                            "is not supported; export the model with static spatial sizes")
    begin: list[int] = []
    end: list[int] = []
    for i in range(n):
        # F - target; with SAME_* it is extent - stride whatever the input size.
        surplus = (win.extent[i] - win.strides[i] if not output_shape
                   else (sizes[i] - 1) * win.strides[i] + win.extent[i] - output_shape[i])  # type: ignore[index]
        total = max(0, surplus + extra[i])
        head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(head)
        end.append((surplus if output_shape else total - extra[i]) - head)
    return begin, end
