"""`compare`: do two models (float32 vs int8, v1 vs v2) look at the same evidence?

Each image is explained by both models, each with its own preprocessing and its own default layer (unless given),
for the same class: A's prediction, or a fixed target. Per image it records both predictions and probabilities,
whether they agree, and how well the two maps agree once both are resized to the image's size: Pearson r,
Spearman r (Pearson of the ranks, ties averaged), the IoU of the top 10 % and top 20 % pixels, and the distance
between the peaks. An image passes when both maps exist, are not flat and Pearson r >= threshold; the run passes
when every image passes and, with `fail_under`, the mean Pearson r is at least that.

With `out`, it writes OUT/compare.jsonl (one strict-JSON line per image, in input order), OUT/compare.json (the
summary: models, layers, notes, statistics, verdict) and OUT/report.html (A | B | difference for the worst images
first, self-contained). One run per OUT at a time (jobs.lock).

Maps are compared at the image's size, at most COMPARE_SIDE pixels on the longer side: the maps are bilinear
upsamplings of feature maps of a few dozen cells, so a larger grid only costs time (sorting for Spearman r);
peak distances are still given in the image's own pixels.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import html
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.errors import InputError, OnnxcamError
from onnxcam.explainer import Explainer
from onnxcam.files import OutputFolder, collect_inputs, printable, write_bytes
from onnxcam.graph.contract import ModelSource, model_name
from onnxcam.images import ImageError, Preprocessing, preprocess, read_image, resolve_preprocessing, resolve_target
from onnxcam.inputs import prepare_model
from onnxcam.jobs.lock import OutputLock
from onnxcam.jobs.records import Record, dumps
from onnxcam.jobs.worker import FATAL
from onnxcam.methods import get_method
from onnxcam.render import overlay, resize_map, thumbnail_data_uri

__all__ = ["Comparison", "DEFAULT_THRESHOLD", "compare", "map_agreement"]

RESULTS, SUMMARY, REPORT = "compare.jsonl", "compare.json", "report.html"
DEFAULT_THRESHOLD = 0.5   # Pearson r below which an image's maps count as diverging
COMPARE_SIDE = 1024       # longer side of the grid the maps are compared on (at most)
REPORT_LIMIT = 200        # worst images shown in report.html (all are in compare.jsonl)
FAILURE_LIMIT = 100       # failed images shown in report.html
NAME_LIMIT = 20           # image names kept per list in the summary (all are in compare.jsonl)
METRICS = ("pearson", "spearman", "iou_top10", "iou_top20", "peak_distance")
LOWER_IS_WORSE = {"pearson": True, "spearman": True, "iou_top10": True, "iou_top20": True, "peak_distance": False}

ImageSource = tuple[str, str, Callable[[], np.ndarray]]  # (image as given, name, reader of its RGB pixels)


# --- map agreement ------------------------------------------------------------------------------------------------
def map_agreement(a: np.ndarray, b: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> dict[str, float | None]:
    """Agreement of two maps of the same (H, W) shape: pearson, spearman, iou_top10, iou_top20, peak_distance
    (pixels, times `scale` = (sy, sx) when the maps were shrunk from the image) and peak_distance_fraction (of the
    diagonal). A statistic that is undefined (a flat map) is None."""
    if a.shape != b.shape:
        raise InputError(f"maps of different shapes {a.shape} and {b.shape} cannot be compared")
    fa, fb = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if np.ptp(fa) == 0 or np.ptp(fb) == 0:  # a flat map has no peak, no ranking, no top pixels
        return dict.fromkeys((*METRICS, "peak_distance_fraction"))
    (ya, xa), (yb, xb) = _peak(a), _peak(b)
    distance = math.hypot((ya - yb) * scale[0], (xa - xb) * scale[1])
    diagonal = math.hypot(a.shape[0] * scale[0], a.shape[1] * scale[1])
    return {"pearson": _pearson(fa, fb), "spearman": _pearson(_ranks(a.ravel()), _ranks(b.ravel())),
            "iou_top10": _iou(_top(fa, 0.10), _top(fb, 0.10)), "iou_top20": _iou(_top(fa, 0.20), _top(fb, 0.20)),
            "peak_distance": distance, "peak_distance_fraction": distance / diagonal}


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    da, db = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(da @ da) * float(db @ db))
    return None if norm == 0 else float(np.clip(float(da @ db) / norm, -1.0, 1.0))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their average rank (maps have large zero plateaus after the ReLU). Average ranks
    depend only on the values, so the fastest (unstable) sort will do."""
    order = np.argsort(values)
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(values)])
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0, counts)
    return ranks


