"""Quantised and float16 models: straight-through gradients, the QOperator rewrite, and maps of the shipped pairs.

Gradients of a quantised model are checked against float64 finite differences of its straight-through reference:
the same graph with every QuantizeLinear replaced by clip(x / scale + zero_point, qmin, qmax) + r, where r is the
rounding the quantiser applied at the point of evaluation (a constant, read back from onnxruntime's run), and
every DequantizeLinear by (q - zero_point) * scale. At that point the reference computes exactly what the
quantised model computes, and its derivative is what the straight-through estimator claims: identity inside the
representable range, zero outside (the rounding is added after the clip: a value rounded onto qmin or qmax is
still inside the range).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import to_float64
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxcam
from onnxcam.errors import GradientError, ModelError
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.gradients.quantization import QUANTIZED_RANGES
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, expose, gradient_model
from onnxcam.images import preprocess, read_image, resolve_preprocessing
from onnxcam.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
IMAGES = sorted((ROOT / "examples" / "images").glob("*.png"))
GRADIENT_METHODS = sorted(m.name for m in METHODS.values()
                          if m.needs in ("gradients", "input_gradient") or m.name == "smoothgradcam++")
CPU = ["CPUExecutionProvider"]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session without graph optimisations: every Quantize/Dequantize runs as written, so the checks compare
    one arithmetic (onnxruntime's fused integer kernels round the requantisation their own way, and its basic
    optimisations already change int16 QDQ convolutions by about 1%)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=CPU)


# --- the straight-through reference ------------------------------------------------------------------------------
def _along(node: onnx.NodeProto, param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point broadcast to `shape`, per tensor, per axis or per block (the ONNX rules)."""
    param = np.asarray(param, np.float64)
    if param.size == 1:
        return np.full(shape, param.reshape(()))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = attrs.get("axis", 1) % len(shape)
    block = attrs.get("block_size", 0)
    if block:
        return np.repeat(param, block, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(param.reshape(view), shape)


def _rounded(level: np.ndarray, qtype: int) -> np.ndarray:
    """What the quantiser stores for `level` before saturation: round half to even, or the float8 value."""
    if qtype in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
        float8 = helper.tensor_dtype_to_np_dtype(qtype)  # ml_dtypes' float8 types: round to nearest even
        return level.astype(np.float32).astype(float8).astype(np.float64)
    return np.round(level)


def straight_through_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The float64 reference of the loaded (QOperator-rewritten) model at the point `feeds` (see the module doc);
    DynamicQuantizeLinear keeps the scale and zero point it chose there."""
    loaded = load_model(model)
    graph = loaded.graph
    constants = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer
                 if t.data_type != TensorProto.STRING}
    types = {t.name: t.data_type for t in graph.initializer}
    quantizers = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")]
    chosen = [o for n in quantizers if n.op_type == "DynamicQuantizeLinear" for o in n.output[1:]]
    # what each quantiser stored, read back through a DequantizeLinear of it (4-bit outputs cannot be fetched)
    readers = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in constants:
            readers.setdefault(node.input[0], node)
    probes = list(dict.fromkeys([n.input[0] for n in quantizers] + chosen
                                + [readers[n.output[0]].output[0] for n in quantizers if n.output[0] in readers]))
    values = {k: v.astype(np.float64) for k, v in zip(probes, session(expose(loaded, probes)).run(probes, feeds))}
    shapes = {n.output[0]: values[n.input[0]].shape for n in quantizers}  # a quantised tensor: its source's shape
    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray | float) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, np.float64), name))
        return name

    def param(node: onnx.NodeProto, index: int, shape: tuple[int, ...]) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            return np.zeros(shape)
        return _along(node, constants[name] if name in constants else values[name], shape)

    for node in graph.node:
        out = node.output[0]
        if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
            x = values[node.input[0]]
            if node.op_type == "QuantizeLinear":
                has_zero = len(node.input) > 2 and node.input[2]
                qtype = types[node.input[2]] if has_zero else TensorProto.UINT8
                scale, zero = param(node, 1, x.shape), param(node, 2, x.shape)
            else:
                qtype = TensorProto.UINT8
                scale, zero = np.full(x.shape, values[node.output[1]]), np.full(x.shape, values[node.output[2]])
                constant(node.output[1], values[node.output[1]])
                constant(node.output[2], values[node.output[2]])
            qmin, qmax = QUANTIZED_RANGES[qtype]
            level = np.clip(x / scale + zero, qmin, qmax)
            stored = _rounded(level, qtype)
            reader = readers.get(out)
            if reader is not None:  # ties (averages of quantised values) are rounded as onnxruntime rounded them
                shape = values[reader.output[0]].shape
                stored = values[reader.output[0]] / param(reader, 1, shape) + param(reader, 2, shape)
                stored = stored if qtype in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2) else np.round(stored)
            rounding = constant(f"{out}/rounding", stored - level)
            nodes += [helper.make_node("Div", [node.input[0], constant(f"{out}/scale", scale)], [f"{out}/ratio"]),
                      helper.make_node("Add", [f"{out}/ratio", constant(f"{out}/zero", zero)], [f"{out}/level"]),
                      helper.make_node("Clip", [f"{out}/level", constant(f"{out}/qmin", qmin),
                                                constant(f"{out}/qmax", qmax)], [f"{out}/clipped"]),
                      helper.make_node("Add", [f"{out}/clipped", rounding], [out])]
        elif node.op_type == "DequantizeLinear":
            q = node.input[0]
            if q in constants:  # weights: dequantised once
                shape = constants[q].shape
                constant(out, (constants[q] - param(node, 2, shape)) * param(node, 1, shape))
                continue
            shape = shapes[q]
            nodes += [helper.make_node("Sub", [q, constant(f"{out}/zero", param(node, 2, shape))], [f"{out}/levels"]),
                      helper.make_node("Mul", [f"{out}/levels", constant(f"{out}/scale", param(node, 1, shape))],
                                       [out])]
        else:
            nodes.append(node)
    replaced = {t.name for t in initializers}
    reference = helper.make_graph(nodes, "straight_through", list(graph.input), list(graph.output),
                                  [t for t in graph.initializer if t.name not in replaced] + initializers)
    result = helper.make_model(reference, opset_imports=list(loaded.opset_import), ir_version=loaded.ir_version)
    return to_float64(result)


def check_straight_through(model: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: str, output: str,
                           rtol: float = 2e-4, eps: float = 1e-6, directions: int = 3) -> np.ndarray:
    """The rewritten model's gradient of sum(seed * output) w.r.t. `wrt` matches float64 central differences of
    the straight-through reference, and the reference computes the quantised model's output at the point."""
    rng = np.random.default_rng(0)
    loaded = load_model(model)
    built = gradient_model(loaded, [wrt], output=output, probabilities=True)
    assert all(n.domain in ("", "ai.onnx", "com.microsoft") for n in built.model.graph.node)
    quantized_out = session(loaded).run([output], feeds)[0]
    reference = ReferenceEvaluator(straight_through_reference(model, feeds))
    feeds64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    base = reference.run([output], feeds64)[0]
    # the point is not on a quantisation step: the reference reproduces the quantised model there
    np.testing.assert_allclose(base, quantized_out, rtol=1e-4, atol=1e-4 * np.abs(quantized_out).max())
    weights = rng.standard_normal(base.shape)
    grad = session(built.model).run([GRAD_PREFIX + wrt], {**feeds, SEED: weights.astype(np.float32)})[0]
    grad = grad.astype(np.float64)
    x = feeds64[wrt]
    scale = max(np.abs(grad).max(), 1e-3)

    def score(changed: np.ndarray) -> float:
        return float(np.sum(weights * reference.run([output], {**feeds64, wrt: changed})[0]))

    for _ in range(directions):
        v = rng.standard_normal(x.shape)
        fd = (score(x + eps * v) - score(x - eps * v)) / (2 * eps)
        analytic = float(np.sum(grad * v))
        assert abs(fd - analytic) <= rtol * scale * np.sqrt(v.size) * 4 + 1e-6, f"onnx {analytic}, fd {fd}"
    return grad


# --- one QuantizeLinear -> DequantizeLinear pair per type and granularity ----------------------------------------
PAIRS = [  # (type, opset, granularity)
    (TensorProto.UINT8, 17, "tensor"), (TensorProto.INT8, 17, "tensor"), (TensorProto.INT8, 17, "axis"),
    (TensorProto.UINT8, 17, "negative axis"), (TensorProto.INT16, 21, "tensor"), (TensorProto.UINT16, 21, "axis"),
    (TensorProto.INT4, 21, "tensor"), (TensorProto.UINT4, 21, "axis"), (TensorProto.INT8, 21, "block"),
    (TensorProto.INT4, 21, "block"), (TensorProto.FLOAT8E4M3FN, 21, "tensor"), (TensorProto.FLOAT8E5M2, 21, "axis"),
]


def _pair_model(qtype: int, opset: int, granularity: str, rng: np.random.Generator
                ) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x (2, 6, 4) -> QuantizeLinear -> DequantizeLinear -> y; x spans the range and beyond, away from rounding
    midpoints and range ends. Returns the model, x and the expected mask (inside the range)."""
    shape = (2, 6, 4)
    params = {"tensor": (), "axis": (6,), "negative axis": (6,), "block": (2, 3, 4)}[granularity]
    attrs = {"axis": -2} if granularity == "negative axis" else {"axis": 1} if granularity != "tensor" else {}
    if granularity == "block":
        attrs["block_size"] = 2
    scale = rng.uniform(0.05, 0.2, params).astype(np.float32)
    float8 = qtype in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2)
    qmin, qmax = QUANTIZED_RANGES[qtype]
    np_type = helper.tensor_dtype_to_np_dtype(qtype)
    zero = np.zeros(params, np_type) if float8 or qmin < 0 else np.full(params, (qmax + 1) // 4, np_type)
    node_params = [numpy_helper.from_array(scale, "scale"), _zero_point_tensor(zero, qtype)]
    big_scale = _along(helper.make_node("QuantizeLinear", [], [], **attrs), scale, shape)
    big_zero = _along(helper.make_node("QuantizeLinear", [], [], **attrs), zero.astype(np.float64), shape)
    if float8:  # float8 levels are not evenly spaced: sample magnitudes, keep clear of the saturation value
        level = rng.choice([-1, 1], shape) * rng.uniform(0.5, 1.3, shape) * qmax
    else:  # integers near both ends of the range (some beyond) and in the middle, off the rounding midpoints
        middle = (qmin + qmax) // 2
        low, high = rng.integers(qmin - 4, qmin + 6, shape), rng.integers(qmax - 6, qmax + 4, shape)
        level = np.choose(rng.integers(0, 3, shape), [low, rng.integers(middle - 5, middle + 5, shape), high])
        level = level + rng.uniform(0.1, 0.4, shape) * rng.choice([-1, 1], shape)
    x = ((level - big_zero) * big_scale).astype(np.float32)
    inside = (level >= qmin) & (level <= qmax)
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], node_params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return model, x, inside


def _zero_point_tensor(zero: np.ndarray, qtype: int) -> onnx.TensorProto:
    if qtype in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
        return helper.make_tensor("zero", qtype, zero.shape, zero.astype(np.float32).ravel().tolist())
    if qtype in (TensorProto.INT4, TensorProto.UINT4):
        return helper.make_tensor("zero", qtype, zero.shape, zero.astype(np.int64).ravel().tolist())
    return numpy_helper.from_array(zero, "zero")


@pytest.mark.parametrize("qtype,opset,granularity", PAIRS,
                         ids=[f"{helper.tensor_dtype_to_string(t)}-{o}-{g}" for t, o, g in PAIRS])
def test_quantize_dequantize_pair_is_straight_through(qtype: int, opset: int, granularity: str) -> None:
    rng = np.random.default_rng(qtype * 100 + opset)
    model, x, inside = _pair_model(qtype, opset, granularity, rng)
    assert 0 < inside.mean() < 1  # both sides of the range are exercised
    loaded = load_model(model)
    built = gradient_model(loaded, ["x"], output="y", probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=CPU)
    seed = rng.standard_normal(x.shape).astype(np.float32)
    grad = session.run([GRAD_PREFIX + "x"], {"x": x, SEED: seed})[0]
    # identity inside the representable range, zero outside (up to scale / scale rounding)
    np.testing.assert_allclose(grad, np.where(inside, seed, 0), rtol=1e-5, atol=1e-6)
    check_straight_through(model, {"x": x}, "x", "y")


# --- small networks through onnxruntime's quantizer --------------------------------------------------------------
def small_network(kinks: bool = True) -> onnx.ModelProto:
    """Conv, LeakyRelu, Sigmoid, Mul, Add, AveragePool, MaxPool, Concat, GlobalAveragePool, Flatten, Gemm (alpha,
    transB) and MatMul: what the quantizer turns into QLinear* / com.microsoft ops. Without `kinks`, Tanh replaces
    LeakyRelu and a second AveragePool the MaxPool: quantised values sit exactly on LeakyRelu's kink (0) and tie
    inside MaxPool windows, points where a finite difference has no single value to compare with."""
    rng = np.random.default_rng(5)

    def weight(name: str, *shape: int, spread: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * spread).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.1) if kinks else helper.make_node("Tanh", ["c1"], ["l1"]),
        helper.make_node("Sigmoid", ["l1"], ["s1"]),
        helper.make_node("Mul", ["l1", "s1"], ["m1"]),
        helper.make_node("Conv", ["m1", "w2", "b2"], ["c2"]),
        helper.make_node("Add", ["c2", "l1"], ["a1"]),
        helper.make_node("AveragePool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["a1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]) if kinks else
        helper.make_node("AveragePool", ["a1"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["p1", "p2"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], alpha=0.5, transB=1),
        helper.make_node("MatMul", ["h", "w4"], ["scores"]),
    ]
    weights = [weight("w1", 4, 3, 3, 3), weight("b1", 4, spread=0.1), weight("w2", 4, 4, 1, 1),
               weight("b2", 4, spread=0.1), weight("w3", 6, 8, spread=1.0), weight("b3", 6, spread=0.1),
               weight("w4", 6, 5)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 5])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def calibration_reader(inputs: list[np.ndarray], name: str = "x") -> object:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {name: x}

    return Reader()


def quantized_small(tmp_path: Path, kind: str, activations: str = "QInt8", weights: str = "QInt8",
                    kinks: bool = True) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    source, target = tmp_path / "small.onnx", tmp_path / f"small_{kind}.onnx"
    onnx.save(small_network(kinks), str(source))
    if kind == "dynamic":
        quantize_dynamic(str(source), str(target), weight_type=getattr(QuantType, weights))
    else:
        rng = np.random.default_rng(11)
        reader = calibration_reader([rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(8)])
        quantize_static(str(source), str(target), reader,
                        quant_format=QuantFormat.QOperator if kind == "qoperator" else QuantFormat.QDQ,
                        activation_type=getattr(QuantType, activations), weight_type=getattr(QuantType, weights),
                        per_channel=True)
    return onnx.load(str(target))


def _point(seed: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32)}


SMALL = [("qdq", "QInt8", "QInt8"), ("qdq", "QUInt8", "QUInt8"), ("qdq", "QInt16", "QInt8"),
         ("qdq", "QUInt16", "QUInt8"), ("qdq", "QInt8", "QInt4"), ("qoperator", "QUInt8", "QInt8"),
         ("qoperator", "QInt8", "QInt8"), ("dynamic", "", "QInt8"), ("dynamic", "", "QUInt8")]


@pytest.mark.parametrize("kind,activations,weights", SMALL, ids=["-".join(filter(None, s)) for s in SMALL])
def test_quantized_network_gradients_match_the_straight_through_reference(tmp_path: Path, kind: str,
                                                                          activations: str, weights: str) -> None:
    model = quantized_small(tmp_path, kind, activations, weights, kinks=False)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    if kind == "qoperator":
        assert {("", "QLinearConv"), ("com.microsoft", "QGemm"), ("com.microsoft", "QLinearConcat")} <= ops
    if kind == "dynamic":
        assert {("", "ConvInteger"), ("", "DynamicQuantizeLinear")} <= ops
    check_straight_through(model, _point(), "x", "scores")


def test_qoperator_rewrite_leaves_only_float_ops_between_dequantize_and_quantize(tmp_path: Path) -> None:
    model = quantized_small(tmp_path, "qoperator", "QUInt8")
    original = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
            "QLinearConcat", "QLinearGlobalAveragePool", "QGemm", "QLinearMatMul"} <= original
    loaded = load_model(model)
    assert {n.domain for n in loaded.graph.node} <= {"", "ai.onnx"}
    assert not [n.op_type for n in loaded.graph.node if n.op_type.startswith("QLinear") or n.op_type == "QGemm"]
    # every integer tensor of the original is, bit for bit, what onnxruntime's integer kernels made
    integers = [n.output[0] for n in model.graph.node if n.op_type != "DequantizeLinear"]
    before = session(_with_outputs(model, integers)).run(integers, _point())
    after = session(_with_outputs(loaded, integers)).run(integers, _point())
    for name, a, b in zip(integers, before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    # with onnxruntime's optimisations on (it fuses the rewritten patterns back), the outputs are the same too
    x = _point()
    fused = [ort.InferenceSession(m.SerializeToString(), providers=CPU).run(None, x)[0] for m in (model, loaded)]
    np.testing.assert_array_equal(fused[0], fused[1])


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy with `names` as extra outputs (untyped: onnxruntime infers integer types onnx cannot)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return copy


def test_dynamic_rewrite_computes_the_same_values(tmp_path: Path) -> None:
    model = quantized_small(tmp_path, "dynamic", weights="QInt8")
    loaded = load_model(model)
    assert not {"ConvInteger", "MatMulInteger"} & {n.op_type for n in loaded.graph.node}
    x = _point()
    before = ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, x)[0]
    after = ort.InferenceSession(loaded.SerializeToString(), providers=CPU).run(None, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_integer_op_without_float_equivalent_is_named_and_gradient_free_methods_still_work(tmp_path: Path) -> None:
    """MatMulNBits (4-bit weights, onnxruntime's LLM quantizer) has no rewrite: gradient methods stop there with one
    line naming it, and the gradient-free methods still explain the model."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "head"], ["logits"])]
    weights = [numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "head")]
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], weights)
    quantizer = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                       ir_version=8), block_size=16, is_symmetric=True)
    quantizer.process()
    model = quantizer.model.model
    assert "MatMulNBits" in {n.op_type for n in model.graph.node}
    ex = onnxcam.Explainer(model, device="cpu")
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    with pytest.raises(GradientError) as error:
        ex.explain(x, "gradcam")
    message = str(error.value)
    assert "com.microsoft.MatMulNBits" in message and "scorecam" in message and "\n" not in message
    for method in ("eigencam", "scorecam", "ablationcam"):
        maps = ex.explain(x, method)
        assert np.isfinite(maps).all() and maps.max() > 0


