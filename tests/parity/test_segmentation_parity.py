"""Segmentation parity with pytorch-grad-cam (optional): skipped unless torch, torchvision and grad-cam are
installed. tests/parity/segmentation_parity.py: torchvision's LR-ASPP MobileNetV3-Large (random weights, 128x128)
exported to ONNX; onnxcam's SemanticSegmentationTarget against pytorch-grad-cam's at the backbone's last block.
Each map must reach Pearson r >= 0.99 on both images."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segmentation_parity  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Iterator[segmentation_parity.Result]:
    path = tmp_path_factory.mktemp("segmentation-parity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXCAM_CACHE", str(path / "cache"))
        yield segmentation_parity.run(path)


def test_layer_is_the_torch_layer(result: segmentation_parity.Result) -> None:
    assert result.activation_error < 1e-4, f"no ONNX tensor matches backbone['16'] ({result.activation_error:.1e})"


@pytest.mark.parametrize("method", list(segmentation_parity.METHODS))
def test_segmentation_map_matches_pytorch_grad_cam(method: str, result: segmentation_parity.Result) -> None:
    assert min(result.r[method]) >= segmentation_parity.THRESHOLD, f"{method}: Pearson r per image {result.r[method]}"
