"""One runner for every reverse model: `onnxcam.gradients` and `onnxcam.relevance` return scores, activations and
the gradients (or LRP relevance) at chosen layers from one onnxruntime run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcam.errors import InputError, LayerError
from onnxcam.facts import model_facts
from onnxcam.graph.contract import PREFIXES, SCORES, SEED, LrpOptions, ModelSource, Shape, TensorInfo, tensor_infos
from onnxcam.runtime import Session, cached_session, choose_providers, model_identity, shared_session

if TYPE_CHECKING:
    import onnx

Targets = None | int | Sequence[int] | np.ndarray | Sequence[Any]  # Any: onnxcam.targets objects


@dataclass
class ReverseResult:
    """One run of a reverse model: scores, activations and what the reverse pass carried back to them."""
    scores: np.ndarray                      # (N, K): the differentiated scores (pre-softmax logits by default)
    activations: dict[str, np.ndarray]      # tensor name -> activation
    values: dict[str, np.ndarray]           # tensor name -> d score[target] / d activation, or the LRP relevance
    input_values: np.ndarray | None         # the same at the image input (like x), when asked for
    targets: np.ndarray | None = None       # (N,) class explained per image, for (N, K) scores
    kind: str = "gradient"                  # "gradient" or "relevance"

    # The names users know: res.gradients / res.input_gradient, or res.relevance / res.input_relevance.
    @property
    def gradients(self) -> dict[str, np.ndarray]:
        return self.values

    @property
    def input_gradient(self) -> np.ndarray | None:
        return self.input_values

    @property
    def relevance(self) -> dict[str, np.ndarray]:
        return self.values

    @property
    def input_relevance(self) -> np.ndarray | None:
        return self.input_values


GradientResult = RelevanceResult = ReverseResult  # the names of earlier versions


class ReverseRunner:
    """A model rewritten once for a set of layers, with its session; `run` is one onnxruntime call per batch.

    Gradients by default; with `lrp` (LrpOptions: rule "z+" | "alphabeta" | "epsilon", alpha, beta, epsilon, bias,
    first_layer) the LRP relevance of that rule table, starting from `initial`: "contrastive" (as in Relevance-CAM),
    "score" (one-hot times the target's score) or "seed" (targets given as a float array are the initial relevance).
    """

    def __init__(self, model: ModelSource, layers: str | Sequence[str] | None = None,
                 with_input: bool = False, output: str | None = None, probabilities: bool = False,
                 providers: Sequence[str] | None = None, device: str = "auto", preloaded: bool = False,
                 lrp: LrpOptions | None = None, initial: str = "contrastive", identity: str | None = None,
                 source: object = None, view: tuple[dict[str, Any], Callable[[], onnx.ModelProto], str] | None = None
                 ) -> None:
        # preloaded: `model` is a ModelProto that load_model already returned (skips a second normalisation);
        # identity: the source's runtime.model_identity when the caller has it (the cache key of the rewrite);
        # source: the file the model came from, when `model` is already loaded (the cache records it);
        # view: what a ModelView knows (its survey answer, a getter of the model it describes, its facts' scope)
        self.facts = model_facts(model, identity)
        self.identity = self.facts.identity
        if view is None:
            loaded = model if preloaded and not isinstance(model, (str, os.PathLike, bytes)) else None
            get_model: Callable[[], onnx.ModelProto] = (lambda: loaded) if loaded is not None else \
                (lambda: self.facts.model)
            scope = f"runner {output!r} {probabilities}"
            view = (self.facts.ask(f"{scope}: survey", lambda: _survey(get_model(), output, probabilities)),
                    get_model, scope)
        known, self._model, scope = view
        self.tensors: list[TensorInfo] = tensor_infos(known)
        self.score, self.output = known["score"], known["output"]
        if layers is None and known["default_layer"] is None:
            raise LayerError(known["default_layer_problem"])
        self.default_layer: str = known["default_layer"]
        self.layers = [self.default_layer] if layers is None else [layers] if isinstance(layers, str) else list(layers)
        names = {t.name for t in self.tensors}
        if not all(layer in names for layer in self.layers):
            from onnxcam.graph.reverse.model import check_tensors

            check_tensors(self.model, self.layers)  # says which name is unknown, and the close ones
        self.input_name: str = known["input_name"]
        self.with_input = with_input
        self.kind = "gradient" if lrp is None else "relevance"
        self.input_shape: Shape | None = next(t.shape for t in self.tensors if t.name == self.input_name)
        self.score_shape: Shape | None = None if known["output_shape"] is None else tuple(known["output_shape"])
        self.providers = choose_providers(device, providers)
        self.session = cached_session(
            self.identity, (self.kind, self.layers, with_input, output, probabilities, lrp, initial),
            lambda: _reverse_model(self.model, self.layers, with_input, output, probabilities, lrp, initial),
            self.providers, source=model if source is None else source)
        self._input_dtype = next(i for i in self.session.get_inputs() if i.name == self.input_name).type
        # a float64 model takes a float64 seed
        self._seed_dtype = seed_dtype(self.session)
        self._quantized = bool(known["quantized"])

    @property
    def model(self) -> onnx.ModelProto:
        """The model the runner rewrites (parsed on first use: a cached rewrite needs none of it)."""
        return self._model()

    def run(self, x: np.ndarray, targets: Targets = None) -> ReverseResult:
        x = check_input(x, self.input_name, self.input_shape, self._input_dtype)
        seed = class_seed(targets, x.shape[0], self.score_shape, self.output).astype(self._seed_dtype, copy=False)
        prefix = PREFIXES[self.kind]
        names = [SCORES] + self.layers + [prefix + name for name in self.layers]
        if self.with_input:
            names.append(prefix + self.input_name)
        values = self.session.run(names, {self.input_name: x, SEED: seed})
        scores, count = values[0], len(self.layers)
        activations = dict(zip(self.layers, values[1:1 + count]))
        carried = dict(zip(self.layers, values[1 + count:1 + 2 * count]))
        at_input = values[-1] if self.with_input else None
        if self._quantized and self.kind == "gradient":  # a clipping calibration gives all-zero gradients: say so
            from onnxcam.graph.quantized import saturated_images, saturation_warning

            saturated = saturated_images(activations, carried, seed, scores.ndim == 2)
            if saturated:
                warnings.warn(saturation_warning(saturated, self.layers), RuntimeWarning, stacklevel=2)
        return ReverseResult(scores, activations, carried, at_input, explained_classes(seed, scores), self.kind)

def _survey(model: onnx.ModelProto, output: str | None, probabilities: bool) -> dict[str, Any]:
    from onnxcam.graph.survey import survey

    return survey(model, output, probabilities)


def _reverse_model(model: onnx.ModelProto, layers: list[str], with_input: bool, output: str | None,
                   probabilities: bool, lrp: LrpOptions | None, initial: str) -> onnx.ModelProto:
    from onnxcam.graph.reverse.model import reverse_model

    return reverse_model(model, layers, with_input, output, probabilities, lrp, initial).model


def class_seed(targets: Targets, batch: int, score_shape: Shape | None, output: str) -> np.ndarray:
    """The seed input of a rewritten model: a float array given as targets is the seed itself; class ids become
    one-hot rows; None gives rows of zeros (the graph then picks each image's predicted class)."""
    if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.floating):  # a raw seed
        if targets.shape[0] != batch:
            raise InputError(f"the seed has {targets.shape[0]} rows for a batch of {batch}")
        return targets.astype(np.float32)
    if score_shape is None or len(score_shape) != 2:
        raise InputError(f"the score output '{output}' has shape {_describe(score_shape)}, not (N, classes); "
                         "pass targets as a seed array shaped like that output")
    if not isinstance(score_shape[1], int):
        raise InputError("the number of classes is dynamic in this model; pass a seed array as targets")
    seed = np.zeros((batch, score_shape[1]), np.float32)
    ids = target_ids(targets, batch, score_shape[1])
    if ids is not None:
        seed[np.arange(batch), ids] = 1.0
    return seed


def explained_classes(seed: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """The class each row of a run explained: the seed's selection, or the predicted class for a zero row."""
    if scores.ndim != 2:
        return None
    return np.where(np.abs(seed).max(axis=1) > 0, seed.argmax(axis=1), scores.argmax(axis=1))


def target_ids(targets: Targets, batch: int, classes: int) -> np.ndarray | None:
    """Validated class indices, one per image (None: the predicted class)."""
    if targets is None:
        return None
    ids = np.full(batch, targets) if np.isscalar(targets) else np.asarray(targets).reshape(-1)
    if ids.shape[0] != batch:
        raise InputError(f"{ids.shape[0]} targets given for a batch of {batch} images; give one per image "
                         "or a single int")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"targets must be class indices (ints), got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= classes)]
    if bad.size:
        raise InputError(f"target class {int(bad[0])} is out of range: the model has {classes} classes "
                         f"(0..{classes - 1})")
    return ids.astype(np.int64)


NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(uint8)": np.uint8}


def seed_dtype(session: Session) -> np.dtype:
    """The dtype of a rewritten model's seed input (a float64 model takes a float64 seed)."""
    return np.dtype(NUMPY_DTYPES.get(next(i for i in session.get_inputs() if i.name == SEED).type, np.float32))


def check_input(x: Any, name: str, expected: Shape | None, onnx_type: str) -> np.ndarray:
    """x as a contiguous array of the input's dtype; an InputError names the expected shape if it does not fit."""
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"x has dtype {array.dtype}; expected a numeric array")
    if expected is not None:
        if array.ndim != len(expected):
            raise InputError(f"x has shape {array.shape} but input '{name}' expects {_describe(expected)} "
                             "(batch first, in the model's own layout)")
        for axis, (got, want) in enumerate(zip(array.shape, expected)):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(f"x has shape {array.shape} but input '{name}' expects {_describe(expected)}: "
                                 f"axis {axis} must be {want}{_layout_hint(array.shape, expected)}")
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES.get(onnx_type, np.float32))


