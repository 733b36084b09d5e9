"""Token tensors of vision transformers as the graph sees them: which rank-3 (B x T x C, B x C x T) and rank-4
channels-last tensors are token grids, and the default layer of a class-token transformer. The NumPy side (grids
of a batch, reshaping to NCHW) is onnxcam.tokens.
"""

from __future__ import annotations

from onnxcam.graph.protos import ModelProto, NodeProto, to_array
from onnxcam.graph.token_shapes import (  # noqa: F401  (the shape rules, importable without onnx)
    MAX_EXTRA_TOKENS,
    TOKEN_LAYOUTS,
    batch_like,
    grid_nhwc,
    grids,
    is_token_count,
    rank3_layout,
    runtime_layout,
)
from onnxcam.graph.topo import Dim, ancestors


def rank3_hint(node: NodeProto, layouts: dict[str, str | None]) -> str | None:
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


def _dynamic_matmuls(model: ModelProto, needed: set[str]) -> list[NodeProto]:
    """MatMuls of two activations (attention's Q.K^T and A.V), among the nodes the score depends on."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Einsum") and n.output[0] in needed
            and len(n.input) >= 2 and not any(i in constants for i in n.input[:2])]


def has_attention(model: ModelProto, needed: set[str]) -> bool:
    """Whether the score depends on a product of two activations (a transformer's attention)."""
    return bool(_dynamic_matmuls(model, needed))


def class_token_default(model: ModelProto, needed: set[str],
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


def _token_axis_read(model: ModelProto, node: NodeProto) -> bool:
    """Whether a node picks some tokens of a B x T x C tensor: x[:, 0] (Gather) or x[:, :1], x[:, 1:] (Slice)."""
    if node.op_type == "Gather":
        return next((int(a.i) for a in node.attribute if a.name == "axis"), 0) % 3 == 1
    if node.op_type == "Slice" and len(node.input) > 3:
        weights = {t.name: t for t in model.graph.initializer}
        axes = weights.get(node.input[3])
        return axes is not None and [int(a) % 3 for a in to_array(axes).reshape(-1)] == [1]
    return False
