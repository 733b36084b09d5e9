"""`explain_images`: the CLI's `explain` job as a Python function (files in, overlays + maps + report out).

For each image and method, writes OUT/<path relative to its input root, without suffix>.<method>.png (overlay)
and .npy (float32 map at the image's own size); with top_k > 1 the class is added: <name>.<method>.c<class>.png.
One JSON line per image, method and target goes to OUT/results.jsonl, and OUT/report.html shows them all.
A bad image is recorded as failed and the batch goes on.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.errors import GradientError, InputError, LayerError, ModelError, OnnxcamError
from onnxcam.explainer import Explainer
from onnxcam.graph.load import ModelSource, model_name
from onnxcam.images import (
    IMAGE_SUFFIXES,
    ImageError,
    Preprocessing,
    check_labels,
    model_labels,
    preprocess,
    read_image,
    read_labels,
    resolve_preprocessing,
    resolve_target,
)
from onnxcam.methods import get_method
from onnxcam.render import (
    npy_complete,
    overlay,
    read_rgb,
    report_html,
    resize_map,
    thumbnail_data_uri,
    write_bytes,
    write_npy,
    write_png,
)

RESULTS, REPORT = "results.jsonl", "report.html"
REPORT_LIMIT = 2000  # explained images shown in report.html; results.jsonl always has them all


@dataclass
class ImageJob:
    path: Path          # the file
    name: str           # output stem: relative path without suffix, '/'-separated


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out: Path = Path(".")
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out / REPORT

    @property
    def results(self) -> Path:
        return self.out / RESULTS


def collect_images(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[ImageJob]:
    """Files, folders (recursive, image suffixes only) and glob patterns -> jobs with unique output names.

    Files under `exclude` (the output folder, when it lies inside an input folder) are left out.
    """
    skip = os.path.join(os.path.realpath(exclude), "") if exclude is not None else None
    found: list[tuple[Path, Path]] = []  # (file, root)
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found += [(p, path) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file() or path.exists():
            found.append((path, path.parent))
        elif glob.has_magic(text):
            root = _glob_root(text)
            found += [(Path(p), root) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        else:
            raise InputError(f"input '{text}' is not a file, folder or matching glob pattern")
    jobs, seen_files, names = [], set(), set()
    for file, root in found:
        key = os.path.realpath(file)
        if key in seen_files or (skip is not None and key.startswith(skip)):
            continue
        seen_files.add(key)
        try:
            rel = file.relative_to(root)
        except ValueError:
            rel = Path(file.name)
        stem = rel.with_suffix("").as_posix()
        name, n = stem, 2
        while name in names:  # the same relative path under two roots
            name, n = f"{stem}~{n}", n + 1
        names.add(name)
        jobs.append(ImageJob(file, name))
    if not jobs:
        raise InputError(f"no images found in {', '.join(str(i) for i in inputs)} "
                         f"(image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return jobs


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def explain_images(model: ModelSource, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                   methods: Sequence[str] = ("gradcam",), layer: str | None = None, target: int | str | None = None,
                   top_k: int | None = None, batch_size: int = 8, preset: str | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   size: int | Sequence[int] | None = None, bgr: bool | None = None, scale: float | None = None,
                   labels: str | os.PathLike | Sequence[str] | None = None, device: str = "auto",
                   alpha: float = 0.5, colormap: str = "jet", resume: bool = False,
                   explainer: Explainer | None = None,
                   on_start: Callable[[int], None] | None = None,
                   on_image: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Explain image files with `methods`; see the module docstring for what is written. Returns a Summary.

    target: a class index or label name for every image (default: the predicted class); top_k: the k best classes.
    Raises OnnxcamError for mistakes found before any image is processed (model, layer, method, labels, target).
    """
    start = time.perf_counter()
    if target is not None and top_k is not None:
        raise InputError("give either a target or top_k, not both")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("no method given")
    for m in methods:
        get_method(m)
    ex = explainer or Explainer(model, layer=layer, device=device)
    spec = resolve_preprocessing(ex.model, ex.input_name, ex.input_layout, preset, mean, std, size, bgr, scale)
    ex.preprocessing = spec
    classes = _classes(ex)
    label_list = _labels(labels, ex, classes)
    target_id = resolve_target(str(target), label_list, classes) if target is not None else None
    if top_k is not None and classes is not None and top_k > classes:
        raise InputError(f"top_k {top_k} is more than the model's {classes} classes")
    jobs = collect_images(inputs, exclude=out)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_records(out_dir) if resume else {}
    summary = Summary(out=out_dir)
    if on_start:
        on_start(len(jobs))
    context = _Context(ex, spec, methods, target_id, top_k, label_list, alpha, colormap, out_dir)
    pending: list[ImageJob] = []
    partial = out_dir / (RESULTS + ".partial")
    with open(partial, "w", encoding="utf-8") as log:
        def emit(records: list[dict[str, Any]]) -> None:
            for rec in records:
                summary.records.append(rec)
                log.write(json.dumps(rec, ensure_ascii=False) + "\n")
            log.flush()
            if any(r["status"] == "failed" for r in records):
                summary.failed += 1
            elif records[0]["status"] == "skipped":
                summary.skipped += 1
            else:
                summary.done += 1
            if on_image:
                on_image(records[0])

        def flush() -> None:
            for records in context.run(pending):
                emit(records)
            pending.clear()

        for job in jobs:
            kept = context.resumable(job, previous) if resume else None
            if kept is not None:
                emit(kept)
                continue
            pending.append(job)
            if len(pending) >= batch_size:
                flush()
        flush()
    os.replace(partial, out_dir / RESULTS)
    summary.seconds = time.perf_counter() - start
    write_report(summary, title=f"onnxcam: {Path(model_name(model)).name}",
                 meta={"model": model_name(model), "methods": ", ".join(methods), "layer": ", ".join(ex.layer),
                       "images": len(jobs), "failed": summary.failed})
    return summary


