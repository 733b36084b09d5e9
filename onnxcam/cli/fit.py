"""`onnxcam fit broadcam`: fit BroadCAM's class weights on a small labelled image set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from onnxcam.cli.common import alias, console, err_console, fail, quiet_opencv
from onnxcam.errors import OnnxcamError

fit_app = typer.Typer(help="Fit weights that a method needs (BroadCAM) on a small labelled image set.",
                      no_args_is_help=True)


@fit_app.command("broadcam")
def broadcam(
    model: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    data: Annotated[Path, typer.Argument(help="Folder of labelled images (e.g. a shapes benchmark folder).")],
    ground_truth: Annotated[Path | None, typer.Option("--ground-truth", help="CSV with header 'file,class' (class "
                                                      "name or index; paths relative to DATA or to the csv; several "
                                                      "rows per image = several classes). Default: "
                                                      "DATA/labels.csv.")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", hidden=True, help="Deprecated: --ground-truth.")
                      ] = None,
    layers: Annotated[list[str], typer.Option("--layers", help="Feature maps to pool (comma-separated or repeated). "
                                              "Default: the last feature map at each spatial size.")
                      ] = [],  # noqa: B006
    ridge: Annotated[float, typer.Option(help="Ridge penalty (> 0) on the standardised features: "
                                         "larger = smoother, less fitted weights.")] = 50.0,
    out: Annotated[Path, typer.Option("--out", "-o", help="The fit file to write (.npz).")] = Path("broadcam.npz"),
    class_names: Annotated[Path | None, typer.Option(help="Class names file (default: the model's 'labels' metadata, "
                                                     "else DATA/classes.txt).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per onnxruntime run.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Fit BroadCAM (ridge regression from multi-stage pooled features to labels); use the file with
    'onnxcam explain --method broadcam --fit FILE'."""
    from onnxcam.explainer import Explainer
    from onnxcam.jobs.fit_broadcam import fit_broadcam, read_dataset

    quiet_opencv()
    chosen = [v.strip() for item in layers for v in item.split(",") if v.strip()]
    progress = Progress(TextColumn("[bold]pooling features"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=err_console)
    try:
        truth = alias(ground_truth, labels, "--ground-truth", "--labels", "fit broadcam")
        ex = Explainer(model, device=device)
        files, targets, names = read_dataset(ex, data, truth, class_names)
        task = progress.add_task("fit", total=len(files))
        with progress:
            fit = fit_broadcam(ex, files, targets, chosen or None, ridge, batch_size, names,
                               on_progress=lambda n: progress.advance(task, n))
        path = fit.save(out)
    except (OnnxcamError, OSError) as e:
        fail(e, debug)
    import numpy as np

    missing = [names[c] or str(c) for c in np.flatnonzero(targets.sum(axis=0) == 0)]
    if missing:
        err_console.print(Text(f"note: no image of class(es) {', '.join(missing)}: their maps will be empty",
                               style="yellow"))
    console.print(f"fitted {fit.classes} classes on {fit.images} images, ridge {fit.ridge:g}, layers: "
                  f"{', '.join(f'{n} ({k})' for n, k in zip(fit.layers, fit.channels))}", markup=False,
                  highlight=False)
    console.print(f"written: {path}", markup=False, highlight=False)
