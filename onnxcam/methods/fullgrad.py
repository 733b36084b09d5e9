"""FullGrad: input-gradient x input plus bias-gradient x bias at every Conv/BatchNormalization layer."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method


@method("fullgrad", "gradient", "input_gradient", "1 forward+backward to the input",
        "Srinivas & Fleuret, NeurIPS 2019")
def fullgrad(ev: Evidence, fullgrad_scale: str = "channel") -> np.ndarray:
    """Map (N, H, W) at the input's size: S(|dy/dx * x|) + sum over layers S(|dy/dz * b|), z the output of a 2-D
    Conv with a constant bias or of a BatchNormalization (bias b - mean * scale / sqrt(var + eps)) on the path to
    the score. The target layer plays no part (as in pytorch-grad-cam).

    S (fullgrad_scale="channel", pytorch-grad-cam): abs, min-max per image and channel (eps 1e-7), bilinear resize
    to the input (cv2), sum over channels. "layer" (the authors' code): min-max over each image's whole tensor.
    """
    if "input_gradient" not in ev.extras or "bias_gradients" not in ev.extras:
        raise InputError("fullgrad needs the input gradient and the bias-layer gradients; call it through "
                         "onnxcam.Explainer")
    if fullgrad_scale not in ("channel", "layer"):
        raise InputError(f"fullgrad_scale must be 'channel' or 'layer', not '{fullgrad_scale}'")
    x, grad = ev.x.astype(np.float64), ev.extras["input_gradient"].astype(np.float64)
    if ev.input_layout == "NHWC":
        x, grad = x.transpose(0, 3, 1, 2), grad.transpose(0, 3, 1, 2)
    total = _scaled(np.abs(grad * x), ev.input_size, fullgrad_scale)
    for bias, layer_grad in ev.extras["bias_gradients"]:
        total += _scaled(np.abs(layer_grad * bias[None, :, None, None]), ev.input_size, fullgrad_scale)
    return total


def _scaled(tensor: np.ndarray, size: tuple[int, int], how: str) -> np.ndarray:
    """(N, C, h, w) -> (N, H, W). Summing channels before the (linear) resize equals resizing each channel."""
    axes = (2, 3) if how == "channel" else (1, 2, 3)
    tensor = tensor - tensor.min(axis=axes, keepdims=True)
    tensor = tensor / (tensor.max(axis=axes, keepdims=True) + 1e-7)
    summed = tensor.sum(axis=1).astype(np.float32)
    if summed.shape[1:] == tuple(size):
        return summed.astype(np.float64)
    return np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in summed]).astype(
        np.float64)


def layer_biases(model: onnx.ModelProto, score: str) -> dict[str, np.ndarray]:
    """Output tensor -> bias (K,) of each rank-4 Conv with a constant bias and each rank-4 BatchNormalization
    (its effective bias) that `score` depends on; the explainer differentiates the score w.r.t. these outputs."""
    from onnxcam.graph.autodiff import ancestors
    from onnxcam.graph.builder import _static_shapes
    from onnxcam.graph.quantized import constant_array

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    shapes = _static_shapes(graph)
    needed = ancestors(list(graph.node), score)
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        name = node.output[0]
        if name not in needed or name == score or len(shapes.get(name) or ()) != 4:
            continue
        bias = constant_array(model, node.input[2]) if node.op_type == "Conv" and len(node.input) > 2 else None
        if bias is not None:  # a float or a quantised (DequantizeLinear of int32) constant bias
            out[name] = bias.astype(np.float64)
        elif node.op_type == "BatchNormalization" and all(n in weights for n in node.input[1:5]):
            scale, bias, mean, var = (numpy_helper.to_array(weights[n]).astype(np.float64) for n in node.input[1:5])
            eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
            out[name] = bias - mean * scale / np.sqrt(var + eps)
    return out