def _classes(ex: Explainer) -> int | None:
    from onnxcam.graph.builder import _static_shapes

    shape = _static_shapes(ex.model.graph).get(ex.output)
    return shape[1] if shape is not None and len(shape) == 2 and isinstance(shape[1], int) else None


def _labels(labels: str | os.PathLike | Sequence[str] | None, ex: Explainer, classes: int | None) -> list[str] | None:
    if labels is None:
        found = model_labels(ex.model)
        return found if found is not None and (classes is None or len(found) == classes) else None
    if isinstance(labels, (str, os.PathLike)):
        result = read_labels(labels)
        check_labels(result, classes, f"labels file {labels}")
    else:
        result = [str(v) for v in labels]
        check_labels(result, classes, "the labels list")
    return result


def _previous_records(out: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    path = out / RESULTS
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("status") in ("ok", "skipped"):
            found.setdefault((rec.get("name", ""), rec.get("method", "")), []).append(rec)
    return found


class _Context:
    """What one run needs per batch: the explainer, preprocessing and output settings."""

    def __init__(self, ex: Explainer, spec: Preprocessing, methods: list[str], target: int | None,
                 top_k: int | None, labels: list[str] | None, alpha: float, colormap: str, out: Path) -> None:
        self.ex, self.spec, self.methods, self.target, self.top_k = ex, spec, methods, target, top_k
        self.labels, self.alpha, self.colormap, self.out = labels, alpha, colormap, out

    def label(self, index: int | None) -> str | None:
        return self.labels[index] if self.labels is not None and index is not None and index < len(self.labels) \
            else None

    def stems(self, job: ImageJob, method: str, classes: Sequence[int]) -> list[str]:
        if self.top_k is not None and self.top_k > 1:
            return [f"{job.name}.{method}.c{c}" for c in classes]
        return [f"{job.name}.{method}"]

    def resumable(self, job: ImageJob, previous: dict[tuple[str, str], list[dict[str, Any]]]
                  ) -> list[dict[str, Any]] | None:
        """Records for an image whose outputs are all present and complete, else None (the image is redone).

        The last results.jsonl supplies the details; without it, outputs found on disk are enough unless the
        file names depend on the classes (top_k > 1).
        """
        records = []
        for method in self.methods:
            recs = previous.get((job.name, method))
            if recs and self.target is not None and any(r.get("target") != self.target for r in recs):
                return None
            if not recs:
                if self.top_k is not None and self.top_k > 1:
                    return None
                stem = self.stems(job, method, [])[0]
                recs = [{"image": str(job.path), "name": job.name, "method": method, "layer": ", ".join(self.ex.layer),
                         "paths": {"overlay": f"{stem}.png", "map": f"{stem}.npy"}}]
            if (self.top_k or 1) != len(recs):
                return None
            for rec in recs:
                paths = rec.get("paths") or {}
                png, npy = paths.get("overlay"), paths.get("map")
                if not png or not npy or not (self.out / png).is_file() or not npy_complete(self.out / npy):
                    return None
                records.append({**rec, "image": str(job.path), "status": "skipped", "error": None, "seconds": 0.0})
        return records

    def run(self, jobs: list[ImageJob]) -> list[list[dict[str, Any]]]:
        """Records per job, in order; a failing batch is retried image by image so one bad input fails alone."""
        if not jobs:
            return []
        results: list[list[dict[str, Any]] | None] = [None] * len(jobs)
        decoded: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            try:
                rgb = read_image(job.path)
                decoded.append((i, rgb, preprocess(rgb, self.spec)))
            except ImageError as e:
                results[i] = [self._failed(job, str(e), time.perf_counter() - t0)]
        if decoded:
            try:
                batch = self._explain(jobs, decoded)
            except (GradientError, LayerError, ModelError):
                raise  # the same for every image: stop the run with the message
            except Exception:
                batch = {}
                for item in decoded:
                    try:
                        batch.update(self._explain(jobs, [item]))
                    except (GradientError, LayerError, ModelError):
                        raise
                    except Exception as e:  # one image's failure must not stop the batch
                        message = str(e) if isinstance(e, OnnxcamError) else f"{type(e).__name__}: {e}"
                        batch[item[0]] = [self._failed(jobs[item[0]], message, 0.0)]
            for i, records in batch.items():
                results[i] = records
        return [r if r is not None else [self._failed(jobs[i], "not processed", 0.0)] for i, r in enumerate(results)]

    def _explain(self, jobs: list[ImageJob], items: list[tuple[int, np.ndarray, np.ndarray]]
                 ) -> dict[int, list[dict[str, Any]]]:
        t0 = time.perf_counter()
        x = np.concatenate([item[2] for item in items])
        maps: dict[tuple[str, int], np.ndarray] = {}
        if self.top_k is not None:  # the classes come from the scores: one forward first
            scores = self.ex.scores(x)
            chosen = np.argsort(-scores, axis=1, kind="stable")[:, :self.top_k]
        else:  # the first method's run also gives the scores
            targets = None if self.target is None else np.full(len(items), self.target, np.int64)
            maps[(self.methods[0], 0)], scores, explained = self.ex.explain_scored(x, self.methods[0], targets)
            chosen = explained[:, None]
        predicted = scores.argmax(axis=1)
        for method in self.methods:
            for k in range(chosen.shape[1]):
                if (method, k) not in maps:
                    maps[(method, k)] = self.ex.explain(x, method=method, targets=chosen[:, k].astype(np.int64))
        per_image = (time.perf_counter() - t0) / len(items)
        out: dict[int, list[dict[str, Any]]] = {}
        for row, (i, rgb, _) in enumerate(items):
            job, records = jobs[i], []
            for method in self.methods:
                stems = self.stems(job, method, [int(c) for c in chosen[row]])
                for k, stem in enumerate(stems):
                    t1 = time.perf_counter()
                    cam = resize_map(maps[(method, k)][row], rgb.shape[:2])
                    png, npy = f"{stem}.png", f"{stem}.npy"
                    write_npy(self.out / npy, cam)
                    write_png(self.out / png, overlay(rgb, cam, self.alpha, self.colormap))
                    target = int(chosen[row, k])
                    pred = int(predicted[row])
                    records.append({
                        "image": str(job.path), "name": job.name, "status": "ok", "error": None, "predicted": pred,
                        "predicted_label": self.label(pred), "score": float(scores[row, pred]), "target": target,
                        "label": self.label(target), "target_score": float(scores[row, target]), "method": method,
                        "layer": ", ".join(self.ex.layer), "paths": {"overlay": png, "map": npy},
                        "seconds": round(per_image / max(1, len(self.methods) * len(stems))
                                         + time.perf_counter() - t1, 4)})
            out[i] = records
        return out

    def _failed(self, job: ImageJob, error: str, seconds: float) -> dict[str, Any]:
        return {"image": str(job.path), "name": job.name, "status": "failed", "error": error, "predicted": None,
                "predicted_label": None, "score": None, "target": None, "label": None, "target_score": None,
                "method": ", ".join(self.methods), "layer": ", ".join(self.ex.layer), "paths": None,
                "seconds": round(seconds, 4)}


def write_report(summary: Summary, title: str, meta: dict[str, Any], limit: int = REPORT_LIMIT) -> None:
    """report.html with every failure and the first `limit` explained images (thumbnails are ~10 KB each)."""
    ok_seen, shown = 0, []
    for rec in summary.records:
        if rec.get("status") != "failed":
            ok_seen += 1
            if ok_seen > limit:
                continue
        shown.append(rec)
    if len(shown) < len(summary.records):
        meta = {**meta, "shown": f"{len(shown)} of {len(summary.records)} (all in {RESULTS})"}
    thumbs = {}
    for i, rec in enumerate(shown):
        paths = rec.get("paths") or {}
        if rec.get("status") != "failed" and paths.get("overlay"):
            rgb = read_rgb(summary.out / paths["overlay"])
            if rgb is not None:
                thumbs[i] = thumbnail_data_uri(rgb)
    write_bytes(summary.report, report_html(shown, thumbs, title, meta).encode("utf-8"))
