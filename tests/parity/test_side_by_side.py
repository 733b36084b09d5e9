"""examples/pytorch_grad_cam_side_by_side.py: pytorch-grad-cam's README example (ResNet-50, layer4[-1], class 281,
show_cam_on_image) against onnxcam on the ONNX export. Skipped without torch, torchvision and grad-cam; about 20 s
on 2 cores with them (`pip install -e .[parity]`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_gives_the_same_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path / "cache"))
    script = ROOT / "examples" / "pytorch_grad_cam_side_by_side.py"
    spec = importlib.util.spec_from_file_location("side_by_side", script)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up there
    spec.loader.exec_module(example)
    result = example.run(out=tmp_path / "side_by_side.png", folder=tmp_path)
    assert result.reference.shape == result.onnxcam.shape == (224, 224)
    assert result.pearson > 0.9999 and result.max_difference < 1e-2, (result.pearson, result.max_difference)
    picture = cv2.imread(str(result.picture))
    assert picture is not None and picture.shape[0] == 224 + 28 and picture.shape[1] == 4 * 224 + 3 * 8
