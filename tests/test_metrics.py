"""onnxcam.metrics against hand-computed values on a tiny hand-built model whose evidence is known exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam import Explainer
from onnxcam import metrics as M
from onnxcam.errors import InputError

SIZE = 8
OBJECT = (slice(0, 4), slice(0, 4))  # the top-left quadrant: 16 of 64 pixels


def _region_model(final: str | None = None) -> onnx.ModelProto:
    """x (N,3,8,8) in [0, 1] ('unit' preprocessing) -> 1x1 Conv (identity) -> Relu -> Flatten -> MatMul.

    logit 0 = 4 * mean of channel 0 over the object quadrant, logit 1 = 4 * mean of channel 0 elsewhere.
    """
    w = np.zeros((2, 3, SIZE, SIZE), np.float32)
    obj = np.zeros((SIZE, SIZE), bool)
    obj[OBJECT] = True
    w[0, 0][obj] = 4.0 / obj.sum()
    w[1, 0][~obj] = 4.0 / (~obj).sum()
    weights = {"conv_w": np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1),
               "fc": w.reshape(2, -1).T.copy()}
    nodes = [helper.make_node("Conv", ["input", "conv_w"], ["conv"], name="conv"),
             helper.make_node("Relu", ["conv"], ["feat"], name="relu"),
             helper.make_node("Flatten", ["feat"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "fc"], ["logits"], name="fc")]
    out = "logits"
    if final:
        nodes.append(helper.make_node(final, ["logits"], ["probs"], name="final", **({"axis": 1} if final ==
                                                                                       "Softmax" else {})))
        out = "probs"
    graph = helper.make_graph(nodes, "region", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"preprocessing": json.dumps({"preset": "unit"})})
    return model


def _sigma(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture(scope="module")
def ex() -> Explainer:
    return Explainer(_region_model(), device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Object pixels 1.0, background 0.5 (channel 0; the others do not matter): logits (4, 2)."""
    x = np.full((1, 3, SIZE, SIZE), 0.5, np.float32)
    x[0, :, OBJECT[0], OBJECT[1]] = 1.0
    return x


def _maps() -> dict[str, np.ndarray]:
    perfect = np.zeros((1, SIZE, SIZE), np.float32)
    perfect[0][OBJECT] = 1.0
    return {"perfect": perfect, "ones": np.ones((1, SIZE, SIZE), np.float32), "inverted": 1.0 - perfect}


def test_the_toy_model_and_its_black_baseline(ex: Explainer, image: np.ndarray) -> None:
    assert np.allclose(ex.scores(image), [[4.0, 2.0]], atol=1e-5)
    assert np.allclose(ex.baseline(), 0.0)
    assert M.activation_for(ex) == "softmax"


def test_average_drop_increase_gain_by_hand(ex: Explainer, image: np.ndarray) -> None:
    p = _sigma(2.0)  # softmax of (4, 2) for class 0
    results = {name: M.faithfulness(ex, image, m, 0) for name, m in _maps().items()}
    # perfect: the background goes black, the object stays: logits (4, 0)
    o = _sigma(4.0)
    assert results["perfect"]["average_drop"][0] == pytest.approx(0.0)
    assert results["perfect"]["average_increase"][0] == 100.0
    assert results["perfect"]["average_gain"][0] == pytest.approx(100 * (o - p) / (1 - p), rel=1e-5)
    # all ones: the image is unchanged, a perfect AD and nothing gained
    assert results["ones"]["average_drop"][0] == pytest.approx(0.0, abs=1e-4)
    assert results["ones"]["average_increase"][0] == 0.0
    assert results["ones"]["average_gain"][0] == pytest.approx(0.0, abs=1e-4)
    # inverted: the object goes black: logits (0, 2)
    o = _sigma(-2.0)
    assert results["inverted"]["average_drop"][0] == pytest.approx(100 * (p - o) / p, rel=1e-5)
    assert results["inverted"]["average_increase"][0] == 0.0
    assert results["inverted"]["average_gain"][0] == 0.0
    # the orderings the metrics exist for
    ad = {k: r["average_drop"][0] for k, r in results.items()}
    ag = {k: r["average_gain"][0] for k, r in results.items()}
    assert ad["perfect"] <= ad["ones"] + 1e-4 < ad["inverted"]
    assert ag["perfect"] > ag["ones"] >= ag["inverted"] - 1e-4


def test_auc_of_known_curves() -> None:
    assert M.auc(np.linspace(1, 0, 11)) == pytest.approx(0.5)
    assert M.auc(np.full(5, 0.3)) == pytest.approx(0.3)
    assert M.auc(np.array([[0.0, 1.0, 1.0]])) == pytest.approx([0.75])  # trapezoids 0.25 + 0.5
    with pytest.raises(InputError):
        M.auc(np.array([1.0]))


