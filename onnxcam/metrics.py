"""Faithfulness and localisation metrics for saliency maps.

Every faithfulness metric perturbs the image in PIXEL space and asks the model again, batching many perturbed
copies per onnxruntime run. Preprocessing is affine per channel, so a pixel-space blend towards black,
`x_pix * S`, is `baseline + S * (x - baseline)` in the model's input space, with `baseline` the model input of a
black image (`Explainer.baseline()`); metrics therefore work on preprocessed inputs directly.

All functions return one value per image (arrays of shape (N,) or (N, steps)); `evaluate` averages them.
Probabilities are those of the explained class: softmax of the logits for single-label models, sigmoid for
multi-label models (a graph ending in Sigmoid); see `activation_for`.

Metrics (higher is better unless said):
- Average Drop (lower), Average Increase / Increase in Confidence, Average Gain: Chattopadhay et al. (Grad-CAM++,
  WACV 2018) for AD/AI, Zhang et al. (Opti-CAM, arXiv 2301.07002) for AG. With p the class probability on x and
  o on x * S: AD = 100 max(0, p - o) / p, AI = 100 [o > p], AG = 100 max(0, o - p) / (1 - p), per image.
- Deletion (lower) and insertion AUC: Petsiuk et al. (RISE, BMVC 2018). Pixels are removed (set to black) or
  revealed (from a blurred copy of the image, as in RISE) in map order, most relevant first, in `steps` equal
  steps; the AUC is the trapezoidal area under the class-probability curve over the fraction of pixels in
  [0, 1], so it lies in [0, 1].
- ROAD: Rong et al. (ICML 2022, arXiv 2202.00449). The most (MoRF, lower is better) or least (LeRF, higher)
  relevant pixels are removed at several percentages and filled by noisy linear imputation (`impute`).
- Pointing game: Zhang et al. (ECCV 2016, "Top-down neural attention by excitation backprop"): a hit when the
  map's maximum lies within `tolerance` pixels of the object mask.
- Energy-based pointing game: Wang et al. (Score-CAM, CVPRW 2020): the share of the map's mass inside the
  object's box.
- Runtime: `timed_explain`, seconds per image of the explanation itself (sessions built before the clock starts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from onnxcam.errors import InputError

ACTIVATIONS = ("auto", "softmax", "sigmoid", "none")
ROAD_PERCENTAGES = (10, 30, 50, 70, 90)
ROAD_NOISE = 0.01            # std of the imputation noise, in pixel units of an image scaled to [0, 1] (as ROAD)
INSERTION_BLUR_SIGMA = 5.0   # RISE blurs with an 11 px Gaussian kernel, sigma 5, for insertion's start image

# ROAD's neighbour weights: 1/6 for the four direct neighbours, 1/12 for the diagonal ones (they sum to 1).
_NEIGHBOURS = [((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
               ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12)]


# --- probabilities ----------------------------------------------------------------------------------------------
def activation_for(explainer: Any) -> str:
    """How the explainer's scores become probabilities: 'sigmoid' when the graph's output is a Sigmoid of the
    scores (multi-label), 'none' when the scores already are the output of a Softmax/Sigmoid (probabilities=True),
    else 'softmax' (logits, or a Softmax/LogSoftmax output)."""
    from onnxcam.graph.catalogue import _PASS_THROUGH

    producer = {out: node for node in explainer.model.graph.node for out in node.output}
    name = explainer.output
    while name in producer and producer[name].op_type in _PASS_THROUGH:
        name = producer[name].input[0]
    op = producer[name].op_type if name in producer else None
    if explainer.score == explainer.output and op in ("Softmax", "Sigmoid"):
        return "none"
    return "sigmoid" if op == "Sigmoid" else "softmax"


def to_probabilities(scores: np.ndarray, activation: str) -> np.ndarray:
    """(N, classes) scores -> probabilities with 'softmax', 'sigmoid' or 'none' (scores kept)."""
    scores = np.asarray(scores, np.float64)
    if activation == "softmax":
        shifted = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * scores))  # overflow-free logistic
    if activation == "none":
        return scores
    raise InputError(f"unknown activation '{activation}'; use one of {', '.join(ACTIVATIONS)}")


def _activation(explainer: Any, activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise InputError(f"unknown activation '{activation}'; use one of {', '.join(ACTIVATIONS)}")
    return activation_for(explainer) if activation == "auto" else activation


def class_probabilities(explainer: Any, inputs: np.ndarray, targets: np.ndarray, activation: str = "auto",
                        batch_size: int = 64) -> np.ndarray:
    """Probability of targets[i] for inputs[i], running `batch_size` inputs per onnxruntime call; (N,) float64."""
    act = _activation(explainer, activation)
    out = np.empty(len(inputs), np.float64)
    for start in range(0, len(inputs), batch_size):
        chunk = np.ascontiguousarray(inputs[start:start + batch_size])
        probs = to_probabilities(explainer.scores(chunk), act)
        out[start:start + len(chunk)] = probs[np.arange(len(chunk)), targets[start:start + len(chunk)]]
    return out


# --- helpers ----------------------------------------------------------------------------------------------------
def _channel_axis(explainer: Any) -> int:
    return 1 if explainer.input_layout == "NCHW" else 3


def _expand(masks: np.ndarray, layout_axis: int) -> np.ndarray:
    """(N, H, W) -> broadcastable to the input (N, 1, H, W) or (N, H, W, 1)."""
    return masks[:, None] if layout_axis == 1 else masks[..., None]


def _check_maps(explainer: Any, x: np.ndarray, maps: np.ndarray, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, np.float32)
    size = explainer.input_size(x)
    if maps.shape != (len(x), *size):
        raise InputError(f"maps have shape {maps.shape}; expected {(len(x), *size)} (one map per image at the "
                         "model's input size, as Explainer.explain returns)")
    ids = np.broadcast_to(np.asarray(targets, np.int64), (len(x),)).copy()
    return maps, ids


def blend(x: np.ndarray, keep: np.ndarray, start: np.ndarray, axis: int) -> np.ndarray:
    """start + keep * (x - start): keep (N, H, W) in [0, 1] says how much of x shows at each pixel."""
    return (start + _expand(keep, axis) * (x - start)).astype(x.dtype)


def blur_inputs(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian blur of each image, done on the model input (a blur commutes with affine preprocessing)."""
    out = np.empty_like(x)
    for i, image in enumerate(x):
        hwc = np.moveaxis(image, 0, -1) if axis == 1 else image
        blurred = cv2.GaussianBlur(np.ascontiguousarray(hwc, np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        blurred = blurred.reshape(hwc.shape)
        out[i] = np.moveaxis(blurred, -1, 0) if axis == 1 else blurred
    return out


def _ranks(maps: np.ndarray) -> np.ndarray:
    """Per image, each pixel's position in the order most relevant first (ties: row-major order), (N, H, W)."""
    flat = maps.reshape(len(maps), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=1)
    return ranks.reshape(maps.shape)


# --- runtime ----------------------------------------------------------------------------------------------------
def timed_explain(explainer: Any, x: np.ndarray, method: str, targets: Any = None, layer: Any = None,
                  warm: bool = True, **options: Any) -> tuple[np.ndarray, float]:
    """(maps, seconds per image) of explainer.explain; with `warm`, one untimed call on the first image first
    builds the method's sessions, so the time is that of a running service, not of its start."""
    if warm:
        first = None if targets is None else np.broadcast_to(np.asarray(targets), (len(x),))[:1]
        explainer.explain(x[:1], method, first, layer, **options)
    started = time.perf_counter()
    maps = explainer.explain(x, method, targets, layer, **options)
    return maps, (time.perf_counter() - started) / len(x)


# --- Average Drop / Increase / Gain ------------------------------------------------------------------------------
def faithfulness(explainer: Any, x: np.ndarray, maps: np.ndarray, targets: Any, activation: str = "auto",
                 batch_size: int = 64, base: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Average Drop, Average Increase and Average Gain per image (percent), with the probabilities behind them.

    The masked input is x * S in pixel space (S = the map, black where S = 0). `base`: the class probabilities
    on x when already known, (N,). Returns {"average_drop", "average_increase", "average_gain", "p", "o"}.
    AD alone rewards an all-ones map (it leaves the image unchanged: AD = 0); report AG beside it.
    """
    x = np.asarray(x)
    maps, ids = _check_maps(explainer, x, maps, targets)
    axis = _channel_axis(explainer)
    p = class_probabilities(explainer, x, ids, activation, batch_size) if base is None else np.asarray(base, float)
    o = class_probabilities(explainer, blend(x, maps, explainer.baseline(), axis), ids, activation, batch_size)
    drop = 100.0 * np.maximum(0.0, p - o) / np.maximum(p, 1e-12)
    increase = 100.0 * (o > p)
    gain = 100.0 * np.maximum(0.0, o - p) / np.maximum(1.0 - p, 1e-12)
    return {"average_drop": drop, "average_increase": increase, "average_gain": gain, "p": p, "o": o}


# --- insertion / deletion ---------------------------------------------------------------------------------------
def auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoidal area under curves sampled at equally spaced fractions 0..1 (last axis); in [0, 1] for
    probabilities."""
    curve = np.asarray(curve, np.float64)
    steps = curve.shape[-1] - 1
    if steps < 1:
        raise InputError("a curve needs at least two points")
    return (curve[..., 1:] + curve[..., :-1]).sum(axis=-1) / (2.0 * steps)


def insertion_deletion(explainer: Any, x: np.ndarray, maps: np.ndarray, targets: Any, steps: int = 16,
                       activation: str = "auto", batch_size: int = 64, insertion_start: str = "blur",
                       blur_sigma: float = INSERTION_BLUR_SIGMA) -> dict[str, np.ndarray]:
    """RISE's insertion and deletion curves and AUCs per image.

    Step k of `steps` (k = 0..steps) removes / reveals the round(k/steps * H*W) most relevant pixels. Deletion
    sets removed pixels to black; insertion starts from `insertion_start` ('blur': a Gaussian blur of the image,
    as RISE; 'black') and shows the image's own pixels where revealed. Returns {"deletion": AUC (N,),
    "insertion": AUC (N,), "deletion_curve": (N, steps+1), "insertion_curve": (N, steps+1)}.
    """
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if insertion_start not in ("blur", "black"):
        raise InputError(f"insertion_start must be 'blur' or 'black', got '{insertion_start}'")
    x = np.asarray(x)
    maps, ids = _check_maps(explainer, x, maps, targets)
    axis = _channel_axis(explainer)
    baseline = np.broadcast_to(explainer.baseline(), x.shape).astype(x.dtype)
    start = blur_inputs(x, blur_sigma, axis) if insertion_start == "blur" else baseline
    ranks = _ranks(maps)
    pixels = ranks[0].size
    counts = np.round(np.arange(steps + 1) / steps * pixels).astype(np.int64)
    curves = {}
    for name, origin in (("deletion", baseline), ("insertion", start)):
        values = np.empty((len(x), steps + 1))
        for i in range(len(x)):
            shown = ranks[i][None] < counts[:, None, None]          # (steps+1, H, W): pixels removed / revealed
            keep = (~shown if name == "deletion" else shown).astype(np.float32)
            copies = blend(np.repeat(x[i:i + 1], steps + 1, 0), keep, origin[i:i + 1], axis)
            values[i] = class_probabilities(explainer, copies, np.full(steps + 1, ids[i]), activation, batch_size)
        curves[name] = values
    return {"deletion": auc(curves["deletion"]), "insertion": auc(curves["insertion"]),
            "deletion_curve": curves["deletion"], "insertion_curve": curves["insertion"]}


# --- ROAD -------------------------------------------------------------------------------------------------------
def impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.0,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """Noisy linear imputation (ROAD): each removed pixel becomes the weighted mean of its 8 neighbours (1/6
    direct, 1/12 diagonal), solved jointly as one sparse linear system, plus Gaussian noise of std `noise`.

    image: (H, W, C) float; removed: (H, W) bool. Neighbours outside the image are replaced by their linear
    extrapolation from inside (v(P) = 2 v(P') - v(2P' - P), P' the nearest pixel on the image's edge towards P),
    so a linear ramp is reproduced exactly at the borders too (ROAD's own code renormalises the weights there,
    which bends ramps) wherever the known pixels determine it (see `_edge_copy` for the cases they do not).
    Both rules are affine-invariant: imputing a preprocessed image equals imputing its pixels.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import splu

    h, w = removed.shape
    if h < 2 or w < 2:
        raise InputError(f"imputation needs an image of at least 2x2 pixels, got {h}x{w}")
    image = np.asarray(image, np.float64)
    flat = image.reshape(h * w, -1)
    unknown = np.flatnonzero(removed.ravel())
    out = flat.copy()
    if len(unknown) == 0:
        return out.reshape(image.shape)
    if len(unknown) == h * w:
        raise InputError("cannot impute an image with every pixel removed")
    column = np.full(h * w, -1, np.int64)
    column[unknown] = np.arange(len(unknown))
    ys, xs = np.divmod(unknown, w)
    copy = _edge_copy(removed).ravel()[unknown]
    rows, cols, vals = [np.arange(len(unknown))], [np.arange(len(unknown))], [np.ones(len(unknown))]
    rhs = np.zeros((len(unknown), flat.shape[1]))
    for (dy, dx), weight in _NEIGHBOURS:
        py, px = ys + dy, xs + dx
        # P' = P clamped into the image; outside points become 2 v(P') - v(2P' - P)
        qy, qx = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
        outside = (qy != py) | (qx != px)
        terms = [(qy * w + qx, np.where(outside, -(2.0 - copy) * weight, -weight))]
        ry, rx = 2 * qy - py, 2 * qx - px
        terms.append(((ry * w + rx)[outside], (1.0 - copy[outside]) * weight))
        for which, (index, coef) in enumerate(terms):
            owner = np.arange(len(unknown)) if which == 0 else np.flatnonzero(outside)
            is_unknown = column[index] >= 0
            rows.append(owner[is_unknown])
            cols.append(column[index[is_unknown]])
            vals.append(coef[is_unknown])
            np.add.at(rhs, owner[~is_unknown], -coef[~is_unknown, None] * flat[index[~is_unknown]])
    matrix = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(len(unknown), len(unknown))).tocsc()
    solved = splu(matrix).solve(rhs)
    if noise > 0:
        solved = solved + (rng or np.random.default_rng()).normal(0.0, noise, solved.shape)
    out[unknown] = solved
    return out.reshape(image.shape)


def _edge_copy(removed: np.ndarray) -> np.ndarray:
    """(H, W) float: 1.0 on removed regions whose outside-the-image neighbours must copy the nearest edge pixel
    instead of extrapolating linearly. Any rule exact for ramps leaves a region's slope free when the known pixels
    next to it lie on one line (e.g. a removed strip along the border): then ROAD's own choice, no slope across
    the border, settles it. Regions away from the border never look outside."""
    from scipy.ndimage import binary_dilation, label

    h, w = removed.shape
    labels, count = label(removed, structure=np.ones((3, 3), bool))
    out = np.zeros(removed.shape)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    for region in border[border > 0]:
        inside = labels == region
        ys, xs = np.nonzero(binary_dilation(inside, np.ones((3, 3), bool)) & ~removed)
        points = np.stack([ys, xs], axis=1).astype(np.float64)
        if len(points) < 3 or np.linalg.matrix_rank(points - points.mean(axis=0), tol=1e-9) < 2:
            out[inside] = 1.0
    return out


def road(explainer: Any, x: np.ndarray, maps: np.ndarray, targets: Any,
         percentages: Sequence[float] = ROAD_PERCENTAGES, noise: float = ROAD_NOISE, activation: str = "auto",
         batch_size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """ROAD: class probability after removing the most (MoRF) or least (LeRF) relevant pixels, per percentage.

    Removed pixels are filled by `impute` with noise of std `noise` in [0, 1] pixel units (scaled to the
    model's input units per channel). Returns {"morf": (N,) mean over percentages (lower is better), "lerf": (N,)
    (higher is better), "morf_curve": (N, P), "lerf_curve": (N, P)}.
    """
    pcts = [float(p) for p in percentages]
    if not pcts or any(not 0 < p < 100 for p in pcts):
        raise InputError(f"ROAD percentages must lie strictly between 0 and 100, got {list(percentages)}")
    x = np.asarray(x)
    maps, ids = _check_maps(explainer, x, maps, targets)
    axis = _channel_axis(explainer)
    spec = explainer.preprocessing
    # noise in input units per channel: one pixel step of 1/255 is scale/std input units
    sigma = noise * 255.0 * spec.scale / np.asarray(spec.std, np.float64)
    rng = np.random.default_rng(seed)
    ranks = _ranks(maps)
    pixels = ranks[0].size
    copies = np.empty((len(x), 2, len(pcts)) + x.shape[1:], x.dtype)
    for i in range(len(x)):
        hwc = np.moveaxis(x[i], 0, -1) if axis == 1 else x[i]
        for o, order in enumerate(("morf", "lerf")):
            for j, pct in enumerate(pcts):
                count = int(round(pct / 100 * pixels))
                removed = ranks[i] < count if order == "morf" else ranks[i] >= pixels - count
                filled = impute(hwc, removed, 0.0)
                if noise > 0:
                    filled[removed] += rng.normal(0.0, 1.0, (int(removed.sum()), hwc.shape[-1])) * sigma
                copies[i, o, j] = np.moveaxis(filled, -1, 0) if axis == 1 else filled
    flat = copies.reshape((-1,) + x.shape[1:])
    probs = class_probabilities(explainer, flat, np.repeat(ids, 2 * len(pcts)), activation, batch_size)
    probs = probs.reshape(len(x), 2, len(pcts))
    return {"morf": probs[:, 0].mean(axis=1), "lerf": probs[:, 1].mean(axis=1),
            "morf_curve": probs[:, 0], "lerf_curve": probs[:, 1]}


# --- localisation -----------------------------------------------------------------------------------------------
def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """1.0 where the map's maximum (first in row-major order when tied) lies within `tolerance` pixels of the
    object mask, else 0.0; NaN for an empty mask (nothing to point at). maps and masks (N, H, W)."""
    maps, masks = np.asarray(maps), np.asarray(masks).astype(bool)
    if maps.shape != masks.shape:
        raise InputError(f"maps {maps.shape} and masks {masks.shape} must have the same shape")
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    out = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks)):
        if not mask.any():
            continue
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        if tolerance == 0:
            out[i] = float(mask[y, x])
            continue
        my, mx = np.nonzero(mask)
        out[i] = float(np.min((my - y) ** 2 + (mx - x) ** 2) <= tolerance ** 2)
    return out


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """The tight box [x0, y0, x1, y1] (x1, y1 exclusive) of a boolean mask, None when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def energy_pointing_game(maps: np.ndarray, boxes: Sequence[Any]) -> np.ndarray:
    """Share of each map's mass inside its box [x0, y0, x1, y1] (pixels, x1/y1 exclusive; None = no box -> NaN).
    A map with no mass scores 0. maps (N, H, W)."""
    maps = np.asarray(maps, np.float64)
    if len(boxes) != len(maps):
        raise InputError(f"{len(maps)} maps but {len(boxes)} boxes")
    out = np.full(len(maps), np.nan)
    for i, (m, box) in enumerate(zip(maps, boxes)):
        if box is None:
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        total = m.sum()
        inside = m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].sum()
        out[i] = inside / total if total > 0 else 0.0
    return out
