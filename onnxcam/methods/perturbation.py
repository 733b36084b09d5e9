"""Perturbation methods: the Score-CAM family masks the input with each channel; Ablation-CAM and Recipro-CAM
perturb the layer itself and re-run only the head of the model after it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method

EPS = 1e-8
# Recipro-CAM's 3x3 neighbourhood weights (Byun & Lee's reference code)
GAUSSIAN_3X3 = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0


# --- Score-CAM family -------------------------------------------------------------------------------------------
@method("scorecam", "perturbation", ("scores_of",), "1 forward + K forwards (masked inputs)",
        "Wang et al., CVPR Workshops 2020")
def scorecam(ev: Evidence, batch_size: int | None = None, channels: int | None = None,
             scorecam_weights: str = "softmax") -> np.ndarray:
    """Channel k masks the input with M_k = minmax(up(A_k)): bilinear upsampling with align_corners=True, then
    per-channel min-max to [0, 1] (eps 1e-8), as pytorch-grad-cam does. The masked inputs x * M_k run through the
    model in batches of `batch_size` (None: as many as fit MEMORY_BUDGET, at most MAX_BATCH); identical masks
    (constant channels, repeated channels) are run once.

    scorecam_weights="softmax" (pytorch-grad-cam, torchcam): w = softmax over channels of the target logits.
    "probability" (the paper's code): w_k = softmax over classes of the masked input's scores, at the target.
    channels: score only the `channels` channels of highest mean activation; the others get weight 0.
    """
    def masks(i: int, ks: np.ndarray, _: int) -> np.ndarray:
        return _minmax(_upsample(ev.activations[i, ks], ev.input_size, align_corners=True))
    return _score_weights(ev, masks, 1, batch_size, channels, scorecam_weights, share=True)


@method("sscam", "perturbation", ("scores_of",), "1 forward + num_samples x K forwards",
        "Wang et al., 2020 (SS-CAM)")
def sscam(ev: Evidence, num_samples: int = 35, std: float = 2.0, batch_size: int | None = None,
          channels: int | None = None, scorecam_weights: str = "softmax", seed: int = 0) -> np.ndarray:
    """torchcam's SS-CAM: w = softmax_k(mean_s Y_c(x * (M_k + d_s))), d_s ~ N(0, std^2) drawn per image, sample,
    channel and pixel, with std in mask units (torchcam: std=2.0, num_samples=35). M_k is torchcam's mask:
    per-channel min-max at the layer's resolution, then bilinear upsampling (align_corners=False).
    Noise comes from numpy's default_rng(seed), so maps are reproducible and independent of batch_size.
    """
    rng = np.random.default_rng(seed)

    def masks(i: int, ks: np.ndarray, _: int) -> np.ndarray:
        base = _torchcam_masks(ev, i, ks)
        return base + rng.normal(0.0, std, base.shape)
    return _score_weights(ev, masks, num_samples, batch_size, channels, scorecam_weights)


@method("iscam", "perturbation", ("scores_of",), "1 forward + num_samples x K forwards",
        "Naidu et al., 2020 (IS-CAM)")
def iscam(ev: Evidence, num_samples: int = 10, batch_size: int | None = None, channels: int | None = None,
          scorecam_weights: str = "softmax") -> np.ndarray:
    """torchcam's IS-CAM: w = softmax_k(mean_s Y_c(c_s * x * M_k)) for s = 1..N with the cumulative coefficient
    c_s = sum_{p<=s} p/N (torchcam's loop: 0.1, 0.3, 0.6, ... 5.5 for N=10), M_k as in sscam."""
    def masks(i: int, ks: np.ndarray, sample: int) -> np.ndarray:
        s = sample + 1
        return _torchcam_masks(ev, i, ks) * (s * (s + 1) / (2 * num_samples))
    return _score_weights(ev, masks, num_samples, batch_size, channels, scorecam_weights, share=True)


# One run's masked copies of the input and their masks, as NumPy builds them (float64 masks and products, float32
# inputs); batch_size=None takes the largest batch under this, at most MAX_BATCH (onnxruntime's own buffers grow
# with the batch too, and CPU throughput stops improving well before).
MEMORY_BUDGET = 256 * 2**20
MAX_BATCH = 32


def _batch(batch_size: int | None, item_bytes: int) -> int:
    if batch_size is None:
        return int(max(1, min(MAX_BATCH, MEMORY_BUDGET // max(1, item_bytes))))
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive int or None, not {batch_size}")
    return batch_size


def _score_weights(ev: Evidence, masks_of: Callable[[int, np.ndarray, int], np.ndarray], samples: int,
                   batch_size: int | None, channels: int | None, weighting: str, share: bool = False) -> np.ndarray:
    """(N, K) weights from the target scores of x * masks_of(image, channel ids, sample), averaged over samples.

    share (deterministic masks): a constant channel masks the image to zero (min-max of a constant), so all such
    channels take the first one's mask, as one channel; then every mask is run once however often it recurs (the
    zero mask of every constant channel and every IS-CAM sample, repeated channels): the same input gives the
    same score, so this is exact.
    """
    if weighting not in ("softmax", "probability"):
        raise InputError(f"scorecam_weights must be 'softmax' or 'probability', not '{weighting}'")
    if weighting == "probability" and ev.target_objects is not None:
        raise InputError("scorecam_weights='probability' needs class targets; use 'softmax' for other targets")
    assert ev.scores_of is not None
    pixels = int(np.prod(ev.input_size))
    batch = _batch(batch_size, pixels * 8 + ev.x[0].size * 12)
    weights = np.zeros(ev.activations.shape[:2])
    for i, target in enumerate(ev.targets):
        chosen = _top_channels(ev.activations[i], channels)
        owner = np.arange(len(chosen))
        if share:  # constant channels: one representative
            flat = np.flatnonzero(np.ptp(ev.activations[i, chosen], axis=(1, 2)) == 0)
            owner[flat] = flat[0] if len(flat) else 0
        run = np.unique(owner)
        scorer = _MaskScorer(ev, i, target, weighting, batch, share)
        for sample in range(samples):
            for start in range(0, len(run), batch):
                ks = run[start:start + batch]
                scorer.add(masks_of(i, chosen[ks], sample), ks)
                ev.done((i + (sample * len(run) + start + len(ks)) / (samples * max(1, len(run)))) / len(ev.targets))
        mean = scorer.totals(len(chosen))[owner] / samples
        weights[i, chosen] = mean if weighting == "probability" else _softmax(mean)
    return weights


class _MaskScorer:
    """Scores masked copies of one image in full batches. With `share`, a mask seen before (the same bytes) is not
    run again: it takes the score it had."""

    def __init__(self, ev: Evidence, image: int, target: int, weighting: str, batch: int, share: bool) -> None:
        self.ev, self.image, self.target, self.weighting = ev, image, target, weighting
        self.batch, self.share = batch, share
        self._scores: dict[bytes, float] = {}          # mask digest -> its score
        self._waiting: dict[bytes, np.ndarray] = {}    # masks to run in the next batch, by digest
        self._owed: list[tuple[int, bytes]] = []       # (channel slot, digest of its mask), one per mask added

    def add(self, masks: np.ndarray, slots: np.ndarray) -> None:
        for mask, slot in zip(masks, slots):
            digest = hashlib.blake2b(mask.tobytes(), digest_size=16).digest() if self.share \
                else len(self._owed).to_bytes(8, "little")
            if digest not in self._scores and digest not in self._waiting:
                self._waiting[digest] = mask
            self._owed.append((int(slot), digest))
            if len(self._waiting) == self.batch:
                self._run()

    def totals(self, slots: int) -> np.ndarray:
        """Per channel slot, the sum of its masks' scores."""
        self._run()
        out = np.zeros(slots)
        for slot, digest in self._owed:
            out[slot] += self._scores[digest]
        return out

    def _run(self) -> None:
        if not self._waiting:
            return
        assert self.ev.scores_of is not None
        masked = _apply_masks(self.ev, self.image, np.stack(list(self._waiting.values())))
        scores = self.ev.scores_of(masked).astype(np.float64)
        values = _softmax(scores)[:, self.target] if self.weighting == "probability" else \
            self.ev.target_scores(scores, self.image)
        self._scores.update(zip(self._waiting, values))
        self._waiting = {}


def _torchcam_masks(ev: Evidence, i: int, ks: np.ndarray) -> np.ndarray:
    return _upsample(_minmax(ev.activations[i, ks].astype(np.float64)), ev.input_size, align_corners=False)


def _apply_masks(ev: Evidence, i: int, masks: np.ndarray) -> np.ndarray:
    """x[i] * each mask (B, H, W), in the model's input layout."""
    image = ev.x[i][None]
    masks = masks[:, None] if ev.input_layout == "NCHW" else masks[..., None]
    return (image * masks).astype(np.float32)


# --- Layer perturbations (head only) ----------------------------------------------------------------------------
@method("ablationcam", "perturbation", ("head_scores", "channel_ablation"), "1 forward + K head runs",
        "Desai & Ramaswamy, WACV 2020")
def ablationcam(ev: Evidence, batch_size: int | None = None, channels: int | None = None) -> np.ndarray:
    """w_k = (y - y_k) / y with y the target logit and y_k the target logit with channel k of the layer set to
    zero (pytorch-grad-cam's weight; it ablates with min - 1e7 instead when the layer has no zeros). Only the head
    after the layer runs, on batches of `batch_size` ablated copies (None: as in scorecam). channels: as in
    scorecam (others weigh 0). A channel that is zero everywhere is not run: zeroing it changes nothing, and
    whatever its weight, it adds nothing to the map.
    """
    assert ev.head_scores is not None
    acts = ev.activations
    weights = np.zeros(acts.shape[:2])
    batch = _batch(batch_size, int(np.prod(acts.shape[1:])) * 4)
    for i in range(len(ev.targets)):
        original = float(ev.target_scores(ev.scores[i:i + 1], i)[0])
        chosen = _top_channels(acts[i], channels)
        chosen = chosen[acts[i, chosen].any(axis=(1, 2))]
        ablated = np.empty(len(chosen))
        ablate = ev.channel_ablation  # zeroing after global pooling: K values, not K x h x w
        for start in range(0, len(chosen), batch):
            ks = chosen[start:start + batch]
            keep = np.ones((len(ks), acts.shape[1], 1, 1), np.float32)
            keep[np.arange(len(ks)), ks] = 0
            scores = ablate(i, keep[:, :, 0, 0]) if ablate else ev.head_scores(acts[i][None], i, keep)
            ablated[start:start + len(ks)] = ev.target_scores(scores, i)
            ev.done((i + (start + len(ks)) / len(chosen)) / len(ev.targets))
        weights[i, chosen] = (original - ablated) / (original if original != 0 else 1.0)
    return weights


@method("reciprocam", "perturbation", ("head_scores",), "1 forward + h*w head runs", "Byun & Lee, 2022 (Recipro-CAM)")
def reciprocam(ev: Evidence, mode: str = "gaussian", batch_size: int | None = None) -> np.ndarray:
    """Map (N, h, w): at (i, j), the target's softmax probability when the head sees a feature map that holds
    only A[:, i, j], spread over the 3x3 neighbourhood with weights [1 2 1]^T [1 2 1] / 16 and cut at the border
    (mode="gaussian", the reference code's Gaussian mosaic) or kept at (i, j) alone (mode="exact").
    Only the head after the layer runs, on batches of `batch_size` positions (None: as in scorecam)."""
    if mode not in ("gaussian", "exact"):
        raise InputError(f"reciprocam mode must be 'gaussian' or 'exact', not '{mode}'")
    assert ev.head_scores is not None
    acts = ev.activations
    n, _, h, w = acts.shape
    batch = _batch(batch_size, int(np.prod(acts.shape[1:])) * 4)
    maps = np.zeros((n, h * w))
    for i, target in enumerate(ev.targets):
        for start in range(0, h * w, batch):
            positions = np.arange(start, min(start + batch, h * w))
            rows, cols = np.divmod(positions, w)
            # float32 throughout: the weights are powers of two, so the products are exact either way
            patterns = _patterns(rows, cols, h, w, mode).astype(acts.dtype)
            features = acts[i][:, rows, cols].T[:, :, None, None] * patterns[:, None]
            scores = ev.head_scores(features.astype(np.float32, copy=False), i).astype(np.float64)
            # a class's softmax probability (the paper's); other targets (segmentation, ...) use their value
            maps[i, positions] = _softmax(scores)[:, target] if ev.target_objects is None else \
                ev.target_scores(scores, i)
            ev.done((i + (positions[-1] + 1) / (h * w)) / n)
    return maps.reshape(n, h, w)


def _patterns(rows: np.ndarray, cols: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    """(B, h, w) spatial weights of each position: one-hot, or the 3x3 kernel centred there."""
    if mode == "exact":
        out = np.zeros((len(rows), h, w))
        out[np.arange(len(rows)), rows, cols] = 1.0
        return out
    padded = np.zeros((len(rows), h + 2, w + 2))
    for b, (r, c) in enumerate(zip(rows, cols)):
        padded[b, r:r + 3, c:c + 3] = GAUSSIAN_3X3
    return padded[:, 1:-1, 1:-1]


# --- helpers ----------------------------------------------------------------------------------------------------
def _top_channels(acts: np.ndarray, budget: int | None) -> np.ndarray:
    """Channel ids to score: all, or the `budget` of highest mean activation."""
    k = acts.shape[0]
    if budget is None or budget >= k:
        return np.arange(k)
    if budget < 1:
        raise InputError(f"channels must be a positive int or None, not {budget}")
    return np.sort(np.argsort(-acts.mean(axis=(1, 2)), kind="stable")[:budget])


def _minmax(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low + EPS)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _upsample(maps: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """Bilinear resize of (B, h, w) to (B, H, W) as torch's interpolate does, as two small matrix products."""
    rows = _interpolation_matrix(size[0], maps.shape[1], align_corners)
    cols = _interpolation_matrix(size[1], maps.shape[2], align_corners)
    return rows @ maps.astype(np.float64) @ cols.T


def _interpolation_matrix(n_out: int, n_in: int, align_corners: bool) -> np.ndarray:
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(n_out), high), frac)
    return matrix
