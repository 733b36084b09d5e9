"""Token tensors of vision transformers (ViT, DeiT, Swin) as CAM layers.

A transformer keeps its feature map as tokens: B x T x C ("BTC", the usual), B x C x T ("BCT", a flattened conv
output) or, in Swin, B x h x w x C (plain NHWC, handled like any channels-last map). The T tokens are an h x w grid
of patches, possibly after (or before) a few extra tokens: class, distillation or register tokens.

The grid is inferred from T and the input size (H, W): h * w = T - e for some e in 0..MAX_EXTRA_TOKENS extra tokens,
with one integer patch size p such that H = p * h and W = p * w. When that leaves more than one answer the user
sets it: `grid=(h, w)` and/or `extra_tokens=e` (`--grid HxW`, `--extra-tokens E` on the CLI).

Methods see the grid as an ordinary NCHW feature map (N, C, h, w): activations and gradients get the same reshape,
extra tokens are dropped. Methods that feed features back into the head (Ablation-CAM, ReciproCAM) get the inverse,
with the extra tokens put back from the unmodified activation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from onnxcam.errors import InputError, LayerError
from onnxcam.graph.contract import Dim
from onnxcam.graph.token_shapes import (  # noqa: F401  (re-exported: the token API in one place)
    MAX_EXTRA_TOKENS,
    TOKEN_LAYOUTS,
    grids,
    runtime_layout,
)

EXTRA_AT = ("start", "end")


@dataclass(frozen=True)
class TokenOptions:
    """What the user says about token grids; None lets onnxcam infer it."""
    grid: tuple[int, int] | None = None
    extra_tokens: int | None = None
    extra_tokens_at: str = "start"  # where the extra tokens sit: "start" (ViT, DeiT, timm) or "end"

    def __post_init__(self) -> None:
        if self.grid is not None and (len(self.grid) != 2 or min(self.grid) < 1):
            raise InputError(f"grid must be two positive integers (h, w), got {self.grid}")
        if self.extra_tokens is not None and self.extra_tokens < 0:
            raise InputError(f"extra_tokens must be 0 or more, got {self.extra_tokens}")
        if self.extra_tokens_at not in EXTRA_AT:
            raise InputError(f"extra_tokens_at must be 'start' or 'end', got '{self.extra_tokens_at}'")


def parse_grid(text: str) -> tuple[int, int]:
    """'14x14' or '14' -> (14, 14)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+)\s*)?", text)
    if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
        raise InputError(f"grid '{text}' is not HxW (e.g. 14x14) or N")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


# --- grids ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrid:
    """Where the patches are among T tokens: an h x w grid after/before `extra` other tokens."""
    h: int
    w: int
    extra: int
    at: str = "start"

    @property
    def patches(self) -> slice:
        return slice(self.extra, None) if self.at == "start" else slice(0, self.h * self.w)

    @property
    def extras(self) -> slice:
        return slice(0, self.extra) if self.at == "start" else slice(self.h * self.w, None)


