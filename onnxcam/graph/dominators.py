"""Dominators: the tensors that every path from the image to a tensor passes through.

A CAM layer should be one: a tensor inside a residual branch (an attention block, an MLP, a ResNet block's
convolutions) is bypassed by the skip connection, so it sees only part of what reaches the score; a detector's
per-scale head starts at the one feature map its rows are computed from (onnxcam.graph.scales).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx


def dominators(nodes: Sequence[onnx.NodeProto], root: str) -> dict[str, str | None]:
    """The immediate dominator of every tensor computed from `root` (None for `root`): the nearest tensor that
    every path from `root` to it passes through. Tensors not computed from `root` (weights, constants, shape
    arithmetic on them) are absent. Nodes must be in topological order."""
    idom: dict[str, str | None] = {root: None}
    depth = {root: 0}

    def meet(a: str, b: str) -> str:
        while a != b:
            if depth[a] >= depth[b]:
                a = idom[a]  # type: ignore[assignment]
            else:
                b = idom[b]  # type: ignore[assignment]
        return a

    for node in nodes:
        preds = [name for name in node.input if name in idom]
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
