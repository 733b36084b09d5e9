"""`onnxcam explain` for segmentation, detection and embedding models (--task, --mask, --box, --threshold,
--reference): the options' checks and the progress display around `explain_tasks`."""

from __future__ import annotations

import time
from pathlib import Path

import onnx
import typer
from rich.table import Table
from rich.text import Text

from onnxcam.cli import _fail, _floats, _quiet_opencv, _size, console, err_console, explain_progress
from onnxcam.errors import OnnxcamError
from onnxcam.targets import TASKS, guess_task


def wants_task(model: Path, task: str | None, mask: Path | None, box: int | None, threshold: float | None,
               reference: Path | None) -> bool:
    """Whether `explain` runs the target job: a task option, or a model whose metadata / output names a task
    other than classification."""
    if task is not None:
        if task not in TASKS:
            _fail(OnnxcamError(f"unknown task '{task}'; use one of {', '.join(TASKS)}"), False)
        return task != "classify"
    if any(v is not None for v in (mask, box, threshold, reference)):
        return True
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:
        return False  # the classifier job reports an unreadable model
    meta = {p.key: p.value for p in proto.metadata_props}
    outputs = [o for o in proto.graph.output if o.type.tensor_type.elem_type in (1, 10, 11, 16)]
    rank = len(outputs[0].type.tensor_type.shape.dim) if outputs else None
    # A model with several outputs of which one is (N, classes) is taken as a classifier, as find_score does.
    if any(len(o.type.tensor_type.shape.dim) == 2 for o in outputs) and "task" not in meta:
        return False
    return guess_task([0] * rank if rank else None, meta) not in (None, "classify")


def _note(note: str) -> None:
    err_console.print(f"note: {note}", markup=False, soft_wrap=True)


def explain_task(model: Path, inputs: list[str], method: list[str], layer: str | None, target: str | None, out: Path,
                 batch_size: int, preset: str | None, mean: str | None, std: str | None, scale: float | None,
                 size: str | None, bgr: bool | None, labels: Path | None, device: str, alpha: float, colormap: str,
                 debug: bool, task: str | None, mask: Path | None, box: int | None, threshold: float | None,
                 reference: Path | None) -> None:
    from onnxcam.explain_tasks import explain_tasks

    _quiet_opencv()
    methods = [m.strip() for item in method for m in item.split(",") if m.strip()]
    progress, on_start, on_image = explain_progress()
    start = time.perf_counter()
    try:
        try:
            summary = explain_tasks(model, inputs, out, task, methods, layer, target, mask, box, threshold,
                                    reference, batch_size, preset, _floats(mean, "--mean"), _floats(std, "--std"),
                                    _size(size), bgr, scale, labels, device, alpha, colormap, on_start=on_start,
                                    on_image=on_image,
                                    on_note=_note)
        finally:
            progress.stop()
    except (OnnxcamError, OSError) as e:
        _fail(e, debug)
    table = Table(title=f"onnxcam explain ({summary.records[0].get('task', task) if summary.records else task})")
    for column in ("done", "failed", "time"):
        table.add_column(column, justify="right")
    table.add_row(str(summary.done), str(summary.failed), f"{time.perf_counter() - start:.1f} s")
    console.print(table)
    failures = [r for r in summary.records if r["status"] == "failed"]
    for rec in failures[:10]:
        console.print(Text(f"failed: {rec['image']}: {rec['error']}", style="red"))
    console.print(f"report: {summary.report}", markup=False, highlight=False)
    if failures:
        raise typer.Exit(1)
