"""`explain`: the one batch job behind `onnxcam explain` for every task (classification, segmentation, detection,
embeddings): files in -> (image, target) work items -> one worker -> maps, overlays, records, report.

For each input, target and method it writes OUT/<name>.<method>.png (overlay) and .npy (float32 map at the image's
own size), where <name> is the input's path relative to its input root with its suffix ("cats/x.jpg"); several
targets per image add .c<class> (top-k classes) or .d<k> (detections), and per_layer .L<i> (layer i's own map).
One JSON line per record goes to OUT/results.jsonl, OUT/run.json records what the outputs were made from (the
manifest `--resume` checks), and OUT/report.html shows them all. A bad image is recorded as failed and the batch
goes on.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from onnxcam.errors import InputError, OnnxcamError
from onnxcam.explainer import Explainer
from onnxcam.files import (
    InputFile,
    OutputFolder,
    collect_inputs,
    is_disk_full,
    printable,
    remove_stale_temporaries,
    write_bytes,
)
from onnxcam.graph.contract import ModelSource, model_name
from onnxcam.images import preprocess, preprocessing_problems, read_image, resolve_preprocessing
from onnxcam.inputs import InputValue, prepare_model
from onnxcam.jobs.lock import OutputLock
from onnxcam.jobs.pipeline import run_ordered
from onnxcam.jobs.records import (
    FAILURE_LIMIT,
    MANIFEST,
    PARTIAL,
    REPORT,
    REPORT_LIMIT,
    RESULTS,
    Record,
    Summary,
    Unit,
    check_resume,
    dumps,
    failed_record,
    previous_records,
    read_manifest,
)
from onnxcam.jobs.worker import RunSpec, Worker
from onnxcam.labels import find_labels, metadata_problems, resolve_target
from onnxcam.methods import get_method
from onnxcam.render import npy_complete
from onnxcam.report import RECORD_LIMIT, header_from_manifest, read_records, render_report
from onnxcam.targets import TASKS, TargetPlan

__all__ = ["RESULTS", "REPORT_LIMIT", "Summary", "collect_inputs", "explain", "explain_images", "write_report"]

READERS = min(2, os.cpu_count() or 1)  # decoding threads; one batch of PNG decoding is short next to inference
RESERVE = ".onnxcam-reserve"  # see _Reserve
RESERVE_BYTES = 64 * 1024  # many result lines; small beside a disk, and beside the test's 1.2 MB one
WRITERS = 2  # encoding + writing threads: file system calls wait on the disk more than they use the CPU


class DiskFull(OnnxcamError):
    """The output folder's disk is full: the run stops after recording what it wrote."""


