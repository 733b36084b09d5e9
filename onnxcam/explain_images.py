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
from collections.abc import Callable, Iterator, Sequence
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
from onnxcam.pipeline import run_ordered
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
from onnxcam.runtime import GPU_PROVIDERS

RESULTS, REPORT = "results.jsonl", "report.html"
REPORT_LIMIT = 2000  # explained images shown in report.html; results.jsonl always has them all
READERS = min(2, os.cpu_count() or 1)  # decoding threads; one batch of PNG decoding is short next to inference
WRITERS = 2  # encoding + writing threads: file system calls wait on the disk more than they use the CPU


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
    # Every failure and the first REPORT_LIMIT other records, what report.html shows; all records (and the count
    # below) are in results.jsonl, so memory stays flat over millions of images.
    records: list[dict[str, Any]] = field(default_factory=list)
    total_records: int = 0
    _kept_ok: int = 0

    def log_image(self, records: list[dict[str, Any]], log: Any) -> None:
        """One image's records: appended to the open results log (flushed, so a kill loses no finished image)
        and counted as failed, skipped or done."""
        for rec in records:
            self.add(rec)
            log.write(json.dumps(rec, ensure_ascii=False) + "\n")
        log.flush()
        if any(r["status"] == "failed" for r in records):
            self.failed += 1
        elif records[0]["status"] == "skipped":
            self.skipped += 1
        else:
            self.done += 1

    def add(self, record: dict[str, Any]) -> None:
        self.total_records += 1
        if record.get("status") == "failed":
            self.records.append(record)
        elif self._kept_ok < REPORT_LIMIT:
            self._kept_ok += 1
            self.records.append(record)

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
                   grid: tuple[int, int] | None = None, extra_tokens: int | None = None,
                   on_start: Callable[[int], None] | None = None,
                   on_image: Callable[[dict[str, Any]], None] | None = None,
                   engine: str = "local", address: str | None = None, workers: int | None = None,
                   method_options: dict[str, dict[str, Any]] | None = None) -> Summary:
    """Explain image files with `methods`; see the module docstring for what is written. Returns a Summary.

    target: a class index or label name for every image (default: the predicted class); top_k: the k best classes.
    engine: "local" (this process; decoding, inference and writing overlap on threads) or "ray" (Ray Data actors,
    see onnxcam.engines.ray; address: the cluster, None starts a local one; workers: actors, default one per GPU).
    on_image is called in input order, from the writer thread (local) or the driver (ray).
    Raises OnnxcamError for mistakes found before any image is processed (model, layer, method, labels, target).
    """
    start = time.perf_counter()
    if engine not in ("local", "ray"):
        raise InputError(f"unknown engine '{engine}'; use local or ray")
    if engine == "ray":
        from onnxcam.engines.ray import require_ray

        require_ray()  # says how to install it, before any work
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
    ex = explainer or Explainer(model, layer=layer, device=device, grid=grid, extra_tokens=extra_tokens)
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
    context.method_options = method_options or {}  # per method, e.g. {"broadcam": {"fit": path}} (both engines)
    partial = out_dir / (RESULTS + ".partial")
    with open(partial, "w", encoding="utf-8") as log:
        def emit(records: list[dict[str, Any]]) -> None:
            summary.log_image(records, log)
            if on_image:
                on_image(records[0])

        if engine == "ray":
            from onnxcam.engines.ray import run_ray, unwrap, worker_spec

            settings = {"layer": ex.layer, "device": device, "output": ex._output_option,
                        "probabilities": ex._probabilities, "grid": grid, "extra_tokens": extra_tokens}
            try:
                run_ray(_units(jobs, context, previous if resume else None, batch_size),
                        worker_spec(context, model, settings), emit, batch_size, address, workers)
                _remove_stale_temporaries(out_dir)  # all workers are done: any temporary is a killed worker's
            except Exception as e:
                cause = unwrap(e)
                if cause is e:
                    raise
                raise cause from None
        else:  # decoding, inference and writing overlap (onnxcam.pipeline); results come back in input order
            run_ordered(_units(jobs, context, previous if resume else None, batch_size),
                        read=lambda unit: (unit, context.read([job for job, kept in unit if kept is None])),
                        compute=lambda pair: (pair[0], context.compute(pair[1])),
                        write=lambda pair: _merge(pair[0], context.write(pair[1])),
                        emit=lambda per_image: _each(per_image, emit),
                        readers=READERS, writers=WRITERS)
    os.replace(partial, out_dir / RESULTS)
    summary.seconds = time.perf_counter() - start
    write_report(summary, title=f"onnxcam: {Path(model_name(model)).name}",
                 meta={"model": model_name(model), "methods": ", ".join(methods), "layer": ", ".join(ex.layer),
                       "images": len(jobs), "failed": summary.failed}, made=context.thumbnails)
    return summary


