"""Images in, model inputs out: preprocessing (where it comes from, how it is applied), the way back from model
input pixels to the image's own pixels, and the model input size limit. Decoding (files to RGB arrays, with
pixel and memory limits) is onnxcam.decode and class names are onnxcam.labels; their names stay importable here.

An image becomes a model input in three steps. Geometry (`resize`): "stretch" resizes the whole image to the
input size; "short" resizes its short side to `short_side` keeping the aspect ratio, then centre-crops the input
size (torchvision's and PaddleClas' Resize + CenterCrop); "letterbox" fits the whole image inside the input size
keeping the aspect ratio and pads the rest with `pad_value` (Ultralytics' LetterBox: centred, grey 114). Colour:
RGB or BGR (or grayscale for a one-channel input). Values: `x = (pixel * scale - mean) / std` per channel, mean
and std in the order of the channels fed to the model; then the model's layout (NCHW or NHWC) and dtype.

Where the settings come from, later sources overriding earlier ones field by field (`resolve_preprocessing`):

1. a guess: ImageNet mean/std for float inputs, raw pixels for uint8 inputs and for graphs that rescale their
   input themselves (Keras' Rescaling layer: the input goes straight into a Mul by 1/255 or 1/127.5), stretched
   to the input size; a dynamic size becomes DEFAULT_SIZE;
2. the model's metadata: onnxcam's own `preprocessing` (JSON: size, layout, channel_order, scale, mean, std,
   resize, short_side, crop_fraction, interpolation, pad_value, preset), Ultralytics' `imgsz` (+ `stride`,
   `task`, `channels`: letterbox to imgsz with grey 114, RGB, x/255; resize short side + centre crop for
   classifiers), ONNX's `Image.BitmapPixelFormat` and `Image.NominalPixelRange`;
3. a preset (`PRESETS`);
4. explicit options (the CLI's flags).

`Preprocessing.source` says which of these made it, and `summary()` what it does, in one line each.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

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
from onnxcam.graph.contract import ModelSummary, guess_layout
from onnxcam.graph.summary import summary_of
from onnxcam.image_headers import image_size as header_size  # noqa: F401
from onnxcam.labels import (  # noqa: F401  (class names live in onnxcam.labels; these names stay importable here)
    check_labels,
    model_labels,
    parse_labels,
    read_labels,
    resolve_target,
)
from onnxcam.opencv import MAX_PIXELS, cv2
from onnxcam.targets import is_rtdetr

if TYPE_CHECKING:
    import onnx

DEFAULT_SIZE = 224
# What a folder walk picks up: the formats onnxcam.decode size-checks and OpenCV decodes (OpenEXR is left out:
# most OpenCV builds lack it).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm",
                  ".pam", ".pfm", ".hdr", ".jp2", ".j2k", ".avif", ".ras"}
RESIZE_MODES = ("stretch", "short", "letterbox")
# "auto": area averaging when shrinking (close to the antialiased resize of PIL and torchvision), bilinear when
# enlarging.
INTERPOLATIONS = {"auto": None, "nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
                  "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
PAD_ALIGNS = ("center", "corner")  # letterbox: image centred (Ultralytics) or at the top-left, padded bottom/right


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
    resize: str = "stretch"                  # "stretch", "short" (+ centre crop) or "letterbox"
    short_side: int | None = None            # "short": the short side after resizing (>= the crop)
    interpolation: str = "auto"              # a key of INTERPOLATIONS
    pad_value: float = 114.0                 # "letterbox": the padding's pixel value (before scaling)
    pad_align: str = "center"                # "letterbox": "center" or "corner"
    source: str = field(default="", compare=False)   # where the settings came from, for the run's header

    def describe(self) -> dict[str, Any]:
        """The settings as JSON (run.json; --resume compares them). Geometry keys appear only where they differ
        from a plain stretch, so manifests of runs that stretch read as before."""
        out: dict[str, Any] = {"size": list(self.size), "layout": self.layout, "channels": self.channels,
                               "channel_order": "BGR" if self.bgr else "RGB", "scale": self.scale,
                               "mean": list(self.mean), "std": list(self.std), "dtype": self.dtype}
        if self.resize != "stretch":
            out["resize"] = self.resize
        if self.resize == "short":
            out["short_side"] = self.short_side
        if self.resize == "letterbox":
            out["pad_value"], out["pad_align"] = self.pad_value, self.pad_align
        if self.interpolation != "auto":
            out["interpolation"] = self.interpolation
        return out

    def summary(self) -> str:
        """One line: what happens to an image, in order."""
        h, w = self.size
        interp = "" if self.interpolation == "auto" else f" ({self.interpolation})"
        if self.resize == "short":
            steps = [f"resize short side to {self.short_side}{interp}", f"centre crop {h}x{w}"]
        elif self.resize == "letterbox":
            how = ", ".join(v for v in (self.interpolation if self.interpolation != "auto" else "",
                                         f"pad {self.pad_value:g}",
                                         "image at the top-left" if self.pad_align == "corner" else "") if v)
            steps = [f"letterbox to {h}x{w} ({how})"]
        else:
            steps = [f"resize to {h}x{w}{interp}"]
        colour = "grayscale" if self.channels == 1 else "BGR" if self.bgr else "RGB"
        return ", ".join([colour, *steps, _values_text(self), f"{self.layout} {self.dtype}"])

    def line(self) -> str:
        """The run header's line: source and summary."""
        return f"{self.source or 'given'}: {self.summary()}"


