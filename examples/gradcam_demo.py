"""Grad-CAM for the bundled demo model on the bundled sample images, with onnxcam's Python API; writes the overlays
and a report to out/demo/.

Run from the repository root:  python examples/gradcam_demo.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

import onnxcam

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"
OUT = ROOT / "out" / "demo"


def main() -> int:
    with onnxcam.Explainer(MODEL) as explainer:
        print(f"model {MODEL.name}: explaining layer '{explainer.default_layer}'")
        batch = onnxcam.load_images(IMAGES, explainer)            # the model's preprocessing (from its metadata)
        scores = explainer.scores(batch.x)                        # (8, classes) logits
        maps = explainer.explain(batch.x, "gradcam")              # (8, 96, 96) in [0, 1], the predicted classes
    OUT.mkdir(parents=True, exist_ok=True)
    for name, picture, row in zip(batch.names, batch.overlays(maps), scores):
        target = OUT / f"{Path(name).stem}.gradcam.png"
        cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        print(f"{name}: {explainer.labels[int(row.argmax())]} (logit {row.max():.2f}) -> {target.relative_to(ROOT)}")
    report = onnxcam.save_report(OUT / "report", batch, {"gradcam": maps}, scores=scores, labels=explainer.labels,
                                 info={"model": MODEL.name})
    print(f"report: {report.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