def explain(model: ModelSource, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
            methods: Sequence[str] = ("gradcam",), layer: str | Sequence[str] | None = None,
            target: int | str | None = None, top_k: int | None = None, task: str | None = None,
            mask: str | os.PathLike | None = None, box: int | None = None, threshold: float | None = None,
            max_detections: int = 20, reference: str | os.PathLike | None = None, batch_size: int = 8,
            preset: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            size: int | Sequence[int] | None = None, bgr: bool | None = None, scale: float | None = None,
            labels: str | os.PathLike | Sequence[str] | None = None, device: str = "auto", alpha: float = 0.5,
            colormap: str = "jet", resume: bool = False, explainer: Explainer | None = None,
            grid: tuple[int, int] | None = None, extra_tokens: int | None = None,
            on_start: Callable[[int], None] | None = None, on_image: Callable[[Record], None] | None = None,
            on_note: Callable[[str], None] | None = None, engine: str = "local", address: str | None = None,
            workers: int | None = None, method_options: dict[str, dict[str, Any]] | None = None,
            resize_short: int | None = None, crop: int | Sequence[int] | None = None, letterbox: bool | None = None,
            interpolation: str | None = None, pad_value: float | None = None,
            model_inputs: Mapping[str, InputValue] | None = None,
            on_info: Callable[[str], None] | None = None,
            on_progress: Callable[[float], None] | None = None, detection_target: str = "score",
            per_layer: bool = False) -> Summary:
    """Explain image files with `methods`; see the module docstring for what is written. Returns a Summary.

    task: classify / segment / detect / embed (None: the model's metadata, else its output's rank).
    target: a class index or label (classify: that class; segment: its region; detect: its best box, or only its
    detections with threshold); top_k: the k best classes (classifiers); mask: a mask image (segmentation);
    box: one detection row; threshold: every detection scoring at least this, best first, at most
    max_detections; detection_target: "score" (each detection's class score) or "mask" (instance segmentation: its
    mask, targets.InstanceMaskTarget; the model's detections and prototypes are explained together);
    reference: an image whose embedding the similarity is measured to.
    per_layer: with several layers (a list, or a detector's per-scale maps by default), one map per layer instead
    of their average: files <stem>.L<layer index>.png/.npy, records with that layer's tensor, module and label.
    preset, mean, std, size, bgr, scale, resize_short, crop, letterbox, interpolation, pad_value: preprocessing
    (onnxcam.images.resolve_preprocessing; None: the model's metadata, else a guess). labels: a file or a list
    (None: the model's metadata, else ImageNet-1k names for 1000 classes; onnxcam.labels). model_inputs: values of
    the model's inputs beside the image, {name: .npy path or array} (onnxcam.inputs).
    on_info gets the run's header lines once, before any image: the preprocessing and the labels' source.
    engine: "local" (this process; decoding, inference and writing overlap on threads) or "ray" (Ray Data actors,
    see onnxcam.jobs.ray; address: the cluster, None starts a local one; workers: actors).
    on_image is called once per image in input order; on_progress with the images done so far as a float that
    also counts the share of the running batch done (it moves during slow methods' inner loops). Raises
    OnnxcamError for mistakes found before any image is processed (model, layer, method, labels, target, options,
    a resume of another run, another run on OUT).
    """
    start = time.perf_counter()
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine '{engine}'; use local or ray")
    if engine == "ray":
        from onnxcam.jobs.ray import require_ray

        require_ray()  # says how to install it, before any work
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task '{task}'; use one of {', '.join(TASKS)}")
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("no method given")
    options = {m: get_method(m).accepts(dict((method_options or {}).get(m, {}))) for m in methods}
    if explainer is not None and model_inputs:
        raise InputError("model inputs cannot be folded into a given explainer; make it from the model with the inputs "
                         "folded in (onnxcam.inputs.prepare_model)")
    prepared = prepare_model(explainer.view.facts.source if explainer is not None else model, model_inputs)
    # an instance's mask reads two outputs: explain the detections and the prototypes as one
    joined = list(_detections_and_prototypes(prepared.model)) if detection_target == "mask" else None
    ex = explainer or Explainer(prepared.model, layer=layer, device=device, grid=grid, extra_tokens=extra_tokens,
                                output=joined)
    if joined is not None and not ex.view.parts:
        raise InputError("the given explainer explains one output; make it with output=[detections, prototypes] to "
                         "explain instance masks")
    notes = list(prepared.notes) + list(ex.notes)  # e.g. NMS inside the graph: the raw predictions before it
    spec_pre = resolve_preprocessing(ex.summary, ex.input_name, ex.input_layout, preset, mean, std, size, bgr, scale,
                                     resize_short=resize_short, crop=crop, letterbox=letterbox,
                                     interpolation=interpolation, pad_value=pad_value)
    ex.preprocessing = spec_pre
    task = task or ex.task or "classify"
    classes = ex.classes if task == "classify" else None
    found = find_labels(labels, ex.summary, classes)
    notes += preprocessing_problems(ex.summary) + (metadata_problems(ex.summary, classes) if labels is None else [])
    if per_layer and len(ex.layer) == 1:
        notes.append(f"per-layer maps of one layer ({printable(ex.layer[0])}): one map per target as usual, named "
                     ".L0; name several layers (--layer a,b) to compare them")
    plan = _plan(ex, task, target, top_k, mask, box, threshold, max_detections, reference, found.names, spec_pre,
                 notes, detection_target)
    for line in (f"preprocessing: {spec_pre.line()}", f"labels: {found.source}"):
        if on_info:
            on_info(line)
    for note in notes:
        if on_note:
            on_note(note)
    items = collect_inputs(inputs, exclude=out)
    folder = OutputFolder(out)
    out_dir = folder.given
    source = ex.model.SerializeToString() if prepared.folded or not isinstance(model, (str, os.PathLike)) else \
        os.path.abspath(model)
    spec = RunSpec(source, {**_explainer_options(ex), "device": device}, spec_pre, methods, plan, str(folder.real),
                   options, found.names, alpha, colormap, batch_size, found.source, per_layer)
    manifest = {**_manifest(model, ex, spec, prepared.folded or None), "label_source": found.source,
                "preprocessing_text": spec_pre.line(),
                "layer_modules": [ex.module_path(name) for name in ex.layer], "device": ex.providers[0]}
    summary = Summary(out=out_dir, total=len(items))
    with OutputLock(folder.real):
        if resume:
            check_resume(folder.real, manifest)
        previous = previous_records(folder.real) if resume else None
        if resume:
            remove_stale_temporaries(folder.real)
        write_bytes(folder.path(MANIFEST), (dumps(manifest) + "\n").encode())
        if on_start:
            on_start(len(items))
        worker = Worker(spec, ex) if engine == "local" else None
        tracker = _Progress(on_progress)
        if worker is not None:
            worker.progress = tracker.batch
        partial = folder.path(PARTIAL)
        if partial.is_symlink():  # planted: never write through it
            partial.unlink()
        log = _Log(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644))
        reserve = _Reserve(folder.path(RESERVE))
        with log, reserve:
            def emit(records: list[Record]) -> None:
                try:
                    summary.log_image(records, log)
                except OSError as e:  # the log's own append can be the write that finds the disk full
                    if not is_disk_full(e):
                        raise
                    reserve.release()  # room for the line that records this image as failed
                    _log_unrecorded(records, folder, summary, log)
                    raise DiskFull("no space left on device") from None
                tracker.emitted(records[0].get("name"))
                if on_image:
                    on_image(records[0])
                if any(r["status"] == "failed" and "no space left on device" in (r.get("error") or "")
                       for r in records):
                    reserve.release()
                    raise DiskFull("no space left on device")

            units = _units(items, previous, folder, methods, plan, batch_size, len(ex.layer) if per_layer else 1)
            try:
                if worker is None:
                    _run_ray(units, spec, emit, batch_size, address, workers)
                    remove_stale_temporaries(folder.real)  # all workers are done: any temporary is a killed one's
                else:  # decoding, inference and writing overlap (jobs.pipeline); results come back in input order
                    run_ordered(units, read=lambda unit: (unit, worker.read([i for i, kept in unit if kept is None])),
                                compute=lambda pair: (pair[0], tracker.computed(worker.compute(
                                    tracker.computing(pair[1])))),
                                write=lambda pair: _merge(pair[0], worker.write(pair[1])),
                                emit=lambda per_image: _each(per_image, emit),
                                readers=READERS, writers=WRITERS)
            except DiskFull:
                summary.stopped = ("the disk of the output folder is full; free space and rerun with --resume to "
                                   "continue")
        os.replace(partial, folder.path(RESULTS))
        summary.seconds = time.perf_counter() - start
        try:
            write_report(summary, title=f"onnxcam: {Path(model_name(model)).name}")
        except OSError as e:
            if summary.stopped is None:
                raise
            summary.stopped += f" (report.html could not be written: {e.strerror})"
    return summary