def _layout_hint(got: tuple[int, ...], expected: Shape) -> str:
    """Name the likely mistake when x is the right image in the other layout."""
    if len(got) != 4:
        return ""
    def fits(perm: tuple[int, ...]) -> bool:
        return all(not isinstance(expected[i], int) or got[p] == expected[i] for i, p in enumerate(perm))
    if fits((0, 2, 3, 1)):
        return " (x looks NCHW but the model takes NHWC: use x.transpose(0, 2, 3, 1))"
    if fits((0, 3, 1, 2)):
        return " (x looks NHWC but the model takes NCHW: use x.transpose(0, 3, 1, 2))"
    return ""


def _describe(shape: Shape | None) -> str:
    if shape is None:
        return "an unknown shape"
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


def gradients(model: ModelSource, x: np.ndarray, layers: str | Sequence[str] | None = None, targets: Targets = None,
              input_gradient: bool = False, **options: Any) -> ReverseResult:
    """Scores, activations at `layers` (default: the last spatial feature map) and the gradients of the target
    score w.r.t. them (and w.r.t. x with `input_gradient`), in one onnxruntime run.

    targets: None (predicted class per image), an int, one int per image, or a float seed array shaped like the
    scores (the gradient of sum(seed * scores) is returned). The rewritten model's session is kept for later calls
    with the same model and request (`onnxcam.clear_cache()` releases it): a loop pays its set-up once.
    """
    identity = model_identity(model)
    key = ("gradient", identity, _hashable(layers), input_gradient, repr(sorted(options.items())))
    runner = shared_session(key, lambda: ReverseRunner(model, layers, input_gradient, identity=identity, **options))
    return runner.run(x, targets)


