"""The `onnxcam` command line. One module per command; this module only composes them into the app, so every
command is listed whichever way the CLI starts (`onnxcam`, `python -m onnxcam`, `python -m onnxcam.cli`)."""

from __future__ import annotations

import typer

from onnxcam.cli.demo import demo
from onnxcam.cli.evaluate import evaluate
from onnxcam.cli.explain import explain
from onnxcam.cli.fit import fit_app
from onnxcam.cli.inspect import inspect
from onnxcam.cli.methods import methods_command

app = typer.Typer(help="Class activation maps (Grad-CAM and friends) for ONNX image models.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.command()(explain)
app.command()(inspect)
app.command("methods")(methods_command)
app.command()(evaluate)
app.command()(demo)
app.add_typer(fit_app, name="fit")

__all__ = ["app"]
