"""CAM methods: small NumPy functions found through a registry.

A method sees `Evidence` (activations, targets and scores always; gradients, relevance and callables that run parts
of the model only when it names them in `needs`, so evidence.py builds nothing it does not read) and returns one of:
- channel weights (N, K): the map is sum_k w_k A_k;
- weighted activations (N, K, h, w): the map is their sum over channels;
- maps (N, h, w) at the layer's resolution, or (N, H, W) at the input's.
The explainer applies the shared conventions afterwards (eigen_smooth, ReLU, min-max, resize), as
pytorch-grad-cam does, so a method only says how its weights come about.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcam.errors import InputError

# Evidence every method gets; the other fields are built only for methods that name them in `needs`.
CORE_FIELDS = ("activations", "targets", "scores", "x", "layer", "input_size", "input_layout", "target_objects",
               "output_shape")
# What each optional field costs: a reverse run of its kind, or a callable / value made for the method.
RUN_FIELDS = {"gradients": "gradient", "relevance": "relevance", "input_gradient": "fullgrad",
              "bias_gradients": "fullgrad"}


@dataclass
class Evidence:
    activations: np.ndarray                 # (N, K, h, w), channels first whatever the model's layout
    targets: np.ndarray                     # (N,) class per image
    scores: np.ndarray                      # (N, classes) scores of the unmodified input
    x: np.ndarray                           # the model input, in the model's layout
    layer: str
    input_size: tuple[int, int] = (0, 0)    # (H, W) of the model input
    input_layout: str = "NCHW"
    # onnxcam.targets objects, one per image (segmentation, detection, similarity), bound to the clean output;
    # None for class targets. output_shape: one image's output shape, to unflatten (B, -1) scores for them.
    target_objects: list[Any] | None = None
    output_shape: tuple[int, ...] | None = None
    # --- built only when a method's `needs` names them ---
    gradients: np.ndarray | None = None     # d score[target] / d activations, like activations
    relevance: np.ndarray | None = None     # LRP relevance reaching the layer, like activations
    input_gradient: np.ndarray | None = None  # d score[target] / d x, like x (FullGrad)
    bias_gradients: list[tuple[np.ndarray, np.ndarray]] | None = None  # (bias (K,), d score / d output) per layer
    head_weights: np.ndarray | None = None  # (classes, K): a GAP + linear head right after the layer (CAM)
    baseline: np.ndarray | None = None      # the model input of a black image, broadcastable to x
    model_id: str = ""                      # content hash of the model: files fitted to it (BroadCAM) check it
    graph_outputs: tuple[str, ...] = ()     # the model's output names (methods that read a model-provided map)
    # Callables into the model:
    scores_of: Callable[[np.ndarray], np.ndarray] | None = None        # inputs (B, ...) -> scores (B, classes)
    # head_scores(features (B,K,h,w), image i) -> scores; head_scores(features (1,K,h,w), i, scale (B,K,1,1))
    # scores B copies of the features times each scale row (made inside the runtime: no B-fold copy in NumPy)
    head_scores: Callable[..., np.ndarray] | None = None
    # channel_ablation(image i, keep (B, K)) -> scores with the layer's channels scaled after global pooling
    channel_ablation: Callable[[int, np.ndarray], np.ndarray] | None = None
    gradients_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None  # inputs -> (A, G)
    # input_gradients_of(inputs (B, ...), targets (B,) class ids) -> (scores (B, classes), d score[target] / d inputs)
    input_gradients_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    # tensors_of(names) -> {name: value} of any tensors (graph outputs or internal) for x, in their own layout
    tensors_of: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None
    # Set by the caller, not built from `needs`: progress(fraction of this method call done, 0..1). Methods with
    # long inner loops (masked batches, channel chunks, iterations) report through `done` so a bar can move.
    progress: Callable[[float], None] | None = None

    def done(self, fraction: float) -> None:
        """Tell the progress callback (if any) that `fraction` of this method call is done."""
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, float(fraction))))

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
    needs: tuple[str, ...]  # the Evidence fields it reads beyond CORE_FIELDS: only those are built
    cost: str          # passes per image, for `onnxcam methods`
    paper: str

    @property
    def run(self) -> str:
        """The one model run its evidence comes from: "gradient", "relevance", "fullgrad" or "forward"."""
        return next((RUN_FIELDS[f] for f in self.needs if f in RUN_FIELDS), "forward")

    @property
    def gradient_free(self) -> bool:
        """Whether it works without any gradient rule: no reverse run, and no callable that differentiates."""
        return self.run == "forward" and not {"gradients_of", "input_gradients_of"} & set(self.needs)

    @property
    def options(self) -> frozenset[str]:
        """The options it takes: its function's keyword arguments (and eigen_smooth's sign, for every method)."""
        return _parameters(self.fn) | {"eigen_sign"}

    def accepts(self, options: dict[str, Any], strict: bool = True, own: bool = False) -> dict[str, Any]:
        """The subset of `options` it takes; with `strict`, an unknown name is an error that lists the accepted
        ones and suggests the closest (a typo would otherwise be ignored). `own`: only its function's arguments."""
        if own:
            return {k: v for k, v in options.items() if k in _parameters(self.fn)}
        unknown = sorted(set(options) - self.options)
        if unknown and strict:
            raise InputError(f"unknown option(s) {', '.join(unknown)} for method '{self.name}'"
                             f"{_did_you_mean(unknown[0], self.options)}; it accepts: "
                             f"{', '.join(sorted(self.options - {'eigen_sign'})) or 'none'}")
        return {k: v for k, v in options.items() if k in self.options}


METHODS: dict[str, Method] = {}


def method(name: str, family: str, needs: Sequence[str], cost: str, paper: str) -> Callable[[MethodFn], MethodFn]:
    """Register `fn` as method `name`; `needs`: the Evidence fields it reads beyond CORE_FIELDS."""
    unknown = set(needs) - set(Evidence.__dataclass_fields__) | set(needs) & set(CORE_FIELDS)
    if unknown:
        raise ValueError(f"method {name}: needs {sorted(unknown)} are not optional Evidence fields")

    def register(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, family, tuple(needs), cost, paper)
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
    raise InputError(f"unknown method '{name}'{_did_you_mean(name, valid)}; valid methods: {', '.join(valid)}")


def method_names() -> list[str]:
    """Every method name, composed ones as their pattern (conceptor-<base>)."""
    return sorted(METHODS) + [c.listing.name for c in COMPOSERS.values()]


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.cache
def _parameters(fn: Any) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters) - {"ev"}


def _load_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_method_modules()
