"""Explainer end to end on small models: output contract, layouts, options, and bad input."""

from pathlib import Path

import numpy as np
import pytest
from toy_models import nhwc_cnn, tiny_cnn

from onnxcam.errors import InputError, LayerError
from onnxcam.explainer import Explainer
from onnxcam.methods import METHODS

rng = np.random.default_rng(0)
GRADIENT_FREE_OR_BASIC = ["gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
                          "eigencam", "eigengradcam", "cam", "random"]


@pytest.fixture(scope="module")
def nhwc():
    return Explainer(nhwc_cnn(), device="cpu")


@pytest.mark.parametrize("method", GRADIENT_FREE_OR_BASIC)
def test_maps_follow_the_contract(nhwc, method):
    x = rng.standard_normal((3, 16, 16, 3)).astype(np.float32)
    maps = nhwc.explain(x, method=method, targets=[0, 1, 2])
    assert maps.shape == (3, 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps.max() == pytest.approx(1.0)


def test_gradcam_equals_cam_on_gap_linear_heads(nhwc):
    """With GAP + linear head, Grad-CAM weights are the class weights / (h w): the maps coincide."""
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(nhwc.explain(x, "gradcam", targets=[1, 3]), nhwc.explain(x, "cam", targets=[1, 3]),
                               atol=1e-5)


def test_default_target_is_prediction(nhwc):
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    predicted = nhwc.scores(x).argmax(axis=1)
    np.testing.assert_array_equal(nhwc.explain(x, "gradcam"), nhwc.explain(x, "gradcam", targets=predicted))


def test_multi_layer_and_aug_smooth():
    explainer = Explainer(tiny_cnn(), layer=["scaled", "feat"], device="cpu")
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    maps = explainer.explain(x, "gradcam")
    assert maps.shape == (2, 8, 8)
    smooth = explainer.explain(x, "gradcam", aug_smooth=True)
    assert smooth.shape == (2, 8, 8) and smooth.max() == pytest.approx(1.0)


def test_layers_lists_spatial_candidates():
    explainer = Explainer(nhwc_cnn(), device="cpu")
    assert explainer.layers == ["nchw", "conv", "act"] and explainer.default_layer == "act"


@pytest.mark.parametrize("x,message", [
    (np.zeros((16, 16, 3), np.float32), "expects"),
    (np.zeros((1, 3, 16, 16), np.float32), "looks NCHW but the model takes NHWC"),
    (np.array([["a"]]), "dtype"),
])
def test_bad_input_names_expected_shape(nhwc, x, message):
    with pytest.raises(InputError, match=message):
        nhwc.explain(x)


def test_bad_targets(nhwc):
    x = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(InputError, match="out of range"):
        nhwc.explain(x, targets=[0, 9])
    with pytest.raises(InputError, match="1 targets given for a batch of 2"):
        nhwc.explain(x, targets=[0])
    with pytest.raises(InputError, match="out of range"):
        nhwc.explain(x, "eigencam", targets=7)


def test_unknown_method_and_option(nhwc):
    x = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(InputError, match="valid methods"):
        nhwc.explain(x, "gradcamm")
    with pytest.raises(InputError, match="unknown option"):
        nhwc.explain(x, "gradcam", colour="red")


def test_unknown_layer():
    with pytest.raises(LayerError, match="did you mean"):
        Explainer(nhwc_cnn(), layer="actt", device="cpu")


def test_every_registered_method_is_documented():
    for spec in METHODS.values():
        assert spec.paper and spec.cost and spec.family


@pytest.mark.parametrize("method,aug", [("gradcam", False), ("eigencam", False), ("gradcam", True)])
def test_explain_scored_returns_the_runs_scores(nhwc, method, aug):
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    maps, scores, explained = nhwc.explain_scored(x, method, aug_smooth=aug)
    np.testing.assert_allclose(scores, nhwc.scores(x), rtol=1e-5)
    np.testing.assert_array_equal(explained, scores.argmax(axis=1))
    np.testing.assert_array_equal(maps, nhwc.explain(x, method, aug_smooth=aug))
    _, _, fixed = nhwc.explain_scored(x, method, targets=[3, 0], aug_smooth=aug)
    np.testing.assert_array_equal(fixed, [3, 0])


@pytest.mark.parametrize("method", ["gradcam", "ablationcam", "scorecam", "relevancecam", "eigencam"])
def test_batches_are_freed_without_the_cycle_collector(method):
    """No reference cycle may hold a batch: cycles are freed only when Python's cyclic collector runs, which numpy
    allocations do not trigger, so memory grew over long runs (a self-calling closure did this)."""
    import gc
    import weakref

    ex = Explainer(Path(__file__).resolve().parent.parent / "models" / "shapes_resnet.onnx")
    x = np.random.default_rng(0).random((2, 3, 96, 96), np.float32)
    ex.explain(x.copy(), method)  # sessions made outside the check
    gc.disable()
    try:
        batch = x.copy()
        ref = weakref.ref(batch)
        ex.explain(batch, method, **({"batch_size": 16, "channels": 8} if method == "scorecam" else {}))
        del batch
        assert ref() is None, "a reference cycle keeps the batch alive"
    finally:
        gc.enable()
