"""Conceptor-CAM: the conceptor algebra's identities, the conceptor-<base> hook, and the method end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcam import Explainer
from onnxcam.errors import InputError
from onnxcam.methods import COMPOSERS, METHODS, get_method
from onnxcam.methods.conceptor import (
    adapt_aperture,
    conceptor,
    conceptor_cam,
    conjunction,
    disjunction,
    evidence_conceptor,
    negation,
)
from onnxcam.methods.postprocess import combine

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes_resnet.onnx"
rng = np.random.default_rng(0)


def correlation(dim: int = 6, states: int = 20, rank: int | None = None) -> np.ndarray:
    z = rng.standard_normal((states, rank or dim)) @ rng.standard_normal((rank or dim, dim))
    return z.T @ z / states


def full() -> np.ndarray:
    return conceptor(correlation(), 1.5)


def singular() -> np.ndarray:
    return conceptor(correlation(rank=3), 2.0)


def close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("make", [full, singular])
def test_eigenvalues_in_unit_interval_and_symmetric(make):
    c = make()
    close(c, c.T)
    values = np.linalg.eigvalsh(c)
    assert values.min() >= -1e-12 and values.max() < 1


def test_conceptor_formula():
    r = correlation()
    close(conceptor(r, 2.0), r @ np.linalg.inv(r + 0.25 * np.eye(6)))


@pytest.mark.parametrize("make", [full, singular])
def test_double_negation(make):
    c = make()
    close(negation(negation(c)), c)


@pytest.mark.parametrize("make_c,make_b", [(full, full), (full, singular), (singular, singular)])
def test_de_morgan(make_c, make_b):
    c, b = make_c(), make_b()
    close(negation(disjunction(c, b)), conjunction(negation(c), negation(b)))
    close(negation(conjunction(c, b)), disjunction(negation(c), negation(b)))


@pytest.mark.parametrize("make", [full, singular])
def test_neutral_elements(make):
    c, eye, zero = make(), np.eye(6), np.zeros((6, 6))
    close(conjunction(c, eye), c)
    close(conjunction(eye, c), c)
    close(disjunction(c, zero), c)
    close(conjunction(c, zero), zero)
    close(disjunction(c, eye), eye)


def test_and_matches_the_inverse_formula_for_regular_conceptors():
    c, b = full(), full()
    eye = np.eye(6)
    close(conjunction(c, b), np.linalg.inv(np.linalg.inv(c) + np.linalg.inv(b) - eye))
    close(conjunction(c, b), conjunction(b, c))


@pytest.mark.parametrize("make", [full, singular])
def test_and_or_with_itself_is_an_aperture_change(make):
    # C AND C = phi(C, 1/sqrt 2) and C OR C = phi(C, sqrt 2) (Jaeger 2014)
    c = make()
    close(conjunction(c, c), adapt_aperture(c, 2 ** -0.5))
    close(disjunction(c, c), adapt_aperture(c, 2 ** 0.5))


def test_or_of_conceptors_is_the_conceptor_of_the_summed_correlations():
    r, q = correlation(), correlation(rank=2)
    close(disjunction(conceptor(r, 1.7), conceptor(q, 1.7)), conceptor(r + q, 1.7))


@pytest.mark.parametrize("make", [full, singular])
def test_aperture_adaptation(make):
    c = make()
    close(adapt_aperture(adapt_aperture(c, 2.0), 0.3), adapt_aperture(c, 0.6))
    close(adapt_aperture(c, 1.0), c)
    r = correlation()
    close(adapt_aperture(conceptor(r, 1.5), 3.0), conceptor(r, 4.5))


def test_evidence_conceptor_removes_what_the_negative_evidence_shares():
    # states along e0 and e1 where the map points, along e1 and e2 elsewhere: C+ AND NOT C- keeps e0 and drops
    # most of the shared e1 and all of e2
    e = np.eye(3)
    states = np.vstack([e[0], e[1], e[1], e[2]]) * 2
    positive = np.array([1.0, 1.0, 0.0, 0.0])
    c = evidence_conceptor(states, positive, 1.0 - positive, scale=1.0, aperture=3.0)
    assert c[0, 0] > 0.9 and c[1, 1] < c[0, 0] / 2 and abs(c[2, 2]) < 1e-9
    only = evidence_conceptor(states, positive, None, scale=1.0, aperture=3.0)
    assert only[1, 1] > 0.9


def test_bad_aperture():
    with pytest.raises(InputError, match="aperture"):
        conceptor(np.eye(2), 0.0)


# --- the method -------------------------------------------------------------------------------------------------
def test_get_method_composes_any_base_and_lists_one_row():
    spec = get_method("conceptor-gradcam++")
    assert spec.name == "conceptor-gradcam++" and spec.needs == ("gradients",) and spec.family == "research"
    assert get_method("conceptor-scorecam").needs == ("scores_of",)
    assert get_method("conceptor-gradcam") is get_method("conceptor-gradcam")
    assert "conceptor-gradcam" not in METHODS and COMPOSERS["conceptor"].listing.name == "conceptor-<base>"
    with pytest.raises(InputError, match="unknown method 'nosuch'"):
        get_method("conceptor-nosuch")
    with pytest.raises(InputError, match="cannot be another"):
        get_method("conceptor-conceptor-gradcam")


@pytest.fixture(scope="module")
def shapes() -> tuple[Explainer, np.ndarray]:
    from onnxcam.datasets.shapes import generate

    images, _ = generate(4, seed=2)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    return Explainer(SHAPES), x


@pytest.mark.parametrize("base", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "ablationcam"])
def test_conceptor_on_the_shapes_model(shapes, base):
    explainer, x = shapes
    maps = explainer.explain(x, f"conceptor-{base}")
    assert maps.shape == (4, 96, 96) and maps.dtype == np.float32 and np.all(np.isfinite(maps))
    assert np.all(maps.max(axis=(1, 2)) > 0.9)  # min-max at 12 x 12, then bilinear: the peak may fall between
    base_maps = explainer.explain(x, base)
    correlation_with_base = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps, base_maps)]
    assert np.mean(correlation_with_base) > 0.3  # a refinement of the base's map, not an unrelated one


def test_a_huge_aperture_gives_back_the_base_where_it_points(shapes):
    # with positive evidence only, C -> the projector onto the span of the supported states as the aperture grows,
    # so at the positions the base map supports, the projected map -> the base map
    explainer, x = shapes
    evidence = explainer.evidence(x, None, explainer.layer, method="gradcam")[0]
    maps = conceptor_cam(get_method("gradcam"), evidence, aperture=1e6, conceptor_evidence="positive")
    base = combine(get_method("gradcam").fn(evidence), evidence.activations, eigen_smooth=False)
    support = base > 0
    assert support.sum() > 20
    np.testing.assert_allclose(maps[support], base[support], rtol=1e-4, atol=1e-6 * np.abs(base).max())


@pytest.mark.parametrize("options", [{"conceptor_relation": "positions"}, {"conceptor_relation": "both"},
                                     {"conceptor_map": "energy"}, {"conceptor_evidence": "positive"},
                                     {"aperture": 10.0}])
def test_options(shapes, options):
    explainer, x = shapes
    maps = explainer.explain(x[:2], "conceptor-gradcam", **options)
    assert maps.shape == (2, 96, 96) and np.all(np.isfinite(maps))


def test_base_options_pass_through_and_bad_options(shapes):
    explainer, x = shapes
    np.testing.assert_array_equal(explainer.explain(x[:2], "conceptor-gradcam++", gradcampp_reduce="mean"),
                                  explainer.explain(x[:2], "conceptor-gradcam++", gradcampp_reduce="mean"))
    with pytest.raises(InputError, match="unknown option"):
        explainer.explain(x[:2], "conceptor-gradcam", colour="red")
    with pytest.raises(InputError, match="conceptor_relation"):
        explainer.explain(x[:2], "conceptor-gradcam", conceptor_relation="spatial")
    with pytest.raises(InputError, match="returns maps"):
        explainer.explain(x[:2], "conceptor-eigengradcam")
