"""Segmentation parity with pytorch-grad-cam: torchvision's LR-ASPP MobileNetV3-Large (random weights, 5 classes)
exported to ONNX, pytorch-grad-cam's SemanticSegmentationTarget (a class's logits summed over its predicted
region) against onnxcam's, at the backbone's last block. Prints Pearson r per method and image.

    python tests/parity/segmentation_parity.py          # ~1 min on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget as TorchTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from onnxcam.explainer import Explainer  # noqa: E402
from onnxcam.targets import SemanticSegmentationTarget  # noqa: E402

SIZE, CLASSES, THRESHOLD = 128, 5, 0.99
# Target-dependent methods (Eigen-CAM ignores the target; its SVD sign convention is compared elsewhere).
METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM,
           "xgradcam": XGradCAM}


class Logits(torch.nn.Module):
    """torchvision's segmentation models return a dict; pytorch-grad-cam and the exporter want the tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@dataclass
class Result:
    layer: str = ""
    activation_error: float = float("inf")
    r: dict[str, list[float]] = field(default_factory=dict)
    categories: list[int] = field(default_factory=list)


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                    num_classes=CLASSES)
    for module in net.modules():  # BatchNorm statistics away from (0, 1), so folding mistakes would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return Logits(net).eval()


def run(folder: Path, methods: dict[str, type] = METHODS) -> Result:
    torch.set_num_threads(2)
    model = build()
    layer = model.model.backbone["16"]  # the last block of the MobileNetV3 trunk (960 channels)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    path = folder / "lraspp.onnx"
    torch.onnx.export(model, (x[:1],), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["out"], dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}})
    with torch.no_grad():
        logits = model(x).numpy()
    categories, masks = _targets(model, layer, x, logits)
    captured: list[np.ndarray] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().numpy()))
    with torch.no_grad():
        model(x)
    handle.remove()
    ex = Explainer(path)
    result = Result()
    result.layer, result.activation_error = _matching_layer(ex, x.numpy(), captured[0])
    result.categories = categories
    ours_targets = [SemanticSegmentationTarget(c, m) for c, m in zip(categories, masks)]
    torch_targets = [TorchTarget(c, m.astype(np.float32)) for c, m in zip(categories, masks)]
    for name, cls in methods.items():
        with cls(model=model, target_layers=[layer]) as cam:
            reference = cam(input_tensor=x, targets=torch_targets)
        ours = ex.explain(x.numpy(), name, targets=ours_targets, layer=result.layer)
        result.r[name] = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, reference)]
    return result


def _targets(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
             logits: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """Per image, the predicted class of largest area whose Grad-CAM map is not flat, with its predicted region.
    (With random weights the ReLU'd Grad-CAM map of a class is often all zero, which makes Pearson r undefined.)"""
    categories, masks = [], []
    for i, out in enumerate(logits):
        predicted = out.argmax(0)
        for c in np.argsort(-np.bincount(predicted.ravel(), minlength=CLASSES), kind="stable"):
            mask = predicted == c
            if not mask.any():
                mask = np.ones_like(mask)  # a class predicted nowhere: its logits over the whole image
            with GradCAM(model=model, target_layers=[layer]) as cam:
                probe = cam(input_tensor=x[i:i + 1], targets=[TorchTarget(int(c), mask.astype(np.float32))])
            if np.ptp(probe) > 0:
                break
        categories.append(int(c))
        masks.append(mask)
    return categories, masks


def _matching_layer(ex: Explainer, x: np.ndarray, activation: np.ndarray) -> tuple[str, float]:
    """The ONNX tensor equal to the torch layer's output (same shape, smallest max difference)."""
    best, error = "", float("inf")
    for name in ex.layers:
        values = ex.view.forward_session((name,)).run([name], {ex.input_name: x})[0]
        if values.shape == activation.shape:
            diff = float(np.abs(values - activation).max() / (np.abs(activation).max() + 1e-12))
            if diff < error:
                best, error = name, diff
    return best, error


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = run(Path(folder))
    print(f"layer {result.layer} (activation error {result.activation_error:.1e}); classes {result.categories}")
    print("| method | r image 1 | r image 2 |\n|---|---|---|")
    for name, rs in result.r.items():
        print(f"| {name} | {rs[0]:.5f} | {rs[1]:.5f} |")
    sys.exit(0 if all(min(rs) >= THRESHOLD for rs in result.r.values()) else 1)


if __name__ == "__main__":
    main()