def test_quantized_op_missing_a_required_input_is_one_line(tmp_path: Path) -> None:
    model = quantized_small(tmp_path, "qoperator", "QUInt8")
    conv = next(n for n in model.graph.node if n.op_type == "QLinearConv")
    conv.input[4] = ""  # w_scale
    with pytest.raises(ModelError, match=r"QLinearConv\) lacks its required input 4") as error:
        load_model(model)
    assert "\n" not in str(error.value)


# --- the shipped pairs -------------------------------------------------------------------------------------------
def example_batch(model: Path) -> np.ndarray:
    spec = resolve_preprocessing(onnx.load(str(model)), "input", "NCHW")
    return np.concatenate([preprocess(read_image(path), spec) for path in IMAGES]).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)])


# Grad-CAM of the int8 model vs the float32 model, per example image (the same class: the float model's
# prediction). Measured values are in models/quantized.md.
PAIRS_INT8 = [("shapes_resnet.onnx", "shapes_resnet_int8_qdq.onnx"),
              ("shapes_mobilenet.onnx", "shapes_mobilenet_int8_qop.onnx")]


@pytest.mark.parametrize("reference,quantized", PAIRS_INT8, ids=["resnet-qdq", "mobilenet-qoperator"])
def test_int8_grad_cam_agrees_with_float32(reference: str, quantized: str) -> None:
    x = example_batch(MODELS / reference)
    float_ex = onnxcam.Explainer(MODELS / reference, device="cpu")
    int8_ex = onnxcam.Explainer(MODELS / quantized, device="cpu")
    predicted = float_ex.scores(x).argmax(axis=1)
    assert (int8_ex.scores(x).argmax(axis=1) == predicted).all()
    r = pearson(float_ex.explain(x, "gradcam", targets=list(predicted)),
                int8_ex.explain(x, "gradcam", targets=list(predicted)))
    assert r.min() >= 0.9, f"Grad-CAM Pearson r per image: {np.round(r, 3)}"


