"""Images in, model inputs out: preprocessing presets, layouts, the model input size limit, and labels. Decoding
(files to RGB arrays, with pixel and memory limits) is onnxcam.decode; read_image is importable from here too.

Preprocessing is `x = (pixel * scale - mean) / std` per channel, on an RGB (or BGR) image resized straight to the
model's input size (no crop), then laid out as the model's input (NCHW or NHWC) in its dtype. Where the settings
come from, first match wins per field: explicit options, a named preset, the model's "preprocessing" metadata
(JSON with size, layout, channel_order, scale, mean, std), then the `imagenet` preset for float inputs and raw
pixels for uint8 inputs. A dynamic input size defaults to DEFAULT_SIZE.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcam.decode import (  # noqa: F401  (decoding lives in onnxcam.decode; these names stay importable here)
    DecodedImage,
    ImageError,
    apply_orientation,
    decode_image,
    read_image,
    read_pixels,
    to_rgb8,
)
from onnxcam.errors import InputError
from onnxcam.graph.catalogue import guess_layout
from onnxcam.image_headers import image_size as header_size  # noqa: F401
from onnxcam.opencv import MAX_PIXELS, cv2

DEFAULT_SIZE = 224
# What a folder walk picks up: the formats onnxcam.decode size-checks and OpenCV decodes (OpenEXR is left out:
# most OpenCV builds lack it).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm",
                  ".pam", ".pfm", ".hdr", ".jp2", ".j2k", ".avif", ".ras"}


@dataclass(frozen=True)
class Preprocessing:
    size: tuple[int, int]                    # (H, W) of the model input
    layout: str = "NCHW"                     # "NCHW" or "NHWC"
    channels: int = 3                        # 1 (grayscale) or 3
    bgr: bool = False                        # channel order fed to the model
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    dtype: str = "float32"                   # "float32", "float16", "float64" or "uint8" (raw pixels)

    def describe(self) -> dict[str, Any]:
        return {"size": list(self.size), "layout": self.layout, "channels": self.channels,
                "channel_order": "BGR" if self.bgr else "RGB", "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "dtype": self.dtype}


PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "bgr": False},
    "inception": {"scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "bgr": False},  # [-1, 1]
    "raw255": {"scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "bgr": False},
    "caffe": {"scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "bgr": True},
    "unit": {"scale": 1 / 255, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "bgr": False},
}

_DTYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
           onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.UINT8: "uint8"}


# --- preprocessing ----------------------------------------------------------------------------------------------
def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _input_value(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    return next(i for i in model.graph.input if i.name == name)


def resolve_preprocessing(model: onnx.ModelProto, input_name: str, layout: str | None = None,
                          preset: str | None = None, mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None, size: int | Sequence[int] | None = None,
                          bgr: bool | None = None, scale: float | None = None) -> Preprocessing:
    """The preprocessing for `model`'s image input; see the module docstring for the order of sources."""
    dims = input_dims(model, input_name)
    dtype = _DTYPES.get(_input_value(model, input_name).type.tensor_type.elem_type, "float32")
    meta = _metadata_preprocessing(model)
    layout = (layout or meta.get("layout") or guess_layout(tuple(dims)) or "NCHW").upper()
    if layout not in ("NCHW", "NHWC"):
        raise InputError(f"unknown layout '{layout}'; use NCHW or NHWC")
    static_hw: list[int | None] = [None, None]
    channels = 3
    if len(dims) == 4:
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        static_hw, channels = [h, w], c if c in (1, 3) else 3
    fields: dict[str, Any] = {}
    if dtype != "uint8":
        fields.update(PRESETS["imagenet"])
    else:
        fields.update(PRESETS["raw255"])
    fields.update({k: meta[k] for k in ("scale", "mean", "std", "bgr") if k in meta})
    if preset is not None:
        fields.update(preset_fields(preset))
    for key, given in (("mean", mean), ("std", std), ("bgr", bgr), ("scale", scale)):
        if given is not None:
            fields[key] = given
    wanted = _pair(size) if size is not None else _pair(meta["size"]) if "size" in meta else None
    hw = []
    for axis in range(2):
        fixed = static_hw[axis]
        if fixed is not None and wanted is not None and wanted[axis] != fixed and size is not None:
            raise InputError(f"--size {wanted[0]}x{wanted[1]} does not fit the model, whose input is "
                             f"{static_hw[0]}x{static_hw[1]}")
        hw.append(fixed if fixed is not None else wanted[axis] if wanted is not None else DEFAULT_SIZE)
    source = (f"the model's input '{input_name}'" if None not in static_hw else "the requested --size"
              if size is not None else "the size in the model's preprocessing metadata" if wanted is not None
              else "the default size")
    check_input_size((hw[0], hw[1]), source)
    mean_t = _per_channel(fields["mean"], "mean", channels)
    std_t = _per_channel(fields["std"], "std", channels)
    if any(s == 0 for s in std_t):
        raise InputError("std must not contain 0")
    return Preprocessing((hw[0], hw[1]), layout, channels, bool(fields["bgr"]), float(fields["scale"]), mean_t,
                         std_t, dtype)