def _top(values: np.ndarray, fraction: float) -> np.ndarray:
    """The pixels at or above the value of the k-th highest (k = fraction of all), never zeros: a map that is
    zero over most of the image has fewer top pixels, instead of a tie broken by pixel order."""
    k = max(1, math.ceil(fraction * len(values)))
    cut = np.partition(values, len(values) - k)[len(values) - k]
    return (values >= cut) & (values > 0)


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = int(np.count_nonzero(a | b))
    return None if union == 0 else int(np.count_nonzero(a & b)) / union


def _peak(cam: np.ndarray) -> tuple[float, float]:
    """The centre of the map's maximum (the centroid of its plateau, which bilinear upsampling widens)."""
    ys, xs = np.nonzero(cam >= cam.max() - 1e-6)
    return float(ys.mean()), float(xs.mean())


# --- the result ---------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """What `compare` found. records: one dict per image in input order (all of them unless keep_records=False;
    compare.jsonl always has them all). stats: metric -> {"mean", "worst", "worst_image", "count"}."""

    models: dict[str, str]
    method: str
    layers: dict[str, list[str]]
    threshold: float
    fail_under: float | None
    notes: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    images: int = 0
    compared: int = 0
    failed: int = 0
    flat: int = 0
    not_compared: int = 0
    predictions_differ: int = 0
    below_threshold: int = 0
    differ_images: list[str] = field(default_factory=list)
    below_images: list[str] = field(default_factory=list)
    failed_images: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    out: Path | None = None

    @property
    def reasons(self) -> list[str]:
        """Why the run does not pass (empty when it does)."""
        found = []
        if self.images == 0:
            found.append("no image was compared")
        if self.failed:
            found.append(f"{self.failed} image(s) failed")
        if self.not_compared:
            found.append(f"maps not compared on {self.not_compared} image(s)")
        if self.flat:
            found.append(f"{self.flat} image(s) with an all-zero map")
        if self.below_threshold:
            found.append(f"{self.below_threshold} image(s) with Pearson r below {self.threshold:g}")
        mean = self.stats.get("pearson", {}).get("mean")
        if self.fail_under is not None and (mean is None or mean < self.fail_under):
            found.append(f"mean Pearson r {_fmt(mean)} under --fail-under {self.fail_under:g}")
        return found

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def exit_code(self) -> int:
        """0 when every image passes the thresholds, 1 otherwise (the CLI's exit status)."""
        return 0 if self.passed else 1

    @property
    def results(self) -> Path | None:
        return None if self.out is None else self.out / RESULTS

    @property
    def report(self) -> Path | None:
        return None if self.out is None else self.out / REPORT

    def summary(self) -> dict[str, Any]:
        """Everything but the records, JSON-ready (what OUT/compare.json holds)."""
        return {"models": self.models, "method": self.method, "layers": self.layers, "threshold": self.threshold,
                "fail_under": self.fail_under, "notes": self.notes, "images": self.images, "compared": self.compared,
                "failed": self.failed, "flat": self.flat, "not_compared": self.not_compared,
                "predictions_differ": self.predictions_differ, "below_threshold": self.below_threshold,
                "differ_images": self.differ_images, "below_images": self.below_images,
                "failed_images": self.failed_images, "stats": self.stats, "passed": self.passed,
                "reasons": self.reasons, "seconds": round(self.seconds, 3)}


class _Stats:
    """Running mean and worst of each metric, so memory stays flat however many images."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.worst: dict[str, tuple[float, str]] = {}

    def add(self, record: Record) -> None:
        for metric in METRICS:
            value = record.get(metric)
            if value is None:
                continue
            self.sums[metric] = self.sums.get(metric, 0.0) + value
            self.counts[metric] = self.counts.get(metric, 0) + 1
            worst = self.worst.get(metric)
            if worst is None or (value < worst[0] if LOWER_IS_WORSE[metric] else value > worst[0]):
                self.worst[metric] = (value, record["image"])

    def table(self) -> dict[str, dict[str, Any]]:
        return {m: {"mean": self.sums[m] / self.counts[m], "worst": self.worst[m][0],
                    "worst_image": self.worst[m][1], "count": self.counts[m]} for m in METRICS if m in self.counts}


# --- the two models -----------------------------------------------------------------------------------------------
@dataclass
class _Side:
    tag: str                       # "A" or "B"
    name: str                      # the model as given
    ex: Explainer
    preprocessing: Preprocessing
    classes: int
    labels: list[str] | None

    def label(self, index: int | None) -> str | None:
        labels = self.labels
        return labels[index] if labels is not None and index is not None and 0 <= index < len(labels) else None


def _side(tag: str, model: ModelSource, layer: str | Sequence[str] | None, device: str) -> _Side:
    ex = Explainer(prepare_model(model).model, layer=layer, device=device)  # extra inputs: metadata defaults
    name = printable(model_name(model))
    if ex.task not in (None, "classify"):
        raise InputError(f"model {tag} ({name}) is a {ex.task} model; compare explains classifiers (an (N, classes) "
                         "output)")
    _ = ex.layer  # a wrong --layer is a usage error before any image is read
    spec = resolve_preprocessing(ex.summary, ex.input_name, ex.input_layout)
    ex.preprocessing = spec
    classes = ex.classes
    if classes is None:  # a dynamic class axis: one forward of a blank image tells
        scores = ex.scores(preprocess(np.zeros((*spec.size, 3), np.uint8), spec))
        if scores.ndim != 2:
            raise InputError(f"model {tag} ({name}) gives scores of shape {scores.shape}; compare explains "
                             "classifiers (an (N, classes) output)")
        classes = scores.shape[1]
    return _Side(tag, name, ex, spec, classes, ex.labels)


def _plan_notes(a: _Side, b: _Side, same_classes: bool) -> tuple[bool, list[str]]:
    """Whether maps can be compared (class indices mean the same), and what was decided, in words."""
    notes = []
    if a.preprocessing.size != b.preprocessing.size:
        (ha, wa), (hb, wb) = a.preprocessing.size, b.preprocessing.size
        notes.append(f"A takes {ha}x{wa} inputs, B {hb}x{wb}: each model gets the image preprocessed its own way; "
                     "maps are compared at the image's size")
    comparable = True
    if a.classes != b.classes:
        if same_classes:
            notes.append(f"A has {a.classes} classes, B {b.classes}: --same-classes takes B's class i as A's class "
                         "i; maps are compared for A's target where B has that class")
        else:
            comparable = False
            notes.append(f"A has {a.classes} classes, B {b.classes}: predictions cannot be matched and maps are not "
                         "compared (each model's own prediction is recorded); pass --same-classes if B's class i "
                         "is A's class i")
    elif a.labels and b.labels and a.labels != b.labels:
        notes.append("A and B name their classes differently; classes are matched by index")
    return comparable, notes


# --- the job ------------------------------------------------------------------------------------------------------
def compare(model_a: ModelSource, model_b: ModelSource, images: Sequence[str | os.PathLike | np.ndarray] |
            np.ndarray | str | os.PathLike, out: str | os.PathLike | None = None, method: str = "gradcam",
            layer_a: str | Sequence[str] | None = None, layer_b: str | Sequence[str] | None = None,
            target: int | str | None = None, threshold: float = DEFAULT_THRESHOLD, fail_under: float | None = None,
            same_classes: bool = False, batch_size: int = 8, device: str = "auto",
            method_options: dict[str, Any] | None = None, keep_records: bool = True,
            on_start: Callable[[int], None] | None = None, on_image: Callable[[Record], None] | None = None,
            on_note: Callable[[str], None] | None = None) -> Comparison:
    """Explain `images` with both models and measure how well the maps agree; see the module docstring.

    images: files, folders (recursive) and glob patterns, or RGB uint8 arrays (H, W, 3). out: where compare.jsonl,
    compare.json and report.html go (None: nothing is written). target: a class index or A's label name (default:
    A's prediction per image). threshold: the per-image Pearson r an image must reach; fail_under: the mean Pearson
    r the run must reach. same_classes: with different class counts, take B's class i as A's class i.
    Raises OnnxcamError for mistakes found before any image is read.

        result = onnxcam.compare("model.onnx", "model_int8.onnx", ["images/"])
        result.passed, result.stats["pearson"]["mean"], result.records[0]["iou_top20"]
    """
    start = time.perf_counter()
    _check_numbers(threshold, fail_under, batch_size)
    options = get_method(method).accepts(dict(method_options or {}))
    a, b = _side("A", model_a, layer_a, device), _side("B", model_b, layer_b, device)
    comparable, notes = _plan_notes(a, b, same_classes)
    if target is not None and not str(target).strip().lstrip("-").isdigit() and not a.labels:
        raise InputError(f"--target '{printable(str(target))}' is a name, but model A carries no class names; give a "
                         "class index")
    category = resolve_target(str(target), a.labels, a.classes) if target is not None else None
    sources = _sources(images, out)
    result = Comparison({"A": a.name, "B": b.name}, method, {"A": list(a.ex.layer), "B": list(b.ex.layer)},
                        threshold, fail_under, notes)
    for note in notes:
        if on_note:
            on_note(note)
    folder = OutputFolder(out) if out is not None else None
    run = _Run(a, b, method, options, category, comparable, threshold, folder is not None)
    stats = _Stats()
    with OutputLock(folder.real) if folder is not None else contextlib.nullcontext(), \
            _results_log(folder) as log:
        if on_start:
            on_start(len(sources))
        for chunk in _batches(sources, batch_size):
            for record in run.batch(chunk):
                _tally(result, stats, record, keep_records)
                if log is not None:
                    log.write(dumps(record) + "\n")
                    log.flush()
                if on_image:
                    on_image(record)
        result.stats = stats.table()
        result.seconds = time.perf_counter() - start
        if folder is not None:
            result.out = folder.given
            write_bytes(folder.path(SUMMARY), (dumps(result.summary()) + "\n").encode())
            page = report_page(result, run.worst(), run.failures)
            write_bytes(folder.path(REPORT), page.encode("utf-8", errors="backslashreplace"))
    return result


def _check_numbers(threshold: float, fail_under: float | None, batch_size: int) -> None:
    for name, value in (("threshold", threshold), ("fail-under", fail_under)):
        if value is not None and not -1.0 <= value <= 1.0:
            raise InputError(f"--{name} is a Pearson r, between -1 and 1; got {value}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")


def _sources(images: Any, out: str | os.PathLike | None) -> list[ImageSource]:
    """Image files (names relative to their roots) or in-memory RGB arrays ("array[i]")."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, np.ndarray):
        images = [images] if images.ndim == 3 else list(images)
    items = list(images)
    arrays = [isinstance(item, np.ndarray) for item in items]
    if any(arrays):
        if not all(arrays):
            raise InputError("images are either paths or RGB arrays, not both in one call")
        for i, item in enumerate(items):
            if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                raise InputError(f"image array {i} has shape {item.shape} and dtype {item.dtype}; expected RGB uint8 "
                                 "(H, W, 3)")
        return [(f"array[{i}]", f"array[{i}]", functools.partial(np.asarray, item)) for i, item in enumerate(items)]
    if not items:
        raise InputError("no images given")
    found = collect_inputs(items, exclude=out)
    return [(os.fsdecode(f.path), f.name, functools.partial(read_image, f.path)) for f in found]


def _batches(sources: list[ImageSource], size: int) -> Iterator[list[ImageSource]]:
    for first in range(0, len(sources), size):
        yield sources[first:first + size]


@contextlib.contextmanager
def _results_log(folder: OutputFolder | None) -> Iterator[Any]:
    """OUT/compare.jsonl written line by line under a temporary name, renamed into place once complete (a killed
    run leaves compare.jsonl.partial, never a truncated compare.jsonl)."""
    if folder is None:
        yield None
        return
    partial = folder.path(RESULTS + ".partial")
    if partial.is_symlink():  # planted: never write through it
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with open(fd, "w", encoding="utf-8") as log:
        yield log
    os.replace(partial, folder.path(RESULTS))


def _tally(result: Comparison, stats: _Stats, record: Record, keep: bool) -> None:
    result.images += 1
    if keep:
        result.records.append(record)
    image = record["image"]
    if record["status"] == "failed":
        result.failed += 1
        _remember(result.failed_images, image)
        return
    stats.add(record)
    if record["predictions_agree"] is False:
        result.predictions_differ += 1
        _remember(result.differ_images, image)
    if record["flat"]:
        result.flat += 1
    elif not record["maps_compared"]:
        result.not_compared += 1
    elif record["pearson"] is not None and record["pearson"] < result.threshold:
        result.below_threshold += 1
        _remember(result.below_images, image)
    if record["maps_compared"] and not record["flat"]:
        result.compared += 1


def _remember(names: list[str], image: str) -> None:
    if len(names) < NAME_LIMIT:
        names.append(image)


# --- one batch ----------------------------------------------------------------------------------------------------
class _Run:
    """Explains batches with both models and keeps what the report shows (the worst images, the failures)."""

    def __init__(self, a: _Side, b: _Side, method: str, options: dict[str, Any], category: int | None,
                 comparable: bool, threshold: float, report: bool) -> None:
        self.a, self.b, self.method, self.options = a, b, method, options
        self.category, self.comparable, self.threshold, self.report = category, comparable, threshold, report
        self._worst: list[tuple[float, int, Record, list[str]]] = []  # a max-heap on agreement (negated keys)
        self._seen = 0
        self.failures: list[Record] = []

    def batch(self, chunk: list[ImageSource]) -> list[Record]:
        """Records for the images of one batch, in order; an unreadable image or one that fails the models fails
        alone (the batch is retried image by image)."""
        t0 = time.perf_counter()
        records: dict[int, Record] = {}
        decoded: list[tuple[int, np.ndarray]] = []
        for i, (image, name, read) in enumerate(chunk):
            try:
                decoded.append((i, read()))
            except ImageError as e:
                records[i] = _failed(image, name, self.method, str(e))
        try:
            records.update(self._explain(chunk, decoded))
        except FATAL:
            raise
        except Exception:
            for entry in decoded:
                try:
                    records.update(self._explain(chunk, [entry]))
                except FATAL:
                    raise
                except Exception as e:  # one image's failure must not stop the run
                    message = str(e) if isinstance(e, OnnxcamError) else f"{type(e).__name__}: {e}"
                    records[entry[0]] = _failed(chunk[entry[0]][0], chunk[entry[0]][1], self.method, message)
        share = round((time.perf_counter() - t0) / max(1, len(chunk)), 4)
        ordered = []
        for i in range(len(chunk)):
            record = records[i]
            record["seconds"] = share
            if record["status"] == "failed" and self.report and len(self.failures) < FAILURE_LIMIT:
                self.failures.append(record)
            ordered.append(record)
        return ordered

    def _explain(self, chunk: list[ImageSource], decoded: list[tuple[int, np.ndarray]]) -> dict[int, Record]:
        if not decoded:
            return {}
        a, b = self.a, self.b
        rgbs = [rgb for _, rgb in decoded]
        xa = np.concatenate([preprocess(rgb, a.preprocessing) for rgb in rgbs])
        xb = np.concatenate([preprocess(rgb, b.preprocessing) for rgb in rgbs])
        n = len(decoded)
        fixed = None if self.category is None else np.full(n, self.category, np.int64)
        if self.comparable:
            maps_a, scores_a, chosen = a.ex.explain_scored(xa, self.method, fixed, **self.options)
        else:  # predictions only: no map is compared, so none is made
            maps_a, scores_a = None, a.ex.scores(xa)
            chosen = scores_a.argmax(axis=1) if fixed is None else fixed
        chosen = np.asarray(chosen, np.int64)
        explained_b = np.flatnonzero(chosen < b.classes) if self.comparable else np.zeros(0, np.int64)
        scores_b = b.ex.scores(xb) if len(explained_b) < n else None
        maps_b: dict[int, np.ndarray] = {}
        if len(explained_b):
            part_maps, part_scores, _ = b.ex.explain_scored(xb[explained_b], self.method, chosen[explained_b],
                                                            **self.options)
            if scores_b is None:
                scores_b = np.empty((n, part_scores.shape[1]), part_scores.dtype)
            scores_b[explained_b] = part_scores
            maps_b = dict(zip(explained_b.tolist(), part_maps))
        assert scores_b is not None
        records = {}
        for row, (i, rgb) in enumerate(decoded):
            image, name, _ = chunk[i]
            cam_a = None if maps_a is None else maps_a[row]
            records[i] = self._record(image, name, rgb, scores_a[row], scores_b[row], int(chosen[row]), cam_a,
                                      maps_b.get(row))
        return records

    def _record(self, image: str, name: str, rgb: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                target: int, cam_a: np.ndarray | None, cam_b: np.ndarray | None) -> Record:
        a, b = self.a, self.b
        for side, score in ((a, score_a), (b, score_b)):
            if not np.isfinite(score).all():
                return _failed(image, name, self.method, f"model {side.tag}'s output '{printable(side.ex.output)}' "
                               "is not finite (NaN or Inf) for this image")
        prob_a, prob_b = _softmax(score_a), _softmax(score_b)
        pred_a, pred_b = int(score_a.argmax()), int(score_b.argmax())
        record: Record = {
            "image": image, "name": name, "status": "ok", "error": None, "method": self.method,
            "target": target, "target_label": a.label(target),
            "a_predicted": pred_a, "a_label": a.label(pred_a), "a_probability": float(prob_a[pred_a]),
            "a_target_probability": float(prob_a[target]),
            "b_predicted": pred_b, "b_label": b.label(pred_b), "b_probability": float(prob_b[pred_b]),
            "b_target_probability": float(prob_b[target]) if target < b.classes and self.comparable else None,
            "predictions_agree": pred_a == pred_b if self.comparable else None,
            "maps_compared": False, "flat": False, **dict.fromkeys((*METRICS, "peak_distance_fraction")),
            "passed": False, "notes": []}
        if cam_a is None or cam_b is None:  # predictions only (see the run's note), or a class B lacks
            if self.comparable:
                record["notes"].append(f"A's target class {target} does not exist in B ({b.classes} classes): maps "
                                       "not compared")
            return record
        size, scale = _compare_grid(rgb.shape[:2])
        map_a, map_b = resize_map(cam_a, size), resize_map(cam_b, size)
        for side, cam in ((a, map_a), (b, map_b)):
            if np.ptp(cam) == 0:
                record["flat"] = True
                record["notes"].append(
                    f"{side.tag}'s {self.method} map is all zero for class {target}: nothing reaches its layer "
                    f"{', '.join(printable(t) for t in side.ex.layer)} (a calibration that clips every activation "
                    "does this: straight-through gradients are zero outside the quantisation range)")
        record.update(map_agreement(map_a, map_b, scale))
        record["maps_compared"] = True
        pearson = record["pearson"]
        record["passed"] = not record["flat"] and pearson is not None and pearson >= self.threshold
        if self.report:
            self._keep_for_report(record, rgb, cam_a, cam_b)
        return record

    def _keep_for_report(self, record: Record, rgb: np.ndarray, cam_a: np.ndarray, cam_b: np.ndarray) -> None:
        """The REPORT_LIMIT least agreeing images so far (a flat map counts as the least); thumbnails are made
        only for an image that gets in."""
        key = -2.0 if record["flat"] or record["pearson"] is None else float(record["pearson"])
        self._seen += 1
        if len(self._worst) >= REPORT_LIMIT and key >= -self._worst[0][0]:
            return
        pictures = _pictures(rgb, resize_map(cam_a, rgb.shape[:2]), resize_map(cam_b, rgb.shape[:2]))
        entry = (-key, -self._seen, record, [thumbnail_data_uri(p, 200) for p in pictures])
        if len(self._worst) >= REPORT_LIMIT:
            heapq.heapreplace(self._worst, entry)
        else:
            heapq.heappush(self._worst, entry)

    def worst(self) -> list[tuple[Record, list[str]]]:
        """The kept images, least agreeing first (input order among equals)."""
        return [(rec, thumbs) for _, _, rec, thumbs in sorted(self._worst, key=lambda e: (-e[0], -e[1]))]


def _compare_grid(size: tuple[int, int]) -> tuple[tuple[int, int], tuple[float, float]]:
    """The (H, W) the maps are compared on and the factors (sy, sx) back to the image's pixels."""
    h, w = size
    factor = min(1.0, COMPARE_SIDE / max(h, w))
    grid = (max(1, round(h * factor)), max(1, round(w * factor)))
    return grid, (h / grid[0], w / grid[1])


def _failed(image: str, name: str, method: str, error: str) -> Record:
    return {"image": image, "name": name, "status": "failed", "error": error, "method": method, "target": None,
            "target_label": None, "a_predicted": None, "a_label": None, "a_probability": None,
            "a_target_probability": None, "b_predicted": None, "b_label": None, "b_probability": None,
            "b_target_probability": None, "predictions_agree": None, "maps_compared": False, "flat": False,
            **dict.fromkeys((*METRICS, "peak_distance_fraction")), "passed": False, "notes": []}


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores.astype(np.float64) - scores.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


# --- pictures and the report --------------------------------------------------------------------------------------
def _pictures(rgb: np.ndarray, map_a: np.ndarray, map_b: np.ndarray) -> list[np.ndarray]:
    """A's overlay, B's overlay, and the difference A - B over the image in grey: red where A looks more, blue
    where B does, the image itself where they agree."""
    grey = np.repeat(rgb.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
    diff = (map_a - map_b)[:, :, None]
    red, blue = np.array([230, 30, 30], np.float32), np.array([30, 60, 230], np.float32)
    colour = np.where(diff > 0, red, blue)
    weight = np.abs(diff)
    picture = grey * (1.0 - weight) + colour * weight
    return [overlay(rgb, map_a), overlay(rgb, map_b), np.clip(np.round(picture), 0, 255).astype(np.uint8)]


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em}.meta{color:#555;margin-bottom:.6em}.note{color:#8a5a00}
.verdict{font-weight:600;margin:.6em 0}.pass{color:#186a1a}.fail{color:#b00}
table.stats{border-collapse:collapse;margin:.6em 0 1.2em}.stats td,.stats th{border:1px solid #ddd;padding:3px 8px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin-bottom:12px;font-size:.85em}
.card.bad{border-color:#d33}.card.failed{border-color:#d33;background:#fff4f4}
.row{display:flex;gap:10px;flex-wrap:wrap}.row figure{margin:0;text-align:center}
.row img{width:200px;height:auto;display:block;image-rendering:pixelated}.name{font-weight:600;word-break:break-all}
.k{color:#666}.err{color:#b00;word-break:break-word}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report_page(result: Comparison, worst: list[tuple[Record, list[str]]], failures: list[Record]) -> str:
    """A self-contained page: the verdict, the statistics, then A | B | difference for the least agreeing images
    first, then the failures. Every text from a file or a model is escaped."""
    verdict = ("PASS: every image passes" if result.passed else "FAIL: " + "; ".join(result.reasons))
    meta = [f"A: {_e(result.models['A'])} (layer {_e(', '.join(result.layers['A']))})",
            f"B: {_e(result.models['B'])} (layer {_e(', '.join(result.layers['B']))})",
            f"method: {_e(result.method)} &middot; threshold r &ge; {_e(result.threshold)}"
            + (f" &middot; fail under mean r {_e(result.fail_under)}" if result.fail_under is not None else ""),
            f"images: {result.images} &middot; maps compared: {result.compared} &middot; predictions differ: "
            f"{result.predictions_differ} &middot; failed: {result.failed}"]
    rows = "".join(f"<tr><td>{_e(m)}</td><td>{_e(_fmt(s['mean']))}</td><td>{_e(_fmt(s['worst']))}</td>"
                   f"<td>{_e(s['worst_image'])}</td></tr>" for m, s in result.stats.items())
    shown = f"{len(worst)} least agreeing of {result.compared + result.flat} images" if worst else "no map compared"
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>onnxcam compare</title><style>{_STYLE}</style></head><body><h1>onnxcam compare</h1>",
             *(f'<div class="meta">{line}</div>' for line in meta),
             *(f'<div class="note">note: {_e(note)}</div>' for note in result.notes),
             f'<div class="verdict {"pass" if result.passed else "fail"}">{_e(verdict)}</div>',
             f'<table class="stats"><tr><th>metric</th><th>mean</th><th>worst</th><th>worst image</th></tr>{rows}'
             "</table>", f"<h2>A | B | A &minus; B ({_e(shown)}, worst first)</h2>",
             *(_card(rec, thumbs) for rec, thumbs in worst)]
    if failures:
        parts.append(f"<h2>failed ({len(failures)} shown of {result.failed})</h2>")
        parts += [f'<div class="card failed"><div class="name">{_e(r["image"])}</div><div class="err">'
                  f'{_e(r["error"])}</div></div>' for r in failures]
    parts.append("</body></html>\n")
    return "".join(parts)


def _card(rec: Record, thumbs: list[str]) -> str:
    figures = "".join(f'<figure><img src="{_e(uri)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption>'
                      "</figure>" for uri, caption in zip(thumbs, ("A", "B", "A - B (red: A, blue: B)")) if uri)
    agree = {True: "same", False: "DIFFERENT", None: "n/a"}[rec["predictions_agree"]]
    lines = [f'<div class="name">{_e(rec["image"])}</div>', f'<div class="row">{figures}</div>',
             f'<div><span class="k">target</span> {_e(rec["target"])} {_e(rec["target_label"] or "")} '
             f'<span class="k">A predicts</span> {_e(rec["a_predicted"])} {_e(rec["a_label"] or "")} '
             f'({_e(_fmt(rec["a_probability"]))}) <span class="k">B predicts</span> {_e(rec["b_predicted"])} '
             f'{_e(rec["b_label"] or "")} ({_e(_fmt(rec["b_probability"]))}) <span class="k">predictions</span> '
             f"{agree}</div>",
             f'<div><span class="k">Pearson r</span> {_e(_fmt(rec["pearson"]))} <span class="k">Spearman r</span> '
             f'{_e(_fmt(rec["spearman"]))} <span class="k">IoU top 10%</span> {_e(_fmt(rec["iou_top10"]))} '
             f'<span class="k">top 20%</span> {_e(_fmt(rec["iou_top20"]))} <span class="k">peak distance</span> '
             f'{_e(_fmt(rec["peak_distance"], 1))} px</div>',
             *(f'<div class="note">{_e(note)}</div>' for note in rec["notes"])]
    return f'<div class="card{"" if rec["passed"] else " bad"}">' + "".join(lines) + "</div>"
