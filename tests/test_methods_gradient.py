"""Gradient-family and activation methods against independent NumPy computations on hand-made arrays."""

import numpy as np
import pytest

from onnxcam.errors import InputError
from onnxcam.methods import METHODS, Evidence, get_method
from onnxcam.methods.postprocess import combine, normalise, principal_projection

rng = np.random.default_rng(0)
N, K, H, W = 2, 4, 3, 5
A = rng.random((N, K, H, W))
G = rng.standard_normal((N, K, H, W))


def evidence(**fields):
    ev = Evidence(A, np.array([1, 2]), rng.standard_normal((N, 3)), np.zeros((N, 3, 6, 10)), "layer", gradients=G)
    for name, value in fields.items():
        setattr(ev, name, value)
    return ev


def raw_map(name, **options):
    return combine(METHODS[name].fn(evidence(), **options), A, eigen_smooth=False)


def loop_map(weight_of):
    """sum_k w[n, k] * A[n, k] with explicit loops."""
    out = np.zeros((N, H, W))
    for n in range(N):
        for k in range(K):
            out[n] += weight_of(n, k) * A[n, k]
    return out


def test_gradcam_is_mean_gradient_weighting():
    np.testing.assert_allclose(raw_map("gradcam"), loop_map(lambda n, k: G[n, k].sum() / (H * W)))


def test_gradcam_plus_plus():
    def weight(n, k):
        total = 0.0
        s = A[n, k].sum()
        for i in range(H):
            for j in range(W):
                g = G[n, k, i, j]
                alpha = g**2 / (2 * g**2 + s * g**3 + 1e-6) if g != 0 else 0.0
                total += alpha * max(g, 0.0)
        return total
    np.testing.assert_allclose(raw_map("gradcam++"), loop_map(weight), rtol=1e-6)
    np.testing.assert_allclose(raw_map("gradcam++", gradcampp_reduce="mean"),
                               loop_map(weight) / (H * W), rtol=1e-6)


def test_xgradcam():
    np.testing.assert_allclose(raw_map("xgradcam"),
                               loop_map(lambda n, k: (G[n, k] * A[n, k]).sum() / (A[n, k].sum() + 1e-7)))


def test_elementwise_family():
    hires = np.einsum("nkhw,nkhw->nhw", G, A)
    np.testing.assert_allclose(raw_map("hirescam"), hires)
    np.testing.assert_allclose(raw_map("gradcam-elementwise"), np.maximum(G * A, 0).sum(axis=1))
    np.testing.assert_allclose(raw_map("layercam"), np.einsum("nkhw,nkhw->nhw", np.maximum(G, 0), A))


def test_principal_projection_matches_covariance_eigenvector():
    maps = principal_projection(A, sign="activation")
    for n in range(N):
        states = A[n].reshape(K, -1).T
        centred = states - states.mean(axis=0)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        projection = centred @ vectors[:, -1]
        assert abs(abs(np.corrcoef(projection, maps[n].ravel())[0, 1]) - 1) < 1e-9
        # The chosen sign correlates positively with the summed activation.
        assert np.dot(maps[n].ravel(), states.sum(axis=1) - states.sum(axis=1).mean()) >= 0


def test_eigencam_and_eigengradcam():
    np.testing.assert_allclose(raw_map("eigencam"), principal_projection(A))
    np.testing.assert_allclose(raw_map("eigengradcam"), principal_projection(G * A))


def test_eigen_smooth_projects_weighted_activations():
    weights = METHODS["gradcam"].fn(evidence())
    smooth = combine(weights, A, eigen_smooth=True)
    np.testing.assert_allclose(smooth, principal_projection(weights[:, :, None, None] * A))


def test_cam_reads_head_weights_and_errors_without_them():
    head = rng.standard_normal((3, K))
    ev = evidence(head_weights=head)
    np.testing.assert_allclose(combine(METHODS["cam"].fn(ev), A, False), loop_map(lambda n, k: head[[1, 2][n], k]))
    with pytest.raises(InputError, match="gradcam"):
        METHODS["cam"].fn(evidence())


def test_random_is_seeded():
    np.testing.assert_array_equal(raw_map("random", seed=3), raw_map("random", seed=3))
    assert not np.allclose(raw_map("random", seed=3), raw_map("random", seed=4))


def test_normalise_conventions():
    maps = np.stack([np.arange(12.0).reshape(3, 4) - 3, np.full((3, 4), 2.0)])
    out = normalise(maps, (6, 8))
    assert out.shape == (2, 6, 8) and out.dtype == np.float32
    assert out[0].max() == pytest.approx(1.0) and out[0].min() == 0.0
    assert np.all(out[1] == 0)  # a constant map is zeros, not NaN
    with pytest.warns(RuntimeWarning, match="NaN"):
        bad = normalise(np.array([[[np.nan, 1.0], [2.0, 3.0]]]))
    assert np.all(bad == 0)


def test_unknown_method_lists_valid_names():
    with pytest.raises(InputError, match="gradcam"):
        get_method("nope")


def test_eigen_smooth_follows_eigen_sign():
    from toy_models import nhwc_cnn

    from onnxcam import Explainer

    explainer = Explainer(nhwc_cnn(), device="cpu")
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    ev = explainer.evidence(x, None, [explainer.default_layer], method="gradcam")[0]
    weights = METHODS["gradcam"].fn(ev)
    for sign in ("svd", "activation"):
        expected = normalise(principal_projection(weights[:, :, None, None] * ev.activations, sign), (16, 16))
        got = explainer.explain(x, "gradcam", eigen_smooth=True, eigen_sign=sign)
        np.testing.assert_allclose(got, expected, atol=1e-6)
