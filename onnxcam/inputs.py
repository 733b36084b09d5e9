"""The model a job explains: one image input, checked, with any other input given a value.

A model with inputs beside the image (an image-size or scale-factor input of a detector; constants an exporter
left as inputs) runs when each of them has a value: `--input NAME=FILE.npy` (API: `inputs={"NAME": array or
path}`), else the model's `input_defaults` metadata (JSON {name: nested list}). The values are folded into the
graph as constants (onnxcam.graph.inputs). Otherwise the model is refused before any image is read, in one line
that names its inputs; so is a model whose input is not a batch of images (token ids, tabular rows).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcam.errors import InputError, ModelError
from onnxcam.facts import model_facts
from onnxcam.files import printable
from onnxcam.graph.contract import InputSummary, ModelSource, ModelSummary
from onnxcam.graph.summary import summary_of

if TYPE_CHECKING:
    import onnx

DEFAULTS_KEY = "input_defaults"
IMAGE_TYPES = (1, 10, 11, 2)  # ONNX element types: float, float16, double, uint8
InputValue = str | os.PathLike | np.ndarray


@dataclass
class PreparedModel:
    """What the Explainer is made from, and what was folded in."""
    model: ModelSource                                  # the source itself when nothing was folded
    image: str                                          # the image input's name
    folded: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> {"from", "shape", "sha256"}
    notes: list[str] = field(default_factory=list)      # metadata that could not be read, said once


def prepare_model(source: ModelSource, given: Mapping[str, InputValue] | None = None) -> PreparedModel:
    """Check `source`'s inputs and fold the values of the ones beside the image; see the module docstring."""
    given = dict(given or {})
    raw = model_facts(source).summary  # from the cache when the model was seen before: nothing is parsed
    inputs = list(raw.inputs)
    names = [i.name for i in inputs]
    for name in given:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{printable(close[0])}'?)" if close else ""
            raise InputError(f"--input {printable(name)}: the model has no input of that name{hint}; its inputs "
                             f"are {', '.join(printable(n) for n in names)}")
    defaults, notes = _metadata_defaults(raw)
    image = _image_input(inputs, given)
    check_image_input(raw, image)
    others = [i for i in inputs if i.name != image]
    missing = [i for i in others if i.name not in given and i.name not in defaults]
    if missing:
        wanted = "; ".join(f"{printable(i.name)}: {_signature_text(i)}" for i in missing)
        raise InputError(f"the model has {len(inputs)} inputs ({', '.join(printable(n) for n in names)}); onnxcam "
                         f"feeds the image to '{printable(image)}': give the other{'s' if len(missing) > 1 else ''} "
                         f"with --input NAME=FILE.npy ({wanted}), or export the model with them folded in as "
                         "constants")
    if not others:
        return PreparedModel(source, image, notes=notes)
    values, folded = {}, {}
    for value_info in others:
        name = value_info.name
        if name in given:
            array, origin = _read_value(name, given[name]), _origin(given[name])
        else:
            array, origin = np.asarray(defaults[name]), f"model metadata '{DEFAULTS_KEY}'"
        values[name] = _fit(value_info, array, origin)
        folded[name] = {"from": origin, "shape": list(values[name].shape),
                        "sha256": hashlib.sha256(np.ascontiguousarray(values[name]).tobytes()).hexdigest()}
    from onnxcam.graph.inputs import fold_inputs
    from onnxcam.graph.load import load_model

    return PreparedModel(fold_inputs(load_model(source), values, image), image, folded, notes)


def check_image_input(model: ModelSummary | onnx.ModelProto, name: str) -> None:
    """Refuse an input that is not a batch of images: rank 4, float or uint8."""
    value = summary_of(model).input(name)
    if value.elem_type in IMAGE_TYPES and len(value.dims) == 4:
        return
    dims = value.dims if value.elem_type else ()
    looks = ("; it looks like a text model (token ids)" if value.dtype is not None and
             np.dtype(value.dtype).kind in "iu" and len(dims) <= 3 else "")
    if value.elem_type in IMAGE_TYPES and len(dims) == 3 and dims[0] in (1, 3):
        # torchvision's Faster R-CNN / RetinaNet / Mask R-CNN exports: one unbatched image, resize, RoIAlign and NMS
        # inside the graph, only post-NMS boxes out
        looks = ("; it takes one unbatched image (C, H, W), as torchvision's detection exports (Faster R-CNN, "
                 "RetinaNet) do: onnxcam does not explain those (their resize, RoIAlign and NMS run inside the "
                 "graph); export the backbone and heads before post-processing, with a batch axis")
    raise ModelError(f"the model's input '{printable(name)}' is {_signature_text(value)}: onnxcam explains image "
                     "models, whose input is a batch of images, float or uint8, (N, C, H, W) or (N, H, W, C)"
                     f"{looks}")


def _image_input(inputs: list[InputSummary], given: Mapping[str, Any]) -> str:
    """The input the images go to: the only one without a given value, else the first rank-4 float or uint8 one
    among those, else the first of them."""
    free = [i for i in inputs if i.name not in given]
    if not free:
        raise InputError("every input of the model was given with --input; leave out the image input, onnxcam "
                         "feeds it")
    for value in free:
        if value.elem_type in IMAGE_TYPES and len(value.dims) == 4:
            return value.name
    return free[0].name


def _metadata_defaults(model: ModelSummary) -> tuple[dict[str, Any], list[str]]:
    raw = model.metadata.get(DEFAULTS_KEY)
    if not raw:
        return {}, []
    try:
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object {input name: value}")
        return {str(k): v for k, v in value.items()}, []
    except ValueError as e:
        return {}, [f"the model's metadata '{DEFAULTS_KEY}' cannot be read ({e}); going on without it"]


def _origin(value: InputValue) -> str:
    return "an array" if isinstance(value, np.ndarray) else f"file {os.fsdecode(value)}"


def _read_value(name: str, value: InputValue) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.load(value, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"--input {printable(name)}={printable(os.fsdecode(value))}: cannot read it as a .npy "
                         f"array ({e})") from None


def _fit(value_info: InputSummary, array: np.ndarray, origin: str) -> np.ndarray:
    """`array` checked against the input's declared rank and fixed sizes and cast to its dtype."""
    dtype, dims = _signature(value_info)
    name = printable(value_info.name)
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and dtype.kind in "biu"):
        raise InputError(f"input '{name}' is {_signature_text(value_info)} but {origin} holds {array.dtype} values")
    if array.ndim != len(dims) or any(isinstance(d, int) and d > 0 and d != n for d, n in zip(dims, array.shape)):
        raise InputError(f"input '{name}' is {_signature_text(value_info)} but {origin} holds an array of shape "
                         f"{tuple(array.shape)}")
    return array.astype(dtype)


def _signature(value: InputSummary) -> tuple[np.dtype, tuple[int | str | None, ...]]:
    if value.dtype is None:
        raise ModelError(f"input '{printable(value.name)}' has element type {value.elem_type}, which NumPy cannot "
                         "hold")
    return np.dtype(value.dtype), value.dims


def _signature_text(value: InputSummary) -> str:
    if not value.elem_type:
        return "not a tensor"
    if value.dtype is None:
        return f"element type {value.elem_type}, ({', '.join('?' if d is None else str(d) for d in value.dims)})"
    dtype, dims = _signature(value)
    shown = ", ".join("?" if d is None else str(d) for d in dims)
    return f"{dtype.name} ({shown})"
