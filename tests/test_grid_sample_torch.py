"""GridSample's gradient rule on models PyTorch exports, against torch.autograd in float64.

A small deformable-attention block (the sampling step of RT-DETR's decoder: a value map sampled by
F.grid_sample at reference points plus offsets predicted from queries, weighted by softmaxed attention) is
exported at test time with both of torch's exporters; onnxcam's gradients at the feature layer before it, and at
the input, must equal torch's. Needs torch (skipped otherwise):
    PYTHONPATH=$PWD python -m pytest tests/test_grid_sample_torch.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcam

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class DeformableSampling(nn.Module):
    """features -> value map and queries; queries predict per-head sampling offsets and attention weights; the
    sampled values, weighted and pooled over the queries, feed a linear head."""

    def __init__(self, mode: str, padding: str, corners: bool, heads: int = 2, points: int = 3) -> None:
        super().__init__()
        self.mode, self.padding, self.corners, self.heads, self.points = mode, padding, corners, heads, points
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.value = nn.Conv2d(8, 8, 1)
        self.offsets = nn.Linear(8, heads * points * 2)
        self.attention = nn.Linear(8, heads * points)
        self.head = nn.Linear(8, 5)
        # reference points spread over (and, with the offsets, beyond) the image, in [0, 1] as RT-DETR's are
        self.register_buffer("reference", torch.tensor([[0.2, 0.3], [0.7, 0.25], [0.3, 0.8], [0.85, 0.9]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.act(self.stem(x))                                       # the explained layer
        n, c, _, _ = feat.shape
        queries = F.adaptive_avg_pool2d(feat, 2).flatten(2).transpose(1, 2)   # (N, 4, C)
        q = queries.shape[1]
        shift = self.offsets(queries).view(n, q, self.heads, self.points, 2) * 0.3
        where = self.reference.view(1, q, 1, 1, 2) + shift
        grid = (2 * where - 1).permute(0, 2, 1, 3, 4).reshape(n * self.heads, q, self.points, 2)
        value = self.value(feat).reshape(n * self.heads, c // self.heads, *feat.shape[2:])
        sampled = F.grid_sample(value, grid, mode=self.mode, padding_mode=self.padding, align_corners=self.corners)
        weights = self.attention(queries).view(n, q, self.heads, self.points).softmax(-1)
        weights = weights.permute(0, 2, 1, 3).reshape(n * self.heads, 1, q, self.points)
        mixed = (sampled * weights).sum(-1).reshape(n, c, q)                 # (N, C, Q)
        return self.head(mixed.mean(-1))


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool) -> onnx.ModelProto:
    kwargs: dict = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    if dynamo:
        pytest.importorskip("onnxscript")
        proto = torch.onnx.export(model, (x,), dynamo=True, external_data=False, optimize=True, **kwargs).model_proto
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=True, **kwargs)
        proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime 1.31 reads IR <= 10
    assert any(node.op_type == "GridSample" for node in proto.graph.node)
    return proto


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, what
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()), err_msg=what)


@pytest.mark.parametrize("opset,dynamo", [(16, False), (17, False), (18, True)])
@pytest.mark.parametrize("mode,padding,corners", [("bilinear", "zeros", False), ("bilinear", "border", True),
                                                  ("bilinear", "reflection", False), ("nearest", "zeros", True),
                                                  ("bicubic", "border", False), ("bicubic", "reflection", True)])
def test_matches_torch_autograd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opset: int, dynamo: bool,
                                mode: str, padding: str, corners: bool) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = DeformableSampling(mode, padding, corners).eval()
    x = torch.rand(2, 3, 10, 12)
    proto = _export(model, x, tmp_path / "model.onnx", opset, dynamo)
    layer = next(node.output[0] for node in proto.graph.node if node.op_type == "Relu")
    targets = [1, 3]

    m64, x64 = model.double(), x.double().requires_grad_(True)
    feats: list[torch.Tensor] = []
    m64.act.register_forward_hook(lambda module, inputs, out: feats.append(out))
    logits = m64(x64)
    feat = feats[0]
    score = logits[torch.arange(2), torch.tensor(targets)].sum()
    grad_feat, grad_x = torch.autograd.grad(score, [feat, x64])

    res = onnxcam.gradients(proto, x.numpy(), layers=[layer], targets=targets, input_gradient=True)
    _close(res.scores, logits.detach().numpy(), "logits")
    _close(res.activations[layer], feat.detach().numpy(), "feature layer")
    _close(res.gradients[layer], grad_feat.numpy(), "gradient at the feature layer")
    assert res.input_gradient is not None
    _close(res.input_gradient, grad_x.numpy(), "input gradient")
    assert np.abs(res.gradients[layer]).max() > 0
