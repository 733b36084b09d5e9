"""Data movement: reshapes, Transpose, Concat/Split, Slice, Gather*, Expand/Tile, Pad, Resize, Depth/SpaceToDepth.

Selections that are awkward to invert (Slice with any steps, Pad with edge/reflect/wrap) use an index map: the
forward op applied to the flat index of every input element tells which element each output copies, and the
gradient is scattered (and summed) back there. Resize is linear in its input and separable by axis: its gradient
multiplies g, axis by axis, by the 1-D interpolation matrix that the same Resize computes from an identity (or,
for nearest, from a row of indices), so every mode onnxruntime implements is matched exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder, Shape
from onnxcam.graph.protos import TensorProto
from onnxcam.graph.reverse.gradients import Grads, Node, rule


def _ints(shape: Shape | None) -> list[int] | None:
    """The shape as ints when every dim is known."""
    dims = [d for d in shape or () if isinstance(d, int)]
    return dims if shape is not None and len(dims) == len(shape) else None


def _shape(b: Builder, x: str, start: int = 0, end: int | None = None) -> str:
    """x's shape (or dims start:end): a constant when static, else computed at run time."""
    dims = _ints(b.static_shape(x))
    if dims is not None:
        return b.ints(dims[start:end])
    return b.op("Shape", x) if start == 0 and end is None else b.shape(x, start, end)


def _rank(b: Builder, node: Node, x: str, *vectors: str | None) -> int:
    """x's static rank, else the static length of any of `vectors` (1-D tensors with one entry per axis)."""
    rank = b.rank(x)
    for vector in vectors:
        shape = b.static_shape(vector) if vector is not None and rank is None else None
        if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
            rank = shape[0]
    if rank is None:
        raise GradientError(f"the gradient of {node.op_type} node '{node.name}' needs the rank of its input '{x}', "
                            "which shape inference could not find; give the model's inputs a fixed rank")
    return rank


def _const_or_attr(b: Builder, node: Node, index: int, attr: str) -> str | None:
    """An input that older opsets gave as an attribute."""
    name = node.input(index)
    if name is None and node.attr(attr) is not None:
        name = b.ints(node.attr(attr))
    return name


def _op(b: Builder, op_type: str, *inputs: str | None, **attrs: Any) -> str:
    """b.op with omitted trailing optional inputs dropped (older schemas reject extra empty ones)."""
    trimmed = list(inputs)
    while trimmed and trimmed[-1] is None:
        trimmed.pop()
    return b.op(op_type, *trimmed, **attrs)


def _iota(b: Builder, x: str) -> str:
    """The flat index of every element of x, shaped like x."""
    flat = b.op("Range", b.const(0, np.int64), b.op("Size", x), b.const(1, np.int64))
    return b.op("Reshape", flat, b.op("Shape", x))


def _scatter_back(b: Builder, x: str, picked: str, g: str, reduction: str | None = None) -> str:
    """Gradient of a selection: `picked` holds, per output element, the flat index of the x element it copies."""
    flat = b.ints([-1])
    zeros = b.op("Reshape", b.zeros_like(x), flat)
    summed = b.op("ScatterElements", zeros, b.op("Reshape", picked, flat), b.op("Reshape", g, flat), axis=0,
                  reduction=reduction)
    return b.op("Reshape", summed, b.op("Shape", x))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", inputs=(0,))