def explain_images(model: ModelSource, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                   **options: Any) -> Summary:
    """`explain` under its earlier name (same arguments)."""
    return explain(model, inputs, out, **options)


def explain_ray(model: ModelSource, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                address: str | None = None, workers: int | None = None, **options: Any) -> Summary:
    """`explain` on Ray Data (same arguments and outputs); address: a running cluster ("auto" or
    "ray://host:10001"), None starts a local one for the call."""
    return explain(model, inputs, out, engine="ray", address=address, workers=workers, **options)


class _Reserve:
    """Room held in OUT while a job runs (RESERVE_BYTES of random bytes, which no file system compresses away) and
    given back when the disk fills: the writer threads may take whatever removing an image's outputs frees, and the
    line recording that image as failed, the results log and the report still fit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            write_bytes(path, os.urandom(RESERVE_BYTES))
        except OSError:  # the disk is full already: the run finds out at its first write
            self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> _Reserve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Log:
    """results.jsonl.partial, appended one image at a time: an append either lands whole or, when the disk is full,
    is cut back, so the log never ends in half a line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            os.ftruncate(self.fd, start)
            raise

    def flush(self) -> None:
        pass  # every write goes straight to the file

    def __enter__(self) -> _Log:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _log_unrecorded(records: list[Record], folder: OutputFolder, summary: Summary, log: _Log) -> None:
    """An image whose records found the disk full: its outputs (which no record would name) are removed, which
    frees the space to record it as failed; --resume redoes it."""
    for rec in records:
        for path in (rec.get("paths") or {}).values():
            try:
                folder.path(str(path)).unlink(missing_ok=True)
            except (OSError, InputError):
                pass
    first = records[0]
    failed = failed_record(first["image"], first["name"], "writing the outputs failed: no space left on device",
                           [str(r.get("method")) for r in records], first.get("layer"))
    try:
        summary.log_image([failed], log)
    except OSError:
        pass  # not even that fits: the run stops all the same