Unit = list[tuple[ImageJob, "list[dict[str, Any]] | None"]]  # jobs with their kept records (resume) or None


def _units(jobs: list[ImageJob], context: _Context, previous: dict[tuple[str, str], list[dict[str, Any]]] | None,
           batch_size: int) -> Iterator[Unit]:
    """Jobs grouped so that each unit holds `batch_size` images to explain; images kept by --resume ride along
    in their place, so results.jsonl stays in input order."""
    if previous is not None:
        _remove_stale_temporaries(context.out)
    unit: Unit = []
    todo = 0
    for job in jobs:
        kept = context.resumable(job, previous) if previous is not None else None
        unit.append((job, kept))
        todo += kept is None
        if todo >= batch_size:
            yield unit
            unit, todo = [], 0
    if unit:
        yield unit


def _merge(unit: Unit, written: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    fresh = iter(written)
    return [kept if kept is not None else next(fresh) for _job, kept in unit]


def _remove_stale_temporaries(out: Path) -> None:
    """A killed run can leave render.write_bytes' hidden temporaries (.<name>.<pid>.<thread>.tmp); never outputs."""
    for path in out.rglob(".*.tmp"):
        parts = path.name.split(".")  # ['', stem..., suffix, pid, thread, 'tmp']
        if (path.is_file() and len(parts) >= 6 and parts[-4] in ("png", "npy", "html")
                and parts[-3].isdigit() and parts[-2].isdigit()):
            path.unlink(missing_ok=True)


def _each(per_image: list[list[dict[str, Any]]], emit: Callable[[list[dict[str, Any]]], None]) -> None:
    for records in per_image:
        emit(records)


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
    # The last complete run's results, then those of a killed later run (its .partial log, newer per image).
    for path in (out / RESULTS, out / (RESULTS + ".partial")):
        if not path.is_file():
            continue
        seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut short
                continue
            if isinstance(rec, dict) and rec.get("status") in ("ok", "skipped"):
                seen.setdefault((rec.get("name", ""), rec.get("method", "")), []).append(rec)
        found.update(seen)
    return found


@dataclass
class _Computed:
    images: list[tuple[int, np.ndarray]]            # (index in the batch, decoded RGB) per explained image
    maps: dict[tuple[str, int], np.ndarray]         # (method, k-th class) -> maps (N, h, w) at the input size
    scores: np.ndarray                              # (N, classes)
    chosen: np.ndarray                              # (N, k) classes explained
    seconds: float                                  # inference time per image


@dataclass
class _Batch:
    jobs: list[ImageJob]
    failed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)       # index -> its failure record
    decoded: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (index, rgb, tensor)
    computed: list[_Computed] = field(default_factory=list)


