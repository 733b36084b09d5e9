"""`onnxcam evaluate`: faithfulness and localisation metrics per method, as a table and files.

Exit codes: 0 every method was scored; 1 some methods could not run on the model (the others are scored and
written); 2 usage errors (unknown method or metric, no images, bad labels csv, ...), one line on stderr.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import alias, console, err_console, fail, floats, option_value, pairs, quiet_opencv, split
from onnxcam.cli.common import size as size_option
from onnxcam.errors import InputError, OnnxcamError


def _count(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{option} takes METHOD=N with N a positive whole number, got '{text}'")
    return int(text)


def evaluate(
    model: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    data: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    methods: Annotated[list[str], typer.Option("--methods", "--method", "-m", help="Methods, comma-separated or "
                                               "repeated; see 'onnxcam methods'.")] = ["gradcam"],  # noqa: B006
    metrics: Annotated[str | None, typer.Option(help="Metrics or groups, comma-separated (default: all): "
                                                "average_drop (ad), average_increase (ai), average_gain (ag), "
                                                "deletion, insertion, road_morf, road_lerf (road), pointing_game "
                                                "(pg), energy_pointing_game (epg), faithfulness, "
                                                "insertion_deletion, localisation.")] = None,
    ground_truth: Annotated[Path | None, typer.Option("--ground-truth", help="CSV 'file,class' (class index or "
                                                      "class name; one row per object). Default: labels.csv in "
                                                      "DATA or beside it.")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", hidden=True, help="Deprecated: --ground-truth.")
                      ] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of masks '<stem>.png', non-zero on the object "
                                               "(class index + 1 per object). Default: masks/ in or beside DATA.")
                     ] = None,
    layer: Annotated[str | None, typer.Option(help="Tensor to explain (default: the model's default layer).")
                     ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N items only.")] = None,
    method_limit: Annotated[list[str], typer.Option("--method-limit", help="Fewer items for slow methods, e.g. "
                                                    "scorecam=50 (comma-separated or repeated).")] = [],  # noqa: B006
    metric_limit: Annotated[list[str], typer.Option("--metric-limit", help="Fewer items for slow metrics, e.g. "
                                                    "road=50 (comma-separated or repeated).")] = [],  # noqa: B006
    option: Annotated[list[str], typer.Option("--option", help="Method option NAME=VALUE passed to every method "
                                              "that accepts it (value parsed as JSON when it can be).")
                      ] = [],  # noqa: B006
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")] = 16,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for evaluation.json, evaluation.csv and "
                                      "curves.png.")] = Path("onnxcam-eval"),
    activation: Annotated[str, typer.Option(help="Scores to probabilities: auto (sigmoid when the graph ends in a "
                                            "Sigmoid, else softmax), softmax, sigmoid or none.")] = "auto",
    steps: Annotated[int, typer.Option(min=1, help="Insertion/deletion steps.")] = 20,
    insertion_start: Annotated[str, typer.Option(help="Insertion starts from 'blur' (RISE) or 'black'.")] = "blur",
    road_percentages: Annotated[str, typer.Option(help="ROAD removal percentages, comma-separated.")
                                ] = "10,30,50,70,90",
    road_noise: Annotated[float, typer.Option(min=0.0, help="ROAD imputation noise std (pixels in [0, 1]).")] = 0.01,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Pointing-game tolerance in pixels (Zhang et al. use "
                                             "15 at 224 px).")] = 0.0,
    class_names: Annotated[Path | None, typer.Option(help="Class names file: text, JSON or CSV (default: the "
                                                     "model's metadata, else ImageNet-1k names for 1000 classes)."
                                                     )] = None,
    preset: Annotated[str | None, typer.Option(help="Preprocessing preset: imagenet, imagenet-crop, inception, "
                                               "raw255, caffe, unit, yolo (default: model metadata, else a guess; "
                                               "the run prints which).")] = None,
    bgr: Annotated[bool | None, typer.Option("--bgr/--rgb", help="Channel order fed to the model.")] = None,
    resize_short: Annotated[int | None, typer.Option(min=1, help="Resize the short side to N, then centre-crop the "
                                                     "input size.")] = None,
    crop: Annotated[str | None, typer.Option(help="Centre crop N or HxW after resizing the short side.")] = None,
    letterbox: Annotated[bool | None, typer.Option("--letterbox/--no-letterbox", help="Fit the image in the input "
                                                   "keeping its aspect ratio, pad the rest.")] = None,
    interpolation: Annotated[str | None, typer.Option(help="Resize filter: auto, nearest, bilinear, bicubic, area, "
                                                      "lanczos.")] = None,
    model_input: Annotated[list[str], typer.Option("--input", help="A value for a model input beside the image: "
                                                   "NAME=FILE.npy (repeatable).")] = [],  # noqa: B006
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Faithfulness (AD/AI/AG, insertion/deletion, ROAD) and localisation (pointing game, energy) per method."""
    from onnxcam.jobs.evaluate import METRICS
    from onnxcam.jobs.evaluate import evaluate as run_evaluation

    quiet_opencv()
    progress = Progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=err_console)
    task_id = progress.add_task("evaluate", total=None)

    def on_start(total: int) -> None:
        progress.update(task_id, total=total)
        progress.start()

    try:
        truth = alias(ground_truth, labels, "--ground-truth", "--labels", "evaluate")
        method_list = split(methods)
        limits = {k: _count(v, "--method-limit") for k, v in pairs(method_limit, "--method-limit").items()}
        metric_limits = {k: _count(v, "--metric-limit") for k, v in pairs(metric_limit, "--metric-limit").items()}
        options = {k: option_value(v) for k, v in pairs(option, "--option").items()}
        percentages = floats(road_percentages, "--road-percentages") or []
        try:
            result = run_evaluation(
                model, data, method_list, out=out, metrics=metrics, labels=truth, masks=masks, layer=layer,
                limit=limit, limits=limits, metric_limits=metric_limits, batch_size=batch_size, activation=activation,
                steps=steps,
                road_percentages=percentages, road_noise=road_noise, insertion_start=insertion_start,
                tolerance=tolerance, class_names=class_names, preset=preset, device=device, options=options,
                on_start=on_start, on_progress=lambda n: progress.advance(task_id, n), bgr=bgr,
                resize_short=resize_short, crop=size_option(crop, "--crop"), letterbox=letterbox,
                interpolation=interpolation, model_inputs=pairs(model_input, "--input"),
                on_info=lambda line: err_console.print(Text(line)))
        finally:
            progress.stop()
    except (OnnxcamError, OSError) as e:
        fail(e, debug)
    for note in result.notes:
        err_console.print(Text(f"note: {note}", style="yellow"))
    console.print(results_table(result.results, result.metrics, METRICS, title=_title(result)))
    console.print(Text(f"written: {out / 'evaluation.json'}, {out / 'evaluation.csv'}"
                       + (f", {out / 'curves.png'}" if result.curves and any(result.curves.values()) else "")))
    for method, error in result.errors.items():
        err_console.print(Text(f"{method} left out: {error}", style="red"))
    if result.errors:
        raise typer.Exit(1)