@pytest.mark.parametrize("model", ["shapes_resnet_int8_qdq.onnx", "shapes_mobilenet_int8_qop.onnx",
                                   "shapes_resnet_int8_qop.onnx", "shapes_mobilenet_int8_dynamic.onnx"])
def test_every_gradient_method_runs_on_quantized_models(model: str) -> None:
    x = example_batch(MODELS / model)[:2]
    ex = onnxcam.Explainer(MODELS / model, device="cpu")
    for method in GRADIENT_METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no saturation warning, no NaN warning
            maps = ex.explain(x, method)
        assert maps.shape == (2, 96, 96) and np.isfinite(maps).all(), method
        assert (maps.reshape(2, -1).max(axis=1) > 0).all(), f"{method} gave an empty map"


def test_qoperator_layers_are_the_dequantized_float_tensors() -> None:
    ex = onnxcam.Explainer(MODELS / "shapes_mobilenet_int8_qop.onnx", device="cpu")
    producers = {o: n.op_type for n in ex.model.graph.node for o in n.output}
    assert producers[ex.default_layer] == "DequantizeLinear"
    assert ex.default_layer.startswith("/last/last.2/HardSwish_output_0")
    qdq = onnxcam.Explainer(MODELS / "shapes_resnet_int8_qdq.onnx", device="cpu")
    assert qdq.default_layer == "/stage3/stage3.1/Relu_1_output_0_DequantizeLinear_Output"


