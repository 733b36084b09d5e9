"""Gradient-free maps read from the activations alone: Eigen-CAM, CAM, and a random baseline."""

from __future__ import annotations

import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method
from onnxcam.methods.postprocess import principal_projection


@method("eigencam", "activation", (), "1 forward", "Muhammad & Yeasin, IJCNN 2020")
def eigencam(ev: Evidence, eigen_sign: str = "activation") -> np.ndarray:
    """First principal component of the activations (class-agnostic)."""
    return principal_projection(ev.activations, eigen_sign)


@method("cam", "activation", ("head_weights",), "1 forward", "Zhou et al., CVPR 2016")
def cam(ev: Evidence) -> np.ndarray:
    """Weights of the target class in the linear layer after global average pooling."""
    weights = ev.head_weights
    if weights is None:
        raise InputError(f"'cam' needs a global-average-pool + linear head right after layer '{ev.layer}'; "
                         "this model has none there: use gradcam, which equals CAM on such models")
    return weights[ev.targets]


@method("random", "baseline", (), "1 forward", "baseline for metrics")
def random(ev: Evidence, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, ev.activations.shape[:2])
