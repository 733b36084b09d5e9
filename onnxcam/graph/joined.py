"""Several model outputs explained as one: each flattened per image and concatenated into a new graph output.

The reverse model seeds one output. A target that reads several outputs (an instance's mask: its coefficients in
the detections, the prototypes in another output) still has one gradient at the outputs, one piece per output;
concatenated, they are the seed of the joined output, whose backward pass (Reshape, Concat) hands each piece back
to its own output. Everything else (scores, sessions, perturbation runs) sees an ordinary output.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from onnxcam.errors import InputError, ModelError
from onnxcam.graph.load import ModelSource, model_name
from onnxcam.graph.protos import ModelProto, TensorProto, load, make_node, make_tensor, make_tensor_value_info
from onnxcam.graph.topo import elem_types, static_shapes

JOINED_PREFIX = "onnxcam_joined:"


def joined_name(outputs: Sequence[str]) -> str:
    return JOINED_PREFIX + "+".join(outputs)


def join_outputs(model: ModelProto, outputs: Sequence[str]) -> tuple[ModelProto, str,
                                                                     tuple[tuple[int, ...], ...]]:
    """A copy of `model` with one more output, (N, sum of the outputs' sizes per image): `outputs` each reshaped to
    (N, -1), concatenated in order. Returns the model, the new output's name and each output's shape per image
    (static sizes are needed to split the joined values again)."""
    names = [o.name for o in model.graph.output]
    if len(outputs) < 2 or len(set(outputs)) != len(outputs):
        raise InputError(f"give two or more different outputs to explain together, not {list(outputs)}")
    shapes, types = static_shapes(model.graph), elem_types(model.graph)
    parts = []
    for name in outputs:
        if name not in names:
            raise InputError(f"model has no output '{name}'; outputs are: {', '.join(names)}")
        shape = shapes.get(name)
        if shape is None or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise InputError(f"output '{name}' has shape {shape if shape is None else tuple(shape)}: explaining "
                             "outputs together needs their sizes per image fixed (export with a static input size, "
                             "e.g. Ultralytics' dynamic=False)")
        parts.append(tuple(d for d in shape[1:] if isinstance(d, int)))
    element = {types.get(name, TensorProto.FLOAT) for name in outputs}
    if len(element) != 1:
        raise InputError(f"outputs {', '.join(outputs)} have different element types; they cannot be joined")
    joined = joined_name(outputs)
    out = ModelProto()
    out.CopyFrom(model)
    flat_shape = make_tensor(f"{joined}/shape", TensorProto.INT64, [2], [0, -1])  # keep the batch
    out.graph.initializer.append(flat_shape)
    flat = [f"{joined}/flat{k}" for k in range(len(outputs))]
    for k, name in enumerate(outputs):
        out.graph.node.append(make_node("Reshape", [name, flat_shape.name], [flat[k]],
                                        name=f"{joined}/reshape{k}"))
    out.graph.node.append(make_node("Concat", flat, [joined], name=f"{joined}/concat", axis=1))
    size = sum(int(_product(p)) for p in parts)
    batch = shapes[outputs[0]][0]  # type: ignore[index]
    out.graph.output.append(make_tensor_value_info(joined, element.pop(),
                                                   [batch if isinstance(batch, (int, str)) else None, size]))
    return out, joined, tuple(parts)


def detections_and_prototypes(source: ModelSource) -> tuple[str, str]:
    """The two outputs of an instance segmentation model (YOLOv8-seg style): the detections (rank 3) and the mask
    prototypes (rank 4), in that order, as the model declares them (a file is read without its weights' external
    data, and not normalised: this runs before the explainer loads it)."""
    model = _declared(source)
    shapes = static_shapes(model.graph)
    outputs = [o.name for o in model.graph.output]
    ranked = {rank: [n for n in outputs if len(shapes.get(n) or ()) == rank] for rank in (3, 4)}
    if len(ranked[3]) != 1 or len(ranked[4]) != 1:
        described = ", ".join(f"'{n}' {tuple(shapes[n]) if shapes.get(n) is not None else '(unknown)'}"
                              for n in outputs)
        raise InputError(f"an instance mask is explained from two outputs, the detections (N, attributes, boxes) and "
                         f"the mask prototypes (N, P, h, w); this model's outputs are {described}")
    return ranked[3][0], ranked[4][0]


def _declared(source: ModelSource) -> ModelProto:
    if isinstance(source, ModelProto):
        return source
    try:
        return load(source)
    except (OSError, ValueError, DecodeError) as e:
        raise ModelError(f"cannot read the model {model_name(source)}: {e}") from None


def _product(shape: Sequence[int]) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total
