"""Check onnxcam's gradients at inner layers of a whole model against float64 finite differences.

tests/gradcheck.py differentiates with respect to graph inputs; here the model is cut at the layer (onnxcam's own
head extraction, onnxcam.graph.head) and the head, in float64 on onnx's reference evaluator, is differentiated
numerically along random directions of the layer's activation. Other tensors the head reads (skip connections,
other scales of a detector) are held at their values from the same forward pass.

The score is sum(seed * scores), `scores` being the tensor onnxcam differentiates (the logits before a final
Softmax), so the seed of a target object (its gradient at the output) checks that target's gradient.

The step is small (1e-7, in float64): a ReLU or max in the head whose input lies within a step of its kink makes
the differences one-sided, and random CNNs with thousands of pre-activations do have some within 1e-5 of zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from gradcheck import Erf64, Gelu64, to_float64
from onnx.reference import ReferenceEvaluator

from onnxcam.graph.head import extract_head
from onnxcam.graph.reverse.model import expose, image_input
from onnxcam.runners import ReverseRunner as GradientRunner


def layer_gradients(source: object, x: np.ndarray, layers: Sequence[str], seed: np.ndarray | None = None,
                    output: str | None = None, directions: int = 3, eps: float = 1e-7, rtol: float = 1e-3,
                    rng_seed: int = 0, zero_allowed: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Assert that d sum(seed * scores) / d layer from the rewritten model matches central differences for each
    layer; returns the gradients. seed: like the scores (default random normal). A gradient that is all zero
    fails, except at the layers in `zero_allowed` (the differences must then be zero too)."""
    rng = np.random.default_rng(rng_seed)
    runner = GradientRunner(source, list(layers), output=output, providers=["CPUExecutionProvider"])  # type: ignore[arg-type]
    if seed is None:
        shape = _run(runner.model, x, [runner.output])[runner.output].shape
        seed = rng.standard_normal(shape).astype(np.float32)
    result = runner.run(x, seed)
    for layer in layers:
        grad = result.gradients[layer].astype(np.float64)
        assert layer in zero_allowed or np.abs(grad).max() > 0, f"the gradient at {layer} is all zero"
        head = extract_head(runner.model, layer, runner.score)
        held = _run(runner.model, x, head.extra_inputs)
        reference = ReferenceEvaluator(to_float64(head.model), new_ops=[Erf64, Gelu64])
        feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in held.items()}
        activation = result.activations[layer].astype(np.float64)

        def score(a: np.ndarray) -> float:
            out = reference.run([runner.score], {layer: a, **feeds})[0]  # noqa: B023
            return float(np.sum(seed.astype(np.float64).reshape(out.shape) * out))

        for _ in range(directions):
            v = rng.standard_normal(activation.shape)
            fd = (score(activation + eps * v) - score(activation - eps * v)) / (2 * eps)
            analytic = float(np.sum(grad * v))
            # <grad, v> for a standard normal v has the size of |grad|: the tolerance is relative to that
            tolerance = rtol * float(np.linalg.norm(grad)) + 1e-9
            assert abs(fd - analytic) <= tolerance, f"d score / d {layer} along a random direction: onnxcam " \
                                                    f"{analytic}, finite differences {fd} (tolerance {tolerance:.3g})"
    return result.gradients


def _run(model: onnx.ModelProto, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Values of tensors of `model` for input x (float32, onnxruntime)."""
    if not names:
        return {}
    exposed = expose(model, list(names))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(list(names), {image_input(model): x})))


def run_shapes(path: object) -> dict[str, tuple[int, ...]]:
    """The shape of every node output when onnxruntime runs the file (zeros in, annotations removed): what a
    shape annotation should say."""
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    names = [o for n in model.graph.node for o in n.output if o]
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in value.shape]
        feeds[value.name] = np.zeros(shape, np.float32 if value.type == "tensor(float)" else np.int64)
    return {o.name: v.shape for o, v in zip(session.get_outputs(), session.run(None, feeds))}