def _title(result: Any) -> str:
    accuracy = "" if result.accuracy is None else f", accuracy {100 * result.accuracy:.1f}% on labelled items"
    counts = f"{result.items} items ({result.labelled} labelled, {result.with_masks} with masks)"
    return f"onnxcam evaluate: {counts}{accuracy}"


def results_table(results: dict[str, dict[str, dict[str, Any]]], metrics: list[str],
                  info: dict[str, tuple[bool, str]], title: str = "") -> Table:
    """Methods x metrics; arrows say which way is better, the best value per column is bold green. The last row
    gives the number of items each metric was computed on when every method has the same, else it follows each
    value in brackets."""
    table = Table(title=title)
    table.add_column("method")
    best: dict[str, float] = {}
    for k in metrics:
        higher = info[k][0]
        means = [per[k]["mean"] for per in results.values() if per[k]["mean"] is not None]
        if len(means) > 1 and not all(math.isclose(v, means[0]) for v in means):
            best[k] = max(means) if higher else min(means)
    uniform = {k: len({per[k]["n"] for per in results.values()}) == 1 for k in metrics}
    for k in metrics:
        table.add_column(f"{info[k][1]} {'↑' if info[k][0] else '↓'}", justify="right")
    for method, per in results.items():
        cells: list[Text | str] = [Text(method)]
        for k in metrics:
            mean, n = per[k]["mean"], per[k]["n"]
            text = "-" if mean is None else f"{mean:.4f}" if k == "seconds_per_image" else \
                f"{mean:.2f}" if k in ("average_drop", "average_increase", "average_gain", "pointing_game",
                                       "energy_pointing_game") else f"{mean:.3f}"
            if not uniform[k]:
                text += f" ({n})"
            style = "bold green" if k in best and mean is not None and math.isclose(mean, best[k]) else ""
            cells.append(Text(text, style=style))
        table.add_row(*cells)
    if results:
        first = next(iter(results.values()))
        table.add_row(Text("items (n)", style="dim"),
                      *[Text(str(first[k]["n"]) if uniform[k] else "", style="dim") for k in metrics])
    return table
