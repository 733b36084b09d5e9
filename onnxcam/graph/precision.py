"""The reverse pass of a float16 / bfloat16 model, computed in float32.

The rules emit their nodes in the element type of the forward tensors they read, so a float16 model would get a
float16 backward pass: about three significant digits per op, and gradients below 6e-8 flush to zero. The forward
pass must stay as the model computes it (that is what is explained), but nothing forces the emitted nodes to share
its precision. `promote_to_float32` rewrites them: forward float16 tensors they read are cast to float32 once,
their float16 constants and Cast targets become float32, so every gradient is computed (and returned) in float32.
A float32 or float64 model is left as it is.
"""

from __future__ import annotations

from onnxcam.graph.protos import AttributeProto, NodeProto, TensorProto, from_array, make_node, to_array

T = TensorProto
HALF_TYPES = {T.FLOAT16, T.BFLOAT16}


def reverse_type(elem_type: int) -> int:
    """The element type a reverse-pass tensor has after promotion."""
    return T.FLOAT if elem_type in HALF_TYPES else elem_type


def promote_to_float32(nodes: list[NodeProto], initializers: list[TensorProto],
                       types: dict[str, int]) -> tuple[list[NodeProto], list[TensorProto]]:
    """The emitted `nodes` and their `initializers` computing in float32 wherever they computed in float16
    (types: element types of the forward tensors)."""
    emitted = {out for node in nodes for out in node.output} | {t.name for t in initializers}
    halves = {name for node in nodes for name in node.input
              if name and name not in emitted and types.get(name) in HALF_TYPES}
    if not halves and not any(t.data_type in HALF_TYPES for t in initializers):
        return nodes, initializers
    widened = {name: f"{name}/float32" for name in sorted(halves)}
    casts = [make_node("Cast", [name], [wide], name=f"onnxcam/float32/{name}", to=T.FLOAT)
             for name, wide in widened.items()]
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in widened:
                node.input[i] = widened[name]
        for attribute in node.attribute:
            _widen_attribute(attribute)
    return casts + nodes, [_widen_tensor(t) for t in initializers]


def _widen_tensor(tensor: TensorProto) -> TensorProto:
    if tensor.data_type not in HALF_TYPES:
        return tensor
    return from_array(to_array(tensor).astype("float32"), tensor.name)


def _widen_attribute(attribute: AttributeProto) -> None:
    """Cast(to=float16) -> float32; tensor attributes (ConstantOfShape's value) in float32."""
    if attribute.type == AttributeProto.INT and attribute.name in ("to", "dtype") and attribute.i in HALF_TYPES:
        attribute.i = T.FLOAT
    elif attribute.type == AttributeProto.TENSOR and attribute.t.data_type in HALF_TYPES:
        attribute.t.CopyFrom(_widen_tensor(attribute.t))
