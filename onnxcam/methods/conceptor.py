"""Conceptor-CAM on top of any channel-weighting CAM: `conceptor-<base>` (Qian et al., "Conceptor Learning for Class
Activation Mapping", arXiv 2201.08636).

No code or full text of the paper is public; this is a reconstruction from its abstract and Jaeger's conceptor
algebra ("Controlling Recurrent Neural Networks by Conceptors", 2014), written down in docs/research_methods.md.
In short, for one image with activations A (K channels x n positions) and the base method's weights:

- channels relation (inter-channel): the states are the K-dim channel vectors z_p at the n positions. Positive
  evidence weighs each position by the base map's positive part, pseudo-negative evidence by the rest; the
  conceptor C = C+ AND NOT C- keeps the channel combinations that occur where the base map points and not
  elsewhere. The map is the base's weights read from the filtered states: sum_k w_k (C z_p)_k.
- positions relation (intra-channel): the states are the n-dim channel maps a_k. Positive evidence weighs each
  channel by its positive base weight, pseudo-negative evidence by its negative weight; the map is the base map
  projected through D = D+ AND NOT D-.
- both: the channels map, then projected through D.

Correlations are divided by the mean squared activation, so the aperture does not depend on the layer's scale:
a direction whose energy is alpha^-2 times the mean passes half way.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import COMPOSERS, Composer, Evidence, Method
from onnxcam.methods.postprocess import _BLAS

RELATIONS = ("channels", "positions", "both")
EVIDENCES = ("contrast", "positive")
MAPS = ("projection", "energy")
TOLERANCE = 1e-9      # eigenvalues of a conceptor below this count as zero (its null space)
PAPER = "Qian et al., 2022 (arXiv 2201.08636), reconstructed"


# --- conceptor algebra: symmetric matrices with eigenvalues in [0, 1] --------------------------------------------
def conceptor(correlation: np.ndarray, aperture: float) -> np.ndarray:
    """C = R (R + aperture^-2 I)^-1 of a correlation matrix R (symmetric PSD); eigenvalues in [0, 1)."""
    if aperture <= 0:
        raise InputError(f"the conceptor aperture must be > 0, got {aperture}")
    values, vectors = np.linalg.eigh(_symmetric(correlation))
    values = np.maximum(values, 0.0)
    return _compose(vectors, values / (values + aperture ** -2.0))


def negation(c: np.ndarray) -> np.ndarray:
    """NOT C = I - C."""
    return np.eye(len(c)) - c


def conjunction(c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C AND B = (C^-1 + B^-1 - I)^-1, in Jaeger's form for singular conceptors: on the intersection of their
    ranges, with pseudo-inverses, U (U^T (C^+ + B^+ - I) U)^-1 U^T for U an orthonormal basis of R(C) n R(B)."""
    size = len(c)
    null = np.hstack([_null_space(c), _null_space(b)])
    if null.shape[1]:
        left, singular, _ = np.linalg.svd(null, full_matrices=True)
        basis = left[:, int(np.sum(singular > 1e-6)):]     # the complement of N(C) + N(B)
    else:
        basis = np.eye(size)
    if not basis.shape[1]:
        return np.zeros_like(c)
    inner = basis.T @ (_pseudo_inverse(c) + _pseudo_inverse(b) - np.eye(size)) @ basis
    return _symmetric(basis @ np.linalg.inv(_symmetric(inner)) @ basis.T)


