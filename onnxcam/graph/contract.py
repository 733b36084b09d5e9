"""What the layers above the graph code share with it, importable without onnx.

A warm run (every rewritten graph and every model fact already in the cache) never parses the model and never
imports onnx, whose import alone costs more than a ResNet-50 forward. So the names that the layers above use in
their signatures and in their runs (the tensor catalogue's entries, a detector's scales, LRP's options, the names
of a rewritten model's extra inputs and outputs) live here, and the graph modules that make them re-export them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

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

LINEAR_RULES = ("z+", "alphabeta", "epsilon")
FIRST_LAYER_RULES = ("zb", "same")


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
