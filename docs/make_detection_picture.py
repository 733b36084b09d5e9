"""The README's detection picture: the trained YOLOv8n detector inside the `nudenet` wheel (three scales, Ultralytics
metadata) on examples/photos/grace_hopper.jpg, explained with no preprocessing flags, Grad-CAM++ and LayerCAM side
by side. Needs the wheel unpacked by `python models/exporters/wheels.py` (it is not committed).

    python docs/make_detection_picture.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path.home() / ".cache/onnxcam-wheels/unpacked/nudenet-3.4.2-py3-none-any/nudenet/320n.onnx"
PHOTO = ROOT / "examples" / "photos" / "grace_hopper.jpg"


def main() -> None:
    if not MODEL.is_file():
        sys.exit(f"{MODEL} is missing: run python models/exporters/wheels.py first")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "onnxcam", "explain", str(MODEL), str(PHOTO), "--out", str(out),
                        "--method", "gradcam++,layercam", "--threshold", "0.5", "--device", "cpu"], check=True)
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        tiles = [cv2.imread(str(out / r["paths"]["overlay"])) for r in records]
        for tile, record in zip(tiles, records):
            cv2.putText(tile, record["method"], (8, tile.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                        (255, 255, 255), 2, cv2.LINE_AA)
        picture = np.concatenate(tiles, axis=1)
        picture = cv2.resize(picture, (picture.shape[1] * 300 // picture.shape[0], 300), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(ROOT / "docs" / "detection_nudenet.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(json.dumps([{k: r[k] for k in ("method", "label", "target_score", "box")} for r in records]))


if __name__ == "__main__":
    main()
