"""Presentation: colour-mapped overlays, atomic file writes and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def thumbnail_data_uri(rgb: np.ndarray, max_side: int = 256) -> str:
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA) \
        if factor < 1.0 else rgb
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# --- HTML report ------------------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em}.meta{color:#555;margin-bottom:1em}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:260px;font-size:.85em}
.card img{max-width:256px;max-height:256px;display:block;margin:0 auto 6px}
.card.failed{border-color:#d33;background:#fff4f4}.name{font-weight:600;word-break:break-all}
.err{color:#b00;word-break:break-word}.k{color:#666}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def report_html(records: Sequence[dict[str, Any]], thumbnails: dict[int, str], title: str,
                meta: dict[str, Any]) -> str:
    """A self-contained gallery; `thumbnails` maps a record's index to a data URI."""
    cards = []
    for i, rec in enumerate(records):
        failed = rec.get("status") == "failed"
        lines = [f'<div class="name">{_e(rec.get("image"))}</div>']
        if failed:
            lines.append(f'<div class="err">{_e(rec.get("error"))}</div>')
        else:
            uri = thumbnails.get(i, "")
            if uri:
                lines.insert(0, f'<img src="{_e(uri)}" alt="{_e(rec.get("image"))}">')
            lines.append(f'<div><span class="k">predicted</span> {_e(rec.get("predicted"))} '
                         f'{_e(rec.get("predicted_label") or "")} <span class="k">score</span> '
                         f'{_e(_fmt(rec.get("score")))}</div>')
            lines.append(f'<div><span class="k">target</span> {_e(rec.get("target"))} {_e(rec.get("label") or "")}'
                         "</div>")
            lines.append(f'<div><span class="k">method</span> {_e(rec.get("method"))} '
                         f'<span class="k">layer</span> {_e(rec.get("layer"))}</div>')
            if rec.get("status") == "skipped":
                lines.append('<div class="k">(kept from an earlier run)</div>')
        cards.append(f'<div class="card{" failed" if failed else ""}">' + "".join(lines) + "</div>")
    meta_html = " &middot; ".join(f"{_e(k)}: {_e(v)}" for k, v in meta.items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{_e(title)}</h1><div class=\"meta\">{meta_html}</div>"
            f"<div class=\"grid\">{''.join(cards)}</div></body></html>\n")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


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
