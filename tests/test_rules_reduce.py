"""Gradient rules of reductions, checked against finite differences."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import check_model, check_op, make_op_model

from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, gradient_model

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
              "ReduceLogSumExp", "ReduceLogSum"]
# The opset where `axes` moved from an attribute to an input.
AXES_INPUT_SINCE = {"ReduceSum": 13}


def sample(op: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Inputs away from kinks: distinct values (no ties for Max/Min), no zeros (L1), positive for LogSum."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    magnitudes = (rng.permutation(size).reshape(shape) + 0.5) * (2.0 / size)
    signs = np.ones(shape) if op == "ReduceLogSum" else rng.choice([-1.0, 1.0], shape)
    return (magnitudes * signs).astype(np.float32)


def check_reduce(op: str, x: np.ndarray, axes: list[int] | None, keepdims: int, opset: int) -> None:
    if axes is None:
        check_op(op, {"x": x}, opset=opset, keepdims=keepdims)
    elif opset >= AXES_INPUT_SINCE.get(op, 18):
        check_op(op, {"x": x}, {"axes": np.array(axes)}, opset=opset, keepdims=keepdims)
    else:
        check_op(op, {"x": x}, opset=opset, keepdims=keepdims, axes=axes)


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("axes", [[1], [-1, 0], [0, 2, 1], None])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [13, 18])
def test_reduce(op: str, axes: list[int] | None, keepdims: int, opset: int) -> None:
    check_reduce(op, sample(op, (2, 3, 4), seed=len(axes or ())), axes, keepdims, opset)


@pytest.mark.parametrize("op", REDUCTIONS)
def test_reduce_opset11_attribute(op: str) -> None:
    check_reduce(op, sample(op, (3, 2, 2)), [-2], 0, 11)


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_noop_with_empty_axes(op: str, keepdims: int) -> None:
    """No axes with noop_with_empty_axes=1: a reduction over no axes (elementwise for L1/L2/SumSquare/...)."""
    opset = 18 if op != "ReduceSum" else 13
    check_op(op, {"x": sample(op, (2, 3))}, opset=opset, keepdims=keepdims, noop_with_empty_axes=1)
    check_op(op, {"x": sample(op, (2, 3))}, {"axes": np.zeros(0, np.int64)}, opset=opset, keepdims=keepdims,
             noop_with_empty_axes=1)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_run_time_axes(op: str, keepdims: int) -> None:
    """Axes fed as a graph input (not a constant)."""
    feeds = {"x": sample(op, (2, 3, 4)), "axes": np.array([-1, 1])}
    check_model(make_op_model(op, feeds, opset=18, keepdims=keepdims), feeds, wrt=["x"])


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_symbolic(op: str, keepdims: int) -> None:
    x = sample(op, (2, 3, 2, 3))
    model = make_op_model(op, {"x": x}, {"axes": np.array([2, 3])}, opset=18, keepdims=keepdims)
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, ["N", None, "H", "W"]):
        if name:
            dim.Clear()
            dim.dim_param = name
    check_model(model, {"x": x})


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_ties_share_equally(op: str) -> None:
    """Tied extrema split the gradient equally (finite differences are undefined there, so check the values)."""
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], np.float32)
    if op == "ReduceMin":
        x = -x
    model = make_op_model(op, {"x": x}, {"axes": np.array([1])}, opset=18, keepdims=0)
    grads = gradient(model, x, np.array([1.0, 3.0], np.float32))
    np.testing.assert_allclose(grads, np.array([[0, 0.5, 0.5], [1, 1, 1]]))


def test_reduce_l2_of_zeros_is_finite() -> None:
    x = np.zeros((2, 3), np.float32)
    model = make_op_model("ReduceL2", {"x": x}, {"axes": np.array([1])}, opset=18, keepdims=0)
    assert np.all(gradient(model, x, np.ones(2, np.float32)) == 0)


def gradient(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    built = gradient_model(load_model(model), ["x"], output="y0", probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([GRAD_PREFIX + "x"], {"x": x, SEED: seed})[0]  # type: ignore[no-any-return]