def test_saturating_calibration_is_said(tmp_path: Path) -> None:
    """A calibration whose range of the pooled features is far too narrow (forced to [0, 0.001] through the
    quantizer's TensorQuantOverrides) clips every feature: the maps are all zero, and a warning says why."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    x = example_batch(MODELS / "shapes_resnet.onnx")
    reader = calibration_reader([x[i:i + 1] for i in range(len(x))], "input")
    target = tmp_path / "clipped.onnx"
    overrides = {"/GlobalAveragePool_output_0": [{"rmin": np.float32(0.0), "rmax": np.float32(1e-3)}]}
    quantize_static(str(MODELS / "shapes_resnet.onnx"), str(target), reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"TensorQuantOverrides": overrides})
    with pytest.warns(RuntimeWarning, match="quantised model saturates.*gradient-free method"):
        maps = onnxcam.Explainer(target, device="cpu").explain(x, "gradcam")
    assert not maps.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        onnxcam.Explainer(MODELS / "shapes_resnet_int8_qdq.onnx", device="cpu").explain(x, "gradcam")


# --- float16 -------------------------------------------------------------------------------------------------------
# shapes_resnet_fp16 takes and returns float32 (keep_io_types=True); shapes_mobilenet_fp16 takes and returns float16.
FLOAT16 = [("shapes_resnet.onnx", "shapes_resnet_fp16.onnx"), ("shapes_mobilenet.onnx", "shapes_mobilenet_fp16.onnx")]


def float16_twin(path: Path) -> onnx.ModelProto:
    """The float32 model with its weights rounded to float16, as the float16 conversion rounds them."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    return model


