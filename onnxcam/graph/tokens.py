"""Token tensors of vision transformers as the graph sees them: which rank-3 (B x T x C, B x C x T) and rank-4
channels-last tensors are token grids, and the default layer of a class-token transformer. The NumPy side (grids
of a batch, reshaping to NCHW) is onnxcam.tokens.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from onnxcam.graph.topo import Dim, ancestors

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
