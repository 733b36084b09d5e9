"""Whole-model parity with torch.autograd on models exported from PyTorch (models/torch_exports).

Each <arch>_op<opset>.onnx is checked against <arch>.npz, written by models/torch_exports/export.py from the same
float32 model with torch.autograd in float64: the logits, and at onnxcam's default layer (which must be the torch
layer the exporter script names, the last rank-4 feature map before global pooling) the activation and the
gradient of sum_i logits[i, target_i], and that gradient w.r.t. the input. No torch needed here.

Criterion, per element: |got - ref| <= 1e-4 * |ref| + 1e-4 * max|ref| (np.testing.assert_allclose with
rtol=1e-4, atol=1e-4 * max|ref|): 1e-4 relative, with the absolute floor scaled to the tensor so that entries
near zero (cancellation in float32) do not fail alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcam

EXPORTS = Path(__file__).resolve().parent.parent / "models" / "torch_exports"
MODELS = sorted(EXPORTS.glob("*_op*.onnx"))
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rewrite cache is keyed by model and onnxcam version, not by the rules' code: a stale entry from before a
    # rule changed would hide (or fake) a regression here.
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, torch has {ref.shape}"
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * float(np.abs(ref).max()), err_msg=what)


def test_exports_present() -> None:
    archs = {p.name.rsplit("_op", 1)[0] for p in MODELS}
    assert {"resnet", "mobilenetv3", "efficientnet", "densenet", "convnext", "vit", "nhwc"} <= archs
    for arch in archs:
        assert len([p for p in MODELS if p.name.startswith(arch + "_op")]) >= 2, f"{arch}: one opset only"


def _reference_layer(path: Path) -> list[str] | None:
    """None (the default layer), except for ViT: its references are at the patch embedding (conv_proj, the only
    rank-4 map), while onnxcam's ViT default is a token tensor (checked in tests/test_tokens.py)."""
    if not path.name.startswith("vit_"):
        return None
    return [next(n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")]


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_matches_torch_autograd(path: Path) -> None:
    ref = np.load(EXPORTS / (path.name.rsplit("_op", 1)[0] + ".npz"))
    res = onnxcam.gradients(path, ref["x"], layers=_reference_layer(path), targets=ref["target"], input_gradient=True)

    _close(res.scores, ref["logits"], "logits")
    assert list(res.targets) == list(ref["target"])
    (layer, act), = res.activations.items()
    expected, grad = ref["act"], ref["grad_act"]
    if act.shape != expected.shape and act.shape == expected.transpose(0, 2, 3, 1).shape:
        # an NHWC model's default layer may be the NHWC view of the torch (NCHW) feature map
        expected, grad = expected.transpose(0, 2, 3, 1), grad.transpose(0, 2, 3, 1)
    assert act.shape == expected.shape, (
        f"default layer '{layer}' has shape {act.shape}; the torch layer has shape {expected.shape} (NCHW)")
    _close(act, expected, f"activation of default layer '{layer}'")
    _close(res.gradients[layer], grad, f"gradient at default layer '{layer}'")
    assert res.input_gradient is not None
    _close(res.input_gradient, ref["grad_x"], "input gradient")
