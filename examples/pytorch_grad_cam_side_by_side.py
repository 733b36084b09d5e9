"""pytorch-grad-cam's README example, then the same with onnxcam on the model's ONNX export, side by side.

Needs torch, torchvision and grad-cam (`pip install -e .[parity]`); nothing is downloaded: the ResNet-50 has random
weights (seeded), so the maps show that both libraries compute the same thing, not what a trained network sees.
From the repository root:

    python examples/pytorch_grad_cam_side_by_side.py              # ResNet-50, 224 x 224, class 281
    python examples/pytorch_grad_cam_side_by_side.py --arch resnet18 --out out/side_by_side.png

It prints Pearson's r and the largest difference between the two maps and writes one picture: the photo, the
pytorch-grad-cam overlay (show_cam_on_image), the onnxcam overlay (onnxcam.overlay) and |difference| x 10.
tests/parity/test_side_by_side.py runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "photos" / "grace_hopper.jpg"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class SideBySide:
    reference: np.ndarray    # pytorch-grad-cam's map (H, W) in [0, 1]
    onnxcam: np.ndarray      # onnxcam's map of the same image, class and layer
    pearson: float
    max_difference: float
    picture: Path


def run(arch: str = "resnet50", size: int = 224, target: int = 281, photo: Path = PHOTO,
        out: Path = ROOT / "out" / "side_by_side.png", folder: Path | None = None) -> SideBySide:
    import torch
    import torchvision
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import onnxcam

    # --- pytorch-grad-cam, as its README shows it ----------------------------------------------------------------
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()  # README: resnet50(pretrained=True)
    target_layers = [model.layer4[-1]]
    rgb_img = np.float32(cv2.resize(cv2.imread(str(photo))[:, :, ::-1], (size, size))) / 255
    input_tensor = preprocess_image(rgb_img, mean=MEAN, std=STD)
    targets = [ClassifierOutputTarget(target)]
    with GradCAM(model=model, target_layers=target_layers) as cam:
        grayscale_cam = cam(input_tensor=input_tensor, targets=targets)[0, :]
        visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)

    # --- onnxcam on the ONNX export of the same model ------------------------------------------------------------
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(folder or temporary) / f"{arch}.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still fine for a ResNet
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (input_tensor,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        with onnxcam.Explainer(path, layer="layer4[-1]") as explainer:  # the same module, by its PyTorch path
            onnx_cam = explainer.explain(input_tensor.numpy(), "gradcam", targets=[target])[0]
            onnx_visualization = onnxcam.overlay(rgb_img, onnx_cam)  # show_cam_on_image's equivalent

    pearson = float(np.corrcoef(grayscale_cam.ravel(), onnx_cam.ravel())[0, 1])
    difference = np.abs(grayscale_cam - onnx_cam)
    heat = cv2.applyColorMap(np.uint8(np.clip(difference * 10, 0, 1) * 255), cv2.COLORMAP_INFERNO)[:, :, ::-1]
    panels = [np.uint8(rgb_img * 255), visualization, onnx_visualization, heat]
    captions = ["photo", "pytorch-grad-cam", "onnxcam (ONNX export)", "|difference| x 10"]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(_strip(panels, captions), cv2.COLOR_RGB2BGR))
    return SideBySide(grayscale_cam, onnx_cam, pearson, float(difference.max()), out)


def _strip(panels: list[np.ndarray], captions: list[str]) -> np.ndarray:
    """The panels in a row, each with its caption on a white band below."""
    framed = []
    for panel, caption in zip(panels, captions):
        band = np.full((28, panel.shape[1], 3), 255, np.uint8)
        cv2.putText(band, caption, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        framed.append(np.vstack([panel, band]))
    gap = np.full((framed[0].shape[0], 8, 3), 255, np.uint8)
    return np.hstack([part for panel in framed for part in (panel, gap)][:-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50", help="a torchvision ResNet (resnet18 ... resnet152)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", type=int, default=281, help="the class explained (281: tabby cat)")
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "side_by_side.png")
    args = parser.parse_args()
    result = run(args.arch, args.size, args.target, args.photo, args.out)
    print(f"{args.arch}, class {args.target}: Pearson r = {result.pearson:.6f}, largest difference "
          f"{result.max_difference:.2e} (maps in [0, 1]); picture: {result.picture}")
    return 0 if result.pearson > 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
