"""BroadCAM (Lin et al., arXiv 2309.03509): class weights fitted on a small labelled set, not read from the model.

The weights W come from `onnxcam fit broadcam` (onnxcam/jobs/fit_broadcam.py): a ridge regression from multi-stage
pooled features to one-hot labels. The map of class c is, summed over the fitted layers after resizing each to
the input size, ReLU(sum_k W_ck ReLU(A_k)).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method

FORMAT = "onnxcam-broadcam-1"


@dataclass
class BroadcamFit:
    layers: list[str]
    layouts: list[str]          # "NCHW" or "NHWC" per layer
    channels: list[int]         # K per layer; weights' columns are the layers' channels in this order
    weights: np.ndarray         # (classes, sum K) for raw ReLU'd features
    intercept: np.ndarray       # (classes,)
    ridge: float
    model_id: str
    labels: list[str]           # class names ("" when unknown)
    images: int

    @property
    def classes(self) -> int:
        return int(self.weights.shape[0])

    def layer_weights(self) -> dict[str, np.ndarray]:
        """(classes, K) per layer."""
        edges = np.cumsum([0, *self.channels])
        return {name: self.weights[:, a:b] for name, a, b in zip(self.layers, edges[:-1], edges[1:])}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")  # np.savez would append it anyway
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, format=np.array(FORMAT), layers=np.array(self.layers), layouts=np.array(self.layouts),
                 channels=np.array(self.channels, np.int64), weights=self.weights.astype(np.float32),
                 intercept=self.intercept.astype(np.float32), ridge=np.array(self.ridge),
                 model_id=np.array(self.model_id), labels=np.array(self.labels), images=np.array(self.images))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BroadcamFit:
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data.get("format", "")) != FORMAT:
                    raise InputError(f"{path} is not a BroadCAM fit file (make one with 'onnxcam fit broadcam')")
                return cls([str(v) for v in data["layers"]], [str(v) for v in data["layouts"]],
                           [int(v) for v in data["channels"]], data["weights"].astype(np.float64),
                           data["intercept"].astype(np.float64), float(data["ridge"]), str(data["model_id"]),
                           [str(v) for v in data["labels"]], int(data["images"]))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"cannot read BroadCAM fit file {path}: {e}") from None

    def check_model(self, model_id: str, where: str = "this model") -> None:
        if model_id and self.model_id != model_id:
            raise InputError(f"the BroadCAM fit was made for another model (hash {self.model_id[:12]}, {where} has "
                             f"{model_id[:12]}); fit it again: onnxcam fit broadcam MODEL DATA")



@method("broadcam", "activation", ("tensors_of", "model_id"), "2 forwards", "Lin et al., arXiv 2309.03509 (BroadCAM)")
def broadcam(ev: Evidence, fit: str | os.PathLike[str] | BroadcamFit | None = None) -> np.ndarray:
    """fit: the .npz written by `onnxcam fit broadcam` (or a BroadcamFit); its layers replace the explainer's."""
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
    return BroadcamFit.load(path)
