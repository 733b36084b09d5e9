"""Opti-CAM (Zhang et al., "Opti-CAM: Optimizing saliency maps for interpretability", CVIU 2024, arXiv 2301.07002).

The channel weights are optimised per image so that the image masked by its own saliency map keeps the target
logit:  a = softmax(u),  S(u) = n(up(sum_k a_k relu(A_k))),  minimise  y_c(x) - y_c(x * S(u))  with Adam.

The gradient with respect to u is exact: one onnxruntime run per iteration returns the target logits of the masked
batch and their gradient with respect to the input, and the rest of the chain is written out in NumPy:
input gradient -> mask S -> normalisation n -> upsampling (an explicit linear operator, so its adjoint is its
transpose) -> softmax weights -> u.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from onnxcam.errors import InputError
from onnxcam.methods import Evidence, method
from onnxcam.methods.perturbation import _interpolation_matrix

NORMALISATIONS = ("max-min", "max", "sigmoid")
MASKINGS = ("pixel", "input")
LOSSES = ("plain", "norm")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@method("opticam", "research", ("input_gradients_of", "baseline"),
        "1 forward+backward + up to `iterations` forward+backward to the input",
        "Zhang et al., CVIU 2024 (Opti-CAM, arXiv 2301.07002)")
def opticam(ev: Evidence, iterations: int = 50, lr: float = 0.1, start: float = 0.5, early_stop: bool = True,
            normalisation: str = "max-min", masking: str = "pixel", loss: str = "plain") -> np.ndarray:
    """Maps (N, H, W): the optimised masks S(u) at the input's size.

    Defaults follow the official demo (hanwei0912/OptiCAM): u starts at `start` everywhere (uniform weights),
    Adam with learning rate `lr`, `iterations` steps; with `early_stop`, every max(1, iterations // 10) steps an
    image stops when its loss went up since the last check (the official code stops the whole batch; here each
    image stops on its own, so a map does not depend on its batch).

    normalisation: "max-min" (default), "max" (S = U / max U) or "sigmoid" (S = sigmoid(U)), the official code's
    choices, applied after upsampling as the paper writes n(up(.)).
    masking: "pixel" (default, as the official code, whose model normalises inside): x * S in pixel space, i.e.
    baseline + S * (x - baseline) in the model's input space with the black image as baseline; "input": S * x on
    the preprocessed input (a zero baseline).
    loss: "plain" (the demo's default) y_c(x) - y_c(x * S), or "norm" |y_c(x) - y_c(x * S)| (the class default).
    """
    _check_choice("normalisation", normalisation, NORMALISATIONS)
    _check_choice("masking", masking, MASKINGS)
    _check_choice("loss", loss, LOSSES)
    if iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    problem = MaskProblem(ev, normalisation, masking, loss)
    u = optimise(problem, iterations, lr, start, early_stop)
    return problem.masks(u, np.arange(len(u)))[0].astype(np.float32)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"opticam {name} must be one of {', '.join(choices)}, not '{value}'")


@dataclass
class MaskProblem:
    """The objective of a batch: masks from weights, and the loss with its exact gradient with respect to u."""

    ev: Evidence
    normalisation: str = "max-min"
    masking: str = "pixel"
    loss: str = "plain"

    def __post_init__(self) -> None:
        if self.ev.input_gradients_of is None:
            raise InputError("opticam needs input gradients of the model; use it through onnxcam.Explainer")
        if self.ev.target_objects is not None:
            raise InputError("opticam explains class targets only (ints); it has no seed for target objects yet")
        self.features = np.maximum(self.ev.activations.astype(np.float64), 0.0)       # relu(A): (N, K, h, w)
        h, w = self.features.shape[2:]
        size = self.ev.input_size if all(self.ev.input_size) else _spatial(self.ev.x, self.ev.input_layout)
        # cv2/torch bilinear resize (half-pixel centres) as two matrices: up(M) = rows @ M @ cols.T
        self.rows = _interpolation_matrix(size[0], h, align_corners=False)
        self.cols = _interpolation_matrix(size[1], w, align_corners=False)
        x = self.ev.x.astype(np.float64)
        use_baseline = self.masking == "pixel" and self.ev.baseline is not None
        self.base = np.asarray(self.ev.baseline, np.float64) if use_baseline else np.zeros((1,) * x.ndim)
        self.delta = x - self.base          # masked = base + S * delta
        self.channel_axis = 1 if self.ev.input_layout == "NCHW" else 3
        self.targets = np.asarray(self.ev.targets, np.int64)

    @cached_property
    def reference(self) -> np.ndarray:
        """y_c(x) per image: the logit of the unmasked input."""
        return self.ev.scores[np.arange(len(self.targets)), self.targets].astype(np.float64)

    def masks(self, u: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """S (n, H, W) for the rows of u (n, K) of `images`, with U = up(M) and the weights a."""
        weights = _softmax(u)
        low = np.einsum("nk,nkhw->nhw", weights, self.features[images])
        upsampled = self.rows @ low @ self.cols.T
        return self._normalise(upsampled), upsampled, weights

    def objective(self, u: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Loss (n,), its gradient d loss / d u (n, K) and the masks (n, H, W), from one run of the model."""
        s, upsampled, weights = self.masks(u, images)
        masked = self.base + self._expand(s) * self.delta[images]
        assert self.ev.input_gradients_of is not None
        scores, grad_x = self.ev.input_gradients_of(masked.astype(self.ev.x.dtype), self.targets[images])
        logits = scores[np.arange(len(images)), self.targets[images]].astype(np.float64)
        gap = self.reference[images] - logits
        loss = np.abs(gap) if self.loss == "norm" else gap
        d_logit = -np.sign(gap) if self.loss == "norm" else -np.ones_like(gap)
        # chain: masked = base + S * delta -> dL/dS = dL/dy * sum over channels of grad_x * delta
        g_s = d_logit[:, None, None] * (grad_x.astype(np.float64) * self.delta[images]).sum(axis=self.channel_axis)
        g_up = self._normalise_backward(g_s, s, upsampled)
        g_low = self.rows.T @ g_up @ self.cols                                   # adjoint of the upsampling
        g_weights = np.einsum("nhw,nkhw->nk", g_low, self.features[images])
        g_u = weights * (g_weights - (weights * g_weights).sum(axis=1, keepdims=True))   # softmax backward
        return loss, g_u, s

    def _expand(self, s: np.ndarray) -> np.ndarray:
        return s[:, None] if self.channel_axis == 1 else s[..., None]

    def _normalise(self, up: np.ndarray) -> np.ndarray:
        if self.normalisation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-up))
        flat = up.reshape(len(up), -1)
        high = flat.max(axis=1)[:, None, None]
        if self.normalisation == "max":
            return np.divide(up, high, out=np.zeros_like(up), where=high != 0)
        low = flat.min(axis=1)[:, None, None]
        # a flat map (max == min) has no shape to optimise: it masks everything (S = 0) and has zero gradient
        return np.divide(up - low, high - low, out=np.zeros_like(up), where=high > low)

    def _normalise_backward(self, g: np.ndarray, s: np.ndarray, up: np.ndarray) -> np.ndarray:
        """d loss / d U from d loss / d S: the argmax and argmin pixels carry the extra terms of max-min and max
        (for tied extremes, any one of them: tied pixels of a bilinear upsampling are the same function of u)."""
        if self.normalisation == "sigmoid":
            return g * s * (1.0 - s)
        n = len(up)
        flat = up.reshape(n, -1)
        rows = np.arange(n)
        arg_high, arg_low = flat.argmax(axis=1), flat.argmin(axis=1)
        high = flat[rows, arg_high]
        sum_gs = (g * s).reshape(n, -1).sum(axis=1)
        if self.normalisation == "max":
            scale = np.divide(1.0, high, out=np.zeros_like(high), where=high != 0)
            out = (g * scale[:, None, None]).reshape(n, -1)
            out[rows, arg_high] -= sum_gs * scale
            return out.reshape(up.shape)
        span = high - flat[rows, arg_low]
        scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)
        out = (g * scale[:, None, None]).reshape(n, -1)
        out[rows, arg_low] += (sum_gs - g.reshape(n, -1).sum(axis=1)) * scale
        out[rows, arg_high] -= sum_gs * scale
        return out.reshape(up.shape)


