"""FullGrad: input-gradient x input plus bias-gradient x bias at every Conv/BatchNormalization layer."""

from __future__ import annotations

import cv2
import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method


@method("fullgrad", "gradient", ("input_gradient", "bias_gradients"), "1 forward+backward to the input",
        "Srinivas & Fleuret, NeurIPS 2019")
def fullgrad(ev: Evidence, fullgrad_scale: str = "channel") -> np.ndarray:
    """Map (N, H, W) at the input's size: S(|dy/dx * x|) + sum over layers S(|dy/dz * b|), z the output of a 2-D
    Conv with a constant bias or of a BatchNormalization (bias b - mean * scale / sqrt(var + eps)) on the path to
    the score. The target layer plays no part (as in pytorch-grad-cam).

    S (fullgrad_scale="channel", pytorch-grad-cam): abs, min-max per image and channel (eps 1e-7), bilinear resize
    to the input (cv2), sum over channels. "layer" (the authors' code): min-max over each image's whole tensor.
    """
    if ev.input_gradient is None or ev.bias_gradients is None:
        raise InputError("fullgrad needs the input gradient and the bias-layer gradients; call it through "
                         "onnxcam.Explainer")
    if fullgrad_scale not in ("channel", "layer"):
        raise InputError(f"fullgrad_scale must be 'channel' or 'layer', not '{fullgrad_scale}'")
    x, grad = ev.x.astype(np.float64), ev.input_gradient.astype(np.float64)
    if ev.input_layout == "NHWC":
        x, grad = x.transpose(0, 3, 1, 2), grad.transpose(0, 3, 1, 2)
    total = _scaled(np.abs(grad * x), ev.input_size, fullgrad_scale)
    for bias, layer_grad in ev.bias_gradients:
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
