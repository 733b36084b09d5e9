"""Rewrite a model so that one run returns its scores, chosen activations and the LRP relevance that reaches them.

Like `rewrite.gradient_model`, with the relevance rule table (graph/relevance) driving the same reverse walker.
The extra input (the seed, shaped like the scores) selects the explained class per image (a row of zeros: the
predicted class, chosen in-graph); the initial relevance is built from it in-graph:
- "contrastive" (the official Relevance-CAM choice): R[c] = 1, R[j != c] = -1 / classes;
- "score": R = seed * scores (classic LRP: the target logit's value for a one-hot seed);
- "seed": R = seed itself (any initial relevance the caller builds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from onnxcam.errors import InputError
from onnxcam.graph.autodiff import backward
from onnxcam.graph.builder import Builder
from onnxcam.graph.relevance import LrpOptions, rule_table
from onnxcam.graph.rewrite import SCORES, SEED, finish_outputs, prepare_reverse

RELEVANCE_PREFIX = "onnxcam_relevance:"
INITIAL_RELEVANCE = ("contrastive", "score", "seed")


@dataclass
class RelevanceModel:
    model: onnx.ModelProto
    score: str
    output: str
    seed: str = SEED
    scores: str = SCORES
    activations: dict[str, str] = field(default_factory=dict)  # tensor -> output name
    relevance: dict[str, str] = field(default_factory=dict)    # tensor -> output name


def relevance_model(model: onnx.ModelProto, layers: Sequence[str], input_relevance: bool = False,
                    output: str | None = None, probabilities: bool = False, options: LrpOptions | None = None,
                    initial: str = "contrastive") -> RelevanceModel:
    """Add relevance propagation from the score to `layers` (and to the image input when asked)."""
    if initial not in INITIAL_RELEVANCE:
        raise InputError(f"unknown initial relevance '{initial}'; use one of {', '.join(INITIAL_RELEVANCE)}")
    r = prepare_reverse(model, layers, output, probabilities)
    wrt = r.targets(layers, input_relevance)
    start = _initial(r.builder, r.selection, r.scores, initial)
    relevance = backward(r.builder, r.forward_nodes, r.score, r.at_score(start), wrt, rule_table(options),
                         kind="relevance")
    result = RelevanceModel(r.model, r.score, r.chosen)
    result.activations = {name: name for name in wrt}
    result.relevance = finish_outputs(r.builder, r.model, r.scores, r.chosen, relevance, RELEVANCE_PREFIX)
    return result


def _initial(b: Builder, selection: str, scores: str, initial: str) -> str:
    if initial == "seed":
        return selection
    if initial == "score":
        return b.op("Mul", selection, scores)
    # contrastive: sel * (1 + 1/K) - 1/K, i.e. 1 at the target and -1/K elsewhere for a one-hot row
    shape = b.static_shape(scores)
    if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
        share = b.scalar_like(1.0 / shape[1], selection)
    else:
        classes = b.op("Gather", b.op("Shape", scores), b.const(-1, "int64"))
        share = b.op("Reciprocal", b.cast_like(classes, selection))
    return b.op("Sub", b.op("Mul", selection, b.op("Add", share, b.scalar_like(1.0, selection))), share)
