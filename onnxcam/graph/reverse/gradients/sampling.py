"""Sampling at computed positions: GridSample (spatial transformers, deformable attention as in RT-DETR).

The rule follows onnxruntime's kernel rather than re-deriving the spec's prose. Per spatial axis, a grid value n
becomes a pixel coordinate x ((n + 1) / 2 * (L - 1) with align_corners=1, ((n + 1) * L - 1) / 2 with 0); the
sample reads a few taps around it (linear: floor(x) and floor(x) + 1; cubic: floor(x) - 1 .. floor(x) + 2; nearest:
x rounded half to even) with weights that are polynomials in t = x - floor(x). Padding acts on each tap's index:
zeros reads 0 outside [0, L - 1], border clamps the index, reflection mirrors it about the extrema (-0.5 and L - 0.5,
or 0 and L - 1 with align_corners). The coordinate itself is never clipped or reflected, so the derivative needs no
case of its own: a clamped sample reads the same pixel at every tap and its weight slopes cancel, a mirrored one
reads its taps in reverse order and the slope changes sign.

With the taps of every axis combined (T^r corners for r spatial axes), the input gradient scatters g times each
corner's weight back to the corner's pixel (reduction="add"), and the grid gradient is, per axis, the sum over
corners of g * pixel * (that axis' weight slope) * (the other axes' weights), summed over channels and scaled by
dx/dn ((L - 1) / 2 or L / 2). Nearest sampling is piecewise constant in the grid: only the input gets a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.protos import TensorProto, from_array
from onnxcam.graph.reverse.gradients import Grads, Node, rule

_CUBIC_A = -0.75  # onnxruntime's (and PyTorch's) cubic convolution constant


@dataclass(frozen=True)
class _Kernel:
    """How one axis is sampled: taps start at `rounding`(x) + first; tap i weighs sum_k coefficients[i][k] t^k."""
    rounding: str                   # "Floor" or "Round" (half to even, as std::nearbyint)
    first: int
    coefficients: list[list[float]]

    @property
    def taps(self) -> int:
        return len(self.coefficients)

    def slopes(self) -> np.ndarray:
        """d weight / dt as coefficients over the same powers of t."""
        c = np.asarray(self.coefficients, np.float64)
        d = np.zeros_like(c)
        d[:, :-1] = c[:, 1:] * np.arange(1, c.shape[1])
        return d


_A = _CUBIC_A
_KERNELS = {
    "linear": _Kernel("Floor", 0, [[1.0, -1.0], [0.0, 1.0]]),
    "nearest": _Kernel("Round", 0, [[1.0]]),
    # Keys' cubic convolution at distances 1 + t, t, 1 - t, 2 - t, written out as polynomials in t
    "cubic": _Kernel("Floor", -1, [[0.0, _A, -2 * _A, _A],
                                   [1.0, 0.0, -(_A + 3), _A + 2],
                                   [0.0, -_A, 2 * _A + 3, -(_A + 2)],
                                   [0.0, 0.0, _A, -_A]]),
}
_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}
_PADDINGS = ("zeros", "border", "reflection")


@dataclass
class _Axis:
    """One spatial axis' taps, each shaped (N, taps, P) for P sampled points."""
    index: str          # int64 pixel index of each tap, already inside [0, L - 1]
    weight: str         # interpolation weight, 0 where zero padding reads outside the image
    slope: str | None   # d weight / d grid value (None for nearest sampling)


