"""What the layers above the graph code share with it, importable without loading the graph code.

A warm run (every rewritten graph and every model fact already in the cache) never parses the model and never
loads the graph code (nor onnx's messages and extension). So the names that the layers above use in
their signatures and in their runs (the tensor catalogue's entries, a detector's scales, LRP's options, the names
of a rewritten model's extra inputs and outputs) live here, and the graph modules that make them re-export them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from onnxcam.errors import InputError

if TYPE_CHECKING:
    from onnx import ModelProto

Dim = int | str | None
Shape = tuple[Dim, ...]
ModelSource = Union[str, os.PathLike, bytes, "ModelProto"]

# a rewritten model's seed input, its scores output and the prefixes of what it carries back to a tensor
SEED = "onnxcam_seed"
SCORES = "onnxcam_scores"
GRAD_PREFIX = "onnxcam_grad:"
RELEVANCE_PREFIX = "onnxcam_relevance:"
PREFIXES = {"gradient": GRAD_PREFIX, "relevance": RELEVANCE_PREFIX}
# a cut head's per-channel scale input (onnxcam.graph.head)
SCALE = "onnxcam_scale"
# ONNX element types of image inputs, as onnxruntime names them
INPUT_TYPES = {1: "tensor(float)", 11: "tensor(double)", 10: "tensor(float16)", 2: "tensor(uint8)"}



def model_name(source: ModelSource) -> str:
    """How messages and reports name a model: its path, or that it came from memory."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory model>"


LINEAR_RULES = ("z+", "alphabeta", "epsilon")
FIRST_LAYER_RULES = ("zb", "same")


def guess_layout(shape: Shape | None) -> str | None:
    """Layout of an image input from its shape alone: channels are rarely the two equal dims.

    Only graph inputs are guessed; inside the graph the layout flows from convolution-like producers, so attention
    maps (N, heads, L, L) are never taken for images.
    """
    if shape is None or len(shape) != 4:
        return None
    _, a, b, c = shape
    colour_a, colour_c = a in (1, 3, 4), c in (1, 3, 4)
    if colour_c and not colour_a:
        return "NHWC"
    if colour_a and not colour_c:
        return "NCHW"
    if isinstance(a, int) and b == c:
        return "NCHW"
    if isinstance(c, int) and a == b:
        return "NHWC"
    return None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    op_type: str      # producing op ("" for a graph input)
    node: str         # producing node's name
    shape: Shape | None
    float: bool
    layout: str | None  # "NCHW" or "NHWC" for spatial feature maps, else None

    @property
    def spatial(self) -> bool:
        return self.layout is not None


@dataclass(frozen=True)
class Scale:
    """One feature map of a multi-scale head and the output rows it predicts."""
    feature: str             # the tensor the scale's head reads (the neck's output at this stride)
    shape: Shape             # its static shape
    layout: str              # "NCHW" or "NHWC"
    grid: tuple[int, int]    # (h, w) cells
    stride: tuple[int, int]  # input pixels per cell, (vertical, horizontal)
    start: int               # first output row of this scale
    stop: int                # one past its last row
    anchors: int             # rows per cell (YOLOv5: 3 anchors; anchor-free heads: 1)

    @property
    def rows(self) -> range:
        return range(self.start, self.stop)

    def cell(self, row: int) -> tuple[int, int, int]:
        """(anchor, y, x) of an output row of this scale, rows ordered anchor-major as YOLO heads flatten them."""
        index = row - self.start
        cells = self.grid[0] * self.grid[1]
        anchor, position = divmod(index, cells)
        return anchor, position // self.grid[1], position % self.grid[1]


@dataclass(frozen=True)
class LrpOptions:
    """How relevance crosses the layers with weights (Conv, Gemm, MatMul with a constant operand).

    rule: "z+" (alpha=1, beta=0: only positive contributions; the official Relevance-CAM choice), "alphabeta"
      (alpha * positive share - beta * negative share; alpha - beta = 1 conserves relevance) or "epsilon"
      (R_x = x * W^T (R / (z + epsilon * sign(z))), signed contributions).
    epsilon: stabiliser added to every denominator (z+ / alpha-beta: 1e-9 as in the official code).
    bias: include the bias in the denominators (it then absorbs its share of relevance); the official code does not.
    first_layer: "zb" applies the z^B (bounded input) rule at convolutions that read the image, with the image's
      own minimum and maximum as bounds (the official code); "same" uses `rule` there too.
    """

    rule: str = "z+"
    alpha: float = 1.0
    beta: float = 0.0
    epsilon: float = 1e-9
    bias: bool = False
    first_layer: str = "zb"

    def __post_init__(self) -> None:
        if self.rule not in LINEAR_RULES:
            raise InputError(f"unknown relevance rule '{self.rule}'; use one of {', '.join(LINEAR_RULES)}")
        if self.first_layer not in FIRST_LAYER_RULES:
            raise InputError(f"unknown first_layer rule '{self.first_layer}'; use one of "
                             f"{', '.join(FIRST_LAYER_RULES)}")
        if self.epsilon < 0:
            raise InputError(f"epsilon must be >= 0, got {self.epsilon}")


@dataclass(frozen=True)
class InputSummary:
    """One graph input that takes data (initializers listed as inputs are weights, not inputs)."""
    name: str
    elem_type: int                # ONNX element type (0: not a tensor)
    dtype: str | None             # its NumPy name ("float32"), None where NumPy has none
    dims: tuple[Dim, ...]         # ints, symbolic names or None
    rescaling: str | None = None  # how the graph rescales raw pixels read from it ("Div by 255"), if it does


@dataclass(frozen=True)
class ModelSummary:
    """What the layers above read from a model besides its tensors: metadata, data inputs, outputs and the op
    types present. JSON-able (`to_json` / `from_json`), so the cache keeps it."""
    metadata: dict[str, str]
    inputs: tuple[InputSummary, ...]
    outputs: tuple[str, ...]
    ops: frozenset[str]

    def input(self, name: str) -> InputSummary:
        return next(i for i in self.inputs if i.name == name)

    def to_json(self) -> dict[str, object]:
        return {"metadata": self.metadata, "outputs": list(self.outputs), "ops": sorted(self.ops),
                "inputs": [[i.name, i.elem_type, i.dtype, list(i.dims), i.rescaling] for i in self.inputs]}

    @classmethod
    def from_json(cls, value: dict) -> ModelSummary:
        inputs = tuple(InputSummary(name, int(elem), dtype, tuple(dims), rescaling)
                       for name, elem, dtype, dims, rescaling in value["inputs"])
        return cls(dict(value["metadata"]), inputs, tuple(value["outputs"]), frozenset(value["ops"]))


def tensor_infos(answer: dict[str, Any]) -> list[TensorInfo]:
    """The catalogue from onnxcam.graph.survey.survey's JSON answer."""
    return [TensorInfo(name, op, node, None if shape is None else tuple(shape), bool(is_float), layout)
            for name, op, node, shape, is_float, layout in answer["tensors"]]


def scales_from(answer: Sequence[dict[str, Any]]) -> list[Scale]:
    """Scales from their JSON form (onnxcam.graph.survey.scales)."""
    return [Scale(**{**s, "shape": tuple(s["shape"]), "grid": tuple(s["grid"]), "stride": tuple(s["stride"])})
            for s in answer]
