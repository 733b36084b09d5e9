"""`onnxcam demo`: the main job on the bundled model and images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxcam.cli.common import DEMO_IMAGES, DEMO_MODEL, console, fail
from onnxcam.cli.explain import explain
from onnxcam.errors import OnnxcamError


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("onnxcam-demo"),
    method: Annotated[str, typer.Option("--method", "-m", help="Method(s), comma-separated.")] = "gradcam",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Explain the bundled sample images with the bundled model and print where report.html is."""
    if not DEMO_MODEL.is_file():
        fail(OnnxcamError(f"the demo model {DEMO_MODEL} is missing; run 'python models/train_shapes.py' in a "
                           "source checkout"), debug)
    explain(DEMO_MODEL, [str(DEMO_IMAGES)], method=[method], out=out, device=device, debug=debug)
    console.print(f"open {(out / 'report.html').resolve()} in a browser", markup=False, highlight=False)
