"""Gradient rules for convolutions and pooling, checked against float64 finite differences.

onnx's reference evaluator gets some of these ops wrong (ConvTranspose with groups or an explicit output_shape,
MaxPool with asymmetric pads, AveragePool in ceil mode). Where its forward value differs from onnxruntime's, the
finite differences use a small NumPy implementation of onnxruntime's semantics instead, after checking that it
reproduces onnxruntime's forward output.
"""

from __future__ import annotations

import itertools
from typing import Any

import gradcheck
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import check_model, check_op, make_op_model
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxcam.errors import GradientError
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import gradient_model

# --- NumPy versions of onnxruntime's forward semantics -------------------------------------------------------------


def _auto_pads(sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int], pads: Any,
               auto_pad: str) -> tuple[list[int], list[int]]:
    n = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max(0, (-(-i // s) - 1) * s + (k - 1) * d + 1 - i)
                  for i, k, s, d in zip(sizes, kernel, strides, dilations)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        return begin, [t - p for t, p in zip(totals, begin)]
    pads = [0] * 2 * n if auto_pad == "VALID" or pads is None else list(pads)
    return pads[:n], pads[n:]


def numpy_pool(kind: str, x: np.ndarray, kernel_shape: Any, strides: Any = None, dilations: Any = None,
               pads: Any = None, auto_pad: Any = "NOTSET", ceil_mode: Any = 0, count_include_pad: Any = 0,
               p: Any = 2, **_: Any) -> np.ndarray:
    k = list(kernel_shape)
    n = len(k)
    s, d = list(strides or [1] * n), list(dilations or [1] * n)
    sizes = list(x.shape[2:])
    pb, pe = _auto_pads(sizes, k, s, d, pads, auto_pad or "NOTSET")
    outs = []
    for i in range(n):
        span = sizes[i] + pb[i] + pe[i] - (k[i] - 1) * d[i] - 1
        o = (-(-span // s[i]) if ceil_mode else span // s[i]) + 1
        outs.append(o - 1 if ceil_mode and (o - 1) * s[i] >= sizes[i] + pb[i] else o)
    y = np.zeros(x.shape[:2] + tuple(outs), x.dtype)
    for o in itertools.product(*[range(v) for v in outs]):
        axes = [[o[i] * s[i] + j * d[i] - pb[i] for j in range(k[i])] for i in range(n)]
        valid = [[a for a in ax if 0 <= a < sizes[i]] for i, ax in enumerate(axes)]
        block = x[(slice(None), slice(None)) + np.ix_(*valid)].reshape(*x.shape[:2], -1)
        if kind == "max":
            y[(...,) + o] = block.max(-1)
        elif kind == "lp":
            y[(...,) + o] = (np.abs(block) ** p).sum(-1) ** (1.0 / p)
        else:
            inside = [len([a for a in ax if a < sizes[i] + pe[i]]) for i, ax in enumerate(axes)]
            y[(...,) + o] = block.sum(-1) / np.prod(inside if count_include_pad else [len(v) for v in valid])
    return y


def numpy_conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, strides: Any = None,
                         dilations: Any = None, group: Any = 1, pads: Any = None, output_padding: Any = None,
                         output_shape: Any = None, auto_pad: Any = "NOTSET", **_: Any) -> np.ndarray:
    n = x.ndim - 2
    s, d = list(strides or [1] * n), list(dilations or [1] * n)
    extra = list(output_padding or [0] * n)
    group = group or 1
    kernel, sizes = w.shape[2:], x.shape[2:]
    cg, mg = x.shape[1] // group, w.shape[1]
    full_sizes = [(i - 1) * st + (k - 1) * dl + 1 for i, k, st, dl in zip(sizes, kernel, s, d)]
    full = np.zeros((x.shape[0], mg * group, *full_sizes))
    for gi, kk in itertools.product(range(group), itertools.product(*[range(k) for k in kernel])):
        rows = slice(gi * cg, (gi + 1) * cg)
        part = np.einsum("nc...,cm->nm...", x[:, rows], w[(rows, slice(None)) + kk])
        where = tuple(slice(k * dl, k * dl + (i - 1) * st + 1, st) for k, dl, i, st in zip(kk, d, sizes, s))
        full[(slice(None), slice(gi * mg, (gi + 1) * mg)) + where] += part
    y = full
    for i in range(n):
        if output_shape is not None and len(output_shape) or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = list(output_shape)[-n:][i] if output_shape is not None and len(output_shape) else sizes[i] * s[i]
            total = max(0, full_sizes[i] + extra[i] - target)
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            out = target if output_shape is not None and len(output_shape) else full_sizes[i] + extra[i] - total
        else:
            given = [0] * 2 * n if auto_pad == "VALID" or pads is None else list(pads)
            head, out = given[i], full_sizes[i] + extra[i] - given[i] - given[n + i]
        at = np.arange(out) + head
        inside = (at >= 0) & (at < full_sizes[i])
        y = np.take(y, np.clip(at, 0, full_sizes[i] - 1), axis=2 + i)
        y = y * inside.reshape([-1] + [1] * (n - 1 - i))
    return y if b is None else y + b.reshape([1, -1] + [1] * n)


ORACLES = {
    "MaxPool": lambda x, **a: numpy_pool("max", x, **a),
    "AveragePool": lambda x, **a: numpy_pool("avg", x, **a),
    "LpPool": lambda x, **a: numpy_pool("lp", x, **a),
    "ConvTranspose": numpy_conv_transpose,
    "GlobalMaxPool": lambda x, **_: x.max(axis=tuple(range(2, x.ndim)), keepdims=True),
    "GlobalAveragePool": lambda x, **_: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True),
}


def _oracle_op(op_type: str) -> type[OpRun]:
    def _run(self: OpRun, *args: Any, **attrs: Any) -> tuple[np.ndarray]:
        return (ORACLES[op_type](*args, **attrs),)
    return type(op_type, (OpRun,), {"op_domain": "", "_run": _run})


def _forward_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def check_semantics(monkeypatch: pytest.MonkeyPatch, op_type: str, inputs: dict[str, np.ndarray],
                    wrt: list[str] | None = None, opset: int = 17, **attrs: Any) -> bool:
    """check_op against onnx's reference where its forward agrees with onnxruntime, else against the NumPy oracle
    (which must then agree with onnxruntime). Returns whether the oracle was needed."""
    model = make_op_model(op_type, inputs, None, opset, **attrs)
    expected = _forward_ort(model, inputs)
    feeds64 = {k: v.astype(np.float64) for k, v in inputs.items()}
    try:
        reference = ReferenceEvaluator(gradcheck.to_float64(model)).run(None, feeds64)[0]
        agrees = reference.shape == expected.shape and np.allclose(reference, expected, rtol=1e-4, atol=1e-4)
    except Exception:  # the reference evaluator crashes on some valid attribute combinations
        agrees = False
    if not agrees:
        mine = ORACLES[op_type](*feeds64.values(), **attrs)
        np.testing.assert_allclose(mine, expected, rtol=1e-4, atol=1e-4, err_msg="oracle vs onnxruntime forward")
        plain = gradcheck.ReferenceEvaluator
        monkeypatch.setattr(gradcheck, "ReferenceEvaluator",
                            lambda m, new_ops=(): plain(m, new_ops=[*new_ops, _oracle_op(op_type)]))
    check_model(model, inputs, wrt)
    return not agrees


def _distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 0.05 apart, so maxima have no ties and finite differences do not cross a kink."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.05 - 1.0).astype(np.float32)


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 1.5, shape)).astype(np.float32)


# --- Conv -----------------------------------------------------------------------------------------------------------

# (input shape, weight shape, attributes)
CONV_CASES: list[tuple[tuple[int, ...], tuple[int, ...], dict[str, Any]]] = [
    ((2, 3, 9), (4, 3, 3), {}),
    ((2, 3, 9), (4, 3, 3), {"strides": [2], "pads": [1, 2]}),
    ((1, 2, 10), (2, 2, 2), {"strides": [3], "dilations": [2], "pads": [0, 1]}),
    ((2, 4, 8), (4, 1, 3), {"group": 4, "pads": [1, 1]}),
    ((1, 4, 9), (6, 2, 3), {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2]}),
    ((1, 3, 11), (2, 3, 4), {"auto_pad": "SAME_LOWER", "strides": [3]}),
    ((2, 2, 8), (3, 2, 3), {"auto_pad": "VALID", "strides": [2], "dilations": [2]}),
    ((2, 3, 6, 5), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 2, 7, 6), (3, 2, 3, 3), {"strides": [2, 2], "pads": [0, 1, 2, 0]}),
    ((1, 2, 7, 8), (3, 2, 3, 2), {"strides": [2, 3], "pads": [1, 0, 0, 2]}),
    ((1, 2, 7, 7), (2, 2, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((2, 2, 8, 7), (3, 2, 2, 3), {"dilations": [1, 2], "strides": [2, 1], "pads": [0, 1, 1, 0]}),
    ((1, 4, 6, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ((2, 3, 7, 7), (3, 1, 3, 3), {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 6, 5), (4, 1, 3, 2), {"group": 2, "pads": [1, 0, 1, 1]}),
    ((1, 2, 7, 6), (3, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 7, 6), (3, 2, 2, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((1, 2, 5, 6), (2, 2, 4, 4), {"auto_pad": "SAME_UPPER"}),
    ((1, 2, 5, 6), (2, 2, 3, 2), {"auto_pad": "SAME_LOWER", "strides": [3, 1]}),
    ((1, 2, 8, 7), (3, 2, 2, 2), {"auto_pad": "VALID", "strides": [3, 3]}),
    ((2, 3, 7, 6), (2, 3, 1, 1), {"strides": [2, 2]}),
    ((1, 2, 7, 10), (2, 2, 1, 1), {"auto_pad": "SAME_UPPER", "strides": [3, 4]}),
    ((1, 2, 6, 7), (3, 2, 3, 2), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1]}),
    ((1, 2, 10, 9), (2, 2, 2, 2), {"strides": [3, 3], "pads": [1, 1, 0, 0]}),
    ((1, 2, 7, 7), (2, 2, 3, 3), {"strides": [2, 2], "pads": [2, 2, 2, 2]}),
    ((1, 4, 9, 8), (4, 2, 3, 2), {"group": 2, "dilations": [2, 2], "strides": [2, 2], "pads": [1, 0, 2, 1]}),
    ((1, 6, 5, 5), (3, 2, 2, 2), {"group": 3, "pads": [0, 1, 1, 0]}),
    ((1, 1, 6, 6), (1, 1, 3, 3), {"strides": [3, 3]}),
    ((1, 3, 5, 6), (2, 3, 3, 3), {"strides": [1, 2], "dilations": [2, 1], "pads": [1, 2, 1, 0]}),
    ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), {"strides": [1, 2, 1], "pads": [0, 1, 1, 1, 0, 0]}),
    ((1, 4, 4, 4, 5), (2, 2, 2, 2, 3), {"group": 2, "strides": [2, 1, 2], "dilations": [1, 2, 1]}),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("bias", [True, False])
def test_conv(case: int, bias: bool) -> None:
    x_shape, w_shape, attrs = CONV_CASES[case]
    rng = np.random.default_rng(case)
    inputs = {"x": rng.standard_normal(x_shape).astype(np.float32),
              "w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        inputs["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    check_op("Conv", inputs, opset=(13, 18)[case % 2], **attrs)


def test_conv_constant_weights_give_data_gradient_only() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 7, 7)).astype(np.float32)
    weights = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "b": rng.standard_normal(4).astype(np.float32)}
    check_op("Conv", {"x": x}, weights, strides=[2, 2], pads=[1, 0, 0, 1])
    # onnxruntime keeps dead nodes, so no weight-gradient Conv may be built for constant weights.
    model = make_op_model("Conv", {"x": x}, weights, strides=[2, 2], pads=[1, 0, 0, 1])
    built = gradient_model(load_model(model), ["x"], output="y0", probabilities=True)
    assert [n.op_type for n in built.model.graph.node].count("Conv") == 1


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_data_gradient_with_constant_weights(case: int) -> None:
    """Constant weights (every exported model's): with stride 1 the data gradient is a Conv over flipped,
    channel-swapped weights (per group), else a ConvTranspose; both match finite differences."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    rng = np.random.default_rng(100 + case)
    x = rng.standard_normal(x_shape).astype(np.float32)
    weights = {"w": rng.standard_normal(w_shape).astype(np.float32),
               "b": rng.standard_normal(w_shape[0]).astype(np.float32)}
    check_op("Conv", {"x": x}, weights, opset=(13, 18)[case % 2], **attrs)
    built = gradient_model(load_model(make_op_model("Conv", {"x": x}, weights, opset=(13, 18)[case % 2], **attrs)),
                           ["x"], input_gradient=True, output="y0", probabilities=True)
    ops = [n.op_type for n in built.model.graph.node]
    stride_one = all(s == 1 for s in attrs.get("strides", [1]))
    assert ops.count("ConvTranspose") == (0 if stride_one else 1), ops
    assert ops.count("Conv") == (2 if stride_one else 1), ops


# --- ConvTranspose --------------------------------------------------------------------------------------------------

CONV_TRANSPOSE_CASES: list[tuple[tuple[int, ...], tuple[int, ...], dict[str, Any]]] = [
    ((2, 3, 5), (3, 2, 3), {}),
    ((1, 2, 5), (2, 3, 3), {"strides": [2], "pads": [1, 2], "output_padding": [1]}),
    ((1, 2, 6), (2, 2, 2), {"strides": [3], "dilations": [2], "output_padding": [2]}),
    ((2, 2, 4, 5), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 0, 1]}),
    ((1, 2, 4, 4), (2, 2, 3, 2), {"strides": [2, 3], "output_padding": [1, 2], "pads": [0, 1, 1, 0]}),
    ((1, 4, 3, 4), (4, 2, 3, 3), {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 1, 0, 2]}),
    ((1, 3, 4, 4), (3, 1, 3, 3), {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((1, 2, 4, 3), (2, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 4, 3), (2, 2, 4, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 2, 4, 3), (2, 2, 2, 2), {"auto_pad": "SAME_LOWER", "strides": [3, 3]}),
    ((1, 2, 4, 3), (2, 2, 3, 3), {"auto_pad": "VALID", "strides": [2, 1]}),
    ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [10, 8]}),
    ((1, 2, 5, 4), (2, 2, 4, 3), {"strides": [2, 2], "output_shape": [9, 7]}),
    ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [12, 8]}),
    ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [9, 8], "output_padding": [1, 0]}),
    ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [10, 7], "pads": [0, 1, 1, 0]}),
    ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [8, 6], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 5, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [8, 7], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("case", range(len(CONV_TRANSPOSE_CASES)))
def test_conv_transpose(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    x_shape, w_shape, attrs = CONV_TRANSPOSE_CASES[case]
    rng = np.random.default_rng(100 + case)
    group = attrs.get("group", 1)
    inputs = {"x": rng.standard_normal(x_shape).astype(np.float32),
              "w": rng.standard_normal(w_shape).astype(np.float32),
              "b": rng.standard_normal(w_shape[1] * group).astype(np.float32)}
    check_semantics(monkeypatch, "ConvTranspose", inputs, opset=(13, 18)[case % 2], **attrs)


# --- pooling --------------------------------------------------------------------------------------------------------

MAX_POOL_CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((2, 3, 9), {"kernel_shape": [3], "strides": [1]}),
    ((1, 2, 10), {"kernel_shape": [3], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 10), {"kernel_shape": [2], "strides": [3], "ceil_mode": 1}),
    ((1, 2, 9), {"kernel_shape": [3], "dilations": [2], "pads": [1, 0], "ceil_mode": 1, "strides": [2]}),
    ((2, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ((1, 3, 7, 6), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 3], "ceil_mode": 1}),
    ((1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [1, 2], "dilations": [2, 2], "pads": [1, 1, 0, 1]}),
    ((1, 2, 8, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "dilations": [2, 1], "ceil_mode": 1,
                    "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 7, 6), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 8, 8), {"kernel_shape": [2, 2], "strides": [3, 3]}),
]


@pytest.mark.parametrize("case", range(len(MAX_POOL_CASES)))
def test_max_pool(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    shape, attrs = MAX_POOL_CASES[case]
    x = _distinct(np.random.default_rng(200 + case), shape)
    check_semantics(monkeypatch, "MaxPool", {"x": x}, opset=(13, 18)[case % 2], **attrs)


def test_max_pool_with_indices_output() -> None:
    x = _distinct(np.random.default_rng(3), (1, 2, 6, 6))
    model = make_op_model("MaxPool", {"x": x}, outputs=2, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    check_model(model, {"x": x}, output="y0")


def test_max_pool_column_major_indices_refused() -> None:
    model = make_op_model("MaxPool", {"x": np.zeros((1, 1, 4, 4), np.float32)}, kernel_shape=[2, 2],
                          storage_order=1)
    with pytest.raises(GradientError, match="storage_order"):
        gradient_model(load_model(model), ["x"], output="y0", probabilities=True)


AVERAGE_POOL_CASES: list[tuple[tuple[int, ...], dict[str, Any], int]] = [
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 13),
    ((1, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 2], "count_include_pad": 1}, 18),
    ((1, 2, 10), {"kernel_shape": [3], "strides": [3], "ceil_mode": 1}, 13),
    ((1, 2, 10), {"kernel_shape": [3], "strides": [3], "ceil_mode": 1, "pads": [1, 0], "count_include_pad": 1}, 18),
    ((1, 2, 11), {"kernel_shape": [2], "strides": [2], "dilations": [2], "pads": [1, 1], "ceil_mode": 1}, 19),
    ((2, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}, 13),
    ((1, 2, 7, 6), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 2, 1], "count_include_pad": 1}, 18),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 3], "ceil_mode": 1}, 13),
    ((1, 2, 7, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1, "count_include_pad": 1,
                    "pads": [1, 1, 1, 0]}, 18),
    ((1, 2, 8, 7), {"kernel_shape": [2, 2], "strides": [2, 1], "dilations": [2, 2], "pads": [1, 0, 1, 1]}, 19),
    ((1, 2, 8, 7), {"kernel_shape": [3, 2], "strides": [3, 2], "dilations": [1, 2], "ceil_mode": 1,
                    "count_include_pad": 1, "pads": [1, 1, 0, 0]}, 19),
    ((1, 2, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 13),
    ((1, 2, 7, 6), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER", "count_include_pad": 1}, 18),
    ((1, 2, 8, 8), {"kernel_shape": [2, 2], "strides": [3, 3]}, 18),
]


@pytest.mark.parametrize("case", range(len(AVERAGE_POOL_CASES)))
def test_average_pool(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    shape, attrs, opset = AVERAGE_POOL_CASES[case]
    x = np.random.default_rng(300 + case).standard_normal(shape).astype(np.float32)
    check_semantics(monkeypatch, "AveragePool", {"x": x}, opset=opset, **attrs)


LP_POOL_CASES: list[tuple[tuple[int, ...], dict[str, Any], int]] = [
    ((1, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 13),
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2], "p": 1}, 13),
    ((1, 2, 7, 6), {"kernel_shape": [3, 2], "strides": [2, 1], "p": 3, "pads": [1, 0, 0, 1]}, 18),
    ((1, 2, 7, 8), {"kernel_shape": [2, 3], "strides": [2, 3], "dilations": [2, 1], "ceil_mode": 1}, 18),
]


@pytest.mark.parametrize("case", range(len(LP_POOL_CASES)))
def test_lp_pool(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    shape, attrs, opset = LP_POOL_CASES[case]
    x = _away_from_zero(np.random.default_rng(400 + case), shape)
    check_semantics(monkeypatch, "LpPool", {"x": x}, opset=opset, **attrs)


@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 2, 5, 6), (1, 2, 3, 4, 3)])
@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(monkeypatch: pytest.MonkeyPatch, op_type: str, shape: tuple[int, ...]) -> None:
    x = _distinct(np.random.default_rng(len(shape)), shape)
    check_semantics(monkeypatch, op_type, {"x": x}, opset=(13, 18)[len(shape) % 2])


def test_global_max_pool_splits_ties() -> None:
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]], np.float32)
    built = gradient_model(load_model(make_op_model("GlobalMaxPool", {"x": x})), ["x"], output="y0",
                           probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = session.run([built.gradients["x"]], {"x": x, built.seed: np.ones((1, 1, 1, 1), np.float32)})[0]
    np.testing.assert_allclose(grad, [[[[0.0, 0.5], [0.5, 0.0]]]])


# --- symbolic spatial sizes -----------------------------------------------------------------------------------------

SYMBOLIC_CASES: list[tuple[str, dict[str, np.ndarray], dict[str, Any]]] = [
    ("Conv", {"w": np.ones((3, 2, 3, 3))}, {"strides": [2, 2], "pads": [1, 0, 0, 2]}),
    ("Conv", {"w": np.ones((4, 1, 3, 2)), "b": np.ones(4)}, {"auto_pad": "SAME_UPPER", "strides": [2, 3],
                                                                "group": 2}),
    ("Conv", {"w": np.ones((2, 2, 2, 2))}, {"auto_pad": "SAME_LOWER", "strides": [2, 2], "dilations": [1, 1]}),
    ("ConvTranspose", {"w": np.ones((2, 3, 3, 3))}, {"strides": [2, 2], "pads": [1, 0, 0, 1],
                                                     "output_padding": [1, 1]}),
    ("ConvTranspose", {"w": np.ones((2, 2, 3, 2))}, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("MaxPool", {}, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {}, {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1, "dilations": [1, 2]}),
    ("AveragePool", {}, {"kernel_shape": [3, 3], "strides": [2, 3], "ceil_mode": 1}),
    ("AveragePool", {}, {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", {}, {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("LpPool", {}, {"kernel_shape": [2, 2], "strides": [2, 1]}),
    ("GlobalAveragePool", {}, {}),
    ("GlobalMaxPool", {}, {}),
]


@pytest.mark.parametrize("case", range(len(SYMBOLIC_CASES)))
def test_symbolic_spatial_dims(case: int) -> None:
    """Graph input shaped ['N', C, 'H', 'W']: the rules must build their shapes at run time."""
    op_type, params, attrs = SYMBOLIC_CASES[case]
    rng = np.random.default_rng(500 + case)
    inputs = {"x": _distinct(rng, (2, 2, 7, 8))}
    inputs.update({k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()})
    model = make_op_model(op_type, inputs, opset=17, **attrs)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for index, name in ((0, "N"), (2, "H"), (3, "W")):
        dims[index].dim_param = name
    check_model(model, inputs)


def test_conv_pool_chain() -> None:
    """Conv -> MaxPool -> Conv -> AveragePool, differentiated through the whole stack."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    w1 = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Conv", ["b", "w2"], ["c"], strides=[1, 1]),
             helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=gradcheck.IR_VERSION)
    check_model(model, {"x": x})