# --- set-up ---------------------------------------------------------------------------------------------------------
def _explainer_options(ex: Explainer) -> dict[str, Any]:
    """Everything the Explainer was made with, so a Ray actor builds the same one."""
    return {**ex.options, "layer": list(ex.layer)}


def _plan(ex: Explainer, task: str, target: int | str | None, top_k: int | None, mask: str | os.PathLike | None,
          box: int | None, threshold: float | None, max_detections: int, reference: str | os.PathLike | None,
          labels: list[str] | None, spec: Any, notes: list[str], detection_target: str = "score") -> TargetPlan:
    classes = ex.classes if task == "classify" else None
    category = resolve_target(str(target), labels, classes, notes) if target is not None else None
    if top_k is not None and classes is not None and top_k > classes:
        raise InputError(f"top_k {top_k} is more than the model's {classes} classes")
    mask_pixels = _read_mask(mask) if mask is not None else None
    anchor = ex.outputs(preprocess(read_image(reference), spec))[0] if reference is not None else None
    return TargetPlan(task, category, top_k, mask_pixels, box, threshold, max_detections, anchor, detection_target)


def _manifest(model: ModelSource, ex: Explainer, spec: RunSpec, folded: dict[str, Any] | None) -> dict[str, Any]:
    from onnxcam import __version__

    return {"onnxcam": __version__, "model": printable(model_name(model)),
            "model_sha256": ex.model_id,
            "layers": list(ex.layer), "methods": spec.methods, "method_options": spec.method_options,
            "targets": spec.plan.describe(), "preprocessing": spec.preprocessing.describe(),
            "preprocessing_source": spec.preprocessing.source,
            # the values decide the outputs (resume compares them), not where they were read from
            "inputs": {k: {"shape": v["shape"], "sha256": v["sha256"]} for k, v in folded.items()} if folded else None,
            "inputs_from": {k: v["from"] for k, v in folded.items()} if folded else None,
            "explainer": {k: v for k, v in spec.explainer.items() if k not in ("layer", "device")},
            "labels": None if spec.labels is None else len(spec.labels), "labels_source": spec.labels_source,
            "layer_modules": [ex.module_path(name) for name in ex.layer], "per_layer": spec.per_layer,
            "alpha": spec.alpha,
            "colormap": spec.colormap}


def _detections_and_prototypes(source: ModelSource) -> tuple[str, str]:
    from onnxcam.graph.joined import detections_and_prototypes  # the graph code only for mask targets

    return detections_and_prototypes(source)


def _read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image as booleans (nonzero = inside)."""
    try:
        image = read_image(path)
    except OnnxcamError:
        raise InputError(f"cannot read the mask image {printable(os.fsdecode(path))}") from None
    return np.asarray(image.any(axis=-1) if image.ndim == 3 else image > 0)


# --- units of work and resume ---------------------------------------------------------------------------------------


def _units(items: list[InputFile], previous: dict[tuple[str, str], list[Record]] | None, folder: OutputFolder,
           methods: list[str], plan: TargetPlan, batch_size: int, maps_per_target: int = 1) -> Iterator[Unit]:
    """Inputs grouped so that each unit holds `batch_size` images to explain; images kept by --resume ride along
    in their place, so results.jsonl stays in input order. maps_per_target: the layers of a per-layer run."""
    unit: Unit = []
    todo = 0
    for item in items:
        kept = _resumable(item, previous, folder, methods, plan, maps_per_target) if previous is not None else None
        unit.append((item, kept))
        todo += kept is None
        if todo >= batch_size:
            yield unit
            unit, todo = [], 0
    if unit:
        yield unit


def _resumable(item: InputFile, previous: dict[tuple[str, str], list[Record]], folder: OutputFolder,
               methods: list[str], plan: TargetPlan, maps_per_target: int = 1) -> list[Record] | None:
    """Records for an input whose outputs are all present and complete, else None (the input is redone). Records
    are matched by the input's name (its path relative to its root), never by output file name."""
    records = []
    for method in methods:
        recs = previous.get((item.name, method))
        if not recs or len(recs) % maps_per_target or \
                (plan.per_image is not None and len(recs) != plan.per_image * maps_per_target):
            return None
        for rec in recs:
            paths = rec.get("paths") or {}
            try:
                png, npy = folder.path(str(paths.get("overlay"))), folder.path(str(paths.get("map")))
            except InputError:  # a forged or foreign record: never read or show a file outside OUT
                return None
            if png.is_symlink() or npy.is_symlink() or not png.is_file() or not npy_complete(npy):
                return None
            records.append({**rec, "image": os.fsdecode(item.path), "status": "skipped", "error": None,
                            "seconds": 0.0})
    return records


