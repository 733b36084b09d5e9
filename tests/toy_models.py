"""Small hand-built ONNX models for loader, catalogue and rewrite tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(opset: int = 17, softmax: bool = False, batch: int | str = "N", size: int | str = 8,
             ir_version: int = 8, classes: int = 5) -> onnx.ModelProto:
    """input -> Mul (scale) -> Relu -> ReduceMean over H, W -> Gemm -> [Softmax]; spatial tensor is 'feat'."""
    rng = np.random.default_rng(1)
    weights = {
        "scale": rng.random((1, 3, 1, 1)).astype(np.float32) + 0.5,
        "fc_w": rng.standard_normal((classes, 3)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32),
    }
    axes_attr = opset < 18
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"], name="scale"),
        helper.make_node("Relu", ["scaled"], ["feat"], name="relu"),
        helper.make_node("ReduceMean", ["feat"] if axes_attr else ["feat", "axes"], ["pooled"], name="pool",
                         keepdims=0, **({"axes": [2, 3]} if axes_attr else {})),
        helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    if not axes_attr:
        weights["axes"] = np.array([2, 3], np.int64)
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
