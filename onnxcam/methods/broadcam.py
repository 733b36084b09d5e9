"""BroadCAM (Lin et al., arXiv 2309.03509): class weights fitted on a small labelled set, not read from the model.

The weights W come from `onnxcam fit broadcam` (onnxcam/broadcam_fit.py): a ridge regression from multi-stage
pooled features to one-hot labels. The map of class c is, summed over the fitted layers after resizing each to
the input size, ReLU(sum_k W_ck ReLU(A_k)).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method

if TYPE_CHECKING:
    from onnxcam.broadcam_fit import BroadcamFit


@method("broadcam", "activation", "activations", "2 forwards", "Lin et al., arXiv 2309.03509 (BroadCAM)")
def broadcam(ev: Evidence, fit: str | os.PathLike[str] | BroadcamFit | None = None) -> np.ndarray:
    """fit: the .npz written by `onnxcam fit broadcam` (or a BroadcamFit); its layers replace the explainer's."""
    from onnxcam.broadcam_fit import BroadcamFit

    if fit is None:
        raise InputError("'broadcam' needs fitted weights: run 'onnxcam fit broadcam MODEL DATA --out broadcam.npz' "
                         "and pass fit=broadcam.npz (CLI: --fit broadcam.npz)")
    fitted = fit if isinstance(fit, BroadcamFit) else _load(str(Path(fit).resolve()), _mtime(fit))
    fitted.check_model(ev.model_id)
    if ev.tensors_of is None:
        raise InputError("'broadcam' needs the explainer's tensors_of callable (use onnxcam.Explainer)")
    if np.any(ev.targets >= fitted.classes):
        raise InputError(f"target class {int(ev.targets.max())} is beyond the {fitted.classes} fitted classes")
    values = ev.tensors_of(fitted.layers)
    h, w = ev.input_size
    total = np.zeros((len(ev.x), h, w), np.float64)
    for (name, weights), layout in zip(fitted.layer_weights().items(), fitted.layouts):
        acts = np.maximum(values[name].astype(np.float64), 0)
        acts = acts.transpose(0, 3, 1, 2) if layout == "NHWC" else acts
        if acts.shape[1] != weights.shape[1]:
            raise InputError(f"layer '{name}' has {acts.shape[1]} channels but the fit has {weights.shape[1]}; "
                             "fit again for this model")
        maps = np.maximum(np.einsum("nk,nkhw->nhw", weights[ev.targets], acts), 0)
        for i, m in enumerate(maps):
            total[i] += cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) if m.shape != (h, w) else m
    return total


def _mtime(path: str | os.PathLike[str]) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        raise InputError(f"BroadCAM fit file {path} not found; make it with 'onnxcam fit broadcam'") from None


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> BroadcamFit:
    from onnxcam.broadcam_fit import BroadcamFit

    return BroadcamFit.load(path)
