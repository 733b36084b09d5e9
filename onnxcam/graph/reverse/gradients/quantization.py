"""Quantisation ops: QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear.

The gradient with respect to an integer (or float8) tensor q is float32 and counted per quantisation step of q:
- DequantizeLinear y = (q - zero_point) * scale is linear in q: dy/dq = scale, exact.
- QuantizeLinear q = saturate(round(x / scale) + zero_point) is a straight-through estimator: rounding is taken
  as the identity, so dq/dx = 1 / scale where x / scale + zero_point lies in [qmin, qmax] of the output type and
  0 outside, where the value saturates. A Quantize -> Dequantize pair therefore passes the gradient unchanged
  where the value is representable and stops it where it clips, as the clipped float model would.
- DynamicQuantizeLinear is the same estimator with the uint8 range and the scale and zero point it chose for the
  run, held constant (they depend on the batch's minimum and maximum; only those extreme values can saturate).

Scales and zero points are per tensor (a scalar or one element), per axis (a 1-D tensor along `axis`) or per
block (`block_size`, opset 21: one scale for every block_size elements along `axis`).
"""

from __future__ import annotations

import numpy as np

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.protos import TensorProto, from_array, type_name
from onnxcam.graph.reverse.gradients import Grads, Node, rule

T = TensorProto

# [qmin, qmax] of each quantised type (float8 and float4: the largest finite magnitude, where they saturate).
QUANTIZED_RANGES: dict[int, tuple[float, float]] = {
    T.UINT8: (0, 255), T.INT8: (-128, 127), T.UINT16: (0, 65535), T.INT16: (-32768, 32767),
    T.UINT4: (0, 15), T.INT4: (-8, 7), T.INT32: (-(2**31), 2**31 - 1),
    T.FLOAT8E4M3FN: (-448, 448), T.FLOAT8E4M3FNUZ: (-240, 240), T.FLOAT8E5M2: (-57344, 57344),
    T.FLOAT8E5M2FNUZ: (-57344, 57344),
}
for _name, _range in (("UINT2", (0, 3)), ("INT2", (-2, 1)), ("FLOAT4E2M1", (-6, 6))):
    if hasattr(T, _name):  # newer onnx releases only
        QUANTIZED_RANGES[getattr(T, _name)] = _range

# Quantisation ops run by onnxruntime in its own domain too, with the same meaning (int4/int16 before opset 21).
QUANTIZATION_DOMAINS = ("", "ai.onnx", "com.microsoft")


def _float32(b: Builder, x: str) -> str:
    if b.elem_type(x) == T.FLOAT:
        return x
    cast = b.op("Cast", x, to=T.FLOAT)
    b.set_shape(cast, b.static_shape(x), T.FLOAT)
    return cast


def quantized_type(b: Builder, node: Node) -> int:
    """The element type QuantizeLinear produces: its zero point's, else `output_dtype`, else uint8."""
    zero_point = node.input(2)
    if zero_point is not None:
        return b.elem_type(zero_point)
    return int(node.attr("output_dtype", 0)) or T.UINT8


def along_axis(b: Builder, node: Node, param: str, x: str) -> str:
    """`param` (a scale or zero point) shaped to broadcast against `x`: per tensor as it is, per axis as a column
    along `axis`, per block repeated `block_size` times along `axis`."""
    shape = b.static_shape(param)
    block = int(node.attr("block_size", 0))
    if block > 0:
        return _repeat_blocks(b, node, param, x, block)
    if shape is not None and int(np.prod([d if isinstance(d, int) else 2 for d in shape])) == 1:
        return param  # one value for the whole tensor
    axis = int(node.attr("axis", 1))
    if axis < 0:
        trailing = -axis - 1
    else:
        rank = b.rank(x)
        if rank is None:
            return _column_dynamic(b, param, x, axis)
        trailing = rank - axis - 1
    return b.op("Reshape", param, b.ints([-1] + [1] * trailing))


def _column_dynamic(b: Builder, param: str, x: str, axis: int) -> str:
    """Reshape to [-1, 1, ..., 1] with rank(x) - axis - 1 ones, the rank known only at run time."""
    trailing = b.op("Sub", b.op("Size", b.op("Shape", x)), b.ints([axis + 1]))
    ones = b.op("ConstantOfShape", trailing, value=from_array(np.ones(1, np.int64)))
    return b.op("Reshape", param, b.op("Concat", b.ints([-1]), ones, axis=0))


