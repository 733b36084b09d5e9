"""Check rewritten gradients (onnxruntime, float32) against float64 finite differences (onnx reference evaluator).

`check_op` builds a one-node model, `check_model` takes any model. The score is sum(seed * output) with a random
seed, the directional derivative along random directions is compared with central differences, and for small
inputs every element is checked too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, gradient_model

IR_VERSION = 8


class Erf64(OpRun):
    """The reference Erf rounds to float32; finite differences need float64."""

    op_domain = ""

    def _run(self, x):  # type: ignore[no-untyped-def]
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


Erf64.__name__ = "Erf"


class Gelu64(OpRun):
    """Gelu is expanded through its function body, whose Erf is float32; this one is float64."""

    op_domain = ""

    def _run(self, x, approximate="none"):  # type: ignore[no-untyped-def]
        if approximate == "tanh":
            return (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),)
        return (0.5 * x * (1 + np.vectorize(math.erf, otypes=[x.dtype])(x / math.sqrt(2))),)


Gelu64.__name__ = "Gelu"


def make_op_model(op_type: str, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None,
                  opset: int = 17, outputs: int = 1, input_names: Sequence[str] | None = None,
                  **attrs: Any) -> onnx.ModelProto:
    """One node; `inputs` become graph inputs (with their shapes), `constants` initializers.

    `input_names` gives the node's input order (use "" for an omitted optional input).
    """
    constants = constants or {}
    order = list(input_names) if input_names is not None else list(inputs) + list(constants)
    out_names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op_type, order, out_names, name="op", **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in inputs.items()]
    graph = helper.make_graph(
        [node], "op_graph", graph_inputs,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in out_names],
        [numpy_helper.from_array(a, n) for n, a in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: float tensors, casts and constants become double."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph

    def fix_tensor(t: onnx.TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    for t in g.initializer:
        fix_tensor(t)
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR:
                fix_tensor(a.t)
    return m


def _float64_inputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}


def check_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: Sequence[str] | None = None,
                output: str | None = None, rtol: float = 2e-4, eps: float = 1e-6, directions: int = 3,
                elementwise_limit: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Assert that the rewritten model's gradients w.r.t. the graph inputs `wrt` match finite differences."""
    rng = np.random.default_rng(seed)
    wrt = list(wrt) if wrt is not None else [n for n, v in feeds.items() if v.dtype == np.float32]
    output = output or model.graph.output[0].name
    loaded = load_model(model)
    built = gradient_model(loaded, wrt, output=output, probabilities=True)
    assert all(n.domain in ("", "ai.onnx") for n in built.model.graph.node), "rewritten model uses non-default ops"
    session = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])

    reference = ReferenceEvaluator(to_float64(model), new_ops=[Erf64, Gelu64])
    feeds64 = _float64_inputs(feeds)
    base = reference.run([output], feeds64)[0]
    weights = rng.standard_normal(base.shape)

    def score(changed: dict[str, np.ndarray]) -> float:
        return float(np.sum(weights * reference.run([output], {**feeds64, **changed})[0]))

    got = session.run([GRAD_PREFIX + n for n in wrt], {**feeds, SEED: weights.astype(np.float32)})
    grads = dict(zip(wrt, got))
    for name in wrt:
        x = feeds64[name]
        grad = grads[name].astype(np.float64)
        assert grad.shape == x.shape, f"gradient of {name} has shape {grad.shape}, expected {x.shape}"
        scale = max(np.abs(grad).max(), 1e-3)
        for _ in range(directions):
            v = rng.standard_normal(x.shape)
            fd = (score({name: x + eps * v}) - score({name: x - eps * v})) / (2 * eps)
            analytic = float(np.sum(grad * v))
            tol = rtol * scale * np.sqrt(v.size) * 4 + 1e-6
            assert abs(fd - analytic) <= tol, f"d/d{name} along a random direction: onnx {analytic}, fd {fd}"
        if x.size <= elementwise_limit:
            fd_full = np.zeros_like(x)
            for i in range(x.size):
                e = np.zeros(x.size)
                e[i] = eps
                e = e.reshape(x.shape)
                fd_full.flat[i] = (score({name: x + e}) - score({name: x - e})) / (2 * eps)
            np.testing.assert_allclose(grad, fd_full, rtol=rtol * 10, atol=rtol * scale,
                                       err_msg=f"elementwise gradient of {name}")
    return grads


def check_op(op_type: str, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None,
             wrt: Sequence[str] | None = None, opset: int = 17, outputs: int = 1, output: str | None = None,
             input_names: Sequence[str] | None = None, **attrs: Any) -> dict[str, np.ndarray]:
    model = make_op_model(op_type, inputs, constants, opset, outputs, input_names, **attrs)
    return check_model(model, inputs, wrt, output=output)
