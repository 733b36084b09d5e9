"""Gemm, MatMul, Einsum, CumSum and TopK rules against float64 finite differences."""

import numpy as np
import pytest
from gradcheck import check_model, check_op, make_op_model
from onnx import TensorProto

from onnxcam.errors import GradientError
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import gradient_model

rng = np.random.default_rng(0)


def normal(*shape: int) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape), dtype=np.float32)


def symbolic(model, dims):  # type: ignore[no-untyped-def]
    """Make the given dims of graph inputs symbolic: dims maps input name -> {axis: dim_param}."""
    for value in model.graph.input:
        for axis, param in dims.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = param
    return model


# --- Gemm --------------------------------------------------------------------------------------------------------

C_SHAPES = [None, (), (5,), (1, 5), (3, 1), (3, 5)]


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", C_SHAPES)
def test_gemm(trans_a, trans_b, c_shape):
    m, k, n = 3, 4, 5
    feeds = {"a": normal(*((k, m) if trans_a else (m, k))), "b": normal(*((n, k) if trans_b else (k, n)))}
    if c_shape is not None:
        feeds["c"] = normal(*c_shape)
    alpha, beta = float(rng.choice([1.0, 0.7, -1.5])), float(rng.choice([1.0, 0.3, -2.0]))
    check_op("Gemm", feeds, opset=int(rng.choice([13, 17, 21])), transA=trans_a, transB=trans_b, alpha=alpha,
             beta=beta)


def test_gemm_constant_weights_default_attributes():
    """A classifier head: only the activation gets a gradient, and no product is spent on the weights."""
    check_op("Gemm", {"x": normal(2, 6)}, {"w": normal(4, 6), "bias": normal(4)}, transB=1)
    model = make_op_model("Gemm", {"x": normal(2, 6)}, {"w": normal(4, 6), "bias": normal(4)}, transB=1)
    built = gradient_model(load_model(model), ["x"], probabilities=True)
    assert [n.op_type for n in built.model.graph.node].count("Gemm") == 2


# --- MatMul ------------------------------------------------------------------------------------------------------

MATMUL = [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
          ((2, 1, 3, 4), (5, 4, 2)), ((2, 1, 3, 4), (1, 5, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
          ((2, 3, 1), (2, 1, 4))]


@pytest.mark.parametrize("shapes", MATMUL, ids=[f"{a}@{b}" for a, b in MATMUL])
@pytest.mark.parametrize("opset", [13, 18])
def test_matmul(shapes, opset):
    check_op("MatMul", {"a": normal(*shapes[0]), "b": normal(*shapes[1])}, opset=opset)


def test_matmul_constant_weight():
    check_op("MatMul", {"x": normal(2, 3, 4)}, {"w": normal(4, 6)})


# --- Einsum ------------------------------------------------------------------------------------------------------

EINSUM = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bhid,bhjd->bhij", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("bhij,bhjd->bhid", [(2, 2, 3, 5), (2, 2, 5, 4)]),
    ("bchw,bkc->bkhw", [(2, 3, 2, 4), (2, 5, 3)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->i", [(3, 4, 2)]),
    ("ij->", [(3, 4)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ba,ca", [(3, 4), (2, 4)]),
    ("bij,k->bik", [(2, 3, 4), (5,)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,jk->...ik", [(2, 2, 3, 4), (4, 5)]),
    ("b...,b->...", [(2, 3, 4), (2,)]),
    ("...ij,...jk", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(1, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 3, 4, 2)]),
    ("b i j , b j k -> b i k", [(2, 3, 4), (2, 4, 2)]),
]


@pytest.mark.parametrize("equation,shapes", EINSUM, ids=[e for e, _ in EINSUM])
def test_einsum(equation, shapes):
    feeds = {f"x{i}": normal(*s) for i, s in enumerate(shapes)}
    check_op("Einsum", feeds, opset=int(rng.choice([13, 17, 18])), equation=equation)


def test_einsum_constant_operand():
    check_op("Einsum", {"q": normal(2, 3, 4)}, {"k": normal(2, 5, 4)}, equation="bid,bjd->bij")


@pytest.mark.parametrize("equation,shape", [("ii->i", (3, 3)), ("bii->b", (2, 3, 3))])
def test_einsum_repeated_subscript_is_refused(equation, shape):
    model = make_op_model("Einsum", {"x": normal(*shape)}, equation=equation)
    with pytest.raises(GradientError, match="'op'"):
        gradient_model(load_model(model), ["x"], probabilities=True)


# --- CumSum, TopK ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum(exclusive, reverse, axis):
    check_op("CumSum", {"x": normal(3, 4, 2)}, {"axis": np.array(axis, np.int64)}, wrt=["x"],
             opset=int(rng.choice([13, 17])), exclusive=exclusive, reverse=reverse)


def topk_model(x: np.ndarray, k: int, opset: int = 17, **attrs):  # type: ignore[no-untyped-def]
    model = make_op_model("TopK", {"x": x}, {"k": np.array([k], np.int64)}, opset=opset, outputs=2, **attrs)
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    return model


@pytest.mark.parametrize("axis,k", [(-1, 2), (0, 1), (1, 3), (2, 4)])
@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_topk(axis, k, largest, opset):
    x = normal(3, 4, 5)
    grads = check_model(topk_model(x, k, opset, axis=axis, largest=largest), {"x": x}, output="y0")
    assert (np.count_nonzero(grads["x"], axis=axis) == k).all()


def test_topk_default_attributes():
    x = normal(2, 6)
    check_model(topk_model(x, 3), {"x": x}, output="y0")


# --- symbolic (dynamic) dims -------------------------------------------------------------------------------------

DYNAMIC = [
    ("Gemm", {"a": (3, 4), "b": (5, 4), "c": (5,)}, {"transB": 1, "alpha": 0.5}, {"a": {0: "N"}}),
    ("MatMul", {"a": (2, 3, 4), "b": (4, 5)}, {}, {"a": {0: "N", 1: "T"}}),
    ("MatMul", {"a": (2, 3, 4), "b": (1, 4, 5)}, {}, {"a": {0: "N"}, "b": {0: "M"}}),
    ("MatMul", {"a": (4,), "b": (2, 4, 3)}, {}, {"b": {0: "N", 2: "K"}}),
    ("Einsum", {"a": (2, 3, 4), "b": (2, 5, 4)}, {"equation": "bid,bjd->bij"}, {"a": {0: "N", 1: "T"}, "b": {0: "N"}}),
    ("Einsum", {"a": (2, 3, 4)}, {"equation": "b...j->...b"}, {"a": {0: "N", 1: "T"}}),
    ("CumSum", {"x": (2, 3)}, {"reverse": 1}, {"x": {0: "N"}}),
    ("TopK", {"x": (2, 5)}, {}, {"x": {0: "N"}}),
]


@pytest.mark.parametrize("op,shapes,attrs,dims", DYNAMIC, ids=[f"{d[0]}-{i}" for i, d in enumerate(DYNAMIC)])
def test_symbolic_dims(op, shapes, attrs, dims):
    feeds = {n: normal(*s) for n, s in shapes.items()}
    if op == "TopK":
        model = topk_model(feeds["x"], 2)
    elif op == "CumSum":
        model = make_op_model(op, feeds, {"axis": np.array(1, np.int64)}, **attrs)
    else:
        model = make_op_model(op, feeds, opset=21, **attrs)
    check_model(symbolic(model, dims), feeds, output="y0")