@rule("GridSample")
def grid_sample(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, grid = node.inputs[:2]
    g = grads[0]
    assert g is not None
    kernel, padding, corners = _settings(node)
    rank = _spatial_rank(b, node, x, grid)
    flat_grid = b.op("Transpose", b.op("Reshape", grid, b.ints([0, -1, rank])), perm=[0, 2, 1])  # (N, r, P)
    # grid's last axis lists coordinates innermost first: component j addresses spatial axis rank - 1 - j
    axes = [_axis(b, x, grid, b.op("Gather", flat_grid, b.ints([rank - 1 - k]), axis=1), 2 + k, kernel, padding,
                  corners) for k in range(rank)]
    by_corner = b.ints([0, 1, kernel.taps ** rank, -1])  # every combination of the axes' taps: a corner
    index = b.op("Reshape", _total(b, "Add", [b.op("Mul", _spread(b, a.index, k, rank), _stride(b, x, k, rank))
                                              for k, a in enumerate(axes)]), by_corner)
    weight = b.op("Reshape", _total(b, "Mul", [_spread(b, a.weight, k, rank) for k, a in enumerate(axes)]), by_corner)

    pixels = b.op("Reshape", x, b.ints([0, 0, -1]))                            # (N, C, S)
    dy = b.unsqueeze(b.op("Reshape", g, b.ints([0, 0, -1])), [2])              # (N, C, 1, P)
    updates = b.op("Mul", dy, weight)                                          # (N, C, corners, P)
    flat_index = b.op("Reshape", b.op("Expand", index, b.op("Shape", updates)), b.ints([0, 0, -1]))
    zeros = b.op("ConstantOfShape", b.op("Shape", pixels), value=from_array(np.zeros(1, b.np_dtype(x))))
    dx = b.op("ScatterElements", zeros, flat_index, b.op("Reshape", updates, b.ints([0, 0, -1])), axis=2,
              reduction="add")  # corners of different samples can be the same pixel
    dx = b.op("Reshape", dx, b.op("Shape", x))
    if kernel.rounding == "Round":
        return [dx, None]
    read = b.op("Reshape", b.op("GatherElements", pixels, flat_index, axis=2), b.op("Shape", updates))
    return [dx, _grid_gradient(b, axes, b.op("Mul", read, dy), grid, kernel.taps)]


def _grid_gradient(b: Builder, axes: list[_Axis], products: str, grid: str, taps: int) -> str:
    """d/d grid from g * pixel per channel and corner: summed over channels, then per axis over the corners
    weighted by that axis' slope and the other axes' weights."""
    rank = len(axes)
    per_corner = b.op("Reshape", b.reduce_sum(products, [1], keepdims=False), b.ints([0] + [taps] * rank + [-1]))
    components = []
    for j in range(rank):
        k = rank - 1 - j
        factors = [_spread(b, _slope(a) if m == k else a.weight, m, rank) for m, a in enumerate(axes)]
        summed = b.reduce_sum(b.op("Mul", per_corner, _total(b, "Mul", factors)), list(range(1, rank + 1)),
                              keepdims=False)
        components.append(b.unsqueeze(summed, [2]))                           # (N, P, 1)
    dgrid = b.op("Concat", *components, axis=2) if rank > 1 else components[0]
    return b.op("Reshape", dgrid, b.op("Shape", grid))


def _slope(axis: _Axis) -> str:
    assert axis.slope is not None, "nearest sampling has no slope"
    return axis.slope


def _settings(node: Node) -> tuple[_Kernel, str, bool]:
    mode, padding = node.attr("mode", "linear"), node.attr("padding_mode", "zeros")
    if mode not in _MODES:
        raise GradientError(f"GridSample node '{node.name}': mode {mode!r} is not one the ONNX spec defines, so it "
                            "has no gradient rule; re-export the model or pick a layer after this node")
    if padding not in _PADDINGS:
        raise GradientError(f"GridSample node '{node.name}': padding_mode {padding!r} is not one the ONNX spec "
                            "defines, so it has no gradient rule; re-export the model or pick a layer after this node")
    return _KERNELS[_MODES[mode]], padding, bool(node.attr("align_corners", 0))


def _spatial_rank(b: Builder, node: Node, x: str, grid: str) -> int:
    rank = b.rank(x)
    if rank is not None:
        return rank - 2
    shape = b.static_shape(grid)
    if shape is not None and isinstance(shape[-1], int):
        return shape[-1]
    raise GradientError(f"the gradient of GridSample node '{node.name}' needs the rank of its input '{x}', which "
                        "shape inference could not find; give the model's inputs a fixed rank")


def _axis(b: Builder, x: str, grid: str, n: str, axis: int, kernel: _Kernel, padding: str,
          corners: bool) -> _Axis:
    """The taps of x's `axis` for normalised coordinates n shaped (N, 1, P), computed in the grid's float type."""
    dtype = b.np_dtype(grid)
    size = _size(b, x, axis, grid)
    one, two = b.scalar_like(1.0, grid), b.scalar_like(2.0, grid)
    last = b.op("Sub", size, one)
    # the same operations in the same order as onnxruntime, so rounding and floor decisions agree bit for bit
    if corners:
        coord = b.op("Mul", b.op("Div", b.op("Add", n, one), two), last)
        scale = b.op("Div", last, two)
    else:
        coord = b.op("Div", b.op("Sub", b.op("Mul", b.op("Add", n, one), size), one), two)
        scale = b.op("Div", size, two)
    base = b.op(kernel.rounding, coord)
    t = b.op("Sub", coord, b.op("Floor", coord))
    ones = b.op("ConstantOfShape", b.op("Shape", t), value=from_array(np.ones(1, dtype)))
    powers = b.op("Concat", ones, *_powers(b, t, kernel), axis=1)            # (N, degree + 1, P)
    weight = b.op("MatMul", b.const(np.asarray(kernel.coefficients, dtype)), powers)
    slope = None
    if kernel.rounding == "Floor":
        slope = b.op("Mul", b.op("MatMul", b.const(kernel.slopes().astype(dtype)), powers), scale)
    offsets = np.arange(kernel.first, kernel.first + kernel.taps, dtype=dtype).reshape(1, -1, 1)
    tap = b.op("Add", base, b.const(offsets))                               # (N, taps, P) float pixel indices
    zero = b.scalar_like(0.0, grid)
    if padding == "zeros":
        inside = b.cast_like(b.op("And", b.op("GreaterOrEqual", tap, zero), b.op("LessOrEqual", tap, last)), grid)
        weight = b.op("Mul", weight, inside)
        slope = None if slope is None else b.op("Mul", slope, inside)
    elif padding == "reflection":
        tap = _reflect(b, tap, last, corners, grid)
    index = b.op("Cast", b.op("Clip", tap, zero, last), to=TensorProto.INT64)
    return _Axis(index, weight, slope)


def _powers(b: Builder, t: str, kernel: _Kernel) -> list[str]:
    """t, t^2, ... up to the kernel's degree."""
    out: list[str] = []
    for _ in range(len(kernel.coefficients[0]) - 1):
        out.append(t if not out else b.op("Mul", out[-1], t))
    return out


def _reflect(b: Builder, tap: str, last: str, corners: bool, grid: str) -> str:
    """Integer tap indices mirrored about the extrema (0 and L - 1, or -0.5 and L - 0.5) until they fall inside:
    a triangle wave of period twice the span."""
    low = b.scalar_like(0.0 if corners else -0.5, grid)
    span = last if corners else b.op("Add", last, b.scalar_like(1.0, grid))
    # a one-pixel axis with align_corners has no span: every tap reads pixel 0 (a period of 1 gives that)
    period = b.op("Max", b.op("Mul", span, b.scalar_like(2.0, grid)), b.scalar_like(1.0, grid))
    shifted = b.op("Sub", tap, low)
    wrapped = b.op("Sub", shifted, b.op("Mul", period, b.op("Floor", b.op("Div", shifted, period))))
    return b.op("Sub", b.op("Add", low, span), b.op("Abs", b.op("Sub", wrapped, span)))


def _size(b: Builder, x: str, axis: int, like: str | None = None) -> str:
    """x's size along `axis` as a scalar: int64, or like's float type; a constant when static."""
    dtype = np.int64 if like is None else b.np_dtype(like)
    shape = b.static_shape(x)
    if shape is not None and isinstance(shape[axis], int):
        return b.const(np.asarray(shape[axis], dtype))
    size = b.op("Gather", b.op("Shape", x), b.const(np.asarray(axis, np.int64)))
    return size if like is None else b.cast_like(size, like)


def _stride(b: Builder, x: str, k: int, rank: int) -> str:
    """How far apart neighbours along spatial axis k lie in x's flattened spatial plane."""
    sizes = [_size(b, x, 2 + m) for m in range(k + 1, rank)]
    return _total(b, "Mul", sizes) if sizes else b.const(np.asarray(1, np.int64))


def _spread(b: Builder, t: str, k: int, rank: int) -> str:
    """(N, T, P) -> (N, 1, .., T, .., 1, P) with the taps on corner axis k, to broadcast against the other axes."""
    others = [1 + m for m in range(rank) if m != k]
    return b.unsqueeze(t, others) if others else t


def _total(b: Builder, op: str, terms: list[str]) -> str:
    out = terms[0]
    for term in terms[1:]:
        out = b.op(op, out, term)
    return out
