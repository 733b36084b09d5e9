"""The Grad-CAM family: channel weights (or elementwise weights) from activations A and gradients G."""

from __future__ import annotations

import numpy as np

from onnxcam.methods import Evidence, method

SPATIAL = (2, 3)


def _grads(ev: Evidence) -> np.ndarray:
    assert ev.gradients is not None
    return ev.gradients


@method("gradcam", "gradient", ("gradients",), "1 forward+backward", "Selvaraju et al., ICCV 2017")
def gradcam(ev: Evidence) -> np.ndarray:
    return _grads(ev).mean(axis=SPATIAL)


@method("gradcam++", "gradient", ("gradients",), "1 forward+backward", "Chattopadhyay et al., WACV 2018")
def gradcam_plus_plus(ev: Evidence, gradcampp_reduce: str = "sum") -> np.ndarray:
    """alpha = g^2 / (2 g^2 + sum(A) g^3), w = sum(alpha relu(g)) (exp-of-score form of the paper, as in
    pytorch-grad-cam). `gradcampp_reduce="mean"` averages over positions instead (torchcam's choice)."""
    g, a = _grads(ev), ev.activations
    g2 = g * g
    denominator = 2 * g2 + a.sum(axis=SPATIAL, keepdims=True) * g2 * g
    alpha = np.where(g != 0, g2 / (denominator + 1e-6), 0.0)
    weighted = np.maximum(g, 0) * alpha
    return weighted.mean(axis=SPATIAL) if gradcampp_reduce == "mean" else weighted.sum(axis=SPATIAL)


@method("xgradcam", "gradient", ("gradients",), "1 forward+backward", "Fu et al., BMVC 2020")
def xgradcam(ev: Evidence) -> np.ndarray:
    g, a = _grads(ev), ev.activations
    return (g * a / (a.sum(axis=SPATIAL, keepdims=True) + 1e-7)).sum(axis=SPATIAL)


@method("hirescam", "gradient", ("gradients",), "1 forward+backward", "Draelos & Carin, 2020")
def hirescam(ev: Evidence) -> np.ndarray:
    return _grads(ev) * ev.activations


@method("gradcam-elementwise", "gradient", ("gradients",), "1 forward+backward", "pytorch-grad-cam (Gildenblat)")
def gradcam_elementwise(ev: Evidence) -> np.ndarray:
    return np.maximum(_grads(ev) * ev.activations, 0)


@method("layercam", "gradient", ("gradients",), "1 forward+backward", "Jiang et al., IEEE TIP 2021")
def layercam(ev: Evidence) -> np.ndarray:
    return np.maximum(_grads(ev), 0) * ev.activations


@method("eigengradcam", "gradient", ("gradients",), "1 forward+backward", "Muhammad & Yeasin, IJCNN 2020 (variant)")
def eigengradcam(ev: Evidence, eigen_sign: str = "activation") -> np.ndarray:
    from onnxcam.methods.postprocess import principal_projection

    return principal_projection(_grads(ev) * ev.activations, eigen_sign)