@pytest.mark.parametrize("reference,half", FLOAT16, ids=["resnet-float32-io", "mobilenet-float16-io"])
def test_float16_maps_are_within_1e_2_of_float32(reference: str, half: str) -> None:
    """Every gradient method on the float16 model against float32 with the same (rounded) weights: what differs is
    the float16 arithmetic. Opti-CAM optimises a mask and lands elsewhere on any change of the scores: compared by
    correlation."""
    x = example_batch(MODELS / reference)
    twin = onnxcam.Explainer(float16_twin(MODELS / reference), device="cpu")
    ex = onnxcam.Explainer(MODELS / half, device="cpu")
    targets = list(twin.scores(x).argmax(axis=1))
    for method in GRADIENT_METHODS:
        full, maps = twin.explain(x, method, targets=targets), ex.explain(x, method, targets=targets)
        if method == "opticam":
            assert pearson(full, maps).min() >= 0.9
        else:
            assert np.abs(full - maps).max() <= 1e-2, f"{method}: max |float16 - float32| = {np.abs(full - maps).max()}"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigengradcam"])
def test_float16_resnet_maps_are_within_1e_2_of_the_original_float32(method: str) -> None:
    x = example_batch(MODELS / "shapes_resnet.onnx")
    full = onnxcam.Explainer(MODELS / "shapes_resnet.onnx", device="cpu")
    half = onnxcam.Explainer(MODELS / "shapes_resnet_fp16.onnx", device="cpu")
    targets = list(full.scores(x).argmax(axis=1))
    difference = np.abs(full.explain(x, method, targets=targets) - half.explain(x, method, targets=targets))
    assert difference.max() <= 1e-2, f"{method}: max |float16 - float32| = {difference.max():.4f}"


