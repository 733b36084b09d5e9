"""Smooth Grad-CAM++: Grad-CAM++ with derivatives averaged over noisy copies of the input."""

from __future__ import annotations

import numpy as np

from onnxcam.methods import Evidence, method

SPATIAL = (2, 3)


@method("smoothgradcam++", "gradient", ("gradients_of",), "1 forward + num_samples forward+backward",
        "Omeiza et al., 2019")
def smoothgradcam_plus_plus(ev: Evidence, num_samples: int = 4, std: float = 0.3, seed: int = 0) -> np.ndarray:
    """Gradients g_s at the layer for num_samples copies x + N(0, std^2) (torchcam's defaults 4 and 0.3, in the
    units of the preprocessed input; noise from numpy's default_rng(seed), one x-shaped draw per sample).
    With means D1 = <g>, D2 = <g^2>, D3 = <g^3> over the copies and A the clean input's activations:
    alpha = D2 / (2 D2 + sum_ij(A) D3), w = sum_ij alpha relu(D1) (gradcam++'s form, sum over positions).
    torchcam instead sums A * D3 over positions and takes relu of the last copy's gradient."""
    assert ev.gradients_of is not None
    rng = np.random.default_rng(seed)
    acts = ev.activations.astype(np.float64)
    d1, d2, d3 = np.zeros_like(acts), np.zeros_like(acts), np.zeros_like(acts)
    for _ in range(num_samples):
        noisy = (ev.x + rng.normal(0.0, std, ev.x.shape)).astype(ev.x.dtype)
        g = ev.gradients_of(noisy)[1].astype(np.float64)
        d1 += g
        d2 += g * g
        d3 += g * g * g
    d1, d2, d3 = d1 / num_samples, d2 / num_samples, d3 / num_samples
    denominator = 2 * d2 + acts.sum(axis=SPATIAL, keepdims=True) * d3
    alpha = np.where(d2 != 0, d2 / (denominator + 1e-7), 0.0)
    return (alpha * np.maximum(d1, 0)).sum(axis=SPATIAL)
