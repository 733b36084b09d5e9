"""Which shapes are token grids of a vision transformer: shape rules alone, importable without onnx (the NumPy
side reads them at run time; onnxcam.graph.tokens applies them to a graph)."""

from __future__ import annotations

from onnxcam.graph.contract import Dim

TOKEN_LAYOUTS = ("BTC", "BCT")
# Class (1), distillation (DeiT: 2), registers (DINOv2: 1 + 4): 8 covers the models in use.
MAX_EXTRA_TOKENS = 8


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
