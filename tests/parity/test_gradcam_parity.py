"""Parity with pytorch-grad-cam (optional): skipped unless torch, torchvision and grad-cam are installed.

A reduced run of tests/parity/run_parity.py: three reduced-width torchvision models (ResNet, EfficientNet-B0 and
ConvNeXt layouts from models/torch_exports/export.py, random weights, BatchNorm statistics far from (0, 1)) at
128x128, exported to ONNX in a temporary folder, and every method both projects have, with the options that
select pytorch-grad-cam's conventions. Each map must reach Pearson r >= 0.99 against the reference on both images.
About 30 s on 2 cores with the dependencies present:

    pip install -e .[parity]
    python -m pytest tests/parity -q
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_parity  # noqa: E402

MODELS = ["resnet-narrow", "efficientnet-narrow", "convnext-narrow"]
METHODS = [m for m in run_parity.METHODS if m.gated]  # the † rows differ by a documented convention
SIZE = 128
_results: dict[str, run_parity.ModelResult] = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("parity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXCAM_CACHE", str(path / "cache"))  # no stale rewritten models from another version
        yield path


def result(name: str, folder: Path) -> run_parity.ModelResult:
    if name not in _results:
        index = next(i for i, m in enumerate(run_parity.MODELS) if m.name == name)
        _results[name] = run_parity.run_model(run_parity.MODELS[index], index, METHODS, SIZE, folder)
    return _results[name]


@pytest.mark.parametrize("model", MODELS)
def test_default_layer_is_the_torch_layer(model: str, folder: Path) -> None:
    res = result(model, folder)
    assert res.activation_error < 1e-4, f"onnxcam's default layer '{res.layer}' is not torch's '{res.torch_layer}'"
    assert res.gradient_error < 1e-4, f"gradient at '{res.layer}' differs from torch's by {res.gradient_error:.1e}"


@pytest.mark.parametrize("method", [m.name for m in METHODS])
@pytest.mark.parametrize("model", MODELS)
def test_map_matches_pytorch_grad_cam(model: str, method: str, folder: Path) -> None:
    res = result(model, folder)
    assert method not in res.errors, res.errors.get(method)
    r = res.r[method]
    assert min(r) >= run_parity.THRESHOLD, f"{model} / {method}: Pearson r per image {r}"
