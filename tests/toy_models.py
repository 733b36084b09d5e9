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


def nhwc_cnn(size: int = 16, classes: int = 4) -> onnx.ModelProto:
    """An NHWC model as tf2onnx writes it: input Transpose, Conv, Relu, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(2)
    weights = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
               "fc_w": rng.standard_normal((6, classes)).astype(np.float32),
               "fc_b": rng.standard_normal(classes).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["img"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("img", TensorProto.FLOAT,
                                                                            ["N", size, size, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
