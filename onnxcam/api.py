"""The conveniences users arrive with from pytorch-grad-cam and captum: image files to a model-ready batch (and the
way back to the originals), a CAM drawn over an image (`show_cam_on_image`), and report.html for maps made in
Python. All three are exported as `onnxcam.load_images`, `onnxcam.overlay` and `onnxcam.save_report`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.errors import InputError
from onnxcam.images import DEFAULT_SIZE, PRESETS, Preprocessing, preprocess, preset_fields, read_image
from onnxcam.render import overlay as _overlay
from onnxcam.render import resize_map

PathLike = str | os.PathLike


@dataclass
class Images:
    """Image files as one model-ready batch, with the originals the maps are mapped back to.

    x: (N, C, H, W) or (N, H, W, C) in the model's layout and dtype (what `Explainer.explain` takes);
    images: the originals, RGB uint8 (H_i, W_i, 3); paths: the files; names: their unique names (file names, made
    unique); preprocessing: how x was made. Preprocessing resizes the whole image to the input, so a map at the
    input size maps back to an original by a plain resize (`to_original`).
    """

    x: np.ndarray
    images: list[np.ndarray]
    paths: list[Path]
    preprocessing: Preprocessing
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def to_original(self, maps: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Maps (N, h, w) (any size, e.g. the input's) resized to each original's (H_i, W_i), float32 in [0, 1]."""
        if len(maps) != len(self.images):
            raise InputError(f"{len(maps)} maps for {len(self.images)} images")
        return [resize_map(np.asarray(cam, np.float32), image.shape[:2]) for cam, image in zip(maps, self.images)]

    def overlays(self, maps: np.ndarray | Sequence[np.ndarray], alpha: float = 0.5,
                 colormap: str = "jet") -> list[np.ndarray]:
        """Each map drawn over its original (RGB uint8 at the original's size)."""
        if len(maps) != len(self.images):
            raise InputError(f"{len(maps)} maps for {len(self.images)} images")
        return [overlay(image, cam, alpha, colormap) for image, cam in zip(self.images, maps)]


def load_images(paths: PathLike | Sequence[PathLike], preprocessing: Any = None,
                size: int | tuple[int, int] | None = None) -> Images:
    """Read image files (or folders, or glob patterns) and preprocess them into one batch.

    preprocessing: an `onnxcam.Explainer` (its model's preprocessing: metadata, input size, layout, dtype), an
    `onnxcam.images.Preprocessing`, a preset name ("imagenet", "inception", "raw255", "caffe", "unit"; NCHW
    float32 at `size`, default 224) or None (the imagenet preset). Example::

        with onnxcam.Explainer("resnet50.onnx") as ex:
            batch = onnxcam.load_images(["cat.jpg", "dog.jpg"], ex)
            maps = ex.explain(batch.x, "gradcam++")              # (2, 224, 224)
            pictures = batch.overlays(maps)                      # RGB uint8 at each photo's own size

    A file that cannot be read raises onnxcam.InputError naming it.
    """
    from onnxcam.files import collect_inputs

    spec = _preprocessing(preprocessing, size)
    # each path on its own: a file given twice is two images of the batch (a folder's files are listed once)
    items = [item for path in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))
             for item in collect_inputs([path])]
    if not items:
        raise InputError("no images found in the given paths")
    images = [read_image(item.path) for item in items]
    x = np.concatenate([preprocess(image, spec) for image in images])
    names: list[str] = []
    for item in items:
        name, n = item.name, 2
        while name in names:
            name, n = f"{item.name}~{n}", n + 1
        names.append(name)
    return Images(x, images, [Path(item.path) for item in items], spec, names)


