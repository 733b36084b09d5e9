"""The `onnxcam` command line: explain, inspect, methods, demo.

Exit codes: 0 all images explained; 1 some images failed (the others are still written); 2 usage errors (bad
options, model, layer, method, labels or target), reported on one line on stderr (a traceback only with --debug).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from onnxcam.errors import GradientError, InputError, OnnxcamError

app = typer.Typer(help="Class activation maps (Grad-CAM and friends) for ONNX image models.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)
# The demo assets live in the source tree (models/, examples/): found beside an editable install, else from the
# current folder when that is a checkout.
REPO_ROOT = next((root for root in (Path(__file__).resolve().parent.parent, Path.cwd())
                  if (root / "models" / "shapes_resnet.onnx").is_file()), Path(__file__).resolve().parent.parent)
DEMO_MODEL = REPO_ROOT / "models" / "shapes_resnet.onnx"
DEMO_IMAGES = REPO_ROOT / "examples" / "images"


def _fail(error: BaseException, debug: bool, code: int = 2) -> NoReturn:
    if debug:
        raise error
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code)


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, e.g. 0.485,0.456,0.406; got '{text}'") from None


def _size(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.lower().replace("x", ",").split(",") if v]
    except ValueError:
        raise InputError(f"--size takes N or HxW, e.g. 224 or 256x192; got '{text}'") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise InputError(f"--size takes N or HxW with positive numbers; got '{text}'")
    return values


def _method_options(methods: list[str], given: list[str]) -> dict[str, dict[str, Any]]:
    """--option NAME=VALUE pairs spread over the methods that accept each name; a name no method takes is an error
    (a typo would otherwise be ignored silently)."""
    from onnxcam.cli_evaluate import _option_value, _pairs
    from onnxcam.evaluate import _accepted

    options = {k: _option_value(v) for k, v in _pairs(given, "--option").items()}
    per_method = {m: _accepted(m, options) for m in methods}
    unused = set(options) - {k for accepted in per_method.values() for k in accepted}
    if unused:
        raise InputError(f"--option {', '.join(sorted(unused))}: no chosen method takes it "
                         f"({', '.join(methods)}); see the method's docs")
    return {m: o for m, o in per_method.items() if o}


def explain_progress() -> tuple[Progress, Callable[[int], None], Callable[[Any], None]]:
    """The explain commands' progress bar (count, images/s, elapsed, ETA) with its on_start / on_image hooks;
    it starts when the image count is known."""
    progress = Progress(TextColumn("[bold]explaining"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
                        transient=False)
    task_id = progress.add_task("explain", total=None)

    def on_start(total: int) -> None:
        progress.update(task_id, total=total)
        progress.start()

    return progress, on_start, lambda _record: progress.advance(task_id)


def _quiet_opencv() -> None:
    """Bad images are reported once by us; OpenCV's own warnings about them would only clutter the terminal."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        # images arrive a batch at a time, so the average since the start reads better than rich's windowed speed
        elapsed = task.elapsed
        if not elapsed or not task.completed:
            return Text("-- img/s", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:.1f} img/s", style="progress.data.speed")


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method(s), comma-separated or repeated; "
                                              "see 'onnxcam methods'.")] = ["gradcam"],  # noqa: B006
    layer: Annotated[str | None, typer.Option(help="Tensor to explain (default: the last spatial feature map; "
                                              "see 'onnxcam inspect').")] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Class index or label name to explain "
                                               "(default: the predicted class).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, help="Explain the K best classes per image.")
                     ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("onnxcam-out"),
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per onnxruntime run.")] = 8,
    preset: Annotated[str | None, typer.Option(help="Preprocessing preset: imagenet, inception, raw255, caffe, unit "
                                               "(default: model metadata, else imagenet).")] = None,
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
    labels: Annotated[Path | None, typer.Option(help="Class names: text (one per line) or JSON list/dict "
                                                "(default: the model's 'labels' metadata).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Overlay opacity of the heat map.")] = 0.5,
    colormap: Annotated[str, typer.Option(help="jet, turbo, inferno, viridis, magma or hot.")] = "jet",
    resume: Annotated[bool, typer.Option(help="Skip images whose outputs already exist and are complete.")] = False,
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
    reference: Annotated[Path | None, typer.Option(help="Embeddings: explain the cosine similarity to this "
                                                   "image's embedding.")] = None,
    fit: Annotated[Path | None, typer.Option(help="BroadCAM: the weights file from 'onnxcam fit broadcam'.")] = None,
) -> None:
    """Explain images: overlays (.png), maps (.npy), results.jsonl and report.html in OUT."""
    from onnxcam.cli_targets import explain_task, wants_task

    if wants_task(model, task, mask, box, threshold, reference):  # segmentation, detection, embeddings
        flags = (("--resume", resume), ("--top-k", top_k is not None), ("--engine ray", engine != "local"),
                 ("--grid", grid is not None), ("--extra-tokens", extra_tokens is not None),
                 ("--fit", fit is not None), ("--option", bool(option)))
        unsupported = [flag for flag, given in flags if given]
        if unsupported:
            _fail(InputError(f"{', '.join(unsupported)} not supported yet for segmentation, detection or embedding "
                             "models; run without it"), debug)
        explain_task(model, inputs, method, layer, target, out, batch_size, preset, mean, std, scale, size, bgr,
                     labels, device, alpha, colormap, debug, task, mask, box, threshold, reference)
        return
    from onnxcam.broadcam_fit import fit_options
    from onnxcam.explain_images import explain_images
    from onnxcam.tokens import parse_grid

    _quiet_opencv()
    methods = [m.strip() for item in method for m in item.split(",") if m.strip()]
    progress, on_start, on_image = explain_progress()
    start = time.perf_counter()
    try:
        method_options = fit_options(model, methods, fit) or {}  # a wrong or missing fit file: usage error
        for name, options in _method_options(methods, option).items():
            method_options[name] = {**method_options.get(name, {}), **options}
        try:
            summary = explain_images(
                model, inputs, out, methods=methods, layer=layer, target=target, top_k=top_k, batch_size=batch_size,
                preset=preset, mean=_floats(mean, "--mean"), std=_floats(std, "--std"), size=_size(size), bgr=bgr,
                grid=parse_grid(grid) if grid else None, extra_tokens=extra_tokens,
                labels=labels, device=device, alpha=alpha, colormap=colormap, resume=resume, scale=scale,
                on_start=on_start, on_image=on_image,
                engine=engine, address=address, workers=workers, method_options=method_options)
        finally:
            progress.stop()
    except OnnxcamError as e:
        _fail(e, debug)
    except OSError as e:
        _fail(e, debug)
    table = Table(title="onnxcam explain")
    for column in ("done", "failed", "skipped", "time"):
        table.add_column(column, justify="right")
    table.add_row(str(summary.done), str(summary.failed), str(summary.skipped), f"{time.perf_counter() - start:.1f} s")
    console.print(table)
    failures = [r for r in summary.records if r["status"] == "failed"]
    for rec in failures[:10]:
        console.print(Text(f"failed: {rec['error']}", style="red"))
    if len(failures) > 10:
        console.print(f"... and {len(failures) - 10} more (see {summary.results})", markup=False)
    console.print(f"report: {summary.report}", markup=False, highlight=False)
    if failures:
        raise typer.Exit(1)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    all_layers: Annotated[bool, typer.Option("--all", help="List every candidate layer (default: the last 15).")
                          ] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Inputs, outputs, score handling, preprocessing guess, candidate layers and which methods work."""
    try:
        info = _inspect(model)
    except OnnxcamError as e:
        _fail(e, debug)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _print_inspect(info, all_layers)


def _inspect(model_path: Path) -> dict[str, Any]:
    from onnxcam.explainer import Explainer
    from onnxcam.graph.builder import _elem_types, _static_shapes
    from onnxcam.graph.rewrite import gradient_model
    from onnxcam.images import model_labels, model_metadata, resolve_preprocessing
    from onnxcam.methods import METHODS

    ex = Explainer(model_path, device="cpu")
    graph = ex.model.graph
    shapes, types = _static_shapes(graph), _elem_types(graph)
    weights = {t.name for t in graph.initializer}

    def describe(name: str) -> dict[str, Any]:
        shape = shapes.get(name)
        return {"name": name, "shape": None if shape is None else [d if isinstance(d, int) else str(d) for d in shape],
                "dtype": _type_name(types.get(name))}

    spec = resolve_preprocessing(ex.model, ex.input_name, ex.input_layout)
    meta = model_metadata(ex.model)
    labels = model_labels(ex.model)
    default = ex.default_layer
    layers = [{**describe(t.name), "op": t.op_type, "layout": t.layout, "default": t.name == default}
              for t in ex.tensors if t.spatial and t.op_type]
    gradient_free = sorted(m.name for m in METHODS.values() if m.needs == "activations" and m.family != "gradient")
    try:
        gradient_model(ex.model, [default])
        working, problem = sorted(METHODS), None
    except GradientError as e:
        working, problem = gradient_free, str(e)
    if "relevancecam" in working:  # LRP has its own rule table: an op may have a gradient rule but no relevance rule
        from onnxcam.graph.relevance_model import relevance_model
        try:
            relevance_model(ex.model, [default])
        except GradientError:
            working = [m for m in working if m != "relevancecam"]
    return {
        "model": str(model_path),
        "inputs": [{**describe(i.name), "image": i.name == ex.input_name} for i in graph.input
                   if i.name not in weights],
        "outputs": [describe(o.name) for o in graph.output],
        "score": {"output": ex.output, "tensor": ex.score, "before_softmax": ex.score != ex.output},
        "preprocessing": {**spec.describe(), "source": "model metadata" if "preprocessing" in meta
                          else "default (imagenet for float inputs, raw pixels for uint8)"},
        "labels": {"count": len(labels), "first": labels[:5]} if labels else None,
        "default_layer": default,
        "layers": layers,
        "methods": {"working": working, "gradient_free": gradient_free, "gradient_error": problem},
    }


def _type_name(elem_type: int | None) -> str:
    import onnx

    return "unknown" if elem_type is None else onnx.TensorProto.DataType.Name(elem_type).lower()


def _print_inspect(info: dict[str, Any], all_layers: bool) -> None:
    def shape(d: dict[str, Any]) -> str:
        return "?" if d["shape"] is None else "(" + ", ".join(str(v) for v in d["shape"]) + ")"

    io = Table(title=f"model {info['model']}")
    for column in ("kind", "name", "shape", "dtype"):
        io.add_column(column)
    for d in info["inputs"]:
        io.add_row("input" + (" (image)" if d["image"] else ""), Text(d["name"]), shape(d), d["dtype"])
    for d in info["outputs"]:
        io.add_row("output", Text(d["name"]), shape(d), d["dtype"])
    console.print(io)
    score = info["score"]
    console.print(Text(f"score: output '{score['output']}'" + (
        f", differentiated before its Softmax/Sigmoid at '{score['tensor']}' (logits)" if score["before_softmax"]
        else " (taken as logits)")))
    pre = info["preprocessing"]
    console.print(Text(f"preprocessing ({pre['source']}): size {pre['size'][0]}x{pre['size'][1]} {pre['layout']} "
                       f"{pre['channel_order']} {pre['dtype']}, x = (pixel * {pre['scale']:.6g} - mean {pre['mean']}) "
                       f"/ std {pre['std']}"))
    if info["labels"]:
        console.print(Text(f"labels: {info['labels']['count']} in metadata, e.g. {', '.join(info['labels']['first'])}"))
    layers = info["layers"] if all_layers else info["layers"][-15:]
    if not any(d["default"] for d in layers):  # e.g. a ViT's default sits before the last block's attention
        layers = [d for d in info["layers"] if d["default"]] + layers
    table = Table(title=f"candidate layers ({len(layers)} of {len(info['layers'])}; --all for every one)")
    for column in ("", "tensor", "op", "shape", "layout"):
        table.add_column(column)
    for d in layers:
        table.add_row("*" if d["default"] else "", Text(d["name"]), d["op"], shape(d), d["layout"])
    console.print(table)
    console.print(Text(f"default layer: {info['default_layer']}"))
    methods = info["methods"]
    if methods["gradient_error"]:
        console.print(Text(f"gradient methods unavailable: {methods['gradient_error']}", style="yellow"))
        console.print(Text(f"gradient-free methods that work: {', '.join(methods['gradient_free'])}"))
    else:
        console.print(Text(f"all methods work ({len(methods['working'])}); see 'onnxcam methods'"))


@app.command()
def methods() -> None:
    """Table of the available methods."""
    from onnxcam.methods import METHODS

    table = Table(title="onnxcam methods")
    for column in ("name", "family", "gradients", "cost", "paper"):
        table.add_column(column)
    for m in sorted(METHODS.values(), key=lambda m: (m.family, m.name)):
        needs_grad = m.needs != "activations" or m.family == "gradient"
        column = "relevance rules" if m.needs == "relevance" else "yes" if needs_grad else "no"
        table.add_row(Text(m.name), m.family, column, Text(m.cost), Text(m.paper))
    from onnxcam.methods import COMPOSERS  # methods on top of any base: one row each (conceptor-<base>)

    for c in COMPOSERS.values():
        table.add_row(Text(c.listing.name), c.listing.family, "as base", Text(c.listing.cost), Text(c.listing.paper))
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("onnxcam-demo"),
    method: Annotated[str, typer.Option("--method", "-m", help="Method(s), comma-separated.")] = "gradcam",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Explain the bundled sample images with the bundled model and print where report.html is."""
    if not DEMO_MODEL.is_file():
        _fail(OnnxcamError(f"the demo model {DEMO_MODEL} is missing; run 'python models/train_shapes.py' in a "
                           "source checkout"), debug)
    explain(DEMO_MODEL, [str(DEMO_IMAGES)], method=[method], out=out, device=device, debug=debug, layer=None,
            target=None, top_k=None, batch_size=8, preset=None, mean=None, std=None, scale=None, size=None, bgr=None,
            labels=None, alpha=0.5, colormap="jet", resume=False)
    console.print(f"open {(out / 'report.html').resolve()} in a browser", markup=False, highlight=False)


if __name__ == "__main__":
    app()
from onnxcam import cli_evaluate  # noqa: E402,F401  (registers the command)
from onnxcam import cli_fit as _cli_fit  # noqa: E402,F401  (registers the command)
