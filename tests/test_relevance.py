"""Relevance propagation (LRP) rules and Relevance-CAM.

References are written here in NumPy, independently of the rule table: the matrix of a linear layer comes from
running the forward op alone on one-hot inputs in onnxruntime, and each LRP rule is applied to that matrix's
contributions c[j, i] = M[j, i] * x[i].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import GradientError, InputError
from onnxcam.graph.reverse.model import expose
from onnxcam.graph.reverse.relevance import LrpOptions
from onnxcam.runners import ReverseRunner

ROOT = Path(__file__).parent.parent
RESNET = ROOT / "models" / "shapes_resnet.onnx"
STAGE2 = "/stage2/stage2.1/Relu_1_output_0"
STAGE3 = "/stage3/stage3.1/Relu_1_output_0"
RNG = np.random.default_rng(0)


# --- model building and running ---------------------------------------------------------------------------------
def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, list[Any]], output: str,
               weights: dict[str, np.ndarray] | None = None, flatten: bool = True, opset: int = 17) -> onnx.ModelProto:
    """inputs -> nodes -> `output`, flattened to (N, K) scores named 'scores' (the walker's start)."""
    nodes = list(nodes)
    final = output
    if flatten:
        nodes.append(helper.make_node("Flatten", [output], ["scores"], axis=1))
        final = "scores"
    graph = helper.make_graph(
        nodes, "lrp_test", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (weights or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def forward(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(expose(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def relevance_at(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray, layers: list[str],
                 initial: str = "seed", **options: Any) -> dict[str, np.ndarray]:
    """Relevance at `layers` for the initial relevance `seed` (N, K)."""
    runner = ReverseRunner(model, layers, lrp=LrpOptions(**options), initial=initial, device="cpu")
    return runner.run(x, seed.astype(np.float32)).relevance


def linear_matrix(model: onnx.ModelProto, in_shape: tuple[int, ...]) -> np.ndarray:
    """M (out, in) with y = M x for a model of one linear op (no bias): its responses to one-hot inputs."""
    size = int(np.prod(in_shape))
    basis = np.eye(size, dtype=np.float32).reshape((size,) + in_shape[1:])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: basis})[0].reshape(size, -1).T.astype(np.float64)


# --- NumPy LRP references -----------------------------------------------------------------------------------------
def safe_divide(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.divide(a, np.where(z == 0, 1.0, z)) * (z != 0)


def lrp_linear(m: np.ndarray, x: np.ndarray, r: np.ndarray, rule: str = "z+", alpha: float = 1.0,
               beta: float = 0.0, eps: float = 1e-9, bias: np.ndarray | None = None) -> np.ndarray:
    """R_i = sum_j c_ji / z_j R_j with c_ji = M_ji x_i: the epsilon, z+ and alpha-beta rules on contributions."""
    c = m * x.reshape(1, -1)
    r = r.reshape(-1)
    extra = np.zeros(len(r)) if bias is None else bias
    if rule == "epsilon":
        z = c.sum(axis=1) + extra
        return (c * safe_divide(r, z + eps * np.sign(z))[:, None]).sum(axis=0)
    if rule == "z+":
        alpha, beta = 1.0, 0.0
    pos, neg = np.maximum(c, 0), np.minimum(c, 0)
    zp = pos.sum(axis=1) + np.maximum(extra, 0)
    zn = neg.sum(axis=1) + np.minimum(extra, 0)
    rp = (pos * safe_divide(r, zp + eps * np.sign(zp))[:, None]).sum(axis=0)
    rn = (neg * safe_divide(r, zn + eps * np.sign(zn))[:, None]).sum(axis=0)
    return alpha * rp - beta * rn


def lrp_bounded(m: np.ndarray, x: np.ndarray, r: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """z^B with the image's own minimum and maximum as bounds."""
    low, high = x.min(), x.max()
    c = m * x.reshape(1, -1) - np.maximum(m, 0) * low - np.minimum(m, 0) * high
    z = c.sum(axis=1)
    return (c * safe_divide(r.reshape(-1), z + eps * np.sign(z))[:, None]).sum(axis=0)


def lrp_add(xs: list[np.ndarray], r: np.ndarray) -> list[np.ndarray]:
    """The official Relevance-CAM residual rule (per image): z-rule shares rescaled to |share sum| proportions."""
    z = sum(xs)
    shares = [x * safe_divide(r, z) for x in xs]
    sums = [s.sum() for s in shares]
    norm = sum(abs(t) for t in sums)
    return [s * (abs(t) / norm * r.sum()) / t for s, t in zip(shares, sums)]


def conv_model(w: np.ndarray, in_shape: list[Any], bias: np.ndarray | None = None, flatten: bool = True,
               **attrs: Any) -> onnx.ModelProto:
    weights = {"w": w} | ({"b": bias} if bias is not None else {})
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias is not None else []), ["y"], **attrs)
    return make_model([node], {"x": in_shape}, "y", weights, flatten)


def seed_for(model: onnx.ModelProto, x: np.ndarray, name: str = "x") -> np.ndarray:
    scores = forward(model, {name: x}, ["scores"])[0]
    return RNG.standard_normal(scores.shape)


# --- the walker takes the table -------------------------------------------------------------------------------
def test_gradient_walker_default_is_unchanged() -> None:
    """The gradient table stays the default: gradients of a Conv still match onnxcam.gradients' contract."""
    w = RNG.standard_normal((2, 1, 3, 3))
    model = conv_model(w, [1, 1, 5, 5], pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 1, 5, 5)).astype(np.float32)
    res = onnxcam.gradients(model, x, layers="x", targets=np.ones((1, 50), np.float32))
    m = linear_matrix(conv_model(w, ["N", 1, 5, 5], pads=[1, 1, 1, 1]), (1, 1, 5, 5))
    np.testing.assert_allclose(res.gradients["x"].reshape(-1), m.sum(axis=0), rtol=1e-5, atol=1e-5)


# --- linear layers ------------------------------------------------------------------------------------------------
CONVS = [
    ("plain", (4, 3, 3, 3), [1, 3, 6, 6], {"pads": [1, 1, 1, 1]}),
    ("strided, asymmetric pads", (4, 3, 3, 3), [1, 3, 7, 7], {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ("dilated", (2, 3, 3, 3), [1, 3, 7, 7], {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ("grouped", (4, 2, 3, 3), [1, 4, 5, 5], {"group": 2, "pads": [1, 1, 1, 1]}),
    ("depthwise, same_upper", (3, 1, 3, 3), [1, 3, 6, 6], {"group": 3, "strides": [2, 2],
                                                           "auto_pad": "SAME_UPPER"}),
    ("1x1", (5, 3, 1, 1), [1, 3, 4, 4], {}),
]
RULES = [("z+", {}), ("alphabeta", {"alpha": 2.0, "beta": 1.0}), ("epsilon", {"epsilon": 0.1})]


@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_conv_rules_match_numpy(case: tuple[Any, ...], rule: tuple[str, dict[str, float]]) -> None:
    _, w_shape, in_shape, attrs = case
    name, params = rule
    w = RNG.standard_normal(w_shape)
    bias = RNG.standard_normal(w_shape[0])
    model = conv_model(w, in_shape, bias, **attrs)
    x = RNG.standard_normal(in_shape).astype(np.float32)  # signed inputs: every sign pairing takes part
    seed = seed_for(model, x)
    got = relevance_at(model, x, seed, ["x"], rule=name, first_layer="same", **params)["x"]
    m = linear_matrix(conv_model(w, ["N"] + in_shape[1:], **attrs), tuple(in_shape))
    want = lrp_linear(m, x, seed, name, params.get("alpha", 1.0), params.get("beta", 0.0),
                      params.get("epsilon", 1e-9))
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-4, atol=1e-5)


def test_conv_bias_option_puts_the_bias_in_the_denominators() -> None:
    w, bias = RNG.standard_normal((3, 2, 3, 3)), RNG.standard_normal(3)
    model = conv_model(w, [1, 2, 5, 5], bias, pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    seed = seed_for(model, x)
    m = linear_matrix(conv_model(w, ["N", 2, 5, 5], pads=[1, 1, 1, 1]), (1, 2, 5, 5))
    per_output = np.repeat(bias, 25)
    for rule, params in [("z+", {}), ("alphabeta", {"alpha": 2.0, "beta": 1.0}), ("epsilon", {"epsilon": 0.01})]:
        got = relevance_at(model, x, seed, ["x"], rule=rule, bias=True, first_layer="same", **params)["x"]
        want = lrp_linear(m, x, seed, rule, params.get("alpha", 1.0), params.get("beta", 0.0),
                          params.get("epsilon", 1e-9), per_output)
        np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-4, atol=1e-5)


def test_zplus_after_relu_conserves_relevance() -> None:
    """z+ on a bias-free layer with non-negative inputs: sum R_in == sum R_out (here R_out sums to 7.3)."""
    w = RNG.standard_normal((4, 3, 3, 3))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Conv", ["a", "w", "b"], ["y"], pads=[1] * 4)]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, "y", {"w": w, "b": RNG.standard_normal(4)})
    x = (np.abs(RNG.standard_normal((1, 3, 6, 6))) + 0.1).astype(np.float32)
    seed = np.abs(RNG.standard_normal((1, 144)))
    seed *= 7.3 / seed.sum()
    got = relevance_at(model, x, seed, ["a"])["a"]
    assert got.sum() == pytest.approx(7.3, rel=1e-5)
    m = linear_matrix(conv_model(w, ["N", 3, 6, 6], pads=[1] * 4), (1, 3, 6, 6))
    np.testing.assert_allclose(got.reshape(-1), lrp_linear(m, x, seed), rtol=1e-4, atol=1e-6)


def test_first_layer_uses_zb_with_the_image_bounds() -> None:
    w = RNG.standard_normal((4, 3, 3, 3))
    model = conv_model(w, [1, 3, 6, 6], RNG.standard_normal(4), pads=[1, 1, 1, 1])
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    seed = seed_for(model, x)
    got = relevance_at(model, x, seed, ["x"])["x"]  # first_layer="zb" is the default
    m = linear_matrix(conv_model(w, ["N", 3, 6, 6], pads=[1, 1, 1, 1]), (1, 3, 6, 6))
    np.testing.assert_allclose(got.reshape(-1), lrp_bounded(m, x, seed), rtol=1e-4, atol=1e-5)
    assert got.sum() == pytest.approx(seed.sum(), rel=1e-4)  # z^B conserves relevance


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_gemm_rules_match_numpy(rule: tuple[str, dict[str, float]]) -> None:
    name, params = rule
    w, bias = RNG.standard_normal((5, 6)), RNG.standard_normal(5)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5)
    model = make_model([node], {"x": [2, 6]}, "y", {"w": w, "b": bias}, flatten=False)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    seed = RNG.standard_normal((2, 5))
    got = relevance_at(model, x, seed, ["x"], rule=name, **params)["x"]
    bare = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, alpha=0.5)], {"x": ["N", 6]}, "y",
                      {"w": w}, flatten=False)
    m = linear_matrix(bare, (1, 6))
    for i in range(2):
        want = lrp_linear(m, x[i], seed[i], name, params.get("alpha", 1.0), params.get("beta", 0.0),
                          params.get("epsilon", 1e-9))
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_matmul_with_constant_weights_matches_numpy() -> None:
    w = RNG.standard_normal((4, 3))
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [1, 2, 4]}, "y", {"w": w})
    x = RNG.standard_normal((1, 2, 4)).astype(np.float32)
    seed = seed_for(model, x)
    got = relevance_at(model, x, seed, ["x"])["x"]
    bare = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": ["N", 2, 4]}, "y", {"w": w},
                      flatten=False)
    np.testing.assert_allclose(got.reshape(-1), lrp_linear(linear_matrix(bare, (1, 2, 4)), x, seed), rtol=1e-4,
                               atol=1e-5)


