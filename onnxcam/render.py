"""Presentation: colour-mapped overlays, previews and atomic file writes (the report page is onnxcam.report)."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from onnxcam import files
from onnxcam.errors import InputError

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT}


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map bilinearly resized to (H, W), clipped to [0, 1], float32."""
    h, w = size
    out = cam if cam.shape == (h, w) else cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """The map in a colour map blended over the RGB image; returns RGB uint8 at the image's size."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colour map '{colormap}'; choose from {', '.join(COLORMAPS)}")
    cam = resize_map(cam, rgb.shape[:2])
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.round(255 * cam)), COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)


# --- atomic writes ----------------------------------------------------------------------------------------------
def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """files.write_bytes (atomic, never through a planted symlink), making the folder first if needed."""
    target = Path(path)
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
    files.write_bytes(target, data)


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("OpenCV could not encode the PNG")
    return buf.tobytes()


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    write_bytes(path, encode_png(rgb))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    write_bytes(path, npy_bytes(array))


def npy_complete(path: str | os.PathLike) -> bool:
    """The file is a readable .npy whose data is all there."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return array.ndim == 2 and array.size > 0
    except (OSError, ValueError):
        return False


def preview_jpeg(rgb: np.ndarray, max_side: int = 320, quality: int = 85) -> bytes:
    """A small JPEG of an RGB image (longest side at most `max_side`, never enlarged): the report's thumbnails."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA) \
        if factor < 1.0 else rgb
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("OpenCV could not encode the JPEG")
    return buf.tobytes()


def thumbnail_data_uri(rgb: np.ndarray, max_side: int = 256) -> str:
    """A small JPEG as a data: URI, for pages that embed a few pictures (the compare report)."""
    try:
        return "data:image/jpeg;base64," + base64.b64encode(preview_jpeg(rgb, max_side)).decode("ascii")
    except OSError:
        return ""


def colormap_stops(colormap: str = "jet", stops: int = 11) -> list[str]:
    """`stops` CSS colours (#rrggbb) of a colour map from 0 to 1, for the report's colour bar."""
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colour map '{colormap}'; choose from {', '.join(COLORMAPS)}")
    levels = np.uint8(np.round(np.linspace(0, 255, stops)))[:, None]
    rgb = cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB).reshape(-1, 3)
    return ["#" + "".join(f"{int(v):02x}" for v in colour) for colour in rgb]


def read_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """An overlay written earlier, as RGB, or None."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def draw_boxes(rgb: np.ndarray, boxes: Sequence[Sequence[float]], captions: Sequence[str] | None = None,
               colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of an RGB image with boxes (x0, y0, x1, y1 in its pixels) and optional captions drawn on it."""
    out = np.ascontiguousarray(rgb).copy()
    thickness = max(1, round(max(out.shape[:2]) / 200))
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 0), thickness + 2)  # dark edge: visible on any map
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        if captions and k < len(captions) and captions[k]:
            scale = max(0.3, max(out.shape[:2]) / 600)
            origin = (max(0, x0), max(10, y0 - 3))
            cv2.putText(out, captions[k], origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 1,
                        cv2.LINE_AA)
            cv2.putText(out, captions[k], origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out
