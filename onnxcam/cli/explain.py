"""`onnxcam explain`: one command for every task (classification, segmentation, detection, embeddings).

Exit codes: 0 all images explained; 1 some images failed (the others are still written) or the run stopped (disk
full); 2 usage errors (bad options, model, layer, method, labels or target), reported on one line on stderr (a
traceback only with --debug); 130 interrupted (Ctrl-C), with the command that continues the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import (
    alias,
    console,
    err_console,
    explain_progress,
    fail,
    floats,
    method_options,
    method_times,
    pairs,
    quiet_opencv,
    split,
)
from onnxcam.cli.common import size as size_option
from onnxcam.errors import OnnxcamError
from onnxcam.files import printable


def explain(
    model: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method(s), comma-separated or repeated; "
                                              "see 'onnxcam methods'.")] = ["gradcam"],  # noqa: B006
    layer: Annotated[list[str], typer.Option(help="Tensor(s) to explain, comma-separated or repeated; several are "
                                              "averaged (default: the last spatial feature map; see 'onnxcam "
                                              "inspect').")] = [],  # noqa: B006
    per_layer: Annotated[bool, typer.Option("--per-layer", help="With several layers (--layer a,b, or a "
                                            "multi-scale detector's per-scale maps by default): one map per layer "
                                            "(files .L0, .L1, ...) instead of their average.")] = False,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Class label or index to explain (a label "
                                               "wins; '#N' is always index N) (default: the predicted class).")
                      ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Explain the K best classes per image.")
                     ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("onnxcam-out"),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per onnxruntime run.")] = 8,
    preset: Annotated[str | None, typer.Option(help="Preprocessing preset: imagenet, imagenet-crop (short side 256, "
                                               "centre crop 224: torchvision/timm), inception, raw255, caffe, unit, "
                                               "yolo (letterbox, x/255) (default: model metadata, else a guess; "
                                               "the run prints which).")] = None,
    resize_short: Annotated[int | None, typer.Option(min=1, help="Resize the short side to N (keeping the aspect "
                                                     "ratio), then centre-crop the input size.")] = None,
    crop: Annotated[str | None, typer.Option(help="Centre crop N or HxW after resizing the short side (sets the "
                                             "input size of a model with a dynamic one).")] = None,
    letterbox: Annotated[bool | None, typer.Option("--letterbox/--no-letterbox", help="Fit the whole image in the "
                                                   "input keeping its aspect ratio and pad the rest (--pad-value), "
                                                   "as Ultralytics does.")] = None,
    interpolation: Annotated[str | None, typer.Option(help="Resize filter: auto (area when shrinking, else "
                                                      "bilinear), nearest, bilinear, bicubic, area, lanczos.")
                             ] = None,
    pad_value: Annotated[float | None, typer.Option(help="Letterbox padding pixel value (default 114).")] = None,
    model_input: Annotated[list[str], typer.Option("--input", help="A value for a model input beside the image: "
                                                   "NAME=FILE.npy (repeatable).")] = [],  # noqa: B006
    mean: Annotated[str | None, typer.Option(help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std after scaling, e.g. 0.229,0.224,0.225.")] = None,
    scale: Annotated[float | None, typer.Option(help="Pixel multiplier before mean/std (e.g. 0.00392 = 1/255).")
                     ] = None,
    size: Annotated[str | None, typer.Option(help="Input size N or HxW for models with a dynamic size.")] = None,
    grid: Annotated[str | None, typer.Option(help="Transformers: the token grid HxW of the layer, where onnxcam "
                                             "cannot infer it from the token count.")] = None,
    extra_tokens: Annotated[int | None, typer.Option(min=0, help="Transformers: class/distillation/register "
                                                     "tokens before the patch tokens (default: inferred).")] = None,
    bgr: Annotated[bool | None, typer.Option("--bgr/--rgb", help="Channel order fed to the model.")] = None,
    class_names: Annotated[Path | None, typer.Option("--class-names", help="Class names: text (one per line), JSON "
                                                     "list/dict or CSV 'index,name' (default: the model's metadata, "
                                                     "else ImageNet-1k names for 1000 classes).")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", hidden=True, help="Deprecated: --class-names.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Overlay opacity of the heat map.")] = 0.5,
    colormap: Annotated[str, typer.Option(help="jet, turbo, inferno, viridis, magma or hot.")] = "jet",
    resume: Annotated[bool, typer.Option(help="Continue the run recorded in OUT/run.json: skip images whose outputs "
                                         "are complete (refused when the model, layer, methods, targets or "
                                         "preprocessing differ).")] = False,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data actors; needs the 'ray' "
                                        "extra of onnxcam).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --engine ray (e.g. auto or "
                                                "ray://head:10001; default: start a local one).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray actors for --engine ray (default: one per GPU, "
                                                "else one per 2 CPUs).")] = None,
    option: Annotated[list[str], typer.Option("--option", help="Method option NAME=VALUE (repeatable; JSON values "
                                              "such as 3 or true are parsed), passed to the methods that accept "
                                              "it, e.g. --option rule=epsilon for relevancecam.")] = [],  # noqa: B006
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
    task: Annotated[str | None, typer.Option(help="classify, segment, detect or embed (default: the model's "
                                             "metadata, else its output's shape).")] = None,
    mask: Annotated[Path | None, typer.Option(help="Segmentation: a mask image (nonzero = inside) whose pixels of "
                                              "the target class are explained (default: its predicted region).")
                    ] = None,
    box: Annotated[int | None, typer.Option(min=0, help="Detection: explain the detection (output row) with this "
                                            "index (default: the best one).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Detection: explain every detection scoring at least "
                                                    "this, one map each.")] = None,
    max_detections: Annotated[int, typer.Option(min=1, help="Detection: at most this many detections per image "
                                                "with --threshold, the best first.")] = 20,
    detection_target: Annotated[str, typer.Option(help="Detection: what to explain about each detection: score "
                                                  "(its class score) or mask (instance segmentation: its mask, "
                                                  "the sum of its mask logits inside its box).")] = "score",
    reference: Annotated[Path | None, typer.Option(help="Embeddings: explain the cosine similarity to this "
                                                   "image's embedding.")] = None,
    fit: Annotated[Path | None, typer.Option(help="BroadCAM: the weights file from 'onnxcam fit broadcam'.")] = None,
) -> None:
    """Explain images: overlays (.png), maps (.npy), results.jsonl, run.json and report.html in OUT."""
    from onnxcam.facts import prefetch_graph_code

    prefetch_graph_code(model)  # a first run of this model imports the graph code while the rest starts
    from onnxcam.jobs.explain import explain as run_explain
    from onnxcam.jobs.fit_broadcam import fit_options
    from onnxcam.tokens import parse_grid

    quiet_opencv()
    methods = split(method)
    layers = split(layer)
    progress = explain_progress()
    start = time.perf_counter()
    try:
        names = alias(class_names, labels, "--class-names", "--labels", "explain")
        options = fit_options(model, methods, fit) or {}  # a wrong or missing fit file: usage error
        for name, chosen in method_options(methods, option).items():
            options[name] = {**options.get(name, {}), **chosen}
        try:
            summary = run_explain(
                model, inputs, out, methods=methods, layer=layers[0] if len(layers) == 1 else layers or None,
                target=target, top_k=top_k, task=task, mask=mask, box=box, threshold=threshold,
                max_detections=max_detections, detection_target=detection_target, reference=reference,
                batch_size=batch_size, preset=preset,
                mean=floats(mean, "--mean"), std=floats(std, "--std"), size=size_option(size), bgr=bgr, scale=scale,
                grid=parse_grid(grid) if grid else None, extra_tokens=extra_tokens, labels=names, device=device,
                alpha=alpha, colormap=colormap, resume=resume, on_start=progress.on_start,
                on_image=progress.on_image, on_progress=progress.on_progress, on_note=_note, engine=engine,
                address=address, workers=workers, method_options=options,
                resize_short=resize_short, crop=size_option(crop, "--crop"), letterbox=letterbox,
                interpolation=interpolation, pad_value=pad_value, model_inputs=pairs(model_input, "--input"),
                on_info=_info, per_layer=per_layer)
        finally:
            progress.stop()
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {progress.done} of {progress.total or '?'} images done; continue with: "
                   f"{_resume_command()}", err=True)
        raise typer.Exit(130) from None
    except (OnnxcamError, OSError) as e:
        fail(e, debug)
    table = Table(title=f"onnxcam explain ({summary.records[0].get('task') or 'classify'})" if summary.records
                  else "onnxcam explain")
    for column in ("done", "failed", "skipped", "time"):
        table.add_column(column, justify="right")
    table.add_row(str(summary.done), str(summary.failed), str(summary.skipped), f"{time.perf_counter() - start:.1f} s")
    console.print(table)
    times = method_times(summary)
    if times is not None and len(summary.method_seconds) > 1:
        console.print(times)
    failures = [r for r in summary.records if r["status"] == "failed"]
    for rec in failures[:10]:
        console.print(Text(printable(f"failed: {rec['image']}: {rec['error']}"), style="red"))
    if len(failures) > 10:
        console.print(f"... and {len(failures) - 10} more (see {summary.results})", markup=False)
    if summary.stopped:
        console.print(Text(f"stopped: {summary.stopped}", style="red"))
    console.print(f"report: {summary.report}", markup=False, highlight=False)
    if failures or summary.stopped:
        raise typer.Exit(1)


def _info(line: str) -> None:
    err_console.print(printable(line), markup=False, highlight=False, soft_wrap=True)


def _note(note: str) -> None:
    err_console.print(f"note: {printable(note)}", markup=False, soft_wrap=True)


def _resume_command() -> str:
    """The command line of this run with --resume added (quoted for a POSIX shell)."""
    import shlex
    import sys

    args = sys.argv[1:]
    if "--resume" not in args:
        args = [*args, "--resume"]
    return printable(" ".join(shlex.quote(a) for a in ["onnxcam", *args]))