def test_mixed_precision_model_is_explained() -> None:
    """onnxconverter-common with a block list: the head stays float32, the trunk float16, Casts between them."""
    float16 = pytest.importorskip("onnxconverter_common.float16")
    mixed = float16.convert_float_to_float16(onnx.load(str(MODELS / "shapes_resnet.onnx")), keep_io_types=True,
                                             op_block_list=["GlobalAveragePool", "Flatten", "Gemm"])
    assert {n.op_type for n in mixed.graph.node} >= {"Cast"}
    x = example_batch(MODELS / "shapes_resnet.onnx")
    full = onnxcam.Explainer(MODELS / "shapes_resnet.onnx", device="cpu")
    ex = onnxcam.Explainer(mixed, device="cpu")
    targets = list(full.scores(x).argmax(axis=1))
    difference = np.abs(full.explain(x, "gradcam", targets=targets) - ex.explain(x, "gradcam", targets=targets))
    assert difference.max() <= 1e-2


def test_float16_backward_runs_in_float32() -> None:
    """Gradients far below float16's smallest value (6e-8) still come out: the reverse pass computes in float32
    while the forward pass stays float16. The model: Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, its
    head scaled by 1e-6, so d score / d features ~ 1e-9; the float32 twin has the same (float16) weights."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "head"], ["logits"], transB=1)]
    weights = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float16),
               "head": (rng.standard_normal((4, 8)) * 1e-6).astype(np.float16)}

    def model(dtype: int) -> onnx.ModelProto:
        np_type = helper.tensor_dtype_to_np_dtype(dtype)
        graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", dtype, [1, 3, 16, 16])],
                                  [helper.make_tensor_value_info("logits", dtype, [1, 4])],
                                  [numpy_helper.from_array(w.astype(np_type), n) for n, w in weights.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float16).astype(np.float32)
    half = onnxcam.gradients(model(TensorProto.FLOAT16), x, layers="r", providers=CPU).gradients["r"]
    full = onnxcam.gradients(model(TensorProto.FLOAT), x, layers="r", providers=CPU).gradients["r"]
    assert np.abs(full).max() < 6e-8  # float16 would flush these to zero
    np.testing.assert_allclose(half, full, rtol=1e-3, atol=1e-3 * np.abs(full).max())
