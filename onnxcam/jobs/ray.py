"""The Ray Data engine: `explain(..., engine="ray")` / `onnxcam explain ... --engine ray`.

The images to explain become a Ray dataset of (path, name) rows; `map_batches` sends batches to a pool of actors,
each holding one Explainer (one onnxruntime session per need, on its own GPU where the cluster has GPUs) and
running the same read -> compute -> write stages as the local run, so the outputs are the same files. Workers
write overlays and maps straight to the output folder (atomic writes), so on a multi-node cluster OUT and the
inputs must be on a filesystem every node sees (NFS, a mounted bucket, ...). The driver puts the records back in
input order, logs them to results.jsonl.partial as they complete (what --resume reads after a kill) and writes
results.jsonl and report.html at the end exactly as the local engine does.

Fault tolerance: a batch whose worker dies is retried by Ray on a fresh actor; files are replaced atomically and
the driver keeps one record set per image, so a redone image is never half-written or listed twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcam.errors import InputError, OnnxcamError

if TYPE_CHECKING:
    from onnxcam.jobs.records import Unit
    from onnxcam.jobs.worker import RunSpec

INSTALL = "the Ray engine needs Ray Data: pip install 'onnxcam[ray]' (or pip install 'ray[data]')"
Records = list[dict[str, Any]]


def require_ray() -> Any:
    """The `ray` module, or an InputError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data], not bare ray)
    except ImportError:
        raise InputError(INSTALL) from None
    return ray


class ExplainActor:
    """One Worker (and so one Explainer) per actor, built once from the run spec; each call explains one batch of
    rows and returns their records."""

    def __init__(self, spec: RunSpec) -> None:
        from onnxcam.jobs.worker import Worker

        _quiet_opencv()
        self.worker = Worker(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onnxcam.files import InputFile

        # read from the absolute path (a worker's working folder is not the driver's), record the path as given
        items = [InputFile(Path(str(f)), str(n)) for f, n in zip(batch["file"], batch["name"])]
        try:
            per_image = self.worker.run(items)
        except OnnxcamError as e:
            # the same for every image (model, layer, gradient rules): handed back as data, because Ray delivers
            # a raised exception to the driver as a traceback text, and the driver stops the run with it
            per_image, fatal = [[] for _ in items], f"{type(e).__name__}\t{e}"
        else:
            fatal = ""
        for records, given in zip(per_image, batch["path"]):
            for rec in records:
                rec["image"] = str(given)
        return {"unit": batch["unit"], "pos": batch["pos"],
                "records": np.array([json.dumps(r, ensure_ascii=True) for r in per_image], dtype=object),
                "fatal": np.array([fatal] * len(items), dtype=object)}


def run_ray(units: Iterator[Unit], spec: RunSpec, emit: Callable[[Records], None], batch_size: int,
            address: str | None = None, workers: int | None = None) -> None:
    """Explain the units' images on Ray actors; emit(records) per image, in input order (kept images included)."""
    ray = require_ray()
    for name in ("ray", "ray.data"):  # Ray's start-up and execution notes would bury the CLI's progress bar
        logging.getLogger(name).setLevel(logging.ERROR)
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # C++ notes on the driver's stderr
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)
    try:
        _run(ray, list(units), spec, emit, batch_size, workers)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, units: list[Unit], spec: RunSpec, emit: Callable[[Records], None], batch_size: int,
         workers: int | None) -> None:
    rows = [{"unit": u, "pos": p, "path": os.fsdecode(item.path), "file": os.path.abspath(item.path),
             "name": item.name} for u, unit in enumerate(units) for p, (item, kept) in enumerate(unit) if kept is None]
    done: dict[tuple[int, int], Records] = {}
    next_unit = 0

    def emit_ready() -> None:  # emit whole units in order as soon as all their images are back
        nonlocal next_unit
        while next_unit < len(units) and all(kept is not None or (next_unit, p) in done
                                             for p, (_job, kept) in enumerate(units[next_unit])):
            for p, (_job, kept) in enumerate(units[next_unit]):
                emit(kept if kept is not None else done.pop((next_unit, p)))
            next_unit += 1

    emit_ready()
    if rows:
        for batch in _dataset(ray, rows, spec, batch_size, workers).iter_batches(batch_size=None,
                                                                                   batch_format="numpy"):
            if len(batch["fatal"]) and batch["fatal"][0]:
                raise _error(str(batch["fatal"][0]))
            for u, p, text in zip(batch["unit"], batch["pos"], batch["records"]):
                done[(int(u), int(p))] = json.loads(text)  # a retried batch replaces, never duplicates
            emit_ready()
    if next_unit < len(units):
        raise OnnxcamError(f"the Ray run returned no results for {sum(len(u) for u in units[next_unit:])} images")


def _dataset(ray: Any, rows: list[dict[str, Any]], spec: RunSpec, batch_size: int, workers: int | None) -> Any:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows its own progress
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    count = workers or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2))
    blocks = max(1, min(len(rows), math.ceil(len(rows) / batch_size)))
    options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1, max_task_retries=-1).
    return dataset.map_batches(ExplainActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                               batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=count), **options)


def _error(fatal: str) -> OnnxcamError:
    from onnxcam import errors

    name, _, message = fatal.partition("\t")
    kind = getattr(errors, name, None)
    return kind(message) if isinstance(kind, type) and issubclass(kind, OnnxcamError) else OnnxcamError(message)


def unwrap(error: BaseException) -> BaseException:
    """The onnxcam error behind a Ray task error (so the CLI prints one line), else the error itself.

    Ray wraps a worker's exception in RayTaskError / UserCodeException layers that keep it as `cause`,
    `__cause__` or `__context__`, or as one of their bases (a RayTaskError is also an instance of the user's class).
    """
    seen: set[int] = set()
    queue = [error]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OnnxcamError):
            return _plain(current)
        for link in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(link, BaseException):
                queue.append(link)
    return error


def _plain(error: OnnxcamError) -> OnnxcamError:
    """A RayTaskError that is also an OnnxcamError prints Ray's traceback: rebuild the plain onnxcam error."""
    kind = next((k for k in type(error).__mro__ if issubclass(k, OnnxcamError) and k.__module__.startswith("onnxcam")),
                OnnxcamError)
    message = str(error.args[0]) if error.args else str(error)
    try:
        return kind(message) if type(error) is not kind else error
    except TypeError:
        return OnnxcamError(message)


def _quiet_opencv() -> None:
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