def test_deletion_and_insertion_curves_by_hand(ex: Explainer, image: np.ndarray) -> None:
    perfect = _maps()["perfect"]
    result = M.insertion_deletion(ex, image, perfect, 0, steps=4, insertion_start="black")
    # deletion, 16 pixels a step: object first (logit 0 -> 0), then the background in row-major order
    expected_del = [_sigma(2.0), _sigma(-2.0), _sigma(-4 / 3), _sigma(-2 / 3), _sigma(0.0)]
    assert np.allclose(result["deletion_curve"][0], expected_del, atol=1e-5)
    # insertion from black: object first (logits (4, 0)), then the background comes back
    expected_ins = [_sigma(0.0), _sigma(4.0), _sigma(4 - 2 / 3), _sigma(4 - 4 / 3), _sigma(2.0)]
    assert np.allclose(result["insertion_curve"][0], expected_ins, atol=1e-5)
    assert result["deletion"][0] == pytest.approx(M.auc(np.array(expected_del)), abs=1e-5)
    assert result["insertion"][0] == pytest.approx(M.auc(np.array(expected_ins)), abs=1e-5)
    inverted = M.insertion_deletion(ex, image, _maps()["inverted"], 0, steps=4)
    assert inverted["deletion"][0] > result["deletion"][0]  # removing the background first keeps class 0 longer
    assert inverted["insertion"][0] < result["insertion"][0]
    assert 0.0 <= inverted["insertion"][0] <= 1.0


def test_blur_start_commutes_with_preprocessing() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((1, 3, 16, 16)).astype(np.float32)
    mean, std = np.array([0.4, 0.5, 0.6], np.float32)[:, None, None], np.array([0.2, 0.3, 0.25], np.float32)[
        :, None, None]
    pre = (pixels - mean) / std
    assert np.allclose(M.blur_inputs(pre, 2.0, 1), (M.blur_inputs(pixels, 2.0, 1) - mean) / std, atol=1e-5)


def _ramp(h: int = 12, w: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([0.3 * yy - 0.7 * xx + 2.0, 0.05 * xx + 0.02 * yy, np.full_like(xx, -1.5)], axis=-1)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.98])
def test_imputation_reproduces_a_linear_ramp_exactly(fraction: float) -> None:
    ramp = _ramp()
    removed = np.random.default_rng(int(fraction * 100)).random(ramp.shape[:2]) < fraction
    removed[0, 0] = removed[-1, -1] = removed[0, -1] = True  # corners and edges included
    assert np.allclose(M.impute(ramp, removed), ramp, atol=1e-9)


def test_imputation_fills_a_removed_border_from_the_inside() -> None:
    ramp = _ramp()
    removed = np.ones(ramp.shape[:2], bool)
    removed[4:7, 4:7] = False  # only a 3x3 patch in the middle is known
    assert np.allclose(M.impute(ramp, removed), ramp, atol=1e-7)


def test_a_removed_strip_along_the_border_takes_no_slope() -> None:
    # only one known row borders the strip, so no ramp is determined: the strip continues that row (as ROAD's rule)
    image = np.zeros((8, 6, 1))
    image[:, :, 0] = np.arange(8)[:, None] * 0.5
    removed = np.zeros((8, 6), bool)
    removed[5:] = True
    assert np.allclose(M.impute(image, removed)[5:, :, 0], 2.0)


def test_imputation_is_the_weighted_neighbour_mean_and_adds_noise_only_where_removed() -> None:
    image = np.zeros((5, 5, 1))
    image[1:4, 1:4, 0] = [[1, 2, 3], [4, 0, 6], [7, 8, 9]]
    removed = np.zeros((5, 5), bool)
    removed[2, 2] = True
    expected = (2 + 4 + 6 + 8) / 6 + (1 + 3 + 7 + 9) / 12
    assert M.impute(image, removed)[2, 2, 0] == pytest.approx(expected)
    big = np.zeros((40, 40, 1))
    holes = np.zeros((40, 40), bool)
    holes[5:35, 5:35] = True
    noisy = M.impute(big, holes, noise=0.1, rng=np.random.default_rng(1))
    assert np.all(noisy[~holes] == 0.0)
    assert np.std(noisy[holes]) == pytest.approx(0.1, rel=0.1)
    with pytest.raises(InputError):
        M.impute(big, np.ones((40, 40), bool))


