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
from onnxcam.graph.catalogue import find_score
from onnxcam.graph.load import default_opset
from onnxcam.graph.relevance import LrpOptions, rule_table
from onnxcam.graph.rewrite import SCORES, SEED, _effective_seed, check_tensors, finish_outputs, image_input

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
    check_tensors(model, layers)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    score, chosen = find_score(rewritten, output, probabilities)
    b = Builder(graph, default_opset(rewritten))
    forward_nodes = list(graph.node)
    scores = b.op("Identity", score) if score == chosen else b.op("Reshape", score, b.op("Shape", chosen))
    b.set_shape(scores, b.static_shape(chosen), b.elem_type(chosen))
    selection = _effective_seed(b, scores, graph, chosen)
    start = _initial(b, selection, scores, initial)
    score_seed = start if score == chosen else b.op("Reshape", start, b.op("Shape", score))
    wrt = list(dict.fromkeys(list(layers) + ([image_input(rewritten)] if input_relevance else [])))
    relevance = backward(b, forward_nodes, score, score_seed, wrt, rule_table(options), kind="relevance")
    result = RelevanceModel(rewritten, score, chosen)
    result.activations = {name: name for name in wrt}
    result.relevance = finish_outputs(b, rewritten, scores, chosen, relevance, RELEVANCE_PREFIX)
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
