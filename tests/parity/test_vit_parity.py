"""ViT parity with pytorch-grad-cam (optional): skipped unless torch, torchvision and grad-cam are installed.

A reduced run of tests/parity/vit_parity.py: torchvision's VisionTransformer (96x96, patch 16, 4 blocks, width 64,
random weights), exported by the TorchScript exporter (opset 17), onnxcam's default token layer against
pytorch-grad-cam at `encoder.layers[-1].ln_1` with its ViT reshape_transform. Each map must reach Pearson
r >= 0.99 on both images.
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
import vit_parity  # noqa: E402

METHODS = [m for m in vit_parity.METHODS if m.name in ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam",
                                                          "ablationcam")]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vit_parity.Result]:
    path = tmp_path_factory.mktemp("vit-parity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXCAM_CACHE", str(path / "cache"))
        yield vit_parity.run(vit_parity.MODELS["vit"], "torchscript", METHODS, path)


def test_default_layer_is_the_last_blocks_ln_1(result: vit_parity.Result) -> None:
    assert result.activation_error < 1e-4, f"onnxcam's default layer '{result.layer}' is not encoder.layers[-1].ln_1"
    assert result.gradient_error < 1e-4, f"gradient at '{result.layer}' differs by {result.gradient_error:.1e}"


@pytest.mark.parametrize("method", [m.name for m in METHODS])
def test_vit_map_matches_pytorch_grad_cam(method: str, result: vit_parity.Result) -> None:
    assert method not in result.errors, result.errors.get(method)
    assert min(result.r[method]) >= vit_parity.THRESHOLD, f"{method}: Pearson r per image {result.r[method]}"