def _each(per_image: list[list[Record]], emit: Callable[[list[Record]], None]) -> None:
    for records in per_image:
        emit(records)


def _merge(unit: Unit, written: list[list[Record]]) -> list[list[Record]]:
    fresh = iter(written)
    return [kept if kept is not None else next(fresh) for _item, kept in unit]


def _run_ray(units: Iterator[Unit], spec: RunSpec, emit: Callable[[list[Record]], None], batch_size: int,
             address: str | None, workers: int | None) -> None:
    from onnxcam.jobs.ray import run_ray, unwrap

    try:
        run_ray(units, spec, emit, batch_size, address, workers)
    except DiskFull:
        raise
    except Exception as e:
        cause = unwrap(e)
        if cause is e:
            raise
        raise cause from None


@contextlib.contextmanager
def _closing(log: IO[str], summary: Summary) -> Iterator[IO[str]]:
    """The results log, closed at the end; on a full disk its last buffered lines may not fit, and the run has
    already said that it stopped."""
    try:
        yield log
    finally:
        try:
            log.close()
        except OSError:
            if summary.stopped is None:
                raise


# --- progress ---------------------------------------------------------------------------------------------------
class _Progress:
    """Images done as a float for a progress bar: images emitted, plus images computed but not yet written, plus
    the running batch's share (the worker reports it from inside slow methods' loops). Compute runs on the
    calling thread and emit on writer threads, hence the lock; the value never goes down."""

    def __init__(self, report: Callable[[float], None] | None) -> None:
        self.report = report
        self.lock = threading.Lock()
        self.done = 0
        self.waiting: set[str] = set()       # computed, not yet emitted (by input name)
        self.running: list[str] = []         # the batch in compute
        self.fraction = 0.0
        self.last = 0.0

    def computing(self, batch: Any) -> Any:
        with self.lock:
            self.running = [item.name for i, item in enumerate(batch.items) if i not in batch.failed]
            self.fraction = 0.0
        return batch

    def batch(self, fraction: float) -> None:
        with self.lock:
            self.fraction = max(self.fraction, min(1.0, fraction))
            self._send()

    def computed(self, batch: Any) -> Any:
        with self.lock:
            self.waiting.update(self.running)
            self.running, self.fraction = [], 0.0
            self._send()
        return batch

    def emitted(self, name: Any) -> None:
        with self.lock:
            self.done += 1
            self.waiting.discard(name)
            self._send()

    def _send(self) -> None:
        value = max(self.last, self.done + len(self.waiting) + self.fraction * len(self.running))
        if self.report is not None and value != self.last:
            self.last = value
            self.report(value)


# --- the report -----------------------------------------------------------------------------------------------------
def write_report(summary: Summary, title: str | None = None, meta: dict[str, Any] | None = None,
                 limit: int = RECORD_LIMIT) -> None:
    """OUT/report.html: the header from OUT/run.json and the summary (time per method, counts), the image
    sections from OUT/results.jsonl (else summary.records): at most `limit` records, every failure up to
    FAILURE_LIMIT. meta: extra header rows."""
    folder = OutputFolder(summary.out)
    header = header_from_manifest(read_manifest(folder.real), meta)
    if title:
        header.title = title
    header.method_seconds = dict(summary.method_seconds)
    if summary.stopped:
        header.notes.append(f"stopped: {summary.stopped}")
    results = folder.real / RESULTS
    records = read_records(results) if results.is_file() and not results.is_symlink() else summary.records
    counts = {"images": summary.total or None, "done": summary.done, "failed": summary.failed,
              "skipped": summary.skipped, "seconds": summary.seconds}
    text = render_report(records, header, counts, limit, FAILURE_LIMIT)
    write_bytes(folder.path(REPORT), text.encode("utf-8", errors="backslashreplace"))