def reshape(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    return [b.op("Reshape", grads[0], _shape(b, node.inputs[0]))]


@rule("Transpose")
def transpose(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    perm = node.attr("perm")
    if perm is None:  # the default reverses the axes: reversing again undoes it
        return [b.op("Transpose", grads[0])]
    return [b.op("Transpose", grads[0], perm=[int(i) for i in np.argsort(perm)])]


@rule("Concat")
def concat(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    axis, g = node.attr("axis"), grads[0] or ""
    if len(node.inputs) == 1:
        return [g]
    dims = _ints(tuple(_dim(b, x, axis) for x in node.inputs))
    if dims is not None:
        sizes = b.ints(dims)
    else:
        sizes = b.op("Concat", *[b.op("Gather", b.op("Shape", x), b.ints([axis])) for x in node.inputs], axis=0)
    return b.op("Split", g, sizes, axis=axis, outputs=len(node.inputs))


def _dim(b: Builder, x: str, axis: int) -> int | str | None:
    shape = b.static_shape(x)
    return shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None


@rule("Split", inputs=(0,))
def split(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    parts = [g if g is not None else b.zeros_like(y) for g, y in zip(grads, node.outputs)]
    return [b.op("Concat", *parts, axis=node.attr("axis", 0)) if len(parts) > 1 else parts[0]]


@rule("Slice", inputs=(0,))
def slice_(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, g = node.inputs[0], grads[0] or ""
    params = [_const_or_attr(b, node, i, attr) for i, attr in enumerate(("starts", "ends", "axes", "steps"), 1)]
    pads = _unit_step_pads(b, x, params)
    if pads is not None:
        return [b.op("Pad", g, b.ints(pads))]
    return [_scatter_back(b, x, _op(b, "Slice", _iota(b, x), *params), g)]


def _unit_step_pads(b: Builder, x: str, params: Sequence[str | None]) -> list[int] | None:
    """For a constant slice with steps of 1 on static axes, the Pad that puts g back in place."""
    values = [None if p is None else b.constant_value(p) for p in params]
    shape = b.static_shape(x)
    if shape is None or values[0] is None or values[1] is None or any(
            p is not None and v is None for p, v in zip(params, values)):
        return None
    starts, ends = values[0].tolist(), values[1].tolist()
    axes = values[2].tolist() if values[2] is not None else list(range(len(starts)))
    steps = values[3].tolist() if values[3] is not None else [1] * len(starts)
    pads = [0] * (2 * len(shape))
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = shape[axis]
        if step != 1 or not isinstance(dim, int):
            return None
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, start), dim)
        pads[axis % len(shape)], pads[axis % len(shape) + len(shape)] = start, dim - end
    return pads


@rule("Gather", inputs=(0,))
def gather(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """Scatter-add g back, so that repeated indices accumulate."""
    x, indices = node.inputs[:2]
    picked = b.op("Gather", _iota(b, x), indices, axis=node.attr("axis", 0))
    return [_scatter_back(b, x, picked, grads[0] or "", "add")]


@rule("GatherElements", inputs=(0,))
def gather_elements(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, indices = node.inputs[:2]
    return [b.op("ScatterElements", b.zeros_like(x), indices, grads[0], axis=node.attr("axis", 0), reduction="add")]


@rule("GatherND", inputs=(0,))
def gather_nd(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    if node.attr("batch_dims", 0):
        raise GradientError(f"no gradient for GatherND node '{node.name}' with batch_dims > 0; pick a layer after it")
    x, indices = node.inputs[:2]
    # not ScatterND(reduction="add"): onnxruntime's multithreaded kernel loses updates to repeated indices
    picked = b.op("GatherND", _iota(b, x), indices)
    return [_scatter_back(b, x, picked, grads[0] or "", "add")]


@rule("Expand", inputs=(0,))
def expand(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    return [b.unbroadcast(grads[0] or "", node.inputs[0], node.outputs[0])]


@rule("Tile", inputs=(0,))
def tile(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """View g as [r0, d0, r1, d1, ...] (repeat, then the original dim) and sum over the repeats."""
    x, repeats = node.inputs[:2]
    rank = _rank(b, node, x, repeats)
    reps, dims = b.constant_value(repeats), _ints(b.static_shape(x))
    if reps is not None and dims is not None:
        split_shape = b.ints([v for pair in zip(reps.tolist(), dims) for v in pair])
    else:
        pairs = b.op("Concat", b.unsqueeze(repeats, [1]), b.unsqueeze(b.op("Shape", x), [1]), axis=1)
        split_shape = b.op("Reshape", pairs, b.ints([-1]))
    return [b.reduce_sum(b.op("Reshape", grads[0], split_shape), list(range(0, 2 * rank, 2)), keepdims=False)]


@rule("Pad", inputs=(0,))
def pad(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, g = node.inputs[0], grads[0] or ""
    pads, axes = _const_or_attr(b, node, 1, "pads") or "", node.input(3)
    mode = node.attr("mode", "constant")
    if mode == "constant":
        # Padding by -pads crops what was padded and refills with zeros what was cropped (negative pads).
        value = b.constant_value(pads)
        negated = b.ints((-value).tolist()) if value is not None else b.op("Neg", pads)
        return [_op(b, "Pad", g, negated, None, axes)]
    # edge, reflect, wrap copy border elements: fold their gradient back onto the sources
    return [_scatter_back(b, x, _op(b, "Pad", _iota(b, x), pads, None, axes, mode=mode), g, "add")]


@rule("SpaceToDepth")
def space_to_depth(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    return [b.op("DepthToSpace", grads[0], blocksize=node.attr("blocksize"), mode="DCR")]


@rule("DepthToSpace")
def depth_to_space(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    block = node.attr("blocksize")
    packed = b.op("SpaceToDepth", grads[0], blocksize=block)  # channels ordered (block row, block col, channel)
    if node.attr("mode", "DCR") == "DCR":
        return [packed]
    # CRD orders channels (channel, block row, block col)
    x = node.inputs[0]  # packed is shaped like x
    split_shape = b.op("Concat", _shape(b, x, 0, 1), b.ints([block * block, -1]), _shape(b, x, 2), axis=0)
    grouped = b.op("Reshape", packed, split_shape)
    return [b.op("Reshape", b.op("Transpose", grouped, perm=[0, 2, 1, 3, 4]), _shape(b, x))]


# --- Resize ------------------------------------------------------------------------------------------------------

@rule("Resize", "Upsample", inputs=(0,))
def resize(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    x, g = node.inputs[0], grads[0] or ""
    if node.op_type == "Upsample":  # opset 7-9: scales as attribute or input 1; floor-nearest, asymmetric
        roi, scales, sizes = None, _float_input(b, node, 1, "scales"), None
        attrs = {"mode": node.attr("mode", "nearest"), "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"}
    else:
        roi, scales, sizes = node.input(1), node.input(2), node.input(3)
        attrs = {a: node.attr(a) for a in ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                                           "exclude_outside", "antialias")}
    if sizes is not None:
        scales = None  # opset 11-12 pass an empty scales tensor beside sizes
    rank = _rank(b, node, x, *(() if node.attr("axes") else (scales, sizes)))
    nearest = attrs["mode"] in (None, "nearest")
    coord = attrs["coordinate_transformation_mode"] or "half_pixel"
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch" or (
            coord == "tf_half_pixel_for_nn" and not nearest):
        raise GradientError(f"no gradient for Resize node '{node.name}' with keep_aspect_ratio_policy="
                            f"{node.attr('keep_aspect_ratio_policy')!r}, coordinate_transformation_mode={coord!r} "
                            f"and mode={attrs['mode']!r}; pick a layer after it")
    listed = [a % rank for a in node.attr("axes") or range(rank)]
    for position, axis in enumerate(listed):
        if not _resize_keeps(b, node, axis, position, scales, sizes, coord):
            basis = _resize_basis(b, x, axis, position, len(listed), (roi, scales, sizes), attrs, nearest, coord)
            g = _along(b, g, b.cast_like(basis, x), axis, rank)
    return [g]


def _float_input(b: Builder, node: Node, index: int, attr: str) -> str | None:
    name = node.input(index)
    if name is None and node.attr(attr) is not None:
        name = b.const(np.asarray(node.attr(attr), np.float32))
    return name


def _resize_keeps(b: Builder, node: Node, axis: int, position: int, scales: str | None, sizes: str | None,
                  coord: str) -> bool:
    """Whether Resize provably leaves this axis alone (so its gradient needs no work)."""
    if coord in ("tf_half_pixel_for_nn", "tf_crop_and_resize"):
        return False
    before = _dim(b, node.inputs[0], axis)
    if sizes is not None:
        value = b.constant_value(sizes)
        after = _dim(b, node.outputs[0], axis) if value is None else int(value[position])
        return before is not None and before == after
    value = b.constant_value(scales) if scales is not None else None
    return value is not None and value.size > position and float(value[position]) == 1.0


def _resize_basis(b: Builder, x: str, axis: int, position: int, count: int,
                  inputs: tuple[str | None, str | None, str | None], attrs: dict, nearest: bool, coord: str) -> str:
    """The (in, out) matrix of Resize along one axis: row i is how input element i spreads over the output.

    The same Resize runs on a 2-D tensor whose first axis is left alone: an identity (row i is e_i), or for nearest
    a single row of indices (the output names the index it copied). Either way the second axis is resized exactly
    as the forward resizes `axis`.
    """
    roi, scales, sizes = inputs
    n = _dim(b, x, axis)
    length = b.ints([n]) if isinstance(n, int) else b.op("Gather", b.op("Shape", x), b.ints([axis]))
    if nearest:
        indices = b.op("Cast", b.op("Range", b.const(0, np.int64), b.op("Reshape", length, b.ints([])),
                                    b.const(1, np.int64)), to=TensorProto.FLOAT)
        data, lead = b.op("Reshape", indices, b.ints([1, -1])), b.ints([1])
    else:
        data, lead = b.op("EyeLike", b.op("ConstantOfShape", b.op("Concat", length, length, axis=0))), length

    def pick(t: str, index: int) -> str:
        return b.op("Slice", t, b.ints([index]), b.ints([index + 1]))

    basis_scales = b.op("Concat", b.const([1.0], np.float32), pick(scales, position), axis=0) if scales else None
    basis_sizes = b.op("Concat", lead, pick(sizes, position), axis=0) if sizes else None
    basis_roi = None
    if coord == "tf_crop_and_resize" and roi is not None:  # the first axis keeps its full extent [0, 1]
        zero, one = b.const([0.0], b.np_dtype(roi)), b.const([1.0], b.np_dtype(roi))
        basis_roi = b.op("Concat", zero, pick(roi, position), one, pick(roi, count + position), axis=0)
    # extrapolated outputs (tf_crop_and_resize) do not depend on the input: a row of zeros / an impossible index
    resized = _op(b, "Resize", data, basis_roi, basis_scales, basis_sizes, extrapolation_value=-1.0 if nearest else 0.0,
                   **{k: v for k, v in attrs.items() if v is not None})
    if not nearest:
        return resized
    column = b.op("Transpose", data)
    return b.op("Cast", b.op("Equal", column, resized), to=TensorProto.FLOAT)


def _along(b: Builder, g: str, basis: str, axis: int, rank: int) -> str:
    """sum_j basis[i, j] g[..., j, ...] along `axis`."""
    if axis == rank - 2:
        return b.op("MatMul", basis, g)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = g if axis == rank - 1 else b.op("Transpose", g, perm=perm)
    product = b.op("MatMul", moved, b.op("Transpose", basis))
    return product if axis == rank - 1 else b.op("Transpose", product, perm=perm)
