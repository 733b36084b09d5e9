"""Elementwise and activation rules against float64 finite differences."""

import numpy as np
import pytest
from gradcheck import check_op

rng = np.random.default_rng(0)


def away_from(values: np.ndarray, kinks: list[float], margin: float = 0.05) -> np.ndarray:
    """Move values off the points where the function has a kink, so finite differences are valid."""
    out = values.copy()
    for k in kinks:
        near = np.abs(out - k) < margin
        out[near] = k + margin * 2 * np.sign(out[near] - k + 1e-12)
    return out


BROADCASTS = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (3, 1)), ((2, 1, 4), (3, 1)), ((4,), (2, 3, 4)), ((2, 3, 4), ())]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("shapes", BROADCASTS)
def test_binary(op, shapes):
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = np.asarray(rng.standard_normal(shapes[1]), dtype=np.float32)
    if op == "Div":
        b = np.asarray(np.abs(b) + 0.5, dtype=np.float32)
    check_op(op, {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op):
    xs = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip("abc", [(2, 3), (3,), (2, 1)])}
    check_op(op, xs)


def test_pow_both_inputs():
    a = (np.abs(rng.standard_normal((2, 3))) + 0.5).astype(np.float32)
    b = rng.standard_normal((3,)).astype(np.float32)
    check_op("Pow", {"a": a, "b": b})


def test_pow_constant_exponent_negative_base():
    a = away_from(rng.standard_normal((3, 4)).astype(np.float32), [0.0], 0.2)
    check_op("Pow", {"a": a}, {"e": np.array(3.0, np.float32)}, wrt=["a"])


def test_where():
    cond = rng.random((2, 3, 4)) > 0.5
    check_op("Where", {"x": rng.standard_normal((2, 3, 4)).astype(np.float32),
                       "y": rng.standard_normal((3, 1)).astype(np.float32)},
             {"c": cond}, wrt=["x", "y"], input_names=["c", "x", "y"])


UNARY = [
    ("Relu", {}, [0.0], 17), ("LeakyRelu", {"alpha": 0.3}, [0.0], 17), ("Elu", {"alpha": 0.7}, [0.0], 17),
    ("Selu", {}, [0.0], 17), ("Celu", {"alpha": 1.3}, [0.0], 17), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4},
                                                                       [-4 / 3, 2.0], 17),
    ("HardSwish", {}, [-3.0, 3.0], 17), ("Sigmoid", {}, [], 17), ("Tanh", {}, [], 17), ("Softplus", {}, [], 17),
    ("Softsign", {}, [0.0], 17), ("Erf", {}, [], 17), ("Gelu", {}, [], 20), ("Gelu", {"approximate": "tanh"}, [], 20),
    ("Exp", {}, [], 17), ("Neg", {}, [], 17), ("Abs", {}, [0.0], 17), ("Identity", {}, [], 17),
    ("Mish", {}, [], 18), ("Sin", {}, [], 17), ("Cos", {}, [], 17),
]


@pytest.mark.parametrize("op,attrs,kinks,opset", UNARY, ids=[f"{u[0]}-{i}" for i, u in enumerate(UNARY)])
def test_unary(op, attrs, kinks, opset):
    x = away_from((rng.standard_normal((2, 3, 5)) * 2).astype(np.float32), kinks)
    check_op(op, {"x": x}, opset=opset, **attrs)


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_positive_domain(op):
    check_op(op, {"x": (rng.random((3, 4)) + 0.3).astype(np.float32)})


def test_prelu_with_slope_gradient():
    x = away_from(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), [0.0])
    check_op("PRelu", {"x": x, "s": rng.random((3, 1, 1)).astype(np.float32)})


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_clip_bounds_as_inputs(opset):
    x = away_from(rng.standard_normal((3, 4)).astype(np.float32), [-0.5, 0.7])
    check_op("Clip", {"x": x}, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}, wrt=["x"],
             opset=opset)


def test_clip_only_max():
    x = away_from(rng.standard_normal((3, 4)).astype(np.float32), [0.7])
    check_op("Clip", {"x": x}, {"hi": np.array(0.7, np.float32)}, wrt=["x"], input_names=["x", "", "hi"])


def test_clip_attributes_opset6():
    x = away_from(rng.standard_normal((3, 4)).astype(np.float32), [-0.2, 0.6])
    check_op("Clip", {"x": x}, opset=6, min=-0.2, max=0.6)


def test_dropout_inference_is_identity():
    check_op("Dropout", {"x": rng.standard_normal((2, 5)).astype(np.float32)})


def test_dynamic_broadcast_shapes():
    """Symbolic dims force the run-time unbroadcast path."""
    from gradcheck import check_model
    from onnx import TensorProto, helper

    node = helper.make_node("Mul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, "W"]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, ["M", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_model(model, {"a": rng.standard_normal((2, 3, 4)).astype(np.float32),
                        "b": rng.standard_normal((3, 1)).astype(np.float32)})