def relevance(model: ModelSource, x: np.ndarray, targets: Targets = None, layers: str | Sequence[str] | None = None,
              input_relevance: bool = False, rule: str = "z+", alpha: float = 1.0, beta: float = 0.0,
              epsilon: float = 1e-9, bias: bool = False, first_layer: str = "zb", initial: str = "contrastive",
              **options: Any) -> ReverseResult:
    """Scores, activations at `layers` (default: the last spatial feature map) and the LRP relevance reaching them
    (and the image input with `input_relevance`: a pixel-level map), in one onnxruntime run.

    targets: None (predicted class per image), an int, one int per image, or a float array shaped like the scores
    (a class selection; with initial="seed", the initial relevance itself). See `ReverseRunner` for the rest.
    """
    lrp = LrpOptions(rule, alpha, beta, epsilon, bias, first_layer)
    identity = model_identity(model)  # the session is kept for later calls, as in onnxcam.gradients
    key = ("relevance", identity, _hashable(layers), input_relevance, lrp, initial, repr(sorted(options.items())))
    runner = shared_session(key, lambda: ReverseRunner(model, layers, input_relevance, lrp=lrp, initial=initial,
                                                       identity=identity, **options))
    return runner.run(x, targets)


def _hashable(layers: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    return layers if layers is None or isinstance(layers, str) else tuple(layers)
