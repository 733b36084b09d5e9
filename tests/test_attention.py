"""The `attention` read-out: the LFI-CAM-style model's own map, its recomputation from A and w, the output search."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from toy_models import tiny_cnn

from onnxcam.datasets.shapes import generate, write_dataset
from onnxcam.errors import InputError, LayerError
from onnxcam.explainer import Explainer
from onnxcam.images import preprocess, read_image
from onnxcam.metrics import pointing_game

MODELS = Path(__file__).resolve().parent.parent / "models"
LFI = MODELS / "shapes_lfi.onnx"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(LFI, device="cpu")


@pytest.fixture(scope="module")
def batch(explainer: Explainer) -> np.ndarray:
    images, _ = generate(6, 31, 96)
    return np.concatenate([preprocess(image, explainer.preprocessing) for image in images])


def _model_attention(x: np.ndarray) -> np.ndarray:
    """The model's own attention output, min-max normalised and bilinearly resized to 96 x 96."""
    att = ort.InferenceSession(str(LFI), providers=["CPUExecutionProvider"]).run(["attention"], {"input": x})[0][:, 0]
    out = []
    for m in att.astype(np.float64):
        m = (m - m.min()) / (m.max() - m.min())
        out.append(cv2.resize(m.astype(np.float32), (96, 96), interpolation=cv2.INTER_LINEAR))
    return np.stack(out)


def test_read_out_equals_the_models_attention_output(explainer: Explainer, batch: np.ndarray) -> None:
    expected = _model_attention(batch)
    found = explainer.explain(batch, "attention")  # the output is found by its name
    named = explainer.explain(batch, "attention", tensor="attention")
    assert found.shape == (len(batch), 96, 96)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    np.testing.assert_array_equal(found, named)


def test_recomputation_from_features_and_importance_equals_it(explainer: Explainer, batch: np.ndarray) -> None:
    expected = _model_attention(batch)
    recomputed = explainer.explain(batch, "attention", weights="importance", features="features")
    np.testing.assert_allclose(recomputed, expected, atol=1e-4)
    as_layer = explainer.explain(batch, "attention", weights="importance", layer="features")
    np.testing.assert_allclose(as_layer, recomputed, atol=1e-6)


def test_the_map_is_class_agnostic(explainer: Explainer, batch: np.ndarray) -> None:
    np.testing.assert_array_equal(explainer.explain(batch, "attention", targets=0),
                                  explainer.explain(batch, "attention", targets=5))


def test_attention_points_at_the_object(explainer: Explainer, tmp_path: Path) -> None:
    write_dataset(tmp_path, 24, 32)
    files = sorted((tmp_path / "images").glob("*.png"))
    x = np.concatenate([preprocess(read_image(f), explainer.preprocessing) for f in files])
    masks = np.stack([cv2.imread(str(tmp_path / "masks" / f.name), cv2.IMREAD_GRAYSCALE) > 0 for f in files])
    hits = np.nanmean(pointing_game(explainer.explain(x, "attention"), masks))
    chance = masks.mean()
    assert chance < 0.2 and hits > 0.5, (hits, chance)


def test_bad_tensors_are_explained(explainer: Explainer, batch: np.ndarray) -> None:
    with pytest.raises(LayerError, match="pass weights= instead"):
        explainer.explain(batch, "attention", tensor="importance")
    with pytest.raises(InputError, match="channels"):
        explainer.explain(batch, "attention", weights="importance", features="/stage2/stage2.1/Relu_1_output_0")
    with pytest.raises(LayerError, match="no tensor named"):
        explainer.explain(batch, "attention", tensor="atention")


def _with_maps(names: list[str]) -> onnx.ModelProto:
    """tiny_cnn plus (N, 1, 8, 8) outputs under the given names (channel means of its feature map)."""
    model = tiny_cnn()
    for name in names:
        model.graph.node.append(helper.make_node("ReduceMean", ["feat"], [name], axes=[1], keepdims=1))
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, 8, 8]))
    return model


def test_output_search_by_shape_by_name_and_ambiguity() -> None:
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    expected = Explainer(_with_maps(["heat"]), device="cpu").explain(x, "attention", tensor="heat")
    assert expected.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(Explainer(_with_maps(["heat"]), device="cpu").explain(x, "attention"), expected)
    two = Explainer(_with_maps(["other", "saliency"]), device="cpu")
    np.testing.assert_array_equal(two.explain(x, "attention"), two.explain(x, "attention", tensor="saliency"))
    with pytest.raises(LayerError, match="tensor=NAME"):
        Explainer(_with_maps(["one", "two"]), device="cpu").explain(x, "attention")
    with pytest.raises(LayerError, match="none"):
        Explainer(tiny_cnn(), device="cpu").explain(x, "attention")
