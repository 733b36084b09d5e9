"""The `onnxcam` command line. One module per command; this module only composes them into the app, so every
command is listed whichever way the CLI starts (`onnxcam`, `python -m onnxcam`, `python -m onnxcam.cli`)."""

from __future__ import annotations

import typer

from onnxcam.cli import cache, compare, demo, evaluate, explain, export, fit, inspect, methods

app = typer.Typer(help="Class activation maps (Grad-CAM and friends) for ONNX image models.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.command("explain")(explain.explain)
app.command("inspect")(inspect.inspect)
app.command("methods")(methods.methods_command)
app.command("evaluate")(evaluate.evaluate)
app.command("demo")(demo.demo)
app.command("compare")(compare.compare)
app.command("export")(export.export)
app.add_typer(fit.fit_app, name="fit")
app.add_typer(cache.cache_app, name="cache")

__all__ = ["app"]
