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
import onnx
from onnx import numpy_helper

from onnxcam.errors import InputError, LayerError
from onnxcam.graph.autodiff import ancestors

TOKEN_LAYOUTS = ("BTC", "BCT")
# Class (1), distillation (DeiT: 2), registers (DINOv2: 1 + 4): 8 covers the models in use.
MAX_EXTRA_TOKENS = 8
EXTRA_AT = ("start", "end")

Dim = int | str | None


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
def grids(tokens: int, input_hw: tuple[Dim, Dim]) -> list[tuple[int, int]]:
    """The grids (h, w) of `tokens` patches over an H x W input with one integer patch size (H = p*h, W = p*w);
    square grids when the input size is unknown. A grid less than 2 patches high or wide is no map (and would make
    many token counts ambiguous)."""
    if tokens < 4:
        return []
    height, width = input_hw
    if not (isinstance(height, int) and isinstance(width, int)):
        side = round(tokens ** 0.5)
        return [(side, side)] if side * side == tokens else []
    found = []
    for p in range(1, min(height, width) // 2 + 1):
        if height % p == 0 and width % p == 0 and (height // p) * (width // p) == tokens:
            found.append((height // p, width // p))
    return found


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


# --- the catalogue's view of a graph --------------------------------------------------------------------------------
def is_token_count(tokens: Dim, input_hw: tuple[Dim, Dim]) -> bool:
    """Whether some grid with 0..MAX_EXTRA_TOKENS extra tokens fits (several do not make it less of a token axis)."""
    return isinstance(tokens, int) and any(grids(tokens - e, input_hw) for e in range(MAX_EXTRA_TOKENS + 1))


def batch_like(dim: Dim, batch: Dim) -> bool:
    """Whether a leading dimension can be the input's batch: attention internals have heads * batch or
    tokens there, which are not per-image maps."""
    if isinstance(batch, int):
        return dim == batch or dim is None or (isinstance(dim, str) and dim.isidentifier())
    if isinstance(dim, int):
        return False
    return dim is None or dim.isidentifier()  # "batch", "unk__4"; not "2*batch"


def rank3_layout(shape: tuple[Dim, ...], hint: str | None, input_hw: tuple[Dim, Dim], batch: Dim) -> str | None:
    """"BTC", "BCT" or None for a rank-3 tensor; `hint` is the layout flowing from the producer, if any."""
    if len(shape) != 3 or not batch_like(shape[0], batch):
        return None
    if not all(isinstance(d, int) and d > 1 for d in shape[1:]):  # (B, T, 1): a normaliser's statistic
        return None
    fits = {"BTC": is_token_count(shape[1], input_hw), "BCT": is_token_count(shape[2], input_hw)}
    if hint in fits and fits[hint]:
        return hint
    return "BTC" if fits["BTC"] else "BCT" if fits["BCT"] else None


def grid_nhwc(shape: tuple[Dim, ...], input_hw: tuple[Dim, Dim], batch: Dim) -> bool:
    """Whether a rank-4 tensor with no layout from a conv is a channels-last grid (Swin's B x h x w x C)."""
    if len(shape) != 4 or not batch_like(shape[0], batch):
        return False
    h, w, c = shape[1:]
    if not (isinstance(h, int) and isinstance(w, int) and isinstance(c, int) and c > 1):
        return False
    return (h, w) in grids(h * w, input_hw)


def runtime_layout(shape: tuple[int, ...], input_hw: tuple[int, int]) -> str | None:
    """The layout of a layer the graph gives no static shape for (dynamic exports), from its values' shape."""
    if len(shape) == 3:
        return rank3_layout(shape, None, input_hw, shape[0])
    if len(shape) == 4:
        channels_first = (shape[2], shape[3]) in grids(shape[2] * shape[3], input_hw)
        channels_last = (shape[1], shape[2]) in grids(shape[1] * shape[2], input_hw)
        return "NHWC" if channels_last and not channels_first else "NCHW" if channels_first else None
    return None


def rank3_hint(node: onnx.NodeProto, layouts: dict[str, str | None]) -> str | None:
    """Token layouts flowing through a node: a conv map flattened to (B, C, h*w) is BCT; a (0, 2, 1) transpose
    swaps BTC and BCT."""
    source = layouts.get(node.input[0]) if node.input else None
    if node.op_type in ("Reshape", "Flatten") and source == "NCHW":
        return "BCT"
    if node.op_type == "Transpose" and source in TOKEN_LAYOUTS:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm == [0, 2, 1]:
            return "BTC" if source == "BCT" else "BCT"
    return None


def _dynamic_matmuls(model: onnx.ModelProto, needed: set[str]) -> list[onnx.NodeProto]:
    """MatMuls of two activations (attention's Q.K^T and A.V), among the nodes the score depends on."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Einsum") and n.output[0] in needed
            and len(n.input) >= 2 and not any(i in constants for i in n.input[:2])]


def has_attention(model: onnx.ModelProto, needed: set[str]) -> bool:
    """Whether the score depends on a product of two activations (a transformer's attention)."""
    return bool(_dynamic_matmuls(model, needed))


def class_token_default(model: onnx.ModelProto, needed: set[str],
                        candidates: list[tuple[str, tuple[Dim, ...]]]) -> str | None:
    """The default layer of a transformer whose head reads the class token, or None for other models.

    After the last attention product the patch tokens no longer reach the class token, so their gradients are
    zero there. The default is therefore the last tensor with the residual stream's shape (B, T, C) that feeds both
    operands of the last attention product (for ViT/DeiT exports: the output of the last block's first LayerNorm,
    pytorch-grad-cam's recommended `blocks[-1].norm1`). `candidates`: the BTC token layers (name, shape) in graph
    order; `needed`: the tensors the score depends on.
    """
    shapes = dict(candidates)
    reader = next((n for n in model.graph.node if n.input and n.input[0] in shapes and n.output[0] in needed
                   and _token_axis_read(model, n)), None)
    if reader is None:
        return None
    attention = _dynamic_matmuls(model, needed)
    if not attention:
        return None
    # what both operands of the last product (A.V: the attention weights and the values) are computed from, so
    # not the values' own projection
    nodes = list(model.graph.node)
    feeding = set.intersection(*(ancestors(nodes, name) for name in attention[-1].input[:2]))
    stream = shapes[reader.input[0]][1:]
    chosen = [name for name, shape in candidates if name in feeding and shape[1:] == stream]
    return chosen[-1] if chosen else None


def _token_axis_read(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether a node picks some tokens of a B x T x C tensor: x[:, 0] (Gather) or x[:, :1], x[:, 1:] (Slice)."""
    if node.op_type == "Gather":
        return next((int(a.i) for a in node.attribute if a.name == "axis"), 0) % 3 == 1
    if node.op_type == "Slice" and len(node.input) > 3:
        weights = {t.name: t for t in model.graph.initializer}
        axes = weights.get(node.input[3])
        return axes is not None and [int(a) % 3 for a in numpy_helper.to_array(axes).reshape(-1)] == [1]
    return False
