"""The one worker of every explain run: a batch of input files -> (image, target) work items -> maps -> files and
records. Three stages that onnxcam.jobs.pipeline overlaps (and a Ray actor runs per batch): `read` decodes and
preprocesses, `compute` runs the model, `write` colours, encodes and writes.

Classifiers keep the fast path: the explained class is chosen in-graph (or from the scores for top-k), so a batch
of N images is one run per method. Other tasks turn each image's output into its targets (TargetPlan) and explain
the (image, target) pairs in batches of at most `batch_size` (Explainer splits them further to a model's fixed
batch), so an image is never stacked more often than the batch allows.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcam.errors import GradientError, InputError, LayerError, ModelError, OnnxcamError
from onnxcam.explainer import Explainer
from onnxcam.files import InputFile, OutputFolder, is_disk_full, printable, write_bytes
from onnxcam.images import ImageError, Preprocessing, box_to_image, geometry, map_to_image, preprocess, read_image
from onnxcam.jobs.records import Record, failed_record
from onnxcam.render import draw_boxes, encode_png, npy_bytes, overlay, preview_jpeg
from onnxcam.report import INPUT_PREVIEW_SIDE, PREVIEW_SIDE, input_preview_path, preview_path
from onnxcam.runtime import GPU_PROVIDERS
from onnxcam.targets import Target, TargetPlan

PREVIEW_RESERVE = 16 << 20  # bytes of free disk below which report thumbnails are no longer written
# Errors that are the same for every image (model, layer, gradient rules): they stop the run with their message.
FATAL = (GradientError, LayerError, ModelError)


@dataclass
class RunSpec:
    """Everything a worker needs, picklable: the local run and every Ray actor build the same Worker from it."""

    model: str | bytes                       # a path (absolute for Ray) or the serialized model
    explainer: dict[str, Any]                # Explainer keyword arguments (layer, device, output, grid, ...)
    preprocessing: Preprocessing
    methods: list[str]
    plan: TargetPlan
    out: str
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: list[str] | None = None
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = 8
    labels_source: str | None = None         # where the labels came from (onnxcam.labels.find_labels)
    per_layer: bool = False                  # one map per explained layer instead of their average


@dataclass
class Explained:
    """One target of one image, with its map per method."""
    target: int | None                       # class explained (None: similarity)
    value: float | None                      # the target's score (logit, region sum, detection score, similarity)
    probability: float | None = None         # softmax of the logits (classifiers)
    kind: str = "class"                      # the target's own description
    box: list[float] | None = None           # detection box in the image's pixels
    maps: dict[str, np.ndarray] = field(default_factory=dict)       # method -> map at the model input's size
    # (per_layer: method -> (layers, H, W), one map per layer)
    seconds: dict[str, float] = field(default_factory=dict)         # method -> compute time share


@dataclass
class Batch:
    items: list[InputFile]
    failed: dict[int, list[Record]] = field(default_factory=dict)                      # index -> its failure
    decoded: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)    # (index, rgb, tensor)
    images: dict[int, np.ndarray] = field(default_factory=dict)                         # index -> rgb
    explained: dict[int, tuple[int | None, float | None, list[Explained]]] = field(default_factory=dict)
    # index -> (predicted class, its score, targets)


class Worker:
    def __init__(self, spec: RunSpec, explainer: Explainer | None = None) -> None:
        self.spec = spec
        self.ex = explainer or Explainer(spec.model, **spec.explainer)
        self.ex.preprocessing = spec.preprocessing
        self.out = OutputFolder(spec.out)
        # progress(fraction of the batch in `compute` done, 0..1), called as each method call goes through its
        # inner loops (set by the job for its progress bar)
        self.progress: Callable[[float], None] | None = None
        self.layer_text = ", ".join(self.ex.layer)
        modules = [self.ex.module_path(name) for name in self.ex.layer]
        self.module_text = ", ".join(m for m in modules if m) or None
        self.layers = [LayerColumn(k, name, module, label) for k, (name, module, label) in
                       enumerate(zip(self.ex.layer, modules, layer_labels(self.ex, modules)))]
        self.preprocessing_text = spec.preprocessing.summary()

    def run(self, items: list[InputFile]) -> list[list[Record]]:
        """Records per input, in order: the three stages one after the other."""
        return self.write(self.compute(self.read(items)))

    # --- read ----------------------------------------------------------------------------------------------------
    def read(self, items: list[InputFile]) -> Batch:
        """Decode and preprocess (reader threads); an unreadable image fails alone."""
        batch = Batch(items)
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            try:
                rgb = read_image(item.path)
                batch.decoded.append((i, rgb, preprocess(rgb, self.spec.preprocessing)))
            except ImageError as e:
                batch.failed[i] = [self._failed(item, str(e), time.perf_counter() - t0)]
        return batch

    # --- compute -------------------------------------------------------------------------------------------------
    def compute(self, batch: Batch) -> Batch:
        """Run the model (the calling thread); a failing batch is retried image by image so one bad input fails
        alone."""
        if not batch.decoded:
            return batch
        try:
            self._compute(batch, batch.decoded)
        except FATAL:
            raise
        except Exception:
            for entry in batch.decoded:
                try:
                    self._compute(batch, [entry])
                except FATAL:
                    raise
                except Exception as e:  # one image's failure must not stop the batch
                    message = str(e) if isinstance(e, OnnxcamError) else f"{type(e).__name__}: {e}"
                    batch.failed[entry[0]] = [self._failed(batch.items[entry[0]], message)]
        for i, rgb, _ in batch.decoded:
            if i not in batch.failed:
                batch.images[i] = rgb
        batch.decoded = []  # the preprocessed tensors are no longer needed: free them before the write queue
        return batch

    def _compute(self, batch: Batch, entries: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        x = np.concatenate([entry[2] for entry in entries])
        if self.ex.providers[0] in GPU_PROVIDERS:
            x.flags.writeable = False  # lets every method's run reuse the batch already on the GPU (runtime.Session)
        if self.spec.plan.task == "classify":
            results = self._classify(x)
        else:
            results = self._tasks(x, [batch.items[i] for i, _, _ in entries])
        for (i, _, _), result in zip(entries, results):
            if isinstance(result, str):
                batch.failed[i] = [self._failed(batch.items[i], result)]
            else:
                batch.explained[i] = result

    def _classify(self, x: np.ndarray) -> list[Any]:
        """Class targets: the in-graph predicted class, a fixed class, or the top-k from one forward first."""
        spec, plan = self.spec, self.spec.plan
        maps: dict[tuple[str, int], np.ndarray] = {}
        seconds: dict[str, float] = {}
        calls = len(spec.methods) * (plan.top_k or 1)  # explain calls in this batch: the progress bar's steps
        if plan.top_k is not None:
            scores = self.ex.scores(x)
            chosen = np.argsort(-scores, axis=1, kind="stable")[:, :plan.top_k]
        else:  # the first method's run also gives the scores
            targets = None if plan.category is None else np.full(len(x), plan.category, np.int64)
            t0 = time.perf_counter()
            maps[(spec.methods[0], 0)], scores, explained = self._explain_scored(
                x, spec.methods[0], targets, self._step(0, calls))
            seconds[spec.methods[0]] = time.perf_counter() - t0
            chosen = explained[:, None]
        for method in spec.methods:
            for k in range(chosen.shape[1]):
                if (method, k) not in maps:
                    t0 = time.perf_counter()
                    maps[(method, k)] = self._explain(x, method, chosen[:, k].astype(np.int64),
                                                      self._step(len(maps), calls))
                    seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - t0
        probabilities = _softmax(scores)
        results: list[Any] = []
        for row in range(len(x)):
            if not np.isfinite(scores[row]).all():
                results.append(f"the model's output '{printable(self.ex.output)}' is not finite (NaN or Inf) for "
                               "this image")
                continue
            per_target = []
            for k in range(chosen.shape[1]):
                c = int(chosen[row, k])
                item = Explained(c, float(scores[row, c]), float(probabilities[row, c]))
                for method in spec.methods:
                    item.maps[method] = maps[(method, k)][row]
                    item.seconds[method] = seconds.get(method, 0.0) / (len(x) * chosen.shape[1])
                per_target.append(item)
            predicted = int(scores[row].argmax())
            results.append((predicted, float(scores[row, predicted]), per_target))
        return results

    def _tasks(self, x: np.ndarray, items: list[InputFile]) -> list[Any]:
        """Segmentation, detection, embeddings: each image's targets from its output, then (image, target) pairs
        explained in batches of at most batch_size."""
        spec = self.spec
        outputs = self.ex.outputs(x)
        layout = self.ex.detection_layout(outputs.shape[1:], self.ex.input_size(x)) if spec.plan.task == "detect" \
            else None
        per_image: list[Any] = []
        pairs: list[tuple[int, int, Target]] = []  # (row, k, target)
        for row in range(len(x)):
            if not np.isfinite(outputs[row]).all():
                per_image.append(f"the model's output '{printable(self.ex.output)}' is not finite (NaN or Inf) for "
                                 "this image")
                continue
            try:
                found = spec.plan.targets(outputs[row], layout)
            except InputError as e:
                per_image.append(str(e))
                continue
            if not found:
                threshold = spec.plan.threshold
                per_image.append(f"no detection{f' scoring at least {threshold}' if threshold is not None else ''}"
                                 " to explain in this image")
                continue
            per_image.append([self._describe(t, outputs[row], x, items[row]) for t in found])
            pairs += [(row, k, t) for k, t in enumerate(found)]
        step = max(1, spec.batch_size)
        calls = len(spec.methods) * -(-len(pairs) // step)
        for m, method in enumerate(spec.methods):
            for first in range(0, len(pairs), step):
                chunk = pairs[first:first + step]
                t0 = time.perf_counter()
                maps = self._explain(x[[row for row, _, _ in chunk]], method, [t for _, _, t in chunk],
                                     self._step(m * -(-len(pairs) // step) + first // step, calls))
                share = (time.perf_counter() - t0) / len(chunk)
                for (row, k, _), cam in zip(chunk, maps):
                    per_image[row][k].maps[method] = cam
                    per_image[row][k].seconds[method] = share
        return [entry if isinstance(entry, str) else (None, None, entry) for entry in per_image]

    def _explain(self, x: np.ndarray, method: str, targets: Any, progress: Callable[[float], None] | None
                 ) -> np.ndarray:
        """Maps (N, H, W) averaged over the layers, or with per_layer (N, layers, H, W): each layer's own map, as
        Explainer.explain(layer=that layer) gives it, all from one run."""
        return self._explain_scored(x, method, targets, progress)[0]

    def _explain_scored(self, x: np.ndarray, method: str, targets: Any, progress: Callable[[float], None] | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        options = self.spec.method_options.get(method, {})
        if not self.spec.per_layer:
            return self.ex.explain_scored(x, method, targets, progress=progress, **options)
        return self.ex.explain_scored(x, method, targets, layer=[column.tensor for column in self.layers],
                                      progress=progress, per_layer=True, **options)

    def _step(self, call: int, calls: int) -> Callable[[float], None] | None:
        """The progress callback of explain call `call` of `calls` in the current batch."""
        if self.progress is None:
            return None
        report = self.progress
        return lambda fraction: report((call + fraction) / max(1, calls))

    def _describe(self, target: Target, output: np.ndarray, x: np.ndarray, item: InputFile) -> Explained:
        box = None if target.box is None else [float(v) for v in target.box]
        return Explained(target.category, float(target(output)), None, target.describe(), box)

    # --- write ---------------------------------------------------------------------------------------------------
    def write(self, batch: Batch) -> list[list[Record]]:
        """Resize, colour, encode and write the outputs (the writer thread); records per input, in order."""
        results: dict[int, list[Record]] = dict(batch.failed)
        for i, (predicted, score, explained) in batch.explained.items():
            try:
                results[i] = self._write(batch.items[i], batch.images[i], predicted, score, explained)
            except InputError as e:
                results[i] = [self._failed(batch.items[i], str(e))]
            except OSError as e:  # e.g. a full disk: this image fails, the job decides whether to go on
                reason = "no space left on device" if is_disk_full(e) else f"{type(e).__name__}: {e}"
                results[i] = [self._failed(batch.items[i], f"writing the outputs failed: {reason}")]
        return [results.get(i) or [self._failed(item, "not processed")] for i, item in enumerate(batch.items)]

    def stems(self, item: InputFile, method: str, explained: list[Explained]) -> list[str]:
        if len(explained) == 1 and self.spec.plan.per_image == 1:
            return [f"{item.name}.{method}"]
        if self.spec.plan.task == "classify":
            return [f"{item.name}.{method}.c{e.target}" for e in explained]
        return [f"{item.name}.{method}.d{k}" for k in range(len(explained))]

    def outputs(self, item: InputFile, method: str, explained: list[Explained]
                ) -> list[tuple[Explained, str, LayerColumn | None]]:
        """(target, file stem, layer) of each map to write: per_layer adds .L<layer index> to the stem, so the
        names stay stable across runs and never meet the averaged map's."""
        stems = zip(explained, self.stems(item, method, explained))
        if not self.spec.per_layer:
            return [(e, stem, None) for e, stem in stems]
        return [(e, f"{stem}.L{column.index}", column) for e, stem in stems for column in self.layers]

    def _write(self, item: InputFile, rgb: np.ndarray, predicted: int | None, score: float | None,
               explained: list[Explained]) -> list[Record]:
        spec, labels = self.spec, self.spec.labels
        # maps and boxes are in model input pixels: back through the resize, crop or letterbox to the image's own
        place = geometry(rgb.shape[:2], spec.preprocessing)
        unseen = None if place.whole() else ~place.seen_mask()
        seen = None if unseen is None else [round(v, 1) for v in place.seen()]
        records = []
        for method in spec.methods:
            for e, stem, column in self.outputs(item, method, explained):
                t1 = time.perf_counter()
                raw = e.maps[method] if column is None else e.maps[method][column.index]
                if not np.isfinite(raw).all():
                    raise InputError(f"the {method} map is not finite (NaN or Inf): the model's output "
                                     f"'{printable(self.ex.output)}' or its gradients overflow for this image")
                cam = map_to_image(raw, place)
                png, npy = f"{stem}.png", f"{stem}.npy"
                picture = overlay(rgb, cam, spec.alpha, spec.colormap)
                if unseen is not None:
                    picture = _mark_unseen(picture, unseen)
                box = None
                if e.box is not None:
                    box = [round(v, 1) for v in box_to_image(e.box, place)]
                    caption = _label(labels, e.target) or str(e.target)
                    picture = draw_boxes(picture, [box], [f"{caption} {e.value:.2f}"])
                write_bytes(self.out.path(npy), npy_bytes(cam))
                write_bytes(self.out.path(png), encode_png(picture))
                self._preview(preview_path(png), picture, PREVIEW_SIDE)
                record = {
                    "image": os.fsdecode(item.path), "name": item.name, "status": "ok", "error": None,
                    "task": spec.plan.task, "predicted": predicted, "predicted_label": _label(labels, predicted),
                    "score": score, "target": e.target, "label": _label(labels, e.target),
                    "target_score": e.value, "probability": e.probability, "target_kind": e.kind, "box": box,
                    "method": method, "layer": self.layer_text, "layer_module": self.module_text,
                    "preprocessing": self.preprocessing_text, "labels_source": spec.labels_source, "seen": seen,
                    "paths": {"overlay": png, "map": npy},
                    "flat": bool(np.ptp(cam) == 0),
                    "seconds": round(e.seconds.get(method, 0.0) / (1 if column is None else len(self.layers)) +
                                     time.perf_counter() - t1, 4)}
                if column is not None:  # this layer's own map
                    record.update(layer=column.tensor, layer_module=column.module, layer_index=column.index,
                                  layer_label=column.label)
                records.append(record)
        self._preview(input_preview_path(item.name), rgb, INPUT_PREVIEW_SIDE)
        return records

    def _preview(self, path: str, rgb: np.ndarray, side: int) -> None:
        """A report thumbnail, written after the outputs it shows and only while the disk has room to spare (the
        last megabytes go to maps and results.jsonl); a missing one costs only the thumbnail: the report falls
        back to the overlay itself."""
        try:
            if shutil.disk_usage(self.out.real).free > PREVIEW_RESERVE:
                write_bytes(self.out.path(path), preview_jpeg(rgb, side))
        except OSError:
            pass

    def _failed(self, item: InputFile, error: str, seconds: float = 0.0) -> Record:
        return failed_record(os.fsdecode(item.path), item.name, error, self.spec.methods, self.layer_text, seconds)


