"""Fit BroadCAM's class weights on a small labelled image set (Lin et al., arXiv 2309.03509).

BroadCAM does not trust the model's own classifier or gradients: it learns, on a few labelled images, how much each
channel of several stages tells about each class, with a broad learning system (BLS) regressing one-hot labels
from the global-average-pooled features. We take the BLS in its linear form, which collapses to one matrix:

- feature nodes are the pooled features themselves (identity mapping), no enhancement nodes: the BLS output
  weights are then the ridge regression of the labels on the features, and the CAM weights W (classes, K) are
  those output weights (the paper's random feature/enhancement mappings would have to be linear to collapse to
  one matrix anyway);
- features: the mean over positions of ReLU(A) for each fitted layer, concatenated; each feature is centred
  and scaled to unit variance for the fit (so the ridge penalty treats the stages alike), and W is mapped back to
  the raw features, so the map's spatial mean equals the regression's class score minus its intercept;
- ridge in closed form: (X^T X + ridge I) B = X^T Y through np.linalg.solve on the smaller of the primal or dual
  system (never an explicit inverse).

The fit is saved as .npz with the layer names, their channel counts and layouts, the class count and names,
the ridge, and the model's content hash, so that a different model refuses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.errors import InputError, LayerError
from onnxcam.explainer import Explainer
from onnxcam.graph.contract import ModelSource
from onnxcam.images import model_labels, preprocess, read_image, read_labels
from onnxcam.jobs.evaluate import find_images, read_label_rows
from onnxcam.methods.broadcam import BroadcamFit
from onnxcam.runtime import model_sha256


def ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """argmin_B |X B - Y|^2 + penalty |B|^2 for X (n, k), Y (n, c): solves the k x k normal equations, or the n x n
    dual system B = X^T (X X^T + penalty I)^-1 Y when there are fewer samples than features."""
    if penalty <= 0:
        raise InputError(f"ridge must be > 0, got {penalty}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, k = x.shape
    if k <= n:
        return np.linalg.solve(x.T @ x + penalty * np.eye(k), x.T @ y)
    return x.T @ np.linalg.solve(x @ x.T + penalty * np.eye(n), y)


def stage_layers(ex: Explainer) -> list[str]:
    """The last spatial feature map at each distinct spatial size that the score depends on, in graph order
    (for a ResNet: the output of each resolution stage)."""
    from onnxcam.graph.topo import ancestors  # the graph code (and onnx) only when a fit runs

    needed = ancestors(list(ex.model.graph.node), ex.score)
    last: dict[tuple[object, ...], str] = {}
    for t in ex.tensors:
        if t.spatial and t.op_type and t.name in needed and t.shape is not None and t.layout in _MAP_LAYOUTS:
            size = tuple(t.shape[2:]) if t.layout == "NCHW" else tuple(t.shape[1:3])
            last.pop(size, None)  # re-insert: dict order follows the last occurrence
            last[size] = t.name
    if not last:
        raise LayerError("the model has no spatial feature map before its score; BroadCAM needs one (pass --layers)")
    order = {t.name: i for i, t in enumerate(ex.tensors)}
    return sorted(last.values(), key=order.__getitem__)


def pooled_features(ex: Explainer, x: np.ndarray, layers: Sequence[str]) -> list[np.ndarray]:
    """Global average of ReLU(A) per layer: (N, K) each, channels in the model's order."""
    layouts = _layouts(ex, layers)
    values = ex.view.forward_session(tuple(layers)).run(list(layers), {ex.input_name: x})
    out = []
    for value, layout in zip(values, layouts):
        axes = (2, 3) if layout == "NCHW" else (1, 2)
        out.append(np.maximum(value, 0).mean(axis=axes, dtype=np.float64).reshape(len(x), -1))
    return out


def _layouts(ex: Explainer, layers: Sequence[str]) -> list[str]:
    infos = {t.name: t for t in ex.tensors}
    out = []
    for name in layers:
        info = infos.get(name)
        if info is None or not info.spatial:
            raise LayerError(f"layer '{name}' is not a spatial feature map; BroadCAM pools (N, K, h, w) tensors "
                             f"(candidates: {', '.join(stage_layers(ex))})")
        if info.layout not in _MAP_LAYOUTS:
            raise LayerError(f"layer '{name}' is a transformer token tensor ({info.layout}); BroadCAM fits CNN "
                             "feature maps (NCHW or NHWC) only: pick such layers with --layers")
        out.append(str(info.layout))
    return out


