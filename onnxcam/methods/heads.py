"""Read the linear classifier after a layer (global average pool, flatten, Gemm/MatMul), for the original CAM."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.graph.quantized import constant_array

# Ops between the pooled features and the linear layer that keep their values (an int8 model's up to rounding).
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Identity", "QuantizeLinear", "DequantizeLinear"}


def linear_head_weights(model: onnx.ModelProto, layer: str, score: str) -> np.ndarray | None:
    """(classes, K) weights when `score` = Linear(GlobalAveragePool(layer)), else None."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {t.name: t for t in model.graph.initializer}
    users = consumers.get(layer, [])
    if len(users) != 1 or not _is_global_pool(users[0], weights):
        return None
    current = users[0].output[0]
    while True:
        users = consumers.get(current, [])
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type in _RESHAPES:
            current = node.output[0]
            continue
        value = constant_array(model, node.input[1]) if node.op_type in ("Gemm", "MatMul") else None
        if value is None:  # not a linear layer with constant (float or quantised) weights
            return None
        matrix = value.astype(np.float64)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            matrix = matrix * attrs.get("alpha", 1.0)
            matrix = matrix if attrs.get("transB", 0) else matrix.T
        else:
            matrix = matrix.T
        out = node.output[0]
        follow = consumers.get(out, [])
        if out != score and len(follow) == 1 and follow[0].op_type == "Add":
            out = follow[0].output[0]
        return matrix if out == score else None


def _is_global_pool(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axes"), None)
    if len(node.input) > 1 and node.input[1] in weights:  # axes became an input in opset 18
        axes = numpy_helper.to_array(weights[node.input[1]]).tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) in ([2, 3], [1, 2])