def _repeat_blocks(b: Builder, node: Node, param: str, x: str, block: int) -> str:
    """Blocked quantisation: param has x's rank with ceil(d / block) entries along `axis`; repeat each entry
    `block` times along that axis and cut to x's length."""
    rank = b.rank(x)
    if rank is None:
        raise GradientError(f"node '{node.name}' ({node.op_type}): blocked quantisation of a tensor of unknown rank; "
                            "run onnx shape inference on the model first")
    axis = int(node.attr("axis", 1)) % rank
    column = b.unsqueeze(param, [axis + 1])
    expanded = b.op("Expand", column, b.ints([1] * (axis + 1) + [block] + [1] * (rank - axis - 1)))
    param_shape = b.op("Shape", param)
    merged_shape = b.op("Concat", b.op("Slice", param_shape, b.ints([0]), b.ints([axis])), b.ints([-1]),
                        b.op("Slice", param_shape, b.ints([axis + 1]), b.ints([rank])), axis=0)
    merged = b.op("Reshape", expanded, merged_shape)
    length = b.op("Slice", b.op("Shape", x), b.ints([axis]), b.ints([axis + 1]))
    return b.op("Slice", merged, b.ints([0]), length, b.ints([axis]))


@rule("DequantizeLinear", inputs=(0,), domains=QUANTIZATION_DOMAINS)
def dequantize(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """y = (q - zero_point) * scale: dy/dq = scale."""
    scale, y = node.inputs[1], node.outputs[0]  # y has q's shape, and a type every Shape kernel takes (not int4)
    g = grads[0]
    assert g is not None
    return [b.op("Mul", _float32(b, g), along_axis(b, node, _float32(b, scale), y))]


@rule("QuantizeLinear", inputs=(0,), integer_outputs=True, domains=QUANTIZATION_DOMAINS)
def quantize(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """Straight-through: dq/dx = 1 / scale where x / scale + zero_point is inside [qmin, qmax], 0 outside."""
    qtype = quantized_type(b, node)
    if qtype not in QUANTIZED_RANGES:
        name = type_name(qtype)
        raise GradientError(f"node '{node.name}' (QuantizeLinear) produces {name}, a type with no known range; "
                            "use a gradient-free method (eigencam, scorecam, ablationcam)")
    x, scale, zero_point = node.inputs[0], node.inputs[1], node.input(2)
    scale32 = along_axis(b, node, _float32(b, scale), x)
    zero32 = along_axis(b, node, _float32(b, zero_point), x) if zero_point is not None else None
    return [_straight_through(b, grads[0], x, scale32, zero32, QUANTIZED_RANGES[qtype])]


@rule("DynamicQuantizeLinear", inputs=(0,), integer_outputs=True)
def dynamic_quantize(b: Builder, node: Node, grads: list[str | None]) -> Grads:
    """uint8 with a scale and zero point chosen per run so that the range covers the values; the extreme values
    can still round just outside it. The scale and zero point are held constant."""
    if grads[0] is None:  # only the scale or zero point carries gradient
        return [None]
    zero32 = _float32(b, node.outputs[2])
    return [_straight_through(b, grads[0], node.inputs[0], node.outputs[1], zero32, QUANTIZED_RANGES[T.UINT8])]


def _straight_through(b: Builder, g: str | None, x: str, scale: str, zero_point: str | None,
                      bounds: tuple[float, float]) -> str:
    """g / scale where qmin <= x / scale + zero_point <= qmax, else 0, in x's element type."""
    assert g is not None
    level = b.op("Div", _float32(b, x), scale)
    if zero_point is not None:
        level = b.op("Add", level, zero_point)
    inside = b.op("And", b.op("GreaterOrEqual", level, b.const(np.float32(bounds[0]))),
                  b.op("LessOrEqual", level, b.const(np.float32(bounds[1]))))
    step = b.op("Div", _float32(b, g), scale)
    return b.cast_like(b.op("Where", inside, step, b.const(np.float32(0.0))), x)