_MAP_LAYOUTS = ("NCHW", "NHWC")


def read_dataset(ex: Explainer, data: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
                 class_names: str | os.PathLike | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files and their multi-hot targets (n, classes) from a `file,class` csv (class names or indices; an
    image with several rows, one per object, gets a 1 for each), plus the class names ("" when unknown)."""
    folder = Path(data)
    csv_path = Path(labels_csv) if labels_csv is not None else folder / "labels.csv"
    if not csv_path.is_file():
        raise InputError(f"labels csv {csv_path} not found; pass --labels FILE (header 'file,class')")
    names = read_labels(class_names) if class_names is not None else model_labels(ex.summary)
    if names is None and (folder / "classes.txt").is_file():
        names = read_labels(folder / "classes.txt")
    classes = len(names) if names else _score_width(ex)
    rows = read_label_rows(csv_path, folder, find_images(folder), names, classes)
    if not rows:
        raise InputError(f"labels csv {csv_path} has no rows")
    files = list(dict.fromkeys(path for path, _ in rows))
    index = {path: i for i, path in enumerate(files)}
    targets = np.zeros((len(files), classes), np.float64)
    for path, label in rows:
        targets[index[path], label] = 1.0
    if len(files) < classes:
        raise InputError(f"{len(files)} labelled images for {classes} classes: BroadCAM needs at least as many "
                         "images as classes (better, several per class)")
    return files, targets, list(names) if names else [""] * classes


def _score_width(ex: Explainer) -> int:
    """The number of classes: the width of the scores for one black image."""
    h, w = ex.preprocessing.size
    return int(ex.scores(preprocess(np.zeros((h, w, 3), np.uint8), ex.preprocessing)).shape[1])


def fit_broadcam(ex: Explainer, files: Sequence[Path], targets: np.ndarray, layers: Sequence[str] | None = None,
                 penalty: float = 50.0, batch_size: int = 16, labels: Sequence[str] | None = None,
                 on_progress: Callable[[int], None] | None = None) -> BroadcamFit:
    """Fit W from images (read and preprocessed as the explainer's preprocessing says) and multi-hot targets."""
    if penalty <= 0:
        raise InputError(f"ridge must be > 0, got {penalty}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    chosen = list(layers) if layers else stage_layers(ex)
    layouts = _layouts(ex, chosen)
    parts: list[list[np.ndarray]] = [[] for _ in chosen]
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        x = np.concatenate([preprocess(read_image(f), ex.preprocessing) for f in batch])
        for part, pooled in zip(parts, pooled_features(ex, x, chosen)):
            part.append(pooled)
        if on_progress:
            on_progress(len(batch))
    blocks = [np.concatenate(p) for p in parts]
    features = np.concatenate(blocks, axis=1)
    weights, intercept = fit_weights(features, targets, penalty)
    names = list(labels) if labels is not None else [""] * targets.shape[1]
    return BroadcamFit(chosen, layouts, [b.shape[1] for b in blocks], weights, intercept, penalty, ex.model_id,
                       names, len(files))


def fit_weights(features: np.ndarray, targets: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on standardised features with an unpenalised intercept; returns W (classes, K) for the raw features
    and the intercept (classes,)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # dead channels: weight 0 after centring, whatever the scale
    y_mean = targets.mean(axis=0)
    b = ridge((features - mean) / scale, targets - y_mean, penalty)
    weights = (b / scale[:, None]).T
    return weights, y_mean - weights @ mean


def fit_options(model: ModelSource, methods: Sequence[str], fit: str | os.PathLike[str] | None
                ) -> dict[str, dict[str, Any]] | None:
    """Method options for `explain --fit FILE`, the file checked against the model before any image is read."""
    if fit is None:
        if "broadcam" in methods:
            raise InputError("--method broadcam needs --fit FILE; make one with 'onnxcam fit broadcam MODEL DATA'")
        return None
    if "broadcam" not in methods:
        raise InputError("--fit is used by --method broadcam only")
    BroadcamFit.load(fit).check_model(model_sha256(model), str(model))
    return {"broadcam": {"fit": str(fit)}}