def infer_grid(tokens: int, input_hw: tuple[Dim, Dim], options: TokenOptions = TokenOptions(),
               layer: str = "") -> TokenGrid:
    """The grid of a layer with `tokens` tokens; LayerError naming the fix when there is none or several."""
    where = f"layer '{layer}'" if layer else "the layer"
    size = "x".join(str(d) for d in input_hw) if all(isinstance(d, int) for d in input_hw) else "of unknown size"
    if options.grid is not None:
        h, w = options.grid
        extra = tokens - h * w
        if extra < 0 or (options.extra_tokens is not None and extra != options.extra_tokens):
            wanted = "" if options.extra_tokens is None else f" + {options.extra_tokens} extra"
            raise LayerError(f"{where} has {tokens} tokens; the grid {h}x{w}{wanted} does not fit them: pass a grid "
                             f"with h*w + extra tokens = {tokens} (CLI: --grid HxW, --extra-tokens N)")
        return TokenGrid(h, w, extra, options.extra_tokens_at)
    counts = range(MAX_EXTRA_TOKENS + 1) if options.extra_tokens is None else [options.extra_tokens]
    found = [TokenGrid(h, w, e, options.extra_tokens_at) for e in counts for h, w in grids(tokens - e, input_hw)]
    if len(found) == 1:
        return found[0]
    if not found:
        after = "" if options.extra_tokens is None else f" after {options.extra_tokens} extra tokens"
        raise LayerError(f"{where} has {tokens} tokens, which make no grid of square patches{after} over an input "
                         f"{size}: pass grid=(h, w) (CLI: --grid HxW) and, if needed, extra_tokens=N")
    options_text = "; ".join(f"{g.h}x{g.w} after {g.extra} extra token(s)" for g in found)
    raise LayerError(f"{where} has {tokens} tokens over an input {size}, which fit several grids ({options_text}): "
                     f"pass grid=(h, w) or extra_tokens=N (CLI: --grid HxW, --extra-tokens N)")


# --- arrays ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenView:
    """A token layer seen as NCHW for one batch, and back. `original` is the layer's activation for that batch
    (N, T, C) or (N, C, T), where the extra tokens are taken from when features go back to the head."""
    layout: str  # "BTC" or "BCT"
    grid: TokenGrid
    original: np.ndarray

    def to_nchw(self, array: np.ndarray) -> np.ndarray:
        """(N, T, C) or (N, C, T) -> (N, C, h, w), extra tokens dropped."""
        tokens = array if self.layout == "BTC" else array.transpose(0, 2, 1)
        patches = tokens[:, self.grid.patches]
        return np.ascontiguousarray(patches.transpose(0, 2, 1).reshape(
            len(array), tokens.shape[2], self.grid.h, self.grid.w))

    def from_nchw(self, features: np.ndarray, image: int) -> np.ndarray:
        """(B, C, h, w) -> the layer's layout, with image `image`'s extra tokens put back in every row."""
        batch, channels = features.shape[:2]
        patches = features.reshape(batch, channels, -1).transpose(0, 2, 1)  # (B, h*w, C)
        original = self.original if self.layout == "BTC" else self.original.transpose(0, 2, 1)
        extras = np.broadcast_to(original[image, self.grid.extras], (batch, self.grid.extra, channels))
        parts = [extras, patches] if self.grid.at == "start" else [patches, extras]
        tokens = np.concatenate(parts, axis=1).astype(features.dtype, copy=False)
        return tokens if self.layout == "BTC" else tokens.transpose(0, 2, 1)

    def channel_scale(self, scale: np.ndarray) -> np.ndarray:
        """A per-channel scale (B, C, 1, 1) shaped to broadcast over every token, the extra ones included (as
        pytorch-grad-cam's AblationLayerVit ablates a channel in all tokens)."""
        batch, channels = scale.shape[:2]
        flat = scale.reshape(batch, channels)
        return flat[:, None, :] if self.layout == "BTC" else flat[:, :, None]


def token_view(layer: str, layout: str, activation: np.ndarray, input_hw: tuple[int, int],
               options: TokenOptions) -> TokenView:
    """The view of a token layer's activation (N, T, C) / (N, C, T) for a batch of N inputs of size input_hw."""
    if activation.ndim != 3:
        raise LayerError(f"layer '{layer}' has shape {activation.shape}; a {layout} token layer must be rank 3")
    return TokenView(layout, infer_grid(activation.shape[1] if layout == "BTC" else activation.shape[2], input_hw,
                                        options, layer), activation)


def check_batch(layer: str, activation: np.ndarray, batch: int) -> None:
    """Attention internals (heads x batch first) can look like tokens in the graph; their values tell."""
    if len(activation) != batch:
        raise LayerError(f"layer '{layer}' has shape {activation.shape}: its first axis is not the batch of {batch} "
                         "images (attention heads?), so it is no per-image feature map; pick another layer "
                         "(onnxcam inspect)")
