"""`onnxcam export`: write a model whose outputs include its own CAM (see onnxcam.export).

"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from onnxcam.cli.common import console as _out
from onnxcam.cli.common import err_console as _err
from onnxcam.cli.common import fail as _fail
from onnxcam.errors import InputError, OnnxcamError


def parse_size(text: str) -> str | tuple[int, int]:
    """'input', 'layer', 'HxW' or 'N' (square)."""
    if text in ("input", "layer"):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
        raise InputError(f"--size takes input, layer, HxW or N (e.g. 224x224); got '{text}'")
    return int(match.group(1)), int(match.group(2) or match.group(1))


def export(
    model: Annotated[Path, typer.Argument(help="The ONNX classifier to export (it is not modified).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write, e.g. MODEL.cam.onnx.")],
    method: Annotated[str, typer.Option("--method", "-m", help="gradcam, gradcam++, xgradcam, hirescam, "
                                        "gradcam-elementwise, layercam, eigencam or eigengradcam.")] = "gradcam",
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="Tensor to explain at (default: the "
                                              "explainer's default layer; 'onnxcam inspect' lists them).")] = None,
    target: Annotated[str, typer.Option(help="predicted: the model's top class (in-graph ArgMax); input: an extra "
                                        "int64 input 'target_class' (N,), where a class outside the range gives a "
                                        "zero map and cam_class -1.")] = "predicted",
    size: Annotated[str, typer.Option(help="Size of the 'cam' output: input (the model's input size), layer (the "
                                      "layer's grid) or HxW.")] = "input",
    class_output: Annotated[bool, typer.Option("--class-output/--no-class-output",
                                               help="Add the 'cam_class' output (the class explained).")] = True,
    squarings: Annotated[int, typer.Option(help="eigencam/eigengradcam: squarings of the Gram matrix, i.e. "
                                           "2^S power-iteration steps.")] = 12,
    replace: Annotated[bool, typer.Option(help="MODEL is already an onnxcam export: rebuild its explanation "
                                          "instead of refusing.")] = False,
    external_data: Annotated[bool | None, typer.Option(
        "--external-data/--no-external-data",
        help="Weights in OUT.data beside OUT (default: only when the file would reach 2 GiB).")] = None,
    grid: Annotated[str | None, typer.Option(help="Token layers: the patch grid HxW when it is ambiguous.")] = None,
    extra_tokens: Annotated[int | None, typer.Option(help="Token layers: class/register tokens before the "
                                                     "patches, when ambiguous.")] = None,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Write a model that outputs its own explanation: the model's outputs plus 'cam' (N, H, W) in [0, 1], computed
    in standard ONNX ops by any ONNX runtime (C++, C#, Java, JS, mobile, TensorRT)."""
    from onnxcam.export import ExportOptions, export_model

    try:
        chosen_grid = None
        if grid is not None:
            parsed = parse_size(grid)
            if not isinstance(parsed, tuple):
                raise InputError(f"--grid takes HxW, got '{grid}'")
            chosen_grid = parsed
        options = ExportOptions(method=method, layer=layer, target=target, size=parse_size(size),
                                class_output=class_output, squarings=squarings, replace=replace, grid=chosen_grid,
                                extra_tokens=extra_tokens)
        with _err.status(f"exporting {method} for {model.name}"):
            result = export_model(model, out, options, external_data)
    except (OnnxcamError, OSError) as error:
        _fail(error, debug)
    done = result.exported
    outputs = ", ".join(str(o) for o in done.metadata["outputs"])  # type: ignore[attr-defined]
    lines = [f"written: {result.path}" + (f" (weights in {result.external_data.name})" if result.external_data else ""),
             f"method {done.method} at layer '{done.layer}', outputs added: {outputs}",
             f"opset {done.opset}" + (f" (raised from {done.opset_raised_from}: onnxcam's gradient rules need 16)"
                                      if done.opset_raised_from else " (the model's own)")]
    if target == "input":
        lines.append("input added: target_class int64 (N,)")
    if done.replaced:
        lines.append("the model's previous explanation was replaced")
    for line in lines:
        _out.print(line, markup=False, highlight=False)
