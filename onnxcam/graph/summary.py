"""A model's summary (onnxcam.graph.contract.ModelSummary): metadata, data inputs, outputs, op types.

Importable without onnx: the layers above take a summary or a model wherever they read metadata or inputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from onnxcam.graph.contract import InputSummary, ModelSummary

if TYPE_CHECKING:
    import onnx


def summary_of(model: ModelSummary | onnx.ModelProto) -> ModelSummary:
    """`model`'s summary; a ModelProto is summarised here."""
    return model if isinstance(model, ModelSummary) else summarize(model)


def summarize(model: onnx.ModelProto) -> ModelSummary:
    weights = {t.name for t in model.graph.initializer}
    inputs = tuple(_input(model, value) for value in model.graph.input if value.name not in weights)
    return ModelSummary({p.key: p.value for p in model.metadata_props}, inputs,
                        tuple(o.name for o in model.graph.output), frozenset(n.op_type for n in model.graph.node))


def _input(model: onnx.ModelProto, value: onnx.ValueInfoProto) -> InputSummary:
    from onnxcam.graph.protos import NUMPY_TYPES

    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim)
    numpy_type = NUMPY_TYPES.get(tensor.elem_type)  # not ml_dtypes' bfloat16 / float8: NumPy's own types only
    dtype = numpy_type.name if numpy_type is not None else None
    return InputSummary(value.name, tensor.elem_type, dtype, dims, input_rescaling(model, value.name))


def input_rescaling(model: onnx.ModelProto, input_name: str) -> str | None:
    """How the graph rescales raw pixels itself, when it does (Keras' Rescaling layer and preprocessing that was
    exported with the model): the input, through layout-only ops, goes into a Mul by 1/255 or 1/127.5 or a Div by
    255 or 127.5. None otherwise."""
    from onnxcam.graph.protos import to_array

    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    tensor = input_name
    for _ in range(4):
        consumers = [n for n in model.graph.node if tensor in n.input]
        if len(consumers) != 1:
            return None
        node = consumers[0]
        if node.op_type in ("Transpose", "Cast", "Identity"):
            tensor = node.output[0]
            continue
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            return None
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        if other not in constants or (node.op_type == "Div" and node.input[0] != tensor):
            return None
        try:
            values = to_array(constants[other]).astype(np.float64).ravel()
        except (OSError, ValueError, TypeError):  # external data not loaded (a model only peeked at)
            return None
        if values.size == 0 or not np.allclose(values, values[0]):
            return None
        factor = float(values[0]) if node.op_type == "Mul" else 1.0 / float(values[0])
        if any(math.isclose(factor, 1.0 / d, rel_tol=1e-4) for d in (255.0, 127.5)):
            return f"{node.op_type} by {float(values[0]):.6g}"
        return None
    return None
