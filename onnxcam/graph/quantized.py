"""Integer (QOperator) models rewritten as DequantizeLinear -> float op -> QuantizeLinear.

onnxruntime's quantizer in QOperator format, its dynamic quantisation and several vendor toolkits compute with
integer ops (QLinearConv, QLinearMatMul, com.microsoft QGemm / QLinearAdd / ..., ConvInteger, MatMulInteger).
No gradient and no float activation can be read from those. `dequantize_operators` replaces each such node by the
float op it stands for, between DequantizeLinear and QuantizeLinear nodes that use the node's own scales and zero
points. Then:
- every quantised tensor a rewritten node reads has a float view, its DequantizeLinear output `<name>_dequantized`:
  the value the op computes with, and the tensor CAM methods read as a layer;
- gradients follow the quantisation rules (graph/reverse/gradients/quantization.py): exact through DequantizeLinear
  and the
  float op, straight-through at QuantizeLinear.
The integer outputs keep their names and types (except ConvInteger / MatMulInteger whose int32 results only feed
Casts: they become float, the same values), so nodes left alone still read what they read before. The rewritten
graph computes what the integer kernels compute (bit for bit on the tests' networks without graph optimisation;
with it, onnxruntime fuses the DequantizeLinear -> op -> QuantizeLinear patterns back into the same integer
kernels, and the shipped pairs' outputs are identical to the original files').

Integer ops with no float equivalent here (QAttention, DynamicQuantizeLSTM, MatMulNBits, ...) stay as they are;
the reverse walker names them when a gradient must cross one, and gradient-free methods still work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnxcam.errors import ModelError
from onnxcam.graph.protos import (
    GraphProto,
    ModelProto,
    NodeProto,
    TensorProto,
    attribute_value,
    from_array,
    make_node,
    to_array,
)

T = TensorProto
# Element types QuantizeLinear / DequantizeLinear take in the default domain before opset 21 (int32: biases).
_DEFAULT_DOMAIN_TYPES = {T.UINT8, T.INT8, T.INT32}
# Ops that move or select integer values without arithmetic (the quantizer leaves them on integer tensors).
_VALUE_PRESERVING = {"MaxPool", "GlobalMaxPool", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                     "Identity", "Resize", "Slice", "DepthToSpace", "SpaceToDepth", "Split", "Gather", "Expand",
                     "Tile", "Pad"}


class _Rewrite:
    """State of one pass: the emitted nodes, names in use, float views made so far and the quantisation
    parameters (scale, zero point) known for integer tensors."""

    def __init__(self, model: ModelProto) -> None:
        graph = model.graph
        self.opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.names = ({i.name for i in graph.input} | {t.name for t in graph.initializer}
                      | {o for n in graph.node for o in n.output})
        self.constants = {t.name: t for t in graph.initializer}
        self.types = {v.name: v.type.tensor_type.elem_type for v in
                      [*graph.input, *graph.value_info, *graph.output] if v.type.tensor_type.elem_type}
        self.types.update({t.name: t.data_type for t in graph.initializer})
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.views: dict[tuple[str, str, str, int | None], str] = {}
        self.params: dict[str, tuple[str, str]] = {}   # integer tensor -> (scale, zero point), per tensor only
        self.retyped: set[str] = set()                  # outputs whose element type changed (stale value_info)
        self.unit_scales: dict[tuple[int, ...], str] = {}

    # --- names and emission --------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        name, count = hint, 1
        while name in self.names:
            count += 1
            name = f"{hint}_{count}"
        self.names.add(name)
        return name

    def emit(self, op_type: str, inputs: list[str], output: str | None = None, hint: str = "",
             domain: str = "", **attrs: Any) -> str:
        out = output if output is not None else self.fresh(hint or op_type)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(make_node(op_type, inputs, [out], name=self.fresh(f"onnxcam_dq/{out}"),
                                    domain=domain or None, **attrs))
        return out

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        tensor = from_array(value, name)
        self.initializers.append(tensor)
        self.constants[name] = tensor
        self.types[name] = tensor.data_type
        return name

    def elem_type(self, name: str, default: int = T.UINT8) -> int:
        return self.types.get(name, default)

    def _qdq_domain(self, quantized: str) -> str:
        """Default-domain Q/DQ take 16-bit, 4-bit and float8 types from opset 21; onnxruntime's own before."""
        return "" if self.opset >= 21 or self.elem_type(quantized) in _DEFAULT_DOMAIN_TYPES else "com.microsoft"

    # --- quantisation --------------------------------------------------------------------------------------------
    def dequantized(self, quantized: str, scale: str, zero_point: str | None, axis: int | None = None,
                    suffix: str = "_dequantized") -> str:
        """The float view of an integer tensor, `<name><suffix>` (one DequantizeLinear per tensor and parameters)."""
        key = (quantized, scale, zero_point or "", axis)
        if key not in self.views:
            inputs = [quantized, scale] + ([zero_point] if zero_point else [])
            self.views[key] = self.emit("DequantizeLinear", inputs, self.fresh(quantized + suffix),
                                        domain=self._qdq_domain(quantized), axis=axis)
            self.types[self.views[key]] = self.elem_type(scale, T.FLOAT)
        return self.views[key]

    def requantize(self, value: str, output: str, scale: str, zero_point: str | None) -> None:
        """output = QuantizeLinear(value): the node's integer output keeps its name, type and meaning."""
        if zero_point:
            self.types[output] = self.elem_type(zero_point)
        inputs = [value, scale] + ([zero_point] if zero_point else [])
        self.emit("QuantizeLinear", inputs, output, domain=self._qdq_domain(output))
        self.params[output] = (scale, zero_point or "")

    def per_axis(self, scale: str) -> bool:
        """Whether a scale holds more than one value (per-channel / per-row / per-column quantisation)."""
        tensor = self.constants.get(scale)
        return tensor is not None and int(np.prod(tensor.dims)) > 1

    def unit_scale(self, zero_point: str | None) -> str:
        """Scale 1 shaped like `zero_point`: DequantizeLinear(q, 1, zp) = q - zp, the integer op's own operand."""
        tensor = self.constants.get(zero_point or "")
        shape = tuple(tensor.dims) if tensor is not None else ()
        if shape not in self.unit_scales:
            self.unit_scales[shape] = self.const(np.ones(shape, np.float32), "onnxcam_dq/unit_scale")
        return self.unit_scales[shape]

    def integer_operand(self, quantized: str, zero_point: str | None, axis: int) -> str:
        """q - zero_point in float (ConvInteger's and MatMulInteger's operands, exact)."""
        scale = self.unit_scale(zero_point)
        return self.dequantized(quantized, scale, zero_point, axis if self.per_axis(scale) else None,
                                "_minus_zero_point")

    def bias(self, bias: str | None, input_scale: str, weight_scale: str) -> str | None:
        """An int32 bias in units of input_scale * weight_scale (per output channel where the weights are), as
        DequantizeLinear: the pattern QDQ models have, which onnxruntime fuses into its integer kernels."""
        if not bias:
            return None
        scale = self.emit("Mul", [input_scale, weight_scale], hint=f"{bias}_scale")
        return self.dequantized(bias, scale, None, 0 if self.per_axis(weight_scale) else None)

    def float_output(self, value: str, output: str) -> None:
        """An integer op's int32 result computed in float (by the node just emitted): it takes the output's name
        when only Casts read it (they accept float), else it is cast back to int32."""
        consumers = self.consumers.get(output, [])
        if output not in self.outputs and all(c.op_type == "Cast" for c in consumers) \
                and self.nodes[-1].output[0] == value:
            self.nodes[-1].output[0] = output
            self.names.add(output)
            self.retyped.add(output)
            self.types[output] = T.FLOAT
        else:
            self.emit("Cast", [value], output, to=T.INT32)


