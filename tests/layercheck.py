"""Check onnxcam's gradients at a layer of a whole model against float64 finite differences.

`onnxcam.gradients` gives d score / d layer from the rewritten model (onnxruntime, float32). The reference cuts
the model's head at that layer (graph/head.py), runs it in float64 with onnx's reference evaluator, feeding the
other tensors the head reads (skip connections, shapes) from one forward pass, and differentiates the same score
by central differences: along random directions, and element by element at the largest gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from gradcheck import Erf64, Gelu64, to_float64
from onnx.reference import ReferenceEvaluator

import onnxcam
from onnxcam.graph.catalogue import find_score
from onnxcam.graph.head import extract_head
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import expose


def check_layer_gradient(path: str | Path, x: np.ndarray, layer: str, targets: Sequence[int] | None = None,
                         directions: int = 3, elements: int = 6, eps: float = 1e-5, rtol: float = 1e-3,
                         seed: int = 0) -> dict[str, float]:
    """Assert that onnxcam's gradient at `layer` matches finite differences; return the worst relative errors
    seen (directional and elementwise). The score is the sum of the target logits for a classifier (targets, or
    the predicted classes), and sum(weights * output) with random weights for any other output (segmentation
    maps, raw detections)."""
    rng = np.random.default_rng(seed)
    weights = _seed(path, x, targets, rng)
    res = onnxcam.gradients(path, x, layers=[layer], targets=weights)
    act, grad = res.activations[layer].astype(np.float64), res.gradients[layer].astype(np.float64)
    assert np.isfinite(grad).all(), f"gradient at '{layer}' is not finite"
    assert np.abs(grad).max() > 0, f"gradient at '{layer}' is zero everywhere"
    score_of = _head_score(path, x, layer, weights.astype(np.float64))
    worst = {"directional": 0.0, "elementwise": 0.0}
    norm = float(np.linalg.norm(grad))
    for _ in range(directions):
        v = rng.standard_normal(act.shape)
        fd = (score_of(act + eps * v) - score_of(act - eps * v)) / (2 * eps)
        analytic = float(np.sum(grad * v))
        error = abs(fd - analytic) / (norm * float(np.linalg.norm(v)))
        worst["directional"] = max(worst["directional"], error)
        assert error <= rtol, (f"d score / d '{layer}' along a random direction: onnxcam {analytic:.6g}, "
                               f"finite differences {fd:.6g} (relative error {error:.2g})")
    largest = np.argsort(np.abs(grad).reshape(-1))[::-1][:elements // 2]
    others = rng.choice(grad.size, size=elements - len(largest), replace=False)
    scale = float(np.abs(grad).max())
    for flat in np.concatenate([largest, others]):
        e = np.zeros(act.size)
        e[flat] = eps
        e = e.reshape(act.shape)
        fd = (score_of(act + e) - score_of(act - e)) / (2 * eps)
        error = abs(fd - grad.flat[flat]) / scale
        worst["elementwise"] = max(worst["elementwise"], error)
        index = np.unravel_index(flat, act.shape)
        assert error <= rtol, (f"d score / d '{layer}'{list(index)}: onnxcam {grad.flat[flat]:.6g}, finite "
                               f"differences {fd:.6g} (error {error:.2g} of the largest gradient)")
    return worst


def _seed(path: str | Path, x: np.ndarray, targets: Sequence[int] | None, rng: np.random.Generator) -> np.ndarray:
    """The weights of the score: one-hot target rows for (N, classes) outputs, random ones otherwise."""
    output = onnxcam.Explainer(path).outputs(x)
    if output.ndim != 2:
        return rng.standard_normal(output.shape).astype(np.float32)
    classes = output.argmax(axis=1) if targets is None else np.asarray(targets)
    weights = np.zeros(output.shape, np.float32)
    weights[np.arange(len(classes)), classes] = 1.0
    return weights


def _head_score(path: str | Path, x: np.ndarray, layer: str, weights: np.ndarray):  # type: ignore[no-untyped-def]
    """A float64 function: the activation at `layer` -> sum(weights * score), the score shaped like `weights`."""
    model = load_model(path)
    score, _ = find_score(model)
    head = extract_head(model, layer, score)
    extras: dict[str, np.ndarray] = {}
    if head.extra_inputs:
        forward = ort.InferenceSession(expose(model, head.extra_inputs).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        image = forward.get_inputs()[0].name
        values = forward.run(head.extra_inputs, {image: x})
        extras = {n: v.astype(np.float64) if v.dtype == np.float32 else v for n, v in zip(head.extra_inputs, values)}
    reference = ReferenceEvaluator(to_float64(head.model), new_ops=[Erf64, Gelu64])

    def score_of(activation: np.ndarray) -> float:
        value = reference.run([score], {layer: activation, **extras})[0]
        return float(np.sum(weights * value.reshape(weights.shape)))

    return score_of
