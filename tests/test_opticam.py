"""Opti-CAM: the exact gradient with respect to u against float64 finite differences, and the method end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import nhwc_cnn

from onnxcam import Explainer
from onnxcam.errors import InputError
from onnxcam.methods.opticam import MaskProblem, optimise
from onnxcam.methods.perturbation import _interpolation_matrix

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes_resnet.onnx"


def float64_model() -> onnx.ModelProto:
    """A small float64 CNN built from ops onnxruntime runs in double: 2x2 mean pool, 1x1 'conv' (MatMul) + ReLU
    -> 'feat' (N, 6, 4, 4), then a nonlinear head (MatMul, Tanh, spatial mean, Gemm) -> 4 logits."""
    rng = np.random.default_rng(0)
    weights = {"shape6": np.array([0, 3, 4, 2, 4, 2], np.int64), "w1": rng.standard_normal((3, 6)),
               "b1": rng.standard_normal(6) * 0.1, "w2": rng.standard_normal((6, 6)) * 0.5,
               "fc_w": rng.standard_normal((6, 4)), "fc_b": rng.standard_normal(4)}
    nodes = [helper.make_node("Reshape", ["input", "shape6"], ["blocks"]),
             helper.make_node("ReduceMean", ["blocks"], ["pooled"], axes=[3, 5], keepdims=0),
             helper.make_node("Transpose", ["pooled"], ["hwc"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["hwc", "w1"], ["mixed"]),
             helper.make_node("Add", ["mixed", "b1"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["act"]),
             helper.make_node("Transpose", ["act"], ["feat"], perm=[0, 3, 1, 2]),
             helper.make_node("MatMul", ["act", "w2"], ["mixed2"]),
             helper.make_node("Tanh", ["mixed2"], ["squashed"]),
             helper.make_node("ReduceMean", ["squashed"], ["gap"], axes=[1, 2], keepdims=0),
             helper.make_node("Gemm", ["gap", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(nodes, "float64_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["N", 4])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def small() -> tuple[Explainer, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8))
    return Explainer(float64_model(), layer="feat"), x


def _problem(explainer: Explainer, x: np.ndarray, **options: str) -> MaskProblem:
    evidence = explainer.evidence(x, [0, 1, 3], ["feat"], method="opticam")[0]
    return MaskProblem(evidence, **options)


@pytest.mark.parametrize("normalisation", ["max-min", "max", "sigmoid"])
@pytest.mark.parametrize("masking", ["pixel", "input"])
@pytest.mark.parametrize("loss", ["plain", "norm"])
def test_gradient_matches_float64_finite_differences(small, normalisation, masking, loss):
    explainer, x = small
    problem = _problem(explainer, x, normalisation=normalisation, masking=masking, loss=loss)
    rng = np.random.default_rng(2)
    u = rng.standard_normal((3, 6))
    images = np.arange(3)
    value, grad, masks = problem.objective(u, images)
    assert grad.shape == u.shape and masks.shape == (3, 8, 8)
    eps = 1e-6
    numeric = np.zeros_like(u)
    for index in np.ndindex(*u.shape):
        step = np.zeros_like(u)
        step[index] = eps
        numeric[index] = (problem.objective(u + step, images)[0][index[0]]
                          - problem.objective(u - step, images)[0][index[0]]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7 * max(1.0, np.abs(numeric).max()))
    assert np.abs(grad).max() > 1e-4  # the check compares something non-trivial


def test_masks_follow_the_bilinear_convention(small):
    explainer, x = small
    problem = _problem(explainer, x)
    u = np.zeros((3, 6))
    masks = problem.masks(u, np.arange(3))[0]
    features = np.maximum(problem.ev.activations, 0).mean(axis=1)
    rows, cols = _interpolation_matrix(8, 4, False), _interpolation_matrix(8, 4, False)
    expected = rows @ features @ cols.T
    expected = (expected - expected.min(axis=(1, 2), keepdims=True)) / np.ptp(expected, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(masks, expected, atol=1e-12)
    assert masks.min() == 0 and masks.max() == 1


@pytest.fixture(scope="module")
def shapes() -> tuple[Explainer, np.ndarray]:
    from onnxcam.datasets.shapes import generate

    images, _ = generate(4, seed=2)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    return Explainer(SHAPES), x


def test_optimisation_lowers_the_loss_on_the_shapes_model(shapes):
    explainer, x = shapes
    evidence = explainer.evidence(x, None, explainer.layer, method="opticam")[0]
    problem = MaskProblem(evidence)
    start = np.full((4, evidence.activations.shape[1]), 0.5)
    before = problem.objective(start, np.arange(4))[0]
    after = problem.objective(optimise(problem, 20, 0.1, 0.5, early_stop=True), np.arange(4))[0]
    assert np.all(after <= before + 1e-6)
    assert np.mean(before - after) > 0.1


def test_opticam_end_to_end_and_batch_independent(shapes):
    explainer, x = shapes
    maps = explainer.explain(x, "opticam", iterations=8, early_stop=False)
    assert maps.shape == (4, 96, 96) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.all(maps.max(axis=(1, 2)) > 0.99)
    alone = np.concatenate([explainer.explain(x[i:i + 1], "opticam", iterations=8, early_stop=False)
                            for i in range(2)])
    np.testing.assert_allclose(alone, maps[:2], atol=2e-3)


def test_zero_iterations_is_the_uniform_weight_map(shapes):
    explainer, x = shapes
    maps = explainer.explain(x[:2], "opticam", iterations=0)
    evidence = explainer.evidence(x[:2], None, explainer.layer, method="opticam")[0]
    uniform = MaskProblem(evidence).masks(np.zeros((2, evidence.activations.shape[1])), np.arange(2))[0]
    np.testing.assert_allclose(maps, uniform, atol=1e-6)


def test_nhwc_model():
    explainer = Explainer(nhwc_cnn())
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    maps = explainer.explain(x, "opticam", iterations=5, masking="input")
    assert maps.shape == (2, 16, 16) and np.all(np.isfinite(maps))


def test_bad_options(shapes):
    explainer, x = shapes
    with pytest.raises(InputError, match="normalisation"):
        explainer.explain(x[:1], "opticam", normalisation="softmax")
    with pytest.raises(InputError, match="masking"):
        explainer.explain(x[:1], "opticam", masking="blur")
