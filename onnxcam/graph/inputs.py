"""Graph inputs beside the image, fixed to given values, so that the model takes the image alone.

Some exports have inputs that are not images: an image-size or scale-factor input of a detector, or constants an
exporter left as inputs (Keras' `Model.export` leaves Normalization's mean and variance). Folding a value into
the graph keeps every later step (shape inference, the reverse rewrite, sessions) about one input. A value whose
first axis is 1 for an input whose first axis is dynamic (a per-image value) is expanded to the image batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxcam.graph.protos import ModelProto, NodeProto, ValueInfoProto, from_array, make_node, np_dtype


def data_inputs(model: ModelProto) -> list[ValueInfoProto]:
    """The graph inputs that take data (initializers listed as inputs are weights, not inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def input_signature(value: ValueInfoProto) -> tuple[np.dtype, list[int | str | None]]:
    """(numpy dtype, dims: ints, symbolic names or None) of a graph input."""
    tensor = value.type.tensor_type
    dims: list[int | str | None] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                    for d in tensor.shape.dim]
    return np.dtype(np_dtype(tensor.elem_type)), dims


def fold_inputs(model: ModelProto, values: Mapping[str, np.ndarray], image: str) -> ModelProto:
    """A copy of `model` whose inputs named in `values` are constants (cast to each input's dtype). `image`: the
    input whose batch a per-image value follows."""
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    declared = {i.name: i for i in graph.input}
    kept = [i for i in graph.input if i.name not in values]
    del graph.input[:]
    graph.input.extend(kept)
    head: list[NodeProto] = []
    for name, value in values.items():
        dtype, dims = input_signature(declared[name])
        array = np.asarray(value, dtype)
        per_image = array.ndim >= 1 and array.shape[0] == 1 and bool(dims) and not isinstance(dims[0], int)
        if not per_image:
            graph.initializer.append(from_array(array, name))
            continue
        # the image batch's size, then Expand: (1, ...) -> (N, ...)
        stem = f"{name}__onnxcam"
        graph.initializer.extend([from_array(array, f"{stem}_value"),
                                  from_array(np.asarray(array.shape[1:], np.int64), f"{stem}_rest")])
        head += [make_node("Shape", [image], [f"{stem}_shape"], start=0, end=1),
                 make_node("Concat", [f"{stem}_shape", f"{stem}_rest"], [f"{stem}_target"], axis=0),
                 make_node("Expand", [f"{stem}_value", f"{stem}_target"], [name])]
    if head:
        nodes = head + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return out