def _values_text(spec: Preprocessing) -> str:
    if spec.dtype == "uint8":
        return "raw 0-255 pixels"
    scaled = "x/255" if math.isclose(spec.scale, 1 / 255, rel_tol=1e-6) else "x" if spec.scale == 1 else \
        f"x*{spec.scale:.6g}"
    if all(m == 0 for m in spec.mean) and all(s == 1 for s in spec.std):
        return scaled if scaled != "x" else "raw 0-255 values"
    return f"({scaled} - mean {_numbers(spec.mean)}) / std {_numbers(spec.std)}"


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


_IMAGENET = {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "bgr": False}
_UNIT = {"scale": 1 / 255, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "bgr": False}
_STRETCH = {"resize": "stretch"}
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {**_IMAGENET, **_STRETCH},
    # torchvision / timm / PaddleClas evaluation: short side to input / 0.875 (256 for 224), centre crop
    "imagenet-crop": {**_IMAGENET, "resize": "short", "crop_fraction": 0.875},
    "inception": {"scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "bgr": False, **_STRETCH},
    "raw255": {"scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "bgr": False, **_STRETCH},
    "caffe": {"scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "bgr": True, **_STRETCH},
    "unit": {**_UNIT, **_STRETCH},
    "yolo": {**_UNIT, "resize": "letterbox", "pad_value": 114.0, "pad_align": "center", "interpolation": "bilinear"},
}

_DTYPES: dict[int, str] = {1: "float32", 10: "float16", 11: "float64", 2: "uint8"}  # ONNX element types


# --- where the settings come from -------------------------------------------------------------------------------
def model_metadata(model: ModelSummary | onnx.ModelProto | Mapping[str, str]) -> dict[str, str]:
    """The model's metadata (key -> value), from the model, its summary, or the mapping itself."""
    if isinstance(model, Mapping):
        return dict(model)
    if isinstance(model, ModelSummary):
        return dict(model.metadata)
    return {p.key: p.value for p in model.metadata_props}


def resolve_preprocessing(model: ModelSummary | onnx.ModelProto, input_name: str, layout: str | None = None,
                          preset: str | None = None, mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None, size: int | Sequence[int] | None = None,
                          bgr: bool | None = None, scale: float | None = None, *, resize_short: int | None = None,
                          crop: int | Sequence[int] | None = None, letterbox: bool | None = None,
                          interpolation: str | None = None, pad_value: float | None = None) -> Preprocessing:
    """The preprocessing for `model`'s image input; see the module docstring for the order of sources.

    resize_short: resize the short side to this, then centre-crop the input size; crop: the centre crop (for a
    dynamic input it sets the input size; without resize_short the short side is resized to the crop);
    letterbox: fit and pad instead of stretching (needs a fixed input size)."""
    summary = summary_of(model)
    image = summary.input(input_name)
    dims = input_dims(summary, input_name)
    dtype = _DTYPES.get(image.elem_type, "float32")
    meta, meta_source = metadata_preprocessing(summary)
    layout = (layout or meta.get("layout") or guess_layout(tuple(dims)) or "NCHW").upper()
    if layout not in ("NCHW", "NHWC"):
        raise InputError(f"unknown layout '{layout}'; use NCHW or NHWC")
    static_hw: list[int | None] = [None, None]
    channels = 1 if meta.get("channels") == 1 else 3
    if len(dims) == 4:
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        static_hw, channels = [h, w], c if c in (1, 3) else channels
    fields, guess = _guess(image.rescaling, dtype)
    sources = []
    if meta:
        fields.update({k: v for k, v in meta.items() if k not in ("layout", "size", "channels")})
        sources.append(meta_source)
    if preset is not None:
        chosen = preset_fields(preset)
        if "crop_fraction" in chosen:  # the preset's resize is relative to the crop: drop a metadata short side
            fields.pop("short_side", None)
        fields.update(chosen)
        sources.append(f"preset {preset}")
    flags = _apply_flags(fields, mean=mean, std=std, bgr=bgr, scale=scale, resize_short=resize_short, crop=crop,
                         letterbox=letterbox, interpolation=interpolation, pad_value=pad_value, size=size)
    if flags:
        sources.append(" ".join(flags))
    hw, size_source = _input_size(input_name, dims, static_hw, size, crop, meta, fields)
    short_side = _short_side(fields, hw, size_source, resize_short) if fields["resize"] == "short" else None
    mean_t = _per_channel(fields["mean"], "mean", channels)
    std_t = _per_channel(fields["std"], "std", channels)
    if any(s == 0 for s in std_t):
        raise InputError("std must not contain 0")
    spec = Preprocessing((hw[0], hw[1]), layout, channels, bool(fields["bgr"]), float(fields["scale"]), mean_t,
                         std_t, dtype, fields["resize"], short_side, fields["interpolation"],
                         float(fields["pad_value"]), fields["pad_align"])
    if not meta and preset is None:  # the values not given are still the guess: say so
        sources.insert(0, f"guessed ({guess})")
    return replace(spec, source=" + ".join(sources))


def _guess(rescale: str | None, dtype: str) -> tuple[dict[str, Any], str]:
    """The settings before any source speaks, and why (rescale: how the graph rescales its input itself)."""
    fields: dict[str, Any] = {"resize": "stretch", "interpolation": "auto", "pad_value": 114.0, "pad_align": "center"}
    if dtype == "uint8":
        return {**fields, **PRESETS["raw255"]}, "uint8 input: raw pixels"
    if rescale is not None:
        return {**fields, **PRESETS["raw255"]}, f"the graph rescales its input itself ({rescale}): raw 0-255 pixels"
    return {**fields, **PRESETS["imagenet"]}, ("the model names none: ImageNet mean/std, resized to the input; "
                                               "torchvision/timm weights want --preset imagenet-crop, Keras ResNet "
                                               "--preset caffe")


def _apply_flags(fields: dict[str, Any], **given: Any) -> list[str]:
    """Explicit options over `fields`; returns them as the CLI spells them (for the source line)."""
    said = []
    for key in ("mean", "std", "scale"):
        if given[key] is not None:
            fields[key] = given[key]
            said.append(f"--{key} {_flag_value(given[key])}")
    if given["bgr"] is not None:
        fields["bgr"] = bool(given["bgr"])
        said.append("--bgr" if given["bgr"] else "--rgb")
    if given["letterbox"] and (given["resize_short"] is not None or given["crop"] is not None):
        raise InputError("--letterbox keeps the whole image; it cannot be combined with --resize-short or --crop")
    if given["letterbox"] is not None:
        fields["resize"] = "letterbox" if given["letterbox"] else "stretch"
        said.append("--letterbox" if given["letterbox"] else "--no-letterbox")
    if given["resize_short"] is not None:
        if int(given["resize_short"]) <= 0:
            raise InputError(f"--resize-short must be a positive number of pixels, got {given['resize_short']}")
        fields["resize"], fields["short_side"] = "short", int(given["resize_short"])
        said.append(f"--resize-short {given['resize_short']}")
    if given["crop"] is not None:
        fields["resize"] = "short"
        said.append(f"--crop {_flag_value(given['crop'])}")
    if given["size"] is not None:
        said.append(f"--size {_flag_value(given['size'])}")
    if given["interpolation"] is not None:
        if given["interpolation"] not in INTERPOLATIONS:
            raise InputError(f"unknown interpolation '{given['interpolation']}'; use one of "
                             f"{', '.join(INTERPOLATIONS)}")
        fields["interpolation"] = given["interpolation"]
        said.append(f"--interpolation {given['interpolation']}")
    if given["pad_value"] is not None:
        fields["pad_value"] = float(given["pad_value"])
        said.append(f"--pad-value {given['pad_value']:g}")
    return said


def _flag_value(value: Any) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(
        value, (list, tuple)) else f"{value:g}" if isinstance(value, float) else str(value)


def _input_size(input_name: str, dims: list[int | None], static_hw: list[int | None], size: Any, crop: Any,
                meta: dict[str, Any], fields: dict[str, Any]) -> tuple[tuple[int, int], str]:
    """The model input's (H, W) and what set it: its static size; else --size, --crop, the metadata's size,
    DEFAULT_SIZE."""
    wanted, said = None, ""
    for value, what in ((size, "--size"), (crop, "--crop"), (meta.get("size"), "metadata")):
        if value is not None:
            wanted, said = _pair(value), what
            break
    hw = []
    for axis in range(2):
        fixed = static_hw[axis]
        if fixed is not None and wanted is not None and wanted[axis] != fixed and said != "metadata":
            raise InputError(f"{said} {wanted[0]}x{wanted[1]} does not fit the model, whose input is "
                             f"{static_hw[0]}x{static_hw[1]}")
        hw.append(fixed if fixed is not None else wanted[axis] if wanted is not None else None)
    if fields["resize"] == "letterbox" and None in hw:
        shown = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise InputError(f"letterboxing needs a fixed input size, but the model's input '{input_name}' is {shown}; "
                         "pass --size N (the size it was trained at, e.g. 640)")
    final = (hw[0] or DEFAULT_SIZE, hw[1] or DEFAULT_SIZE)
    source = (f"the model's input '{input_name}'" if None not in static_hw else f"the requested {said}"
              if said in ("--size", "--crop") else "the size in the model's preprocessing metadata"
              if said == "metadata" else "the default size")
    check_input_size(final, source)
    return final, source


def _short_side(fields: dict[str, Any], hw: tuple[int, int], size_source: str, resize_short: int | None) -> int:
    """The short side after resizing: given, else the crop over the preset's crop fraction, else the crop."""
    if fields.get("short_side") is not None:
        side = int(fields["short_side"])
    elif fields.get("crop_fraction"):
        side = int(math.floor(max(hw) / float(fields["crop_fraction"])))
    else:
        side = max(hw)
    if side < max(hw):
        resize = f"--resize-short {resize_short}" if resize_short is not None else f"the resize to {side}"
        raise InputError(f"the centre crop {hw[0]}x{hw[1]} (from {size_source}) is larger than {resize}: the crop "
                         f"must fit inside the resized image; resize the short side to at least {max(hw)}")
    return side


def check_input_size(size: tuple[int, int], source: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a model input larger than the image pixel limit before anything is allocated for it: preprocessing
    one image for a declared [1, 3, 20000, 20000] input would take gigabytes."""
    h, w = size
    if h * w > max_pixels:
        raise InputError(f"{source} is {h}x{w} = {h * w:,} pixels per image, above the limit of {max_pixels:,}; "
                         "use a model (or --size) with a smaller input")


def input_dims(model: ModelSummary | onnx.ModelProto, name: str) -> list[int | None]:
    """The input's fixed sizes (None where dynamic)."""
    return [d if isinstance(d, int) and d > 0 else None for d in summary_of(model).input(name).dims]


def preset_fields(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown preset '{name}'{hint} (presets: {', '.join(PRESETS)})")
    return dict(PRESETS[name])


# --- the model's metadata ---------------------------------------------------------------------------------------
def metadata_preprocessing(model: ModelSummary | onnx.ModelProto | Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """Settings the model's metadata gives, and a description of the keys read ("" when none)."""
    meta = model_metadata(model)
    fields: dict[str, Any] = {}
    read: list[str] = []
    for reader in (_onnx_image_metadata, _ultralytics_metadata, _own_metadata):  # later ones win
        found, what = reader(meta)
        if found:
            fields.update(found)
            read.append(what)
    return fields, f"model metadata ({'; '.join(read)})" if read else ""


def preprocessing_problems(model: ModelSummary | onnx.ModelProto | Mapping[str, str]) -> list[str]:
    """One line per preprocessing metadata key that is there but cannot be read: said once, the run goes on."""
    meta = model_metadata(model)
    problems = []
    for key, reader in (("preprocessing", _own_metadata), ("imgsz", _ultralytics_metadata)):
        if meta.get(key, "").strip():
            try:
                reader(meta, strict=True)
            except (InputError, ValueError, SyntaxError, TypeError) as e:
                problems.append(f"the model's metadata '{key}' cannot be read ({e}); going on without it")
    return problems


def _own_metadata(meta: dict[str, str], strict: bool = False) -> tuple[dict[str, Any], str]:
    """onnxcam's `preprocessing` key (JSON). A key it cannot use is left out (strict: raised), the others kept."""
    raw = meta.get("preprocessing")
    if not raw:
        return {}, ""
    try:
        spec = json.loads(raw)
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        if strict:
            raise
        return {}, ""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        try:
            out.update(_own_field(key, value))
        except (ValueError, TypeError, InputError) as e:
            if strict:
                raise ValueError(f"{key}: {e}") from None
    return out, "'preprocessing'"


def _own_field(key: str, value: Any) -> dict[str, Any]:
    """One key of the `preprocessing` metadata as settings (unknown keys: none)."""
    if key == "preset":
        return preset_fields(str(value))
    if key == "size":
        return {"size": list(_pair(value))}
    if key in ("mean", "std"):
        return {key: [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]}
    if key in ("scale", "pad_value", "crop_fraction"):
        return {key: float(value)}
    if key == "short_side":
        return {key: int(value)}
    if key == "layout":
        if str(value).upper() not in ("NCHW", "NHWC"):
            raise ValueError(f"'{value}' is not NCHW or NHWC")
        return {key: str(value).upper()}
    if key == "channel_order":
        if str(value).upper() not in ("RGB", "BGR"):
            raise ValueError(f"'{value}' is not RGB or BGR")
        return {"bgr": str(value).upper() == "BGR"}
    if key == "resize" and str(value).lower().startswith("none"):  # images made at the input size: stretch is a no-op
        return {key: "stretch"}
    for name, allowed in (("resize", RESIZE_MODES), ("interpolation", INTERPOLATIONS), ("pad_align", PAD_ALIGNS)):
        if key == name:
            if value not in allowed:
                raise ValueError(f"'{value}' is not one of {', '.join(allowed)}")
            return {key: value}
    return {}


def _ultralytics_metadata(meta: dict[str, str], strict: bool = False) -> tuple[dict[str, Any], str]:
    """Ultralytics exports (YOLOv5u/v8/11, any task) carry imgsz, stride, task, names (and channels): their
    predictor letterboxes to imgsz with grey 114 and feeds RGB x/255; classifiers are resized (short side) and
    centre-cropped to imgsz instead, RT-DETR's images stretched to imgsz."""
    raw = meta.get("imgsz")
    maker = (meta.get("author", "") + " " + meta.get("description", "")).lower()
    if not raw or ("stride" not in meta and "ultralytics" not in maker):
        return {}, ""
    try:
        value = _literal(raw)
        size = _pair(value)
    except (ValueError, SyntaxError, TypeError, InputError):
        if strict:
            raise
        return {}, ""
    task = meta.get("task", "detect")
    out: dict[str, Any] = {**PRESETS["yolo"], "size": list(size)}
    if task == "classify":
        out.update(resize="short", short_side=max(size), interpolation="bilinear")
    if is_rtdetr(meta):  # its predictor stretches the image to imgsz (scale_fill), no letterbox
        out["resize"] = "stretch"
    if meta.get("channels", "").strip() == "1":
        out["channels"] = 1
    return out, f"Ultralytics imgsz {list(size)}, task {task}"


def _onnx_image_metadata(meta: dict[str, str], strict: bool = False) -> tuple[dict[str, Any], str]:
    """ONNX's own image metadata (onnx/docs/MetadataProps.md), as WinML reads it."""
    out: dict[str, Any] = {}
    said = []
    pixel_format = meta.get("Image.BitmapPixelFormat", "").lower()
    if pixel_format in ("bgr8", "bgra8", "rgb8", "rgba8"):
        out["bgr"] = pixel_format.startswith("bgr")
    elif pixel_format == "gray8":
        out["channels"] = 1
    if pixel_format:
        said.append(f"Image.BitmapPixelFormat {meta['Image.BitmapPixelFormat']}")
    pixel_range = meta.get("Image.NominalPixelRange", "").lower()
    ranges = {"nominalrange_0_255": PRESETS["raw255"], "normalized_0_1": PRESETS["unit"],
              "normalized_1_1": PRESETS["inception"]}
    if pixel_range in ranges:
        out.update({k: ranges[pixel_range][k] for k in ("scale", "mean", "std")})
        said.append(f"Image.NominalPixelRange {meta['Image.NominalPixelRange']}")
    return out, ", ".join(said)


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


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


# --- geometry: image pixels <-> model input pixels --------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Where an image lands in the model input. Along each axis a model input coordinate u (in pixels, edges at
    integers) is u = X * resized / image + offset for the image coordinate X: offset is minus the crop's start
    ("short") or the padding before the image ("letterbox"); 0 for "stretch"."""
    image: tuple[int, int]      # (H, W) of the image
    resized: tuple[int, int]    # (h, w) of the image once resized, before the crop or the padding
    offset: tuple[int, int]     # (y, x)
    input: tuple[int, int]      # (h, w) of the model input

    @property
    def stretched(self) -> bool:
        return self.resized == self.input and self.offset == (0, 0)

    def seen(self) -> tuple[float, float, float, float]:
        """The part of the image the model sees, x0, y0, x1, y1 in image pixels."""
        (h, w), (rh, rw), (oy, ox), (ih, iw) = self.image, self.resized, self.offset, self.input
        return (max(0.0, -ox * w / rw), max(0.0, -oy * h / rh), min(float(w), (iw - ox) * w / rw),
                min(float(h), (ih - oy) * h / rh))

    def whole(self) -> bool:
        """True when the model sees the whole image (stretch, letterbox)."""
        x0, y0, x1, y1 = self.seen()
        return x0 <= 0 and y0 <= 0 and x1 >= self.image[1] and y1 >= self.image[0]

    def seen_mask(self) -> np.ndarray:
        """(H, W) bool: the image pixels (by their centres) the model sees."""
        x0, y0, x1, y1 = self.seen()
        ys = np.arange(self.image[0]) + 0.5
        xs = np.arange(self.image[1]) + 0.5
        return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def geometry(image: tuple[int, int], spec: Preprocessing) -> Geometry:
    """How `spec` places an image of (H, W) pixels in the model input."""
    h, w = int(image[0]), int(image[1])
    ih, iw = spec.size
    if spec.resize == "short":
        ratio = (spec.short_side or max(ih, iw)) / min(h, w)
        rh, rw = max(ih, int(round(h * ratio))), max(iw, int(round(w * ratio)))
        return Geometry((h, w), (rh, rw), (-((rh - ih) // 2), -((rw - iw) // 2)), (ih, iw))
    if spec.resize == "letterbox":
        ratio = min(ih / h, iw / w)
        rh, rw = min(ih, max(1, int(round(h * ratio)))), min(iw, max(1, int(round(w * ratio))))
        offset = ((ih - rh) // 2, (iw - rw) // 2) if spec.pad_align == "center" else (0, 0)
        return Geometry((h, w), (rh, rw), offset, (ih, iw))
    return Geometry((h, w), (ih, iw), (0, 0), (ih, iw))


def map_to_image(cam: np.ndarray, geom: Geometry) -> np.ndarray:
    """A map at the model input's size as a map over the image's own pixels (bilinear, clipped to [0, 1]); pixels
    the model did not see (cut off by a centre crop) are 0."""
    h, w = geom.image
    cam = np.asarray(cam, np.float32)
    if geom.stretched:
        out = cam if cam.shape == (h, w) else cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    (rh, rw), (oy, ox) = geom.resized, geom.offset
    sy, sx = rh / h, rw / w
    # image pixel centre X + 0.5 -> input coordinate (X + 0.5) * s + offset -> input pixel index (that - 0.5)
    matrix = np.array([[sx, 0.0, 0.5 * sx - 0.5 + ox], [0.0, sy, 0.5 * sy - 0.5 + oy]], np.float64)
    out = cv2.warpAffine(cam, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    if not geom.whole():
        out[~geom.seen_mask()] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def box_to_image(box: Sequence[float], geom: Geometry) -> list[float]:
    """A box x0, y0, x1, y1 in model input pixels as image pixels, clipped to the image."""
    (h, w), (rh, rw), (oy, ox) = geom.image, geom.resized, geom.offset
    x0, y0, x1, y1 = (float(v) for v in box)
    to_x = lambda u: min(max((u - ox) * w / rw, 0.0), float(w))  # noqa: E731
    to_y = lambda v: min(max((v - oy) * h / rh, 0.0), float(h))  # noqa: E731
    return [to_x(x0), to_y(y0), to_x(x1), to_y(y1)]


# --- applying it ------------------------------------------------------------------------------------------------
def _interpolation(spec: Preprocessing, shrinking: bool) -> int:
    chosen = INTERPOLATIONS[spec.interpolation]
    if chosen is None:
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return chosen


def _resized(rgb: np.ndarray, size: tuple[int, int], spec: Preprocessing) -> np.ndarray:
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=_interpolation(spec, rgb.shape[0] > h))


def place(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The image's pixels as the model input's (H, W, 3) uint8: resized, and cropped or padded."""
    g = geometry(rgb.shape[:2], spec)
    resized = _resized(rgb, g.resized, spec)
    (ih, iw), (oy, ox) = g.input, g.offset
    if spec.resize == "letterbox":
        canvas = np.full((ih, iw, rgb.shape[2]), int(np.clip(round(spec.pad_value), 0, 255)), np.uint8)
        canvas[oy:oy + g.resized[0], ox:ox + g.resized[1]] = resized
        return canvas
    return resized[-oy:-oy + ih, -ox:-ox + iw]


def preprocess(rgb: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """One RGB uint8 image as the model's input (1, ...) in its layout and dtype."""
    placed = place(rgb, spec)
    if spec.channels == 1:
        pixels = cv2.cvtColor(np.ascontiguousarray(placed), cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        pixels = placed[:, :, ::-1] if spec.bgr else placed
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
