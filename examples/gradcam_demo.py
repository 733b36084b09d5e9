"""Grad-CAM for the bundled demo model on the bundled sample images; writes overlays to out/demo/.

Run from the repository root:  python examples/gradcam_demo.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx

import onnxcam
from onnxcam import Explainer

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"
OUT = ROOT / "out" / "demo"


def preprocess(path: Path, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and turn it into the model's input (1, 3, S, S) as the model card says."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise onnxcam.InputError(f"cannot read image {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = spec["size"]
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32) * spec["scale"]
    x = (resized - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return x.transpose(2, 0, 1)[None], rgb


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    heat = cv2.applyColorMap(np.uint8(255 * cv2.resize(cam, (rgb.shape[1], rgb.shape[0]))), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 1 - alpha, heat, alpha, 0)


def main() -> int:
    meta = {p.key: p.value for p in onnx.load(str(MODEL), load_external_data=False).metadata_props}
    labels = json.loads(meta["labels"])
    spec = json.loads(meta["preprocessing"])
    explainer = Explainer(MODEL, device="cpu")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"model {MODEL.name}: explaining layer '{explainer.default_layer}'")
    for path in sorted(IMAGES.glob("*.png")):
        x, rgb = preprocess(path, spec)
        scores = explainer.scores(x)[0]
        cam = explainer.explain(x, method="gradcam")[0]
        target = OUT / f"{path.stem}.gradcam.png"
        cv2.imwrite(str(target), overlay(rgb, cam))
        print(f"{path.name}: {labels[int(scores.argmax())]} (logit {scores.max():.2f}) -> {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