def disjunction(c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C OR B = NOT (NOT C AND NOT B)."""
    return negation(conjunction(negation(c), negation(b)))


def adapt_aperture(c: np.ndarray, gamma: float) -> np.ndarray:
    """phi(C, gamma) = C (C + gamma^-2 (I - C))^-1, on the eigenvalues (1 stays 1, 0 stays 0)."""
    if gamma <= 0:
        raise InputError(f"the aperture factor must be > 0, got {gamma}")
    values, vectors = np.linalg.eigh(_symmetric(c))
    values = np.clip(values, 0.0, 1.0)
    denominator = values + gamma ** -2.0 * (1.0 - values)
    return _compose(vectors, np.divide(values, denominator, out=np.zeros_like(values), where=denominator > 0))


def _compose(vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
    return _symmetric((vectors * values) @ vectors.T)


def _symmetric(m: np.ndarray) -> np.ndarray:
    return (m + m.T) / 2


def _null_space(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(_symmetric(c))
    return vectors[:, values <= TOLERANCE]


def _pseudo_inverse(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(_symmetric(c))
    inverse = np.divide(1.0, values, out=np.zeros_like(values), where=values > TOLERANCE)
    return _compose(vectors, inverse)


def evidence_conceptor(states: np.ndarray, positive: np.ndarray, negative: np.ndarray | None, scale: float,
                       aperture: float) -> np.ndarray:
    """C+ AND NOT C- (or C+ alone when negative is None) of states (m, d) weighted per state by `positive` and
    `negative` (m,) >= 0; the correlations are divided by `scale`."""
    result = conceptor(_correlation(states, positive, scale), aperture)
    if negative is not None and negative.sum() > 0:
        result = conjunction(result, negation(conceptor(_correlation(states, negative, scale), aperture)))
    return result


def _correlation(states: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    total = weights.sum()
    if total <= 0:
        return np.zeros((states.shape[1], states.shape[1]))
    return (states * (weights / (total * scale))[:, None]).T @ states


# --- the method --------------------------------------------------------------------------------------------------
def conceptor_cam(base: Method, ev: Evidence, aperture: float = 1.0, conceptor_relation: str = "channels",
                  conceptor_evidence: str = "contrast", conceptor_map: str = "projection",
                  **base_options: object) -> np.ndarray:
    """Maps (N, h, w) at the layer's resolution; see the module docstring and docs/research_methods.md."""
    for name, value, choices in (("conceptor_relation", conceptor_relation, RELATIONS),
                                 ("conceptor_evidence", conceptor_evidence, EVIDENCES),
                                 ("conceptor_map", conceptor_map, MAPS)):
        if value not in choices:
            raise InputError(f"{name} must be one of {', '.join(choices)}, not '{value}'")
    if conceptor_map == "energy" and conceptor_relation != "channels":
        raise InputError("conceptor_map='energy' is defined for conceptor_relation='channels' only")
    result = np.asarray(base.fn(ev, **base_options), np.float64)
    acts = ev.activations.astype(np.float64)
    if result.ndim not in (2, 4):
        raise InputError(f"conceptor-{base.name}: the base method returns maps, not channel weights; "
                         "use a base that weights channels (gradcam, gradcam++, xgradcam, layercam, hirescam, "
                         "scorecam, ablationcam, ...)")
    n, k, h, w = acts.shape
    # per-position channel weights g (N, K, h, w): w_k for channel-weighting bases; V / A for bases that return
    # weighted activations V (channel mean where A = 0, where V / A says nothing)
    contributions = result[:, :, None, None] * acts if result.ndim == 2 else result
    channel_weights = contributions.sum(axis=(2, 3)) / _nonzero(acts.sum(axis=(2, 3)))
    if result.ndim == 2:
        weights = np.broadcast_to(result[:, :, None, None], acts.shape)
    else:
        weights = np.where(acts != 0, contributions / _nonzero(acts), channel_weights[:, :, None, None])
    base_maps = contributions.sum(axis=1)
    out = np.empty((n, h, w))
    with _BLAS.limit(limits=1, user_api="blas"):
        for i in range(n):
            out[i] = _image_map(acts[i].reshape(k, -1), weights[i].reshape(k, -1), channel_weights[i],
                                base_maps[i].reshape(-1), aperture, conceptor_relation, conceptor_map,
                                conceptor_evidence == "contrast").reshape(h, w)
    return out


def _image_map(states: np.ndarray, weights: np.ndarray, channel_weights: np.ndarray, base_map: np.ndarray,
               aperture: float, relation: str, map_kind: str, negative: bool) -> np.ndarray:
    """One image: states (K, n) (rows a_k, columns z_p), per-position weights (K, n), channel weights (K,) and
    the base map (n,) -> the conceptor map (n,)."""
    scale = float(np.mean(states ** 2))
    support = np.maximum(base_map, 0.0)
    if scale <= 0 or support.max() <= 0:
        return base_map                                          # no positive evidence: keep the base's map
    image_map = base_map
    if relation in ("channels", "both"):
        against = np.maximum(-base_map, 0.0)                     # positions the base map counts against the class
        c = evidence_conceptor(states.T, support / support.max(),
                               against / against.max() if negative and against.max() > 0 else None, scale, aperture)
        filtered = c @ states                                    # C z_p at every position
        if map_kind == "energy":
            image_map = np.einsum("kp,kp->p", states, filtered) / scale
        else:
            image_map = np.einsum("kp,kp->p", weights, filtered)
    if relation in ("positions", "both"):
        d = evidence_conceptor(states, np.maximum(channel_weights, 0.0),
                               np.maximum(-channel_weights, 0.0) if negative else None, scale, aperture)
        image_map = d @ image_map
    return image_map


def _nonzero(a: np.ndarray) -> np.ndarray:
    return np.where(a == 0, 1.0, a)


@functools.cache
def compose(base: Method) -> Method:
    """The Method `conceptor-<base>`: the base's evidence, its options plus the conceptor's."""
    if base.name.startswith("conceptor-"):
        raise InputError(f"'conceptor-{base.name}': the base of a conceptor method cannot be another one")

    def fn(ev: Evidence, **options: object) -> np.ndarray:
        return conceptor_cam(base, ev, **options)  # type: ignore[arg-type]

    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in list(inspect.signature(conceptor_cam).parameters.values())[2:-1]]
    base_parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                       for p in list(inspect.signature(base.fn).parameters.values())[1:]]
    ev = inspect.Parameter("ev", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fn.__signature__ = inspect.Signature([ev, *base_parameters, *own])  # type: ignore[attr-defined]
    fn.__doc__ = conceptor_cam.__doc__
    return Method(f"conceptor-{base.name}", fn, "research", base.needs,
                  f"{base.cost} + a few K x K eigendecompositions", PAPER)


def _name_a_base(ev: Evidence, **options: object) -> np.ndarray:
    raise InputError("'conceptor-<base>' needs a base method in its name, e.g. conceptor-gradcam")


COMPOSERS["conceptor"] = Composer(
    Method("conceptor-<base>", _name_a_base, "research", (),
           "the base's + a few K x K eigendecompositions", PAPER),
    compose)