def _preprocessing(given: Any, size: int | tuple[int, int] | None) -> Preprocessing:
    if isinstance(given, Preprocessing):
        return given
    if given is not None and hasattr(given, "preprocessing") and isinstance(given.preprocessing, Preprocessing):
        return given.preprocessing  # an Explainer
    if given is None or isinstance(given, str):
        fields = preset_fields(given or "imagenet")
        h, w = (size, size) if isinstance(size, int) else size or (DEFAULT_SIZE, DEFAULT_SIZE)
        return Preprocessing((int(h), int(w)), bgr=bool(fields["bgr"]), scale=float(fields["scale"]),
                             mean=tuple(fields["mean"]), std=tuple(fields["std"]))
    raise InputError(f"preprocessing must be an Explainer, an onnxcam.images.Preprocessing, a preset name "
                     f"({', '.join(PRESETS)}) or None, not {type(given).__name__}")


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """A map drawn over an image: pytorch-grad-cam's `show_cam_on_image` (with use_rgb=True).

    image: RGB, uint8 in [0, 255] or float in [0, 1] (pytorch-grad-cam's convention), (H, W, 3) or grayscale
    (H, W); cam: a map in [0, 1] of any size (e.g. (224, 224) or (1, 224, 224)), resized bilinearly to the image.
    alpha: the heat map's weight (pytorch-grad-cam's image_weight is 1 - alpha); colormap: jet, turbo, inferno,
    viridis, magma or hot. Returns RGB uint8 at the image's size: (1 - alpha) * image + alpha * colour(cam).
    Unlike show_cam_on_image, the blend is not rescaled by its maximum afterwards, so dark images stay dark.
    """
    heat = np.asarray(cam, np.float32)
    while heat.ndim > 2 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.ndim != 2:
        raise InputError(f"cam must be one map (H, W), got shape {np.shape(cam)}")
    return _overlay(as_rgb(image), np.nan_to_num(heat), alpha, colormap)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An image as contiguous RGB uint8 (H, W, 3): from uint8 or [0, 1] float, RGB(A) or grayscale."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise InputError(f"image must be (H, W, 3) RGB or (H, W) grayscale, got shape {pixels.shape}")
    pixels = pixels[:, :, :3]
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float64)
        if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1):
            raise InputError("a float image must hold values in [0, 1] (or pass uint8 pixels)")
        pixels = np.uint8(np.round(np.nan_to_num(values) * 255))
    return np.ascontiguousarray(pixels)


def save_report(out: PathLike, images: Images | Sequence[np.ndarray] | Sequence[PathLike],
                maps: Mapping[str, np.ndarray] | np.ndarray, targets: Sequence[Any] | None = None,
                scores: np.ndarray | None = None, labels: Sequence[str] | None = None,
                names: Sequence[str] | None = None, title: str | None = None, alpha: float = 0.5,
                colormap: str = "jet", info: Mapping[str, Any] | None = None,
                method_seconds: Mapping[str, float] | None = None) -> Path:
    """Write OUT/report.html (and the overlays and previews it shows) for maps made in Python; returns its path.

    images: an `Images` from load_images, RGB arrays, or image files, one per map; the same image given several
    times in a row (e.g. x[[0, 0, 0]] with three targets) becomes one section with one row per target.
    maps: {method name: (N, H, W)} or one (N, H, W) array (shown as "map"); each map is resized to its image.
    targets: the class (index or name) each map explains; scores: the model's (N, classes) logits, for each
    target's probability and logit and the predicted class; labels: class names; names: how the images are
    called (default: their file names, or image_<i>); info: extra header rows (e.g. {"model": "resnet50.onnx"});
    method_seconds: time per method for the header. Example::

        maps = {m: ex.explain(batch.x, m) for m in ("gradcam", "scorecam")}
        onnxcam.save_report("out", batch, maps, scores=ex.scores(batch.x), labels=ex.labels)
    """
    from onnxcam.files import OutputFolder, write_bytes
    from onnxcam.render import encode_png, preview_jpeg
    from onnxcam.report import INPUT_PREVIEW_SIDE, Header, input_preview_path, preview_path, render_report

    per_method = {"map": maps} if isinstance(maps, np.ndarray) else dict(maps)
    if not per_method:
        raise InputError("no maps given")
    pictures, image_names = _pictures(images, names)
    n = len(pictures)
    for method, array in per_method.items():
        if len(array) != n:
            raise InputError(f"{len(array)} {method} maps for {n} images")
    if targets is not None and len(targets) != n:
        raise InputError(f"{len(targets)} targets for {n} images")
    if scores is not None and (np.ndim(scores) != 2 or len(scores) != n):
        raise InputError(f"scores must be (N, classes) with N = {n}, got shape {np.shape(scores)}")
    folder = OutputFolder(out)
    label_list = list(labels) if labels is not None else None
    stems = _stems(image_names)
    records = []
    for i, picture in enumerate(pictures):
        if i == 0 or image_names[i] != image_names[i - 1]:
            write_bytes(folder.path(input_preview_path(image_names[i])), preview_jpeg(picture, INPUT_PREVIEW_SIDE))
        target = _target_index(targets[i] if targets is not None else None, label_list, scores, i)
        for method, array in per_method.items():
            png = f"{stems[i]}.{method}.png"
            cam = resize_map(np.nan_to_num(np.asarray(array[i], np.float32)), picture.shape[:2])
            drawn = overlay(picture, cam, alpha, colormap)
            write_bytes(folder.path(png), encode_png(drawn))
            write_bytes(folder.path(preview_path(png)), preview_jpeg(drawn))
            records.append(_record(image_names[i], method, png, cam, target, scores, i, label_list, targets))
    header = Header(title=title or "onnxcam report", colormap=colormap,
                    method_seconds=dict(method_seconds or {}))
    header.rows = [(str(k), str(v)) for k, v in (info or {}).items()]
    text = render_report(records, header)
    write_bytes(folder.path("report.html"), text.encode("utf-8", errors="backslashreplace"))
    return folder.given / "report.html"


