"""`onnxcam inspect`: inputs, outputs, score handling, preprocessing guess, layers and which methods work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import console, fail
from onnxcam.errors import GradientError, InputError, OnnxcamError


def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    all_layers: Annotated[bool, typer.Option("--all", help="List every candidate layer (default: the last 15).")
                          ] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Inputs, outputs, score handling, preprocessing guess, candidate layers and which methods work."""
    try:
        info = describe_model(model)
    except OnnxcamError as e:
        fail(e, debug)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _print_inspect(info, all_layers)


def describe_model(model_path: Path) -> dict[str, Any]:
    from onnxcam.explainer import Explainer
    from onnxcam.graph.reverse.model import gradient_model, reverse_model
    from onnxcam.graph.reverse.relevance import LrpOptions
    from onnxcam.graph.scales import describe_scales
    from onnxcam.graph.topo import elem_types, static_shapes
    from onnxcam.images import preprocessing_problems, resolve_preprocessing
    from onnxcam.inputs import prepare_model
    from onnxcam.labels import find_labels, metadata_problems
    from onnxcam.methods import METHODS

    try:
        prepared = prepare_model(model_path)  # refuses what is not an image model
        extra = None
    except InputError as e:  # inputs beside the image: described, explained once they are given (--input)
        if not str(e).startswith("the model has"):
            raise
        prepared, extra = None, str(e)
    ex = Explainer(model_path, device="cpu")
    graph = ex.model.graph
    shapes, types = static_shapes(graph), elem_types(graph)
    weights = {t.name for t in graph.initializer}

    def describe(name: str) -> dict[str, Any]:
        shape = shapes.get(name)
        return {"name": name, "shape": None if shape is None else [d if isinstance(d, int) else str(d) for d in shape],
                "dtype": _type_name(types.get(name))}

    spec = resolve_preprocessing(ex.summary, ex.input_name, ex.input_layout)
    found = find_labels(None, ex.summary, ex.classes)
    labels = found.names
    notes = (prepared.notes if prepared else []) + preprocessing_problems(ex.summary) + metadata_problems(ex.summary,
                                                                                                        ex.classes)
    defaults = list(ex.layer)  # a multi-scale detector's default is the set of its per-scale maps
    default = defaults[0]
    layers = [{**describe(t.name), "op": t.op_type, "layout": t.layout, "default": t.name in defaults,
               "module": ex.module_path(t.name)} for t in ex.tensors if t.spatial and t.op_type]
    gradient_free = sorted(m.name for m in METHODS.values() if m.gradient_free)
    try:
        gradient_model(ex.model, defaults)
        working, problem = sorted(METHODS), None
    except GradientError as e:
        working, problem = gradient_free, str(e)
    if "relevancecam" in working:  # LRP has its own rule table: an op may have a gradient rule but no relevance rule
        try:
            reverse_model(ex.model, defaults, lrp=LrpOptions())
        except GradientError:
            working = [m for m in working if m != "relevancecam"]
    return {
        "model": str(model_path),
        "inputs": [{**describe(i.name), "image": i.name == ex.input_name} for i in graph.input
                   if i.name not in weights],
        "outputs": [describe(o.name) for o in graph.output],
        "score": {"output": ex.output, "tensor": ex.score, "before_softmax": ex.score != ex.output},
        "extra_inputs": extra,
        "preprocessing": {**spec.describe(), "source": spec.source, "summary": spec.summary()},
        "labels": {"count": len(labels), "first": labels[:5], "source": found.source} if labels else None,
        "labels_source": found.source,
        "notes": notes,
        "default_layer": default,
        "default_layers": defaults,
        "scales": [{"feature": sc.feature, "stride": list(sc.stride), "grid": list(sc.grid),
                    "rows": [sc.start, sc.stop], "anchors": sc.anchors, "text": text}
                   for sc, text in zip(ex.view.scales, describe_scales(ex.view.scales))],
        "layers": layers,
        "methods": {"working": working, "gradient_free": gradient_free, "gradient_error": problem},
    }


def _type_name(elem_type: int | None) -> str:
    from onnxcam.graph.protos import type_name

    return "unknown" if elem_type is None else type_name(elem_type).lower()


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
    if info.get("extra_inputs"):
        console.print(Text(f"inputs: {info['extra_inputs']}", style="yellow"))
    pre = info["preprocessing"]
    console.print(Text(f"preprocessing: {pre['source']}: {pre['summary']}"))
    labels = info["labels"]
    console.print(Text(f"labels: {info['labels_source']}" + (f", e.g. {', '.join(labels['first'])}" if labels else "")))
    for note in info["notes"]:
        console.print(Text(f"note: {note}", style="yellow"))
    layers = info["layers"] if all_layers else info["layers"][-15:]
    if not any(d["default"] for d in layers):  # e.g. a ViT's default sits before the last block's attention
        layers = [d for d in info["layers"] if d["default"]] + layers
    table = Table(title=f"candidate layers ({len(layers)} of {len(info['layers'])}; --all for every one)")
    modules = any(d.get("module") for d in layers)
    for column in ("", "tensor", "module", "op", "shape", "layout") if modules else ("", "tensor", "op", "shape",
                                                                                      "layout"):
        table.add_column(column)
    for d in layers:
        cells = [Text(d["module"] or "")] if modules else []
        table.add_row("*" if d["default"] else "", Text(d["name"]), *cells, d["op"], shape(d), d["layout"])
    console.print(table)
    if info["scales"]:
        console.print(Text(f"detection scales: the output's rows come from {len(info['scales'])} feature maps; each "
                           "gives its own map and the maps are averaged (the default layer is the set; --layer "
                           "one of them for a single scale)"))
        for scale in info["scales"]:
            console.print(Text(f"  {scale['text']}"))
    console.print(Text(f"default layer{'s' if len(info['default_layers']) > 1 else ''}: "
                       f"{', '.join(info['default_layers'])}"))
    methods = info["methods"]
    if methods["gradient_error"]:
        console.print(Text(f"gradient methods unavailable: {methods['gradient_error']}", style="yellow"))
        console.print(Text(f"gradient-free methods that work: {', '.join(methods['gradient_free'])}"))
    else:
        console.print(Text(f"all methods work ({len(methods['working'])}); see 'onnxcam methods'"))