@dataclass(frozen=True)
class LayerColumn:
    """One explained layer as per_layer writes it: its index (the .L<index> of file names), tensor, module path and
    the short name the report shows."""
    index: int
    tensor: str
    module: str | None
    label: str


def layer_labels(ex: Explainer, modules: list[str | None]) -> list[str]:
    """Short names of the explained layers: a detector's scales by their stride, else module paths, else tensor
    names (whenever the shorter names would not tell two layers apart)."""
    strides = {s.feature: s.stride for s in getattr(ex.view, "scales", [])}
    for names in ([_stride_text(strides.get(t)) for t in ex.layer], modules):
        if all(names) and len(set(names)) == len(names):
            return [str(n) for n in names]
    return list(ex.layer)


def _stride_text(stride: tuple[int, int] | None) -> str | None:
    if stride is None:
        return None
    return f"stride {stride[0]}" if stride[0] == stride[1] else f"stride {stride[0]}x{stride[1]}"


def _mark_unseen(picture: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """The pixels the model never saw (cut off by a centre crop), washed out grey and hatched: their map is 0
    because the model had no evidence there, not because they do not matter."""
    out = picture.copy()
    washed = (picture[unseen].astype(np.float32) * 0.3 + 150.0).astype(np.uint8)
    out[unseen] = washed
    ys, xs = np.nonzero(unseen)
    hatch = (ys + xs) % 10 < 2
    out[ys[hatch], xs[hatch]] = 90
    return out


def _label(labels: list[str] | None, index: int | None) -> str | None:
    return labels[index] if labels is not None and index is not None and 0 <= index < len(labels) else None


def _softmax(scores: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

