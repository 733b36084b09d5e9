"""The one place onnxcam imports OpenCV.

OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, when cv2 is imported: set afterwards it is ignored and every decoder
(HDR, JPEG 2000, AVIF...) would allow 2^30 pixels. This module sets it first, and onnxcam/__init__.py imports this
module before anything else, so any onnxcam module that imports cv2 (directly or from here) gets the limit. A
program that imported cv2 before onnxcam keeps OpenCV's default; onnxcam's own header checks (onnxcam.decode) hold
either way. Values the user exported are kept.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Images above this many pixels are refused: by onnxcam from the file's header before decoding, and by OpenCV.
MAX_PIXELS = 40_000_000

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
# OpenCV logs decoder failures ("[ERROR:0@0.06] global grfmt_tiff.cpp ...") to stderr on top of returning them;
# onnxcam reports each failure in one line of its own.
os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")

if TYPE_CHECKING:
    import cv2

__all__ = ["MAX_PIXELS", "cv2"]


def __getattr__(name: str) -> object:
    """`cv2`, imported on first use (after the settings above): `import onnxcam` and `onnxcam --help` need no
    OpenCV."""
    if name == "cv2":
        import cv2

        return cv2
    raise AttributeError(name)
