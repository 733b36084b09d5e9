"""What every command shares: consoles, one-line errors, option parsing, the progress bar."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from onnxcam.errors import InputError

console = Console()
err_console = Console(stderr=True)
# The demo assets live in the source tree (models/, examples/): found beside an editable install, else from the
# current folder when that is a checkout.
REPO_ROOT = next((root for root in (Path(__file__).resolve().parents[2], Path.cwd())
                  if (root / "models" / "shapes_resnet.onnx").is_file()), Path(__file__).resolve().parents[2])
DEMO_MODEL = REPO_ROOT / "models" / "shapes_resnet.onnx"
DEMO_IMAGES = REPO_ROOT / "examples" / "images"


def fail(error: BaseException, debug: bool, code: int = 2) -> NoReturn:
    """Print one line (control characters escaped) and exit; the traceback only with --debug."""
    if debug:
        raise error
    from onnxcam.files import printable

    typer.echo(f"error: {printable(str(error))}", err=True)
    raise typer.Exit(code)


def split(values: list[str]) -> list[str]:
    """Comma-separated or repeated option values, flattened."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in split(values):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option} takes NAME=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def alias(new: Any, old: Any, new_flag: str, old_flag: str, command: str) -> Any:
    """The value of `new_flag`, or of its deprecated alias `old_flag` with a warning on stderr (both given and
    different: a usage error)."""
    if old is None:
        return new
    if new is not None and new != old:
        raise InputError(f"{old_flag} is the old name of {new_flag}: give one of them")
    err_console.print(f"warning: '{command} {old_flag}' is deprecated; use {new_flag} (the same value)",
                      style="yellow", markup=False, highlight=False)
    return old


def option_value(text: str) -> Any:
    """A method option from the command line: JSON when it parses (numbers, true/false, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def method_options(methods: list[str], given: list[str]) -> dict[str, dict[str, Any]]:
    """--option NAME=VALUE pairs spread over the methods that accept each name; a name no method takes is an error
    that lists what the chosen methods accept (a typo would otherwise be ignored silently)."""
    import difflib

    from onnxcam.methods import get_method

    options = {k: option_value(v) for k, v in pairs(given, "--option").items()}
    specs = [get_method(m) for m in methods]
    per_method = {s.name: s.accepts(options, strict=False) for s in specs}
    unused = sorted(set(options) - {k for accepted in per_method.values() for k in accepted})
    if unused:
        accepted = sorted({o for s in specs for o in s.options} - {"eigen_sign"})
        close = difflib.get_close_matches(unused[0], accepted, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"--option {', '.join(unused)}: no chosen method takes it{hint}; "
                         f"{', '.join(methods)} accept: {', '.join(accepted) or 'no options'}")
    return {m: o for m, o in per_method.items() if o}


def floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, e.g. 0.485,0.456,0.406; got '{text}'") from None


def size(text: str | None, option: str = "--size") -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.lower().replace("x", ",").split(",") if v]
    except ValueError:
        raise InputError(f"{option} takes N or HxW, e.g. 224 or 256x192; got '{text}'") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise InputError(f"{option} takes N or HxW with positive numbers; got '{text}'")
    return values


@dataclass
class ExplainProgress:
    """The explain commands' progress bar and the hooks onnxcam.jobs.explain.explain calls."""

    bar: Progress
    task: TaskID
    done: int = 0       # images finished
    total: int = 0      # images in the run

    def on_start(self, total: int) -> None:
        self.total = total
        self.bar.update(self.task, total=total)
        self.bar.start()

    def on_image(self, _record: Any) -> None:
        self.done += 1

    def advance(self, _record: Any = None) -> None:
        """One image done, for jobs that report no finer progress (compare)."""
        self.done += 1
        self.bar.advance(self.task)

    def on_progress(self, images: float) -> None:
        """Images done as a float: moves during the inner loops of slow methods, not only per image."""
        self.bar.update(self.task, completed=images)

    def stop(self) -> None:
        self.bar.stop()


def explain_progress() -> ExplainProgress:
    """One bar over the run (images, with the share of the running batch done), images/s, elapsed and ETA; it
    starts when the image count is known."""
    bar = Progress(TextColumn("[bold]explaining"), BarColumn(), _CountColumn(), _RateColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=False)
    return ExplainProgress(bar, bar.add_task("explain", total=None))


def method_times(summary: Any) -> Table | None:
    """Compute time per method (the sum of the records' measured shares), for the end of a run."""
    if not summary.method_seconds:
        return None
    table = Table(title="time per method")
    for column, justify in (("method", "left"), ("compute", "right"), ("per image", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    images = max(1, summary.done)
    for method, seconds in summary.method_seconds.items():
        table.add_row(Text(method), f"{seconds:.2f} s", f"{1000 * seconds / images:.1f} ms")
    return table


def quiet_opencv() -> None:
    """Bad images are reported once by us; OpenCV's own warnings about them would only clutter the terminal."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        # whole images done of the total; the bar itself shows the fraction of the running batch
        total = "?" if task.total is None else f"{task.total:.0f}"
        return Text(f"{int(task.completed)}/{total}", style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        # images arrive a batch at a time, so the average since the start reads better than rich's windowed speed
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("-- img/s", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:.1f} img/s", style="progress.data.speed")