def attributes(node: NodeProto, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {a.name: attribute_value(a) for a in node.attribute if a.name not in drop}


def _input(node: NodeProto, index: int) -> str | None:
    return node.input[index] if index < len(node.input) and node.input[index] else None


def _args(node: NodeProto, count: int, required: tuple[int, ...]) -> list[str]:
    """The node's first `count` inputs, "" for an omitted optional one; a missing required one is an error."""
    args = [_input(node, i) or "" for i in range(count)]
    missing = [i for i in required if not args[i]]
    if missing:
        raise ModelError(f"node '{node.name}' ({node.op_type}) lacks its required input {missing[0]}; the model is "
                         "invalid: re-export or re-quantize it")
    return args


Handler = Callable[[_Rewrite, NodeProto], bool]
HANDLERS: dict[str, Handler] = {}


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = fn
        return fn
    return register


def _to_channels_first(rw: _Rewrite, x: str, rank: int) -> str:
    return rw.emit("Transpose", [x], hint=f"{x}_nchw", perm=[0, rank - 1, *range(1, rank - 1)])


def _to_channels_last(rw: _Rewrite, x: str, rank: int, output: str | None = None) -> str:
    return rw.emit("Transpose", [x], output, hint=f"{x}_nhwc", perm=[0, *range(2, rank), 1])


def _float_op(rw: _Rewrite, node: NodeProto, op_type: str, inputs: list[str | None], scale: str | None,
              zero_point: str | None, channels_last_rank: int | None = None, **attrs: Any) -> None:
    """Emit op_type(inputs) in float and quantise it to the node's output (or leave it float when the node has
    no output scale, as QGemm without y_scale)."""
    output = node.output[0]
    args = [i or "" for i in inputs]
    while args and not args[-1]:
        args.pop()
    if channels_last_rank:
        args[0] = _to_channels_first(rw, args[0], channels_last_rank)
    value = rw.emit(op_type, args, hint=f"{output}_float", **attrs)
    if channels_last_rank:
        value = _to_channels_last(rw, value, channels_last_rank)
    if scale is None:
        rw.nodes[-1].output[0] = output
        rw.types[output] = T.FLOAT
        return
    rw.requantize(value, output, scale, zero_point)


@handles("QLinearConv")
def _qlinear_conv(rw: _Rewrite, node: NodeProto) -> bool:
    x, xs, xzp, w, ws, wzp, ys, yzp = _args(node, 8, (0, 1, 2, 3, 4, 5, 6, 7))
    rank = len(rw.constants[w].dims) if w in rw.constants else 4
    weights = rw.dequantized(w, ws, wzp, 0 if rw.per_axis(ws) else None)
    bias = rw.bias(_input(node, 8), xs, ws)
    channels_last = rank if attributes(node).get("channels_last", 0) else None
    _float_op(rw, node, "Conv", [rw.dequantized(x, xs, xzp), weights, bias], ys, yzp, channels_last,
              **attributes(node, ("channels_last",)))
    return True


@handles("QLinearMatMul")
def _qlinear_matmul(rw: _Rewrite, node: NodeProto) -> bool:
    a, as_, azp, b, bs, bzp, ys, yzp = _args(node, 8, (0, 1, 2, 3, 4, 5, 6, 7))
    left = rw.dequantized(a, as_, azp, -2 if rw.per_axis(as_) else None)   # per row
    right = rw.dequantized(b, bs, bzp, -1 if rw.per_axis(bs) else None)    # per column
    _float_op(rw, node, "MatMul", [left, right], ys, yzp)
    return True


@handles("QGemm")
def _qgemm(rw: _Rewrite, node: NodeProto) -> bool:
    """Y = alpha * (A' B' + C), with C an int32 bias in units of a_scale * b_scale (onnxruntime's kernel scales
    the bias by alpha too); Y float without y_scale."""
    a, as_, azp, b, bs, bzp, c, ys, yzp = _args(node, 9, (0, 1, 2, 3, 4, 5))
    attrs = attributes(node)
    axis = 0 if attrs.get("transB", 0) else 1  # per output column
    left = rw.dequantized(a, as_, azp)
    right = rw.dequantized(b, bs, bzp, axis if rw.per_axis(bs) else None)
    _float_op(rw, node, "Gemm", [left, right, rw.bias(c, as_, bs)], ys, yzp, beta=attrs.get("alpha", 1.0), **attrs)
    return True


@handles("QLinearAdd", "QLinearMul")
def _qlinear_binary(rw: _Rewrite, node: NodeProto) -> bool:
    a, as_, azp, b, bs, bzp, cs, czp = _args(node, 8, (0, 1, 3, 4, 6))
    op_type = node.op_type.removeprefix("QLinear")
    _float_op(rw, node, op_type, [rw.dequantized(a, as_, azp), rw.dequantized(b, bs, bzp)], cs, czp)
    return True


# Single-input QLinear ops: (X, X_scale, X_zero_point, Y_scale, Y_zero_point) -> float op, attributes kept.
_UNARY = {"QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearAveragePool": "AveragePool",
          "QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu", "QLinearSoftmax": "Softmax",
          "QLinearReduceMean": "ReduceMean"}


@handles(*_UNARY)
def _qlinear_unary(rw: _Rewrite, node: NodeProto) -> bool:
    x, xs, xzp, ys, yzp = _args(node, 5, (0, 1, 3))
    attrs = attributes(node, ("channels_last", "opset"))
    if node.op_type == "QLinearSoftmax" and attributes(node).get("opset", 13) < 13:
        return False  # softmax over flattened trailing axes: not rewritten
    inputs: list[str | None] = [rw.dequantized(x, xs, xzp)]
    if node.op_type == "QLinearReduceMean" and rw.opset >= 18 and "axes" in attrs:
        inputs.append(rw.const(np.asarray(attrs.pop("axes"), np.int64), f"{node.output[0]}_axes"))
    channels_last = None
    if attributes(node).get("channels_last", 0):
        channels_last = len(attrs["kernel_shape"]) + 2 if "kernel_shape" in attrs else 4
    _float_op(rw, node, _UNARY[node.op_type], inputs, ys, yzp, channels_last, **attrs)
    return True


@handles("QLinearConcat")
def _qlinear_concat(rw: _Rewrite, node: NodeProto) -> bool:
    args = _args(node, len(node.input), tuple(range(len(node.input))))  # Y_scale, Y_zero_point, (X, scale, zp)...
    parts = [rw.dequantized(args[i], args[i + 1], args[i + 2]) for i in range(2, len(args) - 2, 3)]
    _float_op(rw, node, "Concat", list(parts), args[0], args[1], **attributes(node))
    return True


@handles("QLinearWhere")
def _qlinear_where(rw: _Rewrite, node: NodeProto) -> bool:
    condition, x, xs, xzp, y, ys, yzp, zs, zzp = _args(node, 9, (0, 1, 2, 3, 4, 5, 6, 7, 8))
    _float_op(rw, node, "Where", [condition, rw.dequantized(x, xs, xzp), rw.dequantized(y, ys, yzp)], zs, zzp)
    return True


@handles("ConvInteger")
def _conv_integer(rw: _Rewrite, node: NodeProto) -> bool:
    """(x - x_zero_point) conv (w - w_zero_point) in float: int32-exact while the sums stay below 2^24."""
    x, w, xzp, wzp = _args(node, 4, (0, 1))
    value = rw.emit("Conv", [rw.integer_operand(x, xzp, 1), rw.integer_operand(w, wzp, 0)],
                    hint=f"{node.output[0]}_float", **attributes(node))
    rw.float_output(value, node.output[0])
    return True


@handles("MatMulInteger")
def _matmul_integer(rw: _Rewrite, node: NodeProto) -> bool:
    a, b, azp, bzp = _args(node, 4, (0, 1))
    value = rw.emit("MatMul", [rw.integer_operand(a, azp, -2), rw.integer_operand(b, bzp, -1)],
                    hint=f"{node.output[0]}_float")
    rw.float_output(value, node.output[0])
    return True


def _float_matmul(rw: _Rewrite, node: NodeProto, left: str, right: str, bias: str | None) -> None:
    """The float MatMul (plus bias) that an integer matmul with float output stands for."""
    if bias:
        product = rw.emit("MatMul", [left, right], hint=f"{node.output[0]}_product")
        _float_op(rw, node, "Add", [product, bias], None, None)
    else:
        _float_op(rw, node, "MatMul", [left, right], None, None)


@handles("MatMulIntegerToFloat")
def _matmul_integer_to_float(rw: _Rewrite, node: NodeProto) -> bool:
    a, b, as_, bs, azp, bzp, bias = _args(node, 7, (0, 1, 2, 3))
    left = rw.dequantized(a, as_, azp, -2 if rw.per_axis(as_) else None)
    right = rw.dequantized(b, bs, bzp, -1 if rw.per_axis(bs) else None)
    _float_matmul(rw, node, left, right, bias)
    return True


@handles("DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(rw: _Rewrite, node: NodeProto) -> bool:
    """A is quantised to uint8 per call: DynamicQuantizeLinear, its float view, then a float MatMul."""
    a, b, bs, bzp, bias = _args(node, 5, (0, 1, 2))
    q, scale, zero_point = (rw.fresh(f"{a}{suffix}") for suffix in ("_quantized", "_scale", "_zero_point"))
    rw.nodes.append(make_node("DynamicQuantizeLinear", [a], [q, scale, zero_point],
                              name=rw.fresh(f"onnxcam_dq/{q}")))
    rw.types.update({q: T.UINT8, scale: T.FLOAT, zero_point: T.UINT8})
    left = rw.dequantized(q, scale, zero_point)
    right = rw.dequantized(b, bs, bzp, -1 if rw.per_axis(bs) else None)
    _float_matmul(rw, node, left, right, bias)
    return True


def _value_preserving(rw: _Rewrite, node: NodeProto) -> bool:
    """A movement/selection op on an integer tensor with known per-tensor parameters: the same op on its float
    view, quantised back with the same parameters (exact: no value changes)."""
    source = _input(node, 0)
    if source is None or source not in rw.params or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        return False  # the indices output stays with the integer op
    scale, zero_point = rw.params[source]
    inputs = [rw.dequantized(source, scale, zero_point or None)] + list(node.input[1:])
    if node.op_type == "Pad" and _input(node, 2):  # the pad value is an integer of the same quantisation
        inputs[2] = rw.dequantized(inputs[2], scale, zero_point or None)
    outputs = [o for o in node.output]
    floats = [rw.fresh(f"{o}_float") if o else "" for o in outputs]
    rw.nodes.append(make_node(node.op_type, inputs, floats, name=rw.fresh(f"onnxcam_dq/{node.name}"),
                              **attributes(node)))
    for value, output in zip(floats, outputs):
        if output:
            rw.types[output] = rw.elem_type(source)
            rw.requantize(value, output, scale, zero_point or None)
    return True


def _record_params(rw: _Rewrite, node: NodeProto) -> None:
    """Per-tensor (scale, zero point) of integer tensors made by nodes that are kept."""
    if node.op_type == "QuantizeLinear" and _input(node, 1) and not rw.per_axis(node.input[1]):
        rw.params[node.output[0]] = (node.input[1], _input(node, 2) or "")
    elif node.op_type == "DynamicQuantizeLinear":
        rw.params[node.output[0]] = (node.output[1], node.output[2])


def is_quantized_operator(node: NodeProto) -> bool:
    return node.op_type in HANDLERS and node.domain in ("", "ai.onnx", "com.microsoft")


def dequantize_operators(model: ModelProto) -> bool:
    """Rewrite the model's integer ops in place (see the module doc); returns whether anything changed."""
    graph = model.graph
    quantized = {"QuantizeLinear", "DynamicQuantizeLinear"}
    if not any(is_quantized_operator(n) or n.op_type in quantized for n in graph.node):
        return False  # a float model: nothing to look at
    rw = _Rewrite(model)
    changed = False
    for node in graph.node:
        before = len(rw.nodes)
        done = False
        if is_quantized_operator(node):
            done = HANDLERS[node.op_type](rw, node)
        elif node.op_type in _VALUE_PRESERVING:
            done = _value_preserving(rw, node)
        if not done:
            del rw.nodes[before:]
            rw.nodes.append(node)
            _record_params(rw, node)
        changed = changed or done
    if changed:
        del graph.node[:]
        graph.node.extend(rw.nodes)
        graph.initializer.extend(rw.initializers)
        stale = [v for v in graph.value_info if v.name in rw.retyped]
        for value in stale:
            graph.value_info.remove(value)
    return changed


# --- quantised weights -------------------------------------------------------------------------------------------
# Weights stay DequantizeLinear(int8 initializer) nodes (onnxruntime fuses them into its integer kernels, so the
# forward pass is the deployed one); code that needs a weight's value reads it through these helpers.
def dequantized_constant(graph: GraphProto, initializers: dict[str, TensorProto],
                         name: str) -> np.ndarray | None:
    """The value of `name` when a DequantizeLinear of initializers makes it (a quantised weight), else None."""
    node = next((n for n in graph.node if n.output and n.output[0] == name), None)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    inputs = [i for i in node.input if i]
    if not all(i in initializers for i in inputs):
        return None
    q, scale, *zero_point = (to_array(initializers[i]) for i in inputs)
    return dequantize_array(node, q, scale, zero_point[0] if zero_point else None)


def constant_array(model: ModelProto, name: str) -> np.ndarray | None:
    """An initializer's value, or a quantised weight's dequantised value; None for computed tensors."""
    initializers = {t.name: t for t in model.graph.initializer}
    if name in initializers:
        return to_array(initializers[name])
    return dequantized_constant(model.graph, initializers, name)


def dequantize_array(node: NodeProto, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None
                     ) -> np.ndarray:
    """(q - zero_point) * scale as DequantizeLinear `node` computes it (per tensor, axis or block)."""
    levels = q.astype(np.float64)
    if zero_point is not None:
        levels = levels - _spread(node, zero_point.astype(np.float64), q.shape)
    return (levels * _spread(node, scale.astype(np.float64), q.shape)).astype(scale.dtype)


def _spread(node: NodeProto, param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point broadcastable against a tensor of `shape`."""
    if param.size == 1:
        return param.reshape(())
    attrs = attributes(node)
    axis = int(attrs.get("axis", 1)) % len(shape)
    block = int(attrs.get("block_size", 0))
    if block:
        return np.repeat(param, block, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = -1
    return param.reshape(view)


# --- saturation ------------------------------------------------------------------------------------------------
def is_quantized(model: ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node)


def saturated_images(activations: dict[str, np.ndarray], gradients: dict[str, np.ndarray], seed: np.ndarray,
                     class_scores: bool) -> list[int]:
    """Images where, at every layer, no element has both an activation and a gradient, although a score was asked
    for: in a quantised model, every path from the active features to the score crosses a QuantizeLinear that
    clips (its calibrated range is too narrow for these images), the straight-through gradient is exactly zero
    there, and gradient maps are all zero."""
    if not gradients:
        return []
    asked = np.ones(len(seed), bool) if class_scores else np.abs(seed.reshape(len(seed), -1)).max(axis=1) > 0
    flat = np.ones(len(seed), bool)
    for name, grad in gradients.items():
        carried = (np.asarray(grad) != 0) & (np.asarray(activations[name]) != 0)
        flat &= ~carried.reshape(len(seed), -1).any(axis=1)
    return [int(i) for i in np.flatnonzero(flat & asked)]


def saturation_warning(images: list[int], layers: list[str]) -> str:
    shown = ", ".join(str(i) for i in images[:8]) + (", ..." if len(images) > 8 else "")
    return (f"image(s) {shown}: the gradient at {', '.join(repr(n) for n in layers)} is zero wherever the "
            "features are active because the quantised model saturates (a QuantizeLinear clips every path to the "
            "score: its calibration range is too narrow for these images), so gradient maps are all zero; "
            "recalibrate with images like these, or use a gradient-free method (eigencam, scorecam, ablationcam)")


# --- shape inference ---------------------------------------------------------------------------------------------
def infer_across_contrib_quantization(model: ModelProto,
                                      infer: Callable[[ModelProto], ModelProto]) -> ModelProto:
    """`infer(model)` (onnx shape inference), also past onnxruntime's com.microsoft QuantizeLinear and
    DequantizeLinear (int4 and int16 before opset 21), which onnx does not know: shapes are inferred on a copy
    where they are Identity, then their outputs get their real element types back."""
    contrib = [n for n in model.graph.node
               if n.domain == "com.microsoft" and n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not contrib:
        return infer(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    proxy = ModelProto()
    proxy.CopyFrom(model)
    real_types: dict[str, int] = {}
    for node in proxy.graph.node:
        if node.domain == "com.microsoft" and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if node.op_type == "QuantizeLinear":
                zero_point = _input(node, 2)
                real_types[node.output[0]] = types.get(zero_point, T.UINT8) if zero_point else T.UINT8
            else:
                real_types[node.output[0]] = types.get(node.input[1], T.FLOAT)
            source = node.input[0]
            del node.input[:], node.attribute[:]
            node.input.append(source)
            node.op_type, node.domain = "Identity", ""
    inferred = infer(proxy)
    result = ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    for value in inferred.graph.value_info:
        if value.name in real_types:
            value.type.tensor_type.elem_type = real_types[value.name]
        result.graph.value_info.append(value)
    return result
