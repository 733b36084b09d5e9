"""Relevance-CAM (Lee et al., CVPR 2021): channel weights from layer-wise relevance propagation.

The explainer provides `ev.relevance`: the LRP relevance (N, K, h, w) that reaches the layer, propagated
down from the score by the relevance rule table (graph/relevance). Each channel's weight is the spatial mean of
its relevance; the map is sum_k alpha_k A_k. The rules' options (rule, alpha, beta, epsilon, bias, first_layer,
initial) are read by the explainer when it builds the relevance model; they are listed here so that they are
accepted and documented.
"""

from __future__ import annotations

import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method

# Options that shape the relevance model rather than this function's arithmetic.
GRAPH_OPTIONS = ("rule", "alpha", "beta", "epsilon", "bias", "first_layer", "initial")


@method("relevancecam", "research", ("relevance",), "1 forward+relevance pass", "Lee et al., CVPR 2021")
def relevancecam(ev: Evidence, rule: str = "z+", alpha: float = 1.0, beta: float = 0.0, epsilon: float = 1e-9,
                 bias: bool = False, first_layer: str = "zb", initial: str = "contrastive",
                 relu: bool = False) -> np.ndarray:
    """alpha_k = mean over positions of R_k; map = sum_k alpha_k A_k.

    The official code min-max normalises the map without a ReLU (negative evidence maps to 0, not the map's
    zero level); that is the default here. relu=True applies the ReLU first, as pytorch-grad-cam does for every
    other method.
    """
    relevance = ev.relevance
    if relevance is None:
        raise InputError("relevancecam needs the LRP relevance at the layer; call it through onnxcam.Explainer")
    weights = relevance.mean(axis=(2, 3))
    maps = np.einsum("nk,nkhw->nhw", weights.astype(np.float64), ev.activations.astype(np.float64))
    if relu:
        return maps
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
