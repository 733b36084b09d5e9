"""Graph facts every other graph module reads: declared shapes and element types, ancestors, producers and
consumers. Plain functions over the protobuf, no rewriting."""

from __future__ import annotations

from collections.abc import Sequence

from onnxcam.graph.contract import Dim as Dim
from onnxcam.graph.contract import Shape
from onnxcam.graph.protos import GraphProto, NodeProto


def static_shapes(graph: GraphProto) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def elem_types(graph: GraphProto) -> dict[str, int]:
    types = {info.name: info.type.tensor_type.elem_type for info in
             list(graph.input) + list(graph.value_info) + list(graph.output) if info.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def ancestors(nodes: Sequence[NodeProto], target: str) -> set[str]:
    """Every tensor that `target` is computed from, itself included."""
    needed = {target}
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            needed.update(name for name in node.input if name)
    return needed


def producers(graph: GraphProto) -> dict[str, NodeProto]:
    """Tensor name -> the node that computes it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: GraphProto) -> dict[str, list[NodeProto]]:
    """Tensor name -> the nodes that read it (graph outputs are not nodes: check those apart)."""
    found: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name:
                found.setdefault(name, []).append(node)
    return found
