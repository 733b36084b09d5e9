"""`onnxcam.relevance`: LRP relevance at chosen layers (and at the input pixels) in one onnxruntime run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcam.gradients import Targets, check_input, class_seed, explained_classes, seed_dtype
from onnxcam.graph.builder import Shape, _static_shapes
from onnxcam.graph.catalogue import catalogue, default_layer, find_score
from onnxcam.graph.load import ModelSource, load_model
from onnxcam.graph.relevance import LrpOptions
from onnxcam.graph.relevance_model import RELEVANCE_PREFIX, relevance_model
from onnxcam.graph.rewrite import SCORES, SEED, check_tensors, image_input
from onnxcam.runtime import cached_session, choose_providers, model_identity, shared_session


@dataclass
class RelevanceResult:
    scores: np.ndarray                      # (N, K) scores (pre-softmax logits by default)
    activations: dict[str, np.ndarray]      # tensor name -> activation
    relevance: dict[str, np.ndarray]        # tensor name -> relevance reaching it, same shape
    input_relevance: np.ndarray | None      # like x (pixel-level relevance), when asked for
    targets: np.ndarray | None = None       # (N,) class explained per image


class RelevanceRunner:
    """A model rewritten once for relevance at a set of layers, with its session; `run` is one call per batch.

    options: how relevance crosses Conv/Gemm/MatMul (see `LrpOptions`: rule "z+" | "alphabeta" | "epsilon",
    alpha, beta, epsilon, bias, first_layer). initial: "contrastive" (default, as in Relevance-CAM), "score"
    (one-hot times the target's score) or "seed" (targets given as a float array are the initial relevance).
    """

    def __init__(self, model: ModelSource, layers: str | Sequence[str] | None = None,
                 input_relevance: bool = False, output: str | None = None, probabilities: bool = False,
                 options: LrpOptions | None = None, initial: str = "contrastive",
                 providers: Sequence[str] | None = None, device: str = "auto", preloaded: bool = False,
                 identity: str | None = None) -> None:
        self.identity = identity or model_identity(model)  # as in GradientRunner
        self.model = model if preloaded and isinstance(model, onnx.ModelProto) else load_model(model)
        score, self.output = find_score(self.model, output, probabilities)
        if layers is None:
            layers = default_layer(self.model, score, catalogue(self.model))
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        check_tensors(self.model, self.layers)
        self.input_name = image_input(self.model)
        self.input_relevance = input_relevance
        self.options = options or LrpOptions()
        shapes = _static_shapes(self.model.graph)
        self.input_shape: Shape | None = shapes.get(self.input_name)
        self.score_shape: Shape | None = shapes.get(self.output)
        request = ("relevance", self.layers, input_relevance, output, probabilities, self.options, initial)
        self.session = cached_session(self.identity, request, lambda: relevance_model(
            self.model, self.layers, input_relevance, output, probabilities, self.options, initial).model,
            choose_providers(device, providers), source=model)
        self._input_dtype = next(i for i in self.session.get_inputs() if i.name == self.input_name).type
        self._seed_dtype = seed_dtype(self.session)

    def run(self, x: np.ndarray, targets: Targets = None) -> RelevanceResult:
        x = check_input(x, self.input_name, self.input_shape, self._input_dtype)
        seed = self._seed(x.shape[0], targets)
        names = [SCORES] + self.layers + [RELEVANCE_PREFIX + name for name in self.layers]
        if self.input_relevance:
            names.append(RELEVANCE_PREFIX + self.input_name)
        values = self.session.run(names, {self.input_name: x, SEED: seed})
        scores, count = values[0], len(self.layers)
        activations = dict(zip(self.layers, values[1:1 + count]))
        relevance = dict(zip(self.layers, values[1 + count:1 + 2 * count]))
        pixels = values[-1] if self.input_relevance else None
        return RelevanceResult(scores, activations, relevance, pixels, explained_classes(seed, scores))

    def _seed(self, batch: int, targets: Targets) -> np.ndarray:
        return class_seed(targets, batch, self.score_shape, self.output).astype(self._seed_dtype, copy=False)


def relevance(model: ModelSource, x: np.ndarray, targets: Targets = None, layers: str | Sequence[str] | None = None,
              input_relevance: bool = False, rule: str = "z+", alpha: float = 1.0, beta: float = 0.0,
              epsilon: float = 1e-9, bias: bool = False, first_layer: str = "zb", initial: str = "contrastive",
              **options: object) -> RelevanceResult:
    """Scores, activations at `layers` (default: the last spatial feature map) and the LRP relevance reaching them
    (and the image input with `input_relevance`: a pixel-level map), in one onnxruntime run.

    targets: None (predicted class per image), an int, one int per image, or a float array shaped like the scores
    (a class selection; with initial="seed", the initial relevance itself). See `RelevanceRunner` for the rest.
    """
    lrp = LrpOptions(rule, alpha, beta, epsilon, bias, first_layer)
    identity = model_identity(model)  # the session is kept for later calls, as in onnxcam.gradients
    key = ("relevance", identity, layers if layers is None or isinstance(layers, str) else tuple(layers),
           input_relevance, lrp, initial, repr(sorted(options.items())))
    runner = shared_session(key, lambda: RelevanceRunner(model, layers, input_relevance, options=lrp, initial=initial,
                                                         identity=identity, **options))  # type: ignore[arg-type]
    return runner.run(x, targets)