def test_road_morf_hurts_more_than_lerf_for_a_perfect_map(ex: Explainer, image: np.ndarray) -> None:
    result = M.road(ex, image, _maps()["perfect"], 0, percentages=(25, 50), noise=0.0)
    assert result["morf_curve"].shape == (1, 2)
    # removing the object (MoRF 25 %) and imputing it from the 0.5 background: the object evidence falls to 0.5
    assert result["morf_curve"][0, 0] == pytest.approx(_sigma(0.0), abs=1e-4)
    assert result["morf"][0] < result["lerf"][0]
    # LeRF removes background pixels, imputed from background: nothing changes
    assert result["lerf_curve"][0, 0] == pytest.approx(_sigma(2.0), abs=1e-4)
    with pytest.raises(InputError):
        M.road(ex, image, _maps()["perfect"], 0, percentages=(0, 50))


def test_pointing_game_with_and_without_tolerance() -> None:
    maps = np.zeros((3, 10, 10), np.float32)
    maps[0, 2, 2] = 1.0   # inside
    maps[1, 2, 7] = 1.0   # 2 pixels right of the object's edge (column 5)
    maps[2, 9, 9] = 1.0   # empty mask: not counted
    masks = np.zeros((3, 10, 10), bool)
    masks[:2, 1:5, 1:6] = True
    strict = M.pointing_game(maps, masks)
    assert strict[:2].tolist() == [1.0, 0.0] and np.isnan(strict[2])
    assert M.pointing_game(maps, masks, tolerance=2)[:2].tolist() == [1.0, 1.0]
    assert M.pointing_game(maps, masks, tolerance=1.9)[:2].tolist() == [1.0, 0.0]


def test_energy_pointing_game_is_the_share_inside_the_box() -> None:
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 0:4, 0:4] = 1.0
    maps[0, 6, 6] = 16.0  # as much mass outside as inside
    maps[1] = 1.0
    energy = M.energy_pointing_game(maps, [[0, 0, 4, 4], [0, 0, 8, 4]])
    assert energy.tolist() == pytest.approx([0.5, 0.5])
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    assert M.mask_box(mask).tolist() == [3, 2, 7, 5]
    assert M.mask_box(np.zeros((4, 4), bool)) is None
    assert np.isnan(M.energy_pointing_game(maps[:1], [None])[0])


def test_probabilities_follow_the_models_last_op(image: np.ndarray) -> None:
    assert M.activation_for(Explainer(_region_model("Sigmoid"), device="cpu")) == "sigmoid"
    assert M.activation_for(Explainer(_region_model("Softmax"), device="cpu")) == "softmax"
    probs = Explainer(_region_model("Softmax"), device="cpu", probabilities=True)
    assert M.activation_for(probs) == "none"
    assert M.class_probabilities(probs, image, np.array([0]))[0] == pytest.approx(_sigma(2.0), abs=1e-5)
    assert M.to_probabilities(np.array([[0.0, 1000.0]]), "sigmoid").tolist() == [[0.5, 1.0]]
    with pytest.raises(InputError):
        M.to_probabilities(np.zeros((1, 2)), "tanh")


def test_maps_of_the_wrong_size_are_refused(ex: Explainer, image: np.ndarray) -> None:
    with pytest.raises(InputError, match="expected"):
        M.faithfulness(ex, image, np.ones((1, 4, 4), np.float32), 0)


def test_timed_explain_returns_the_maps_and_seconds_per_image(ex: Explainer, image: np.ndarray) -> None:
    maps, seconds = M.timed_explain(ex, np.repeat(image, 3, 0), "gradcam", 0)
    assert maps.shape == (3, SIZE, SIZE) and seconds > 0


def test_nhwc_models_are_masked_on_their_own_layout() -> None:
    from toy_models import nhwc_cnn

    nhwc = Explainer(nhwc_cnn(), device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    targets = nhwc.scores(x).argmax(axis=1)
    ones = M.faithfulness(nhwc, x, np.ones((2, 16, 16), np.float32), targets)
    assert np.allclose(ones["o"], ones["p"], atol=1e-6)
    zeros = M.faithfulness(nhwc, x, np.zeros((2, 16, 16), np.float32), targets)
    black = np.broadcast_to(nhwc.baseline(), x.shape).astype(np.float32)
    assert np.allclose(zeros["o"], M.class_probabilities(nhwc, black, targets), atol=1e-6)
    curves = M.insertion_deletion(nhwc, x, np.random.default_rng(1).random((2, 16, 16)).astype(np.float32), targets,
                                  steps=2)
    assert np.allclose(curves["deletion_curve"][:, 0], ones["p"], atol=1e-6)
    assert M.road(nhwc, x, np.ones((2, 16, 16), np.float32), targets, (50,))["morf_curve"].shape == (2, 1)
