"""`onnxcam compare`: do two models (float32 vs int8, v1 vs v2) look at the same evidence?

Exit codes: 0 every image passes (maps compared, none flat, Pearson r >= --threshold, and the mean r >=
--fail-under when given); 1 otherwise, so it can gate a CI pipeline; 2 usage errors (one line on stderr).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import console, err_console, explain_progress, fail, method_options, quiet_opencv, split
from onnxcam.errors import OnnxcamError
from onnxcam.files import printable

if TYPE_CHECKING:
    from onnxcam.jobs.compare import Comparison
RESULTS_NAME = "compare.jsonl"
METRIC_NAMES = {"pearson": "Pearson r", "spearman": "Spearman r", "iou_top10": "IoU top 10%",
                "iou_top20": "IoU top 20%", "peak_distance": "peak distance (px)"}


def compare(
    model_a: Annotated[Path, typer.Argument(help="Model A, the reference (e.g. the float32 model).")],
    model_b: Annotated[Path, typer.Argument(help="Model B, the candidate (e.g. its int8 or float16 version).")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: compare.jsonl, compare.json, report.html.")],
    method: Annotated[str, typer.Option("--method", "-m", help="The method both models are explained with; see "
                                        "'onnxcam methods'.")] = "gradcam",
    layer_a: Annotated[list[str], typer.Option("--layer-a", help="A's layer(s), comma-separated or repeated "
                                               "(default: A's default layer).")] = [],  # noqa: B006
    layer_b: Annotated[list[str], typer.Option("--layer-b", help="B's layer(s), comma-separated or repeated "
                                               "(default: B's default layer).")] = [],  # noqa: B006
    target: Annotated[str | None, typer.Option("--target", "-t", help="Class index or A's label name explained by "
                                               "both (default: A's prediction per image).")] = None,
    threshold: Annotated[float, typer.Option(help="An image fails when the maps' Pearson r is below this.")] = 0.5,
    fail_under: Annotated[float | None, typer.Option("--fail-under", help="The run fails when the mean Pearson r is "
                                                     "below this (a CI gate on the whole set).")] = None,
    same_classes: Annotated[bool, typer.Option("--same-classes", help="Models with different class counts: take B's "
                                               "class i as A's class i and compare maps for A's target.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per onnxruntime run.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    option: Annotated[list[str], typer.Option("--option", help="Method option NAME=VALUE (repeatable), as for "
                                              "'onnxcam explain'.")] = [],  # noqa: B006
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Explain each image with both models and measure how well their maps agree (exit 1 when they diverge)."""
    from onnxcam.jobs.compare import compare as run_compare

    quiet_opencv()
    progress = explain_progress()
    try:
        options = method_options([method], option).get(method, {})
        layers_a, layers_b = split(layer_a), split(layer_b)
        try:
            result = run_compare(
                model_a, model_b, images, out, method=method, layer_a=_one_or_many(layers_a),
                layer_b=_one_or_many(layers_b), target=target, threshold=threshold, fail_under=fail_under,
                same_classes=same_classes, batch_size=batch_size, device=device, method_options=options,
                keep_records=False, on_start=progress.on_start, on_image=progress.advance, on_note=_note)
        finally:
            progress.stop()
    except KeyboardInterrupt:
        typer.echo("interrupted: the images compared so far are in OUT/compare.jsonl.partial", err=True)
        raise typer.Exit(130) from None
    except (OnnxcamError, OSError) as e:
        fail(e, debug)
    _print_summary(result)
    if not result.passed:
        raise typer.Exit(1)


def _one_or_many(layers: list[str]) -> str | list[str] | None:
    return layers[0] if len(layers) == 1 else layers or None


def _note(note: str) -> None:
    err_console.print(f"note: {printable(note)}", markup=False, soft_wrap=True)


def _print_summary(result: Comparison) -> None:
    table = Table(title=f"onnxcam compare ({result.method}, {result.compared} of {result.images} images compared)")
    for column, justify in (("agreement", "left"), ("mean", "right"), ("worst", "right"), ("worst image", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for metric, stat in result.stats.items():
        digits = 1 if metric == "peak_distance" else 3
        table.add_row(METRIC_NAMES[metric], f"{stat['mean']:.{digits}f}", f"{stat['worst']:.{digits}f}",
                      Text(printable(str(stat["worst_image"]))))
    console.print(table)
    _print_list("predictions differ", result.predictions_differ, result.differ_images)
    _print_list(f"Pearson r below {result.threshold:g}", result.below_threshold, result.below_images)
    _print_list("failed", result.failed, result.failed_images)
    if result.flat:
        console.print(Text(f"all-zero maps: {result.flat} image(s) (see the notes in {RESULTS_NAME})", style="red"))
    if result.passed:
        console.print(Text("PASS: every image passes", style="green"))
    else:
        console.print(Text(printable("FAIL: " + "; ".join(result.reasons)), style="red"))
    console.print(f"report: {result.report}", markup=False, highlight=False)



def _print_list(what: str, count: int, names: list[str]) -> None:
    if not count:
        return
    shown = ", ".join(printable(n) for n in names[:10])
    more = f" and {count - 10} more (see {RESULTS_NAME})" if count > 10 else ""
    console.print(Text(f"{what}: {count} image(s): {shown}{more}", style="yellow"))