def test_product_of_computed_tensors_halves_the_z_rule() -> None:
    """Attention-style x @ x^T: each operand gets half of its z-rule share (Chefer et al. 2021), which conserves."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), helper.make_node("MatMul", ["x", "t"], ["y"])]
    model = make_model(nodes, {"x": [1, 3, 4]}, "y")
    x = RNG.standard_normal((1, 3, 4)).astype(np.float32)
    seed = RNG.standard_normal((1, 9))
    got = relevance_at(model, x, seed, ["x"])["x"]
    a, b = x[0].astype(np.float64), x[0].T.astype(np.float64)
    s = safe_divide(seed.reshape(3, 3), a @ b)
    want = 0.5 * a * (s @ b.T) + (0.5 * b * (a.T @ s)).T
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-6)
    assert got.sum() == pytest.approx(seed.sum(), rel=1e-4)


def test_softmax_inside_the_network_passes_relevance() -> None:
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": [1, 5]}, "y")
    seed = RNG.standard_normal((1, 5))
    got = relevance_at(model, RNG.standard_normal((1, 5)).astype(np.float32), seed, ["x"])["x"]
    np.testing.assert_allclose(got, seed, rtol=1e-6)


def test_op_without_a_relevance_rule_is_named() -> None:
    model = make_model([helper.make_node("Sin", ["x"], ["y"], name="wave")], {"x": [1, 4]}, "y")
    with pytest.raises(GradientError, match="no relevance rule for op 'Sin' \\(node 'wave'"):
        relevance_at(model, np.ones((1, 4), np.float32), np.ones((1, 4)), ["x"])


# --- pooling, sums, pass-through and routing ----------------------------------------------------------------------
def test_maxpool_is_winner_take_all() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model = make_model([node], {"x": [1, 2, 6, 6]}, "y")
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    seed = seed_for(model, x)
    got = relevance_at(model, x, seed, ["x"])["x"]
    want = np.zeros((2, 6, 6))
    r = seed.reshape(2, 3, 3)
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    for c in range(2):
        for i in range(3):
            for j in range(3):
                window = padded[c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                wi, wj = np.unravel_index(np.argmax(window), window.shape)
                want[c, 2 * i + wi - 1, 2 * j + wj - 1] += r[c, i, j]  # overlapping windows add up
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


def test_average_pools_are_proportional() -> None:
    x = (np.abs(RNG.standard_normal((1, 2, 6, 6))) + 0.1).astype(np.float32)
    pool = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = make_model([pool], {"x": [1, 2, 6, 6]}, "y")
    seed = seed_for(model, x)
    got = relevance_at(model, x, seed, ["x"])["x"]
    want = np.zeros((2, 8, 8))
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    r = seed.reshape(2, 6, 6)
    for c in range(2):
        for i in range(6):
            for j in range(6):
                window = padded[c, i:i + 3, j:j + 3]
                want[c, i:i + 3, j:j + 3] += window / window.sum() * r[c, i, j]
    np.testing.assert_allclose(got[0], want[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-6)
    gap = make_model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], {"x": [1, 2, 6, 6]}, "y")
    seed = np.array([[2.0, -1.0]])
    got = relevance_at(gap, x, seed, ["x"])["x"]
    want = x[0] / x[0].sum(axis=(1, 2), keepdims=True) * seed[0][:, None, None]
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-7)


def test_add_splits_in_proportion_as_the_official_code() -> None:
    nodes = [helper.make_node("Add", ["x", "s"], ["y"])]
    model = make_model(nodes, {"x": [2, 3, 4, 4], "s": [2, 3, 4, 4]}, "y")
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    s = (RNG.standard_normal((2, 3, 4, 4)) + 1.0).astype(np.float32)
    seed = RNG.standard_normal((2, 48))
    runner = ReverseRunner(model, ["x", "s"], lrp=LrpOptions(), initial="seed", device="cpu")
    session = runner.session
    names = ["onnxcam_relevance:x", "onnxcam_relevance:s"]
    got = session.run(names, {"x": x, "s": s, "onnxcam_seed": seed.astype(np.float32)})
    for i in range(2):
        want = lrp_add([x[i].astype(np.float64), s[i].astype(np.float64)], seed[i].reshape(3, 4, 4))
        np.testing.assert_allclose(got[0][i], want[0], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(got[1][i], want[1], rtol=1e-3, atol=1e-5)
        assert got[0][i].sum() + got[1][i].sum() == pytest.approx(seed[i].sum(), rel=1e-4, abs=1e-5)


def test_constant_summands_and_factors_pass_relevance_through() -> None:
    """Unfolded BatchNorm forms (x * scale + shift), BatchNormalization itself and activations: identity."""
    c = 3
    weights = {"scale": RNG.standard_normal((1, c, 1, 1)), "shift": RNG.standard_normal((1, c, 1, 1)),
               "gamma": RNG.standard_normal(c), "beta": RNG.standard_normal(c), "mean": RNG.standard_normal(c),
               "var": np.abs(RNG.standard_normal(c)) + 0.5}
    nodes = [helper.make_node("Mul", ["x", "scale"], ["m"]), helper.make_node("Add", ["m", "shift"], ["a"]),
             helper.make_node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("Div", ["r", "scale"], ["d"]),
             helper.make_node("Sub", ["d", "shift"], ["y"])]
    model = make_model(nodes, {"x": [1, c, 2, 2]}, "y", weights)
    x = RNG.standard_normal((1, c, 2, 2)).astype(np.float32)
    seed = RNG.standard_normal((1, 4 * c))
    got = relevance_at(model, x, seed, ["x"])["x"]
    np.testing.assert_allclose(got.reshape(-1), seed.reshape(-1), rtol=1e-6)


def test_routing_ops_move_relevance_with_their_elements() -> None:
    nodes = [helper.make_node("Split", ["x", "parts"], ["p", "q"], axis=1),
             helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 1, 3, 2]),
             helper.make_node("Concat", ["qt", "p"], ["c"], axis=1),
             helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["y"])]
    weights = {"parts": np.array([1, 2]), "starts": np.array([1]), "ends": np.array([3]), "axes": np.array([1])}
    model = make_model(nodes, {"x": [1, 3, 2, 2]}, "y", {k: v for k, v in weights.items()})
    for init in model.graph.initializer:  # the index inputs are int64
        init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.int64), init.name))
    x = RNG.standard_normal((1, 3, 2, 2)).astype(np.float32)
    seed = RNG.standard_normal((1, 8))
    got = relevance_at(model, x, seed, ["x"])["x"]
    r = seed.reshape(2, 2, 2)  # channels 1 and 2 of Concat(q^T, p): q's second channel transposed, then p
    want = np.zeros((3, 2, 2))
    want[2] = r[0].T
    want[0] = r[1]
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


def test_signal_takes_the_gate_relevance() -> None:
    """x * sigmoid(gate(x)) with a per-channel gate (squeeze-excitation): everything goes to the features."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    model = make_model(nodes, {"x": [1, 2, 3, 3]}, "y")
    x = RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    seed = RNG.standard_normal((1, 18))
    got = relevance_at(model, x, seed, ["x"])["x"]
    np.testing.assert_allclose(got.reshape(-1), seed.reshape(-1), rtol=1e-6)