def _pictures(images: Any, names: Sequence[str] | None) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(images, Images):
        pictures, found = list(images.images), list(images.names)
    else:
        pictures, found = [], []
        for k, item in enumerate(images):
            if isinstance(item, (str, os.PathLike)):
                pictures.append(read_image(item))
                found.append(Path(item).name)
            else:
                pictures.append(as_rgb(item))
                found.append(f"image_{k}")
    if names is not None:
        if len(names) != len(pictures):
            raise InputError(f"{len(names)} names for {len(pictures)} images")
        found = [str(v) for v in names]
    from onnxcam.files import safe_name

    return pictures, [safe_name(v) or f"image_{k}" for k, v in enumerate(found)]


def _stems(names: list[str]) -> list[str]:
    """Output stems: the name, plus .t<k> for the k-th of several maps of the same image in a row."""
    stems = []
    for i, name in enumerate(names):
        run = 0
        while i - run - 1 >= 0 and names[i - run - 1] == name:
            run += 1
        repeated = run > 0 or (i + 1 < len(names) and names[i + 1] == name)
        stems.append(f"{name}.t{run}" if repeated else name)
    return stems


def _target_index(target: Any, labels: list[str] | None, scores: np.ndarray | None, i: int) -> int | None:
    if target is None:
        return int(np.argmax(scores[i])) if scores is not None else None
    if isinstance(target, str):
        from onnxcam.images import resolve_target

        return resolve_target(target, labels, None if scores is None else int(np.shape(scores)[1]))
    category = getattr(target, "category", target)  # a ClassifierOutputTarget
    return None if category is None else int(category)


def _record(name: str, method: str, png: str, cam: np.ndarray, target: int | None, scores: np.ndarray | None,
            i: int, labels: list[str] | None, targets: Any) -> dict[str, Any]:
    def label(index: int | None) -> str | None:
        return labels[index] if labels is not None and index is not None and 0 <= index < len(labels) else None

    predicted = logit = probability = None
    if scores is not None:
        row = np.asarray(scores[i], np.float64)
        predicted = int(np.argmax(row))
        with np.errstate(over="ignore", invalid="ignore"):
            soft = np.exp(row - row.max())
            soft /= soft.sum()
        if target is not None and 0 <= target < len(row):
            logit, probability = float(row[target]), float(soft[target])
    kind = "class" if target is not None or targets is None else str(getattr(targets[i], "describe", str)())
    return {"image": name, "name": name, "status": "ok", "task": "classify" if target is not None else None,
            "predicted": predicted, "predicted_label": label(predicted),
            "score": None if predicted is None or scores is None else float(scores[i][predicted]),
            "target": target, "label": label(target), "target_score": logit, "probability": probability,
            "target_kind": kind, "method": method, "paths": {"overlay": png, "map": None},
            "flat": bool(np.ptp(cam) == 0)}
