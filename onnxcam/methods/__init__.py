"""CAM methods: small NumPy functions found through a registry.

A method sees `Evidence` (activations, gradients, targets and callables that run parts of the model) and returns
one of:
- channel weights (N, K): the map is sum_k w_k A_k;
- weighted activations (N, K, h, w): the map is their sum over channels;
- maps (N, h, w) at the layer's resolution, or (N, H, W) at the input's.
The explainer applies the shared conventions afterwards (eigen_smooth, ReLU, min-max, resize), as
pytorch-grad-cam does, so a method only says how its weights come about.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcam.errors import InputError


@dataclass
class Evidence:
    activations: np.ndarray                 # (N, K, h, w), channels first whatever the model's layout
    gradients: np.ndarray | None            # d score[target] / d activations, same shape; None for gradient-free
    targets: np.ndarray                     # (N,) class per image
    scores: np.ndarray                      # (N, classes) scores of the unmodified input
    x: np.ndarray                           # the model input, in the model's layout
    layer: str
    # Callables into the model, provided by the explainer:
    scores_of: Callable[[np.ndarray], np.ndarray] | None = None        # inputs (B, ...) -> scores (B, classes)
    # head_scores(features (B,K,h,w), image i) -> scores; head_scores(features (1,K,h,w), i, scale (B,K,1,1))
    # scores B copies of the features times each scale row (made inside the runtime: no B-fold copy in NumPy)
    head_scores: Callable[..., np.ndarray] | None = None
    gradients_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None  # inputs -> (A, G)
    # input_gradients_of(inputs (B, ...), targets (B,) class ids) -> (scores (B, classes), d score[target] / d inputs)
    input_gradients_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    # tensors_of(names) -> {name: value} of any tensors (graph outputs or internal) for x, in their own layout;
    # graph_outputs: the model's output names (for methods that read a model-provided map, e.g. attention)
    tensors_of: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None
    graph_outputs: tuple[str, ...] = ()
    model_id: str = ""                      # content hash of the model: files fitted to it (BroadCAM) check it
    input_size: tuple[int, int] = (0, 0)    # (H, W) of the model input
    input_layout: str = "NCHW"
    # the model input of a black image, broadcastable to x: masking in pixel space is baseline + S * (x - baseline)
    baseline: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # method-specific evidence (e.g. head weights for CAM)
    # onnxcam.targets objects, one per image (segmentation, detection, similarity), bound to the clean output;
    # None for class targets. output_shape: one image's output shape, to unflatten (B, -1) scores for them.
    target_objects: list[Any] | None = None
    output_shape: tuple[int, ...] | None = None

    def target_scores(self, outputs: np.ndarray, image: int) -> np.ndarray:
        """(B,) the value of image `image`'s target on a batch of outputs (B, ...) (e.g. of masked inputs):
        the target class's score, or the target object's value."""
        if self.target_objects is None:
            return np.asarray(outputs).reshape(len(outputs), -1)[:, self.targets[image]]
        shape = self.output_shape or np.shape(outputs)[1:]
        return self.target_objects[image].values(np.asarray(outputs).reshape((len(outputs), *shape)))


MethodFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    family: str        # "gradient", "activation", "perturbation", "research", "baseline"
    needs: str         # "gradients", "input_gradient" or "activations": what one run must return
    cost: str          # passes per image, for `onnxcam methods`
    paper: str


METHODS: dict[str, Method] = {}


def method(name: str, family: str, needs: str, cost: str, paper: str) -> Callable[[MethodFn], MethodFn]:
    def register(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, family, needs, cost, paper)
        return fn
    return register


@dataclass(frozen=True)
class Composer:
    """Methods built on any base method, named '<prefix>-<base>' (e.g. conceptor-gradcam)."""
    listing: Method                        # the one row for tables, named '<prefix>-<base>'
    compose: Callable[[Method], Method]    # base method -> the composed method


COMPOSERS: dict[str, Composer] = {}        # prefix -> composer


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    prefix, _, base = name.partition("-")
    if prefix in COMPOSERS and base:
        return COMPOSERS[prefix].compose(get_method(base))
    valid = sorted(METHODS) + [c.listing.name for c in COMPOSERS.values()]
    raise InputError(f"unknown method '{name}'; valid methods: {', '.join(valid)}")


def _load_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_method_modules()