def check_input_size(size: tuple[int, int], source: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a model input larger than the image pixel limit before anything is allocated for it: preprocessing
    one image for a declared [1, 3, 20000, 20000] input would take gigabytes."""
    h, w = size
    if h * w > max_pixels:
        raise InputError(f"{source} is {h}x{w} = {h * w:,} pixels per image, above the limit of {max_pixels:,}; "
                         "use a model (or --size) with a smaller input")


def input_dims(model: onnx.ModelProto, name: str) -> list[int | None]:
    dims = _input_value(model, name).type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def preset_fields(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown preset '{name}'{hint} (presets: {', '.join(PRESETS)})")
    return dict(PRESETS[name])


def _metadata_preprocessing(model: onnx.ModelProto) -> dict[str, Any]:
    raw = model_metadata(model).get("preprocessing")
    if not raw:
        return {}
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if not isinstance(spec, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(spec.get("preset"), str) and spec["preset"] in PRESETS:
        out.update(PRESETS[spec["preset"]])
    for key in ("mean", "std", "size", "scale", "layout"):
        if key in spec:
            out[key] = spec[key]
    if isinstance(spec.get("channel_order"), str):
        out["bgr"] = spec["channel_order"].upper() == "BGR"
    return out


def _pair(size: Any) -> tuple[int, int]:
    values = [int(v) for v in size] if isinstance(size, (list, tuple)) else [int(size)]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise InputError(f"size {size} is not a positive int or (H, W) pair")
    return values[0], values[1]


def _per_channel(values: Any, what: str, channels: int) -> tuple[float, ...]:
    seq = [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)]
    if len(seq) == 1:
        seq *= channels
    if channels == 1 and len(seq) == 3:
        seq = [sum(seq) / 3]
    if len(seq) != channels:
        raise InputError(f"{what} has {len(seq)} values but the model takes {channels} channel(s)")
    return tuple(seq)


def preprocess(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """One RGB uint8 image as the model's input (1, ...) in its layout and dtype."""
    h, w = spec.size
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR)
    if spec.channels == 1:
        pixels = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        pixels = resized[:, :, ::-1] if spec.bgr else resized
    if spec.dtype == "uint8":
        x = np.ascontiguousarray(pixels)
    else:
        x = (pixels.astype(np.float32) * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(
            spec.std, np.float32)
        x = x.astype(spec.dtype)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def blank_input(spec: Preprocessing, pixel: float = 0.0) -> np.ndarray:
    """The model input of an image whose pixels all equal `pixel` (0 = black), shaped (1, C, 1, 1) or (1, 1, 1, C):
    what masking methods and metrics fade an image to, so that x * S in pixel space is
    blank + S * (x - blank) in the model's input space (preprocessing is affine per channel)."""
    value = (np.full(spec.channels, pixel * spec.scale, np.float64) - np.asarray(spec.mean)) / np.asarray(spec.std)
    value = value.astype(np.uint8 if spec.dtype == "uint8" else spec.dtype)
    return value.reshape((1, -1, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, -1))


# --- labels -----------------------------------------------------------------------------------------------------
def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names in output order from a text file (one per line), a JSON list, or a JSON dict index -> name."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read labels file {path}: {e}") from None
    if Path(path).suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            return parse_labels(json.loads(text), str(path))
        except json.JSONDecodeError as e:
            raise InputError(f"labels file {path} is not valid JSON: {e}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def parse_labels(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        try:
            pairs = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            try:  # name -> index
                pairs = {int(v): str(k) for k, v in value.items()}
            except (TypeError, ValueError):
                raise InputError(f"labels in {where} must map class indices to names") from None
        if sorted(pairs) != list(range(len(pairs))):
            raise InputError(f"labels in {where} do not cover the class indices 0..{len(pairs) - 1} exactly")
        return [pairs[i] for i in range(len(pairs))]
    raise InputError(f"labels in {where} must be a JSON list or dict")


def model_labels(model: onnx.ModelProto) -> list[str] | None:
    raw = model_metadata(model).get("labels")
    if not raw:
        return None
    try:
        return parse_labels(json.loads(raw), "the model's metadata")
    except (json.JSONDecodeError, InputError):
        return None


def check_labels(labels: list[str], classes: int | None, source: str) -> None:
    if classes is not None and len(labels) != classes:
        raise InputError(f"{source} has {len(labels)} labels but the model has {classes} classes")


def resolve_target(target: str, labels: list[str] | None, classes: int | None) -> int:
    """A class index from an index or a label name."""
    text = target.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if index < 0 or (classes is not None and index >= classes):
            raise InputError(f"target class {index} is out of range (the model has {classes} classes)")
        return index
    if not labels:
        raise InputError(f"target '{target}' is not a class index and no class names are known; pass --class-names")
    if text in labels:
        return labels.index(text)
    lowered = [label.lower() for label in labels]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    close = difflib.get_close_matches(text, labels, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InputError(f"no class labelled '{target}'{hint}")