def optimise(problem: MaskProblem, iterations: int, lr: float, start: float, early_stop: bool) -> np.ndarray:
    """Adam on u for all images at once (one model run per step); returns the final u (N, K)."""
    n, k = problem.features.shape[:2]
    u = np.full((n, k), float(start))
    first, second = np.zeros_like(u), np.zeros_like(u)
    previous = np.full(n, np.inf)
    active = np.arange(n)
    check_every = max(1, iterations // 10)
    beta1, beta2 = ADAM_BETAS
    for step in range(iterations):
        loss, grad, _ = problem.objective(u[active], active)
        if early_stop and step % check_every == 0:
            # as the official code: a loss that went up since the last check stops the image at the current u
            going = loss <= previous[active]
            previous[active] = loss
            active, grad = active[going], grad[going]
            if not len(active):
                break
        t = step + 1
        first[active] = beta1 * first[active] + (1 - beta1) * grad
        second[active] = beta2 * second[active] + (1 - beta2) * grad * grad
        step_size = lr / (1 - beta1 ** t)
        u[active] -= step_size * first[active] / (np.sqrt(second[active] / (1 - beta2 ** t)) + ADAM_EPS)
        problem.ev.done(t / iterations)
    return u


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _spatial(x: np.ndarray, layout: str) -> tuple[int, int]:
    return (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
