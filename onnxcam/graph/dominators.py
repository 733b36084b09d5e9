"""Dominators: the tensors that every path from the image to a tensor passes through.

A CAM layer should be one: a tensor inside a residual branch (an attention block, an MLP, a ResNet block's
convolutions) is bypassed by the skip connection, so it sees only part of what reaches the score; a detector's
per-scale head starts at the one feature map its rows are computed from (onnxcam.graph.scales).
"""

from __future__ import annotations

from onnxcam.graph.load import FLOAT_TYPES
from onnxcam.graph.protos import ModelProto, TensorProto
from onnxcam.graph.topo import elem_types as _elem_types

_FLOAT = TensorProto.FLOAT


def dominators(model: ModelProto, root: str) -> dict[str, str | None]:
    """The immediate dominator of every tensor computed from `root` (None for `root`): the nearest tensor that
    every path of values from `root` to it passes through. Paths through integer and boolean tensors (shape
    arithmetic: a Reshape whose target shape is read from another scale's feature map) do not count: no value,
    and no gradient, flows along them. Tensors not computed from `root` (weights, constants) are absent. The
    model's nodes must be in topological order (onnxcam.graph.load sorts them)."""
    types = _elem_types(model.graph)
    idom: dict[str, str | None] = {root: None}
    depth = {root: 0}

    def meet(a: str, b: str) -> str:
        while a != b:
            if depth[a] >= depth[b]:
                a = idom[a]  # type: ignore[assignment]
            else:
                b = idom[b]  # type: ignore[assignment]
        return a

    for node in model.graph.node:
        preds = [name for name in node.input if name in idom and types.get(name, _FLOAT) in FLOAT_TYPES]
        if not preds:
            preds = [name for name in node.input if name in idom]  # shape arithmetic itself: keep it reachable
        if not preds:
            continue
        common = preds[0]
        for name in preds[1:]:
            common = meet(common, name)
        for out in node.output:
            if out:
                idom[out], depth[out] = common, depth[common] + 1
    return idom


def dominator_chain(name: str, idom: dict[str, str | None]) -> list[str]:
    """`name` and its dominators, nearest first, up to the root ([] when `name` is not computed from it)."""
    if name not in idom:
        return []
    chain = [name]
    while idom.get(chain[-1]) is not None:
        chain.append(idom[chain[-1]])  # type: ignore[arg-type]
    return chain


def value_ancestors(model: ModelProto, name: str) -> set[str]:
    """The float tensors `name` is computed from along paths of values (not through shape arithmetic), itself
    included."""
    types = _elem_types(model.graph)
    needed = {name}
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            needed.update(i for i in node.input if i and types.get(i, _FLOAT) in FLOAT_TYPES)
    return needed