class _Context:
    """What one run needs per batch: the explainer, preprocessing and output settings."""

    def __init__(self, ex: Explainer, spec: Preprocessing, methods: list[str], target: int | None,
                 top_k: int | None, labels: list[str] | None, alpha: float, colormap: str, out: Path) -> None:
        self.ex, self.spec, self.methods, self.target, self.top_k = ex, spec, methods, target, top_k
        self.labels, self.alpha, self.colormap, self.out = labels, alpha, colormap, out
        self.method_options: dict[str, dict[str, Any]] = {}
        # resume from the files on disk alone only when no results log exists; with a log (a killed run's
        # .partial included), an image without records is redone, so every record has its scores
        self.thumbnails: dict[str, str] = {}  # overlay path -> report thumbnail
        self.thumbnail_limit = REPORT_LIMIT  # 0 where no report is written from this process (Ray workers)
        self.files_alone = not any((out / name).is_file() for name in (RESULTS, RESULTS + ".partial"))

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

        The last results.jsonl (and a killed run's results.jsonl.partial) supplies the details; without any log,
        outputs found on disk are enough unless the file names depend on the classes (top_k > 1).
        """
        records = []
        for method in self.methods:
            recs = previous.get((job.name, method))
            if recs and self.target is not None and any(r.get("target") != self.target for r in recs):
                return None
            if not recs:
                if (self.top_k is not None and self.top_k > 1) or not self.files_alone:
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
        """Records per job, in order: the three pipeline stages one after the other."""
        return self.write(self.compute(self.read(jobs)))

    # The per-batch pipeline, in three stages that onnxcam.pipeline overlaps (and the Ray engine runs per batch).
    def read(self, jobs: list[ImageJob]) -> _Batch:
        """Decode and preprocess (reader threads); an unreadable image fails alone."""
        batch = _Batch(jobs)
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            try:
                rgb = read_image(job.path)
                batch.decoded.append((i, rgb, preprocess(rgb, self.spec)))
            except ImageError as e:
                batch.failed[i] = [self._failed(job, str(e), time.perf_counter() - t0)]
        return batch

    def compute(self, batch: _Batch) -> _Batch:
        """Run the model (the calling thread); a failing batch is retried image by image so one bad input fails
        alone."""
        if not batch.decoded:
            return batch
        try:
            batch.computed.append(self._compute(batch.decoded))
        except (GradientError, LayerError, ModelError):
            raise  # the same for every image: stop the run with the message
        except Exception:
            for item in batch.decoded:
                try:
                    batch.computed.append(self._compute([item]))
                except (GradientError, LayerError, ModelError):
                    raise
                except Exception as e:  # one image's failure must not stop the batch
                    message = str(e) if isinstance(e, OnnxcamError) else f"{type(e).__name__}: {e}"
                    batch.failed[item[0]] = [self._failed(batch.jobs[item[0]], message, 0.0)]
        batch.decoded = []  # the preprocessed tensors are no longer needed: free them before the write queue
        return batch

    def write(self, batch: _Batch) -> list[list[dict[str, Any]]]:
        """Resize, colour, encode and write the outputs (the writer thread); records per job, in order."""
        results: dict[int, list[dict[str, Any]]] = dict(batch.failed)
        for computed in batch.computed:
            for row, (i, rgb) in enumerate(computed.images):
                try:
                    results[i] = self._write(batch.jobs[i], rgb, computed, row)
                except Exception as e:  # e.g. a full disk: this image fails, the run goes on and reports it
                    results[i] = [self._failed(batch.jobs[i], f"writing the outputs failed: {type(e).__name__}: {e}",
                                               0.0)]
        return [results.get(i) or [self._failed(job, "not processed", 0.0)] for i, job in enumerate(batch.jobs)]

    def _compute(self, items: list[tuple[int, np.ndarray, np.ndarray]]) -> _Computed:
        t0 = time.perf_counter()
        x = np.concatenate([item[2] for item in items])
        if self.ex.providers[0] in GPU_PROVIDERS:
            x.flags.writeable = False  # lets every method's run reuse the batch already on the GPU (runtime.Session)
        maps: dict[tuple[str, int], np.ndarray] = {}
        if self.top_k is not None:  # the classes come from the scores: one forward first
            scores = self.ex.scores(x)
            chosen = np.argsort(-scores, axis=1, kind="stable")[:, :self.top_k]
        else:  # the first method's run also gives the scores
            targets = None if self.target is None else np.full(len(items), self.target, np.int64)
            maps[(self.methods[0], 0)], scores, explained = self.ex.explain_scored(
                x, self.methods[0], targets, **self.method_options.get(self.methods[0], {}))
            chosen = explained[:, None]
        for method in self.methods:
            for k in range(chosen.shape[1]):
                if (method, k) not in maps:
                    maps[(method, k)] = self.ex.explain(x, method=method, targets=chosen[:, k].astype(np.int64),
                                                        **self.method_options.get(method, {}))
        return _Computed([(i, rgb) for i, rgb, _ in items], maps, scores, chosen,
                         (time.perf_counter() - t0) / len(items))

    def _write(self, job: ImageJob, rgb: np.ndarray, computed: _Computed, row: int) -> list[dict[str, Any]]:
        scores, chosen = computed.scores, computed.chosen
        pred = int(scores[row].argmax())
        records = []
        for method in self.methods:
            stems = self.stems(job, method, [int(c) for c in chosen[row]])
            for k, stem in enumerate(stems):
                t1 = time.perf_counter()
                cam = resize_map(computed.maps[(method, k)][row], rgb.shape[:2])
                png, npy = f"{stem}.png", f"{stem}.npy"
                write_npy(self.out / npy, cam)
                picture = overlay(rgb, cam, self.alpha, self.colormap)
                write_png(self.out / png, picture)
                if len(self.thumbnails) < self.thumbnail_limit:  # made in the overlapped writer, not read back later
                    self.thumbnails[png] = thumbnail_data_uri(picture)
                target = int(chosen[row, k])
                records.append({
                    "image": str(job.path), "name": job.name, "status": "ok", "error": None, "predicted": pred,
                    "predicted_label": self.label(pred), "score": float(scores[row, pred]), "target": target,
                    "label": self.label(target), "target_score": float(scores[row, target]), "method": method,
                    "layer": ", ".join(self.ex.layer), "paths": {"overlay": png, "map": npy},
                    "seconds": round(computed.seconds / max(1, len(self.methods) * len(stems))
                                     + time.perf_counter() - t1, 4)})
        return records

    def _failed(self, job: ImageJob, error: str, seconds: float) -> dict[str, Any]:
        return {"image": str(job.path), "name": job.name, "status": "failed", "error": error, "predicted": None,
                "predicted_label": None, "score": None, "target": None, "label": None, "target_score": None,
                "method": ", ".join(self.methods), "layer": ", ".join(self.ex.layer), "paths": None,
                "seconds": round(seconds, 4)}


def write_report(summary: Summary, title: str, meta: dict[str, Any], limit: int = REPORT_LIMIT,
                 made: dict[str, str] | None = None) -> None:
    """report.html with every failure and the first `limit` explained images (thumbnails are ~10 KB each).

    made: thumbnails already made while writing (overlay path -> data URI); the others are read back from disk.
    """
    ok_seen, shown = 0, []
    for rec in summary.records:
        if rec.get("status") != "failed":
            ok_seen += 1
            if ok_seen > limit:
                continue
        shown.append(rec)
    total = max(summary.total_records, len(summary.records))
    if len(shown) < total:
        meta = {**meta, "shown": f"{len(shown)} of {total} (all in {RESULTS})"}
    thumbs = {}
    for i, rec in enumerate(shown):
        paths = rec.get("paths") or {}
        if rec.get("status") != "failed" and paths.get("overlay"):
            if made and paths["overlay"] in made:
                thumbs[i] = made[paths["overlay"]]
                continue
            rgb = read_rgb(summary.out / paths["overlay"])
            if rgb is not None:
                thumbs[i] = thumbnail_data_uri(rgb)
    write_bytes(summary.report, report_html(shown, thumbs, title, meta).encode("utf-8"))