# --- whole networks -----------------------------------------------------------------------------------------------
def small_resnet(folded: bool = True) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv-(BN)-Relu, MaxPool, a residual block, GAP and a linear head; with folded=False the BatchNorms are
    separate nodes, as in the training graph; folded=True folds them into the convolutions as exporters do."""
    rng = np.random.default_rng(7)
    w1, w2 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((4, 4, 3, 3))
    bn = [(np.abs(rng.standard_normal(4)) + 0.3, rng.standard_normal(4), rng.standard_normal(4) * 0.1,
           np.abs(rng.standard_normal(4)) + 0.5) for _ in range(2)]
    fc, fc_b = rng.standard_normal((5, 4)), rng.standard_normal(5)
    weights: dict[str, np.ndarray] = {"fc": fc, "fc_b": fc_b}
    nodes = []
    for k, (w, src, out) in enumerate([(w1, "x", "c1"), (w2, "p", "c2")]):
        gamma, beta, mean, var = bn[k]
        if folded:
            factor = gamma / np.sqrt(var + 1e-5)
            weights[f"w{k}"] = w * factor[:, None, None, None]
            weights[f"b{k}"] = beta - mean * factor
            nodes.append(helper.make_node("Conv", [src, f"w{k}", f"b{k}"], [out], pads=[1, 1, 1, 1]))
        else:
            weights |= {f"w{k}": w, f"g{k}": gamma, f"be{k}": beta, f"m{k}": mean, f"v{k}": var}
            nodes += [helper.make_node("Conv", [src, f"w{k}"], [out + "_raw"], pads=[1, 1, 1, 1]),
                      helper.make_node("BatchNormalization", [out + "_raw", f"g{k}", f"be{k}", f"m{k}", f"v{k}"],
                                       [out], epsilon=1e-5)]
        if k == 0:
            nodes += [helper.make_node("Relu", ["c1"], ["r1"]),
                      helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    nodes += [helper.make_node("Add", ["c2", "p"], ["s"]), helper.make_node("Relu", ["s"], ["r2"]),
              helper.make_node("GlobalAveragePool", ["r2"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1)]
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, "logits", weights, flatten=False)
    return model, {"w1": w1, "w2": w2, "fc": fc}


def numpy_lrp_small_resnet(model: onnx.ModelProto, plain: dict[str, np.ndarray], x: np.ndarray,
                           target: int) -> dict[str, np.ndarray]:
    """The official rules by hand: contrastive start, z+ without bias, identity for BN/ReLU, winner-take-all
    MaxPool, proportional GAP, the residual split, z^B at the first conv."""
    r1, p, c2, r2, logits = forward(model, {"x": x}, ["r1", "p", "c2", "r2", "logits"])
    start = np.full(5, -1 / 5)
    start[target] = 1.0
    f = r2[0].mean(axis=(1, 2))
    head = make_model([helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)], {"f": ["N", 4]}, "y",
                      {"fc": plain["fc"]}, flatten=False)
    rf = lrp_linear(linear_matrix(head, (1, 4)), f, start)
    rr2 = r2[0] * safe_divide(rf[:, None, None], r2[0].sum(axis=(1, 2), keepdims=True))
    rc2, rp_skip = lrp_add([c2[0].astype(np.float64), p[0].astype(np.float64)], rr2)
    conv2 = conv_model(plain["w2"], ["N", 4, 4, 4], pads=[1, 1, 1, 1], flatten=False)
    rp = lrp_linear(linear_matrix(conv2, (1, 4, 4, 4)), p[0], rc2).reshape(4, 4, 4) + rp_skip
    rr1 = np.zeros((4, 8, 8))
    for c in range(4):
        for i in range(4):
            for j in range(4):
                window = r1[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                wi, wj = np.unravel_index(np.argmax(window), window.shape)
                rr1[c, 2 * i + wi, 2 * j + wj] += rp[c, i, j]
    conv1 = conv_model(plain["w1"], ["N", 3, 8, 8], pads=[1, 1, 1, 1], flatten=False)
    rx = lrp_bounded(linear_matrix(conv1, (1, 3, 8, 8)), x[0], rr1).reshape(3, 8, 8)
    return {"r1": rr1, "p": rp, "x": rx}


@pytest.mark.parametrize("folded", [True, False], ids=["bn folded", "bn separate"])
def test_small_resnet_matches_numpy_lrp(folded: bool) -> None:
    """BatchNorm folded into the conv gives the official code's relevance (BN as identity, z+ on the unscaled
    weights): z+ shares are unchanged by a positive per-channel scale, and the bias is excluded either way."""
    model, plain = small_resnet(folded)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    target = 3
    res = onnxcam.relevance(model, x, targets=[target], layers=["r1", "p"], input_relevance=True, device="cpu")
    want = numpy_lrp_small_resnet(model, plain, x, target)
    np.testing.assert_allclose(res.relevance["r1"][0], want["r1"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(res.relevance["p"][0], want["p"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(res.input_relevance[0], want["x"], rtol=1e-3, atol=1e-5)


def test_folded_and_separate_batchnorm_give_the_same_relevance() -> None:
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    results = [onnxcam.relevance(small_resnet(folded)[0], x, layers=["r1"], input_relevance=True, device="cpu")
               for folded in (True, False)]
    np.testing.assert_allclose(results[0].relevance["r1"], results[1].relevance["r1"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(results[0].input_relevance, results[1].input_relevance, rtol=1e-3, atol=1e-6)


# --- Relevance-CAM on the shipped model ---------------------------------------------------------------------------
def shapes_batch(count: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from onnxcam.datasets.shapes import make_sample

    rng = np.random.default_rng(seed)
    samples = [make_sample(rng) for _ in range(count)]
    images = np.stack([s[0] for s in samples]).astype(np.float64) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((images - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    return x, np.array([s[1][0] for s in samples]), np.stack([s[2][0] for s in samples])


@pytest.fixture(scope="module")
def resnet() -> onnxcam.Explainer:
    return onnxcam.Explainer(RESNET, device="cpu")


def test_relevance_is_conserved_down_the_resnet() -> None:
    """z+ without biases, identity through ReLU, proportional GAP and Add: the contrastive start's total
    (1 - 7/8 = 0.125 for 8 classes) reaches every layer."""
    x, labels, _ = shapes_batch(4)
    res = onnxcam.relevance(RESNET, x, labels, layers=[STAGE3, STAGE2], input_relevance=True, device="cpu")
    for layer in (STAGE3, STAGE2):
        np.testing.assert_allclose(res.relevance[layer].reshape(4, -1).sum(axis=1), 0.125, rtol=2e-3)
    np.testing.assert_allclose(res.input_relevance.reshape(4, -1).sum(axis=1), 0.125, rtol=2e-2)
    np.testing.assert_array_equal(res.targets, labels)


@pytest.mark.parametrize("layer", [STAGE3, STAGE2], ids=["stage3", "stage2"])
def test_relevancecam_points_at_the_object(resnet: onnxcam.Explainer, layer: str) -> None:
    from onnxcam.metrics import pointing_game

    x, labels, masks = shapes_batch(20)
    maps = resnet.explain(x, "relevancecam", targets=labels, layer=layer)
    assert maps.shape == (20, 96, 96) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.isfinite(maps).all()
    hits = pointing_game(maps, masks)
    chance = masks.mean()  # the hit rate of a map whose maximum falls anywhere (about 0.12 here)
    assert hits.mean() >= max(0.5, 4 * chance)  # measured on these 20 images: 0.85 (stage3), 0.65 (stage2)


def test_relevancecam_options(resnet: onnxcam.Explainer) -> None:
    x, labels, _ = shapes_batch(2)
    default = resnet.explain(x, "relevancecam", targets=labels)
    # the official map: sum_k mean(R_k) A_k, min-max normalised with no ReLU, then resized
    res = onnxcam.relevance(RESNET, x, labels, layers=STAGE3, device="cpu")
    raw = np.einsum("nk,nkhw->nhw", res.relevance[STAGE3].mean(axis=(2, 3)), res.activations[STAGE3])
    low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    want = [cv2.resize(((m - lo) / (hi - lo)).astype(np.float32), (96, 96), interpolation=cv2.INTER_LINEAR)
            for m, lo, hi in zip(raw, low, high)]
    np.testing.assert_allclose(default, np.stack(want), atol=1e-4)
    epsilon = resnet.explain(x, "relevancecam", targets=labels, rule="epsilon", epsilon=1e-3)
    scored = resnet.explain(x, "relevancecam", targets=labels, initial="score", relu=True)
    assert not np.allclose(default, epsilon) and np.isfinite(scored).all()
    with pytest.raises(InputError, match="unknown relevance rule 'lrp'"):
        resnet.explain(x, "relevancecam", rule="lrp")
    with pytest.raises(InputError, match="unknown initial relevance"):
        resnet.explain(x, "relevancecam", initial="uniform")


def test_nhwc_model() -> None:
    """An NHWC export (input Transpose, NHWC feature map before the head): maps and layouts work."""
    model = ROOT / "models" / "torch_exports" / "nhwc_op13.onnx"
    explainer = onnxcam.Explainer(model, device="cpu")
    x = RNG.standard_normal((2, 64, 64, 3)).astype(np.float32)
    maps = explainer.explain(x, "relevancecam")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and 0 <= maps.min() < maps.max() <= 1
    res = onnxcam.relevance(model, x, layers=["/Transpose_1_output_0", "/features/features.11/Clip_output_0"],
                            input_relevance=True, device="cpu")
    np.testing.assert_allclose(res.relevance["/Transpose_1_output_0"].transpose(0, 3, 1, 2),
                               res.relevance["/features/features.11/Clip_output_0"], rtol=1e-5, atol=1e-8)
    assert res.input_relevance.shape == x.shape


def test_vision_transformer_tokens() -> None:
    """Attention (MatMul of computed tensors, Softmax), LayerNorm and the class token: maps on the token grid."""
    model = ROOT / "models" / "torch_exports" / "vit_op18.onnx"
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    maps = onnxcam.Explainer(model, device="cpu").explain(x, "relevancecam")
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and 0 <= maps.min() < maps.max() <= 1


def test_inspect_leaves_out_relevancecam_when_an_op_has_no_relevance_rule(tmp_path: Path) -> None:
    from onnxcam.cli.inspect import describe_model as _inspect

    w, fc = RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal((5, 4))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sin", ["c"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]  # default layer: 'c', before the Sin
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, "logits", {"w": w, "fc": fc}, flatten=False)
    path = tmp_path / "sine.onnx"
    onnx.save(model, str(path))
    working = _inspect(path)["methods"]["working"]
    assert "gradcam" in working and "relevancecam" not in working
