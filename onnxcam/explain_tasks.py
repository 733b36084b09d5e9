"""`explain_tasks`: the CLI's `explain` job for models that are not classifiers (segmentation, detection,
embeddings), with onnxcam.targets objects.

Writes, per image and method, OUT/<name>.<method>.png (overlay; detection boxes drawn) and .npy (float32 map at
the image's size); with several detections per image (--threshold) one pair per detection, <name>.<method>.d<k>.
One JSON line per map in OUT/results.jsonl (task, target class and label, target value, box in image pixels) and
OUT/report.html. Images run in batches; a failing image is recorded and the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnxcam.errors import InputError, OnnxcamError
from onnxcam.explain_images import RESULTS, Summary, collect_images, write_report
from onnxcam.explainer import Explainer
from onnxcam.graph.load import ModelSource, model_name
from onnxcam.images import ImageError, model_labels, preprocess, read_image, read_labels, resolve_preprocessing
from onnxcam.images import resolve_target as class_index
from onnxcam.methods import get_method
from onnxcam.render import draw_boxes, overlay, resize_map, write_npy, write_png
from onnxcam.targets import (
    TASKS,
    SemanticSegmentationTarget,
    SimilarityTarget,
    Target,
    class_target,
    default_target,
    detection_targets,
)


def explain_tasks(model: ModelSource, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                  task: str | None = None, methods: Sequence[str] = ("gradcam",), layer: str | None = None,
                  target: str | None = None, mask: str | os.PathLike | None = None, box: int | None = None,
                  threshold: float | None = None, reference: str | os.PathLike | None = None, batch_size: int = 8,
                  preset: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  size: int | Sequence[int] | None = None, bgr: bool | None = None, scale: float | None = None,
                  labels: str | os.PathLike | None = None, device: str = "auto", alpha: float = 0.5,
                  colormap: str = "jet", explainer: Explainer | None = None,
                  on_start: Callable[[int], None] | None = None,
                  on_image: Callable[[dict[str, Any]], None] | None = None,
                  on_note: Callable[[str], None] | None = None) -> Summary:
    """Explain image files for a segmentation, detection or embedding model; see the module docstring.

    task: segment / detect / embed / classify (None: from the model's metadata or its output's rank).
    target: a class index or label (segment: its region; detect: its best box); mask: a mask image (nonzero =
    inside) for segmentation; box: a detection index, threshold: every detection scoring at least this (one map
    each); reference: an image whose embedding the similarity is measured to.
    """
    start = time.perf_counter()
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task '{task}'; use one of {', '.join(TASKS)}")
    if box is not None and threshold is not None:
        raise InputError("give either --box or --threshold, not both")
    methods = list(dict.fromkeys(methods))
    for m in methods:
        get_method(m)
    ex = explainer or Explainer(model, layer=layer, device=device)
    for note in ex.notes:  # e.g. NMS inside the graph: the raw predictions before it are explained
        if on_note:
            on_note(note)
    task = task or ex.task or "classify"
    spec = resolve_preprocessing(ex.model, ex.input_name, ex.input_layout, preset, mean, std, size, bgr, scale)
    ex.preprocessing = spec
    label_list = read_labels(labels) if labels is not None else model_labels(ex.model)
    category = class_index(target, label_list, None) if target is not None else None
    if task == "embed" and reference is None:
        raise InputError("an embedding model is explained against a reference: pass --reference IMAGE")
    anchor = ex.outputs(preprocess(read_image(reference), spec))[0] if reference is not None else None
    mask_pixels = _read_mask(mask) if mask is not None else None
    if mask_pixels is not None and task != "segment":
        raise InputError("--mask is for segmentation models (--task segment)")
    jobs = collect_images(inputs, exclude=out)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary(out=out_dir)
    if on_start:
        on_start(len(jobs))

    def targets_for(output: np.ndarray) -> list[Target]:
        if task == "segment":
            return [SemanticSegmentationTarget(category, mask_pixels).bind(output)]
        if task == "detect":
            layout = ex.detection_layout(output.shape)
            if category is not None and box is None and threshold is None:
                return [class_target(task, category, output, layout)]
            found = detection_targets(output, layout, threshold, box)
            return [t for t in found if category is None or t.category == category]
        if task == "embed":
            assert anchor is not None
            return [SimilarityTarget(anchor)]
        return [class_target(task, category, output) if category is not None else default_target(task, output)]

    with open(out_dir / (RESULTS + ".partial"), "w", encoding="utf-8") as log:
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first:first + batch_size]
            images, inputs_, records = [], [], {}
            for i, job in enumerate(chunk):
                try:
                    rgb = read_image(job.path)
                    images.append((i, rgb))
                    inputs_.append(preprocess(rgb, spec))
                except ImageError as e:
                    records[i] = [_failed(job.path, job.name, str(e), methods)]
            if inputs_:
                x = np.concatenate(inputs_)
                outputs = ex.outputs(x)
                for (i, rgb), row in zip(images, range(len(x))):
                    job = chunk[i]
                    t0 = time.perf_counter()
                    try:
                        wanted = targets_for(outputs[row])
                        if not wanted:
                            raise InputError(f"no detection{f' above {threshold}' if threshold is not None else ''}"
                                             " to explain in this image")
                        records[i] = _explain_one(ex, job.path, job.name, rgb, x[row:row + 1], outputs[row], wanted,
                                                  methods, task, label_list, out_dir, alpha, colormap, t0)
                    except OnnxcamError as e:
                        records[i] = [_failed(job.path, job.name, str(e), methods)]
            for i in range(len(chunk)):
                recs = records[i]
                summary.log_image(recs, log)
                if on_image:
                    on_image(recs[0])
    os.replace(out_dir / (RESULTS + ".partial"), out_dir / RESULTS)
    summary.seconds = time.perf_counter() - start
    write_report(summary, title=f"onnxcam: {Path(model_name(model)).name}",
                 meta={"model": model_name(model), "task": task, "methods": ", ".join(methods),
                       "layer": ", ".join(ex.layer), "images": len(jobs), "failed": summary.failed})
    return summary


def _explain_one(ex: Explainer, path: Path, name: str, rgb: np.ndarray, x: np.ndarray, output: np.ndarray,
                 wanted: list[Target], methods: list[str], task: str, labels: list[str] | None, out: Path,
                 alpha: float, colormap: str, t0: float) -> list[dict[str, Any]]:
    """Maps for one image's targets (one model batch: the image repeated once per target), written out."""
    xs = np.repeat(x, len(wanted), axis=0)
    h_in, w_in = ex.input_size(x)
    sx, sy = rgb.shape[1] / w_in, rgb.shape[0] / h_in  # preprocessing resizes the whole image to the input
    records = []
    for method in methods:
        maps = ex.explain(xs, method, targets=wanted)
        for k, target in enumerate(wanted):
            stem = f"{name}.{method}" + (f".d{k}" if len(wanted) > 1 else "")
            cam = resize_map(maps[k], rgb.shape[:2])
            picture = overlay(rgb, cam, alpha, colormap)
            box = None
            if target.box is not None:
                x0, y0, x1, y1 = target.box
                box = [round(x0 * sx, 1), round(y0 * sy, 1), round(x1 * sx, 1), round(y1 * sy, 1)]
                caption = _label(labels, target.category) or str(target.category)
                picture = draw_boxes(picture, [box], [f"{caption} {target(output):.2f}"])
            write_npy(out / f"{stem}.npy", cam)
            write_png(out / f"{stem}.png", picture)
            records.append({
                "image": str(path), "name": name, "status": "ok", "error": None, "task": task,
                "predicted": None, "predicted_label": None, "score": None,
                "target": target.category, "label": _label(labels, target.category),
                "target_score": round(float(target(output)), 6), "target_kind": target.describe(), "box": box,
                "method": method, "layer": ", ".join(ex.layer),
                "paths": {"overlay": f"{stem}.png", "map": f"{stem}.npy"},
                "seconds": round((time.perf_counter() - t0) / max(1, len(methods) * len(wanted)), 4)})
    return records


def _label(labels: list[str] | None, index: int | None) -> str | None:
    return labels[index] if labels is not None and index is not None and 0 <= index < len(labels) else None


def _read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image as booleans (nonzero = inside)."""
    data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if image is None:
        raise InputError(f"cannot read the mask image {path}")
    return np.asarray(image.any(axis=-1) if image.ndim == 3 else image > 0)


def _failed(path: Path, name: str, error: str, methods: list[str]) -> dict[str, Any]:
    return {"image": str(path), "name": name, "status": "failed", "error": error, "predicted": None,
            "predicted_label": None, "score": None, "target": None, "label": None, "target_score": None,
            "method": ", ".join(methods), "layer": None, "paths": None, "seconds": 0.0}

