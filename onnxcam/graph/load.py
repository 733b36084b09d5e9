"""Load and normalise ONNX models without touching the user's file.

After `load_model` a model has all weights in memory, no initializers listed as graph inputs, a default-domain
opset of at least MIN_OPSET (older models go through onnx's version converter), topologically sorted nodes,
integer (QOperator) ops rewritten as float ops between DequantizeLinear and QuantizeLinear (graph/quantized.py)
and inferred shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from onnxcam.errors import ModelError
from onnxcam.graph.contract import ModelSource
from onnxcam.graph.contract import model_name as model_name
from onnxcam.graph.protos import (
    AttributeProto,
    GraphProto,
    ModelProto,
    NodeProto,
    OperatorSetIdProto,
    TensorProto,
    ValueInfoProto,
    attribute_value,
    convert_version,
    from_array,
    infer_shapes,
    make_attribute,
    make_graph,
    make_model,
    make_tensor_type_proto,
    np_dtype,
    onnx_version,
    opset_version,
    to_array,
)
from onnxcam.graph.quantized import dequantize_operators, infer_across_contrib_quantization

# ScatterElements with reduction="add" (MaxPool's gradient) needs opset 16.
MIN_OPSET = 16
# Highest IR version the supported onnxruntime releases read.
MAX_IR_VERSION = 10
# The IR version of the onnx release that brought opset 16 (1.11), which an upgraded model declares at least.
MIN_IR_VERSION = 8
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}

_log = logging.getLogger("onnxcam")


def load_model(source: ModelSource) -> ModelProto:
    """Return a normalised copy of the model in `source` (a path, serialized bytes or a ModelProto)."""
    model = _read(source)
    _check_opset(model, model_name(source))
    _check_initializers(model, model_name(source))
    _check_domains(model)
    _drop_initializer_inputs(model)
    _sort_nodes(model)
    model = _upgrade_opset(model)
    dequantize_operators(model)  # integer ops -> DequantizeLinear, float op, QuantizeLinear
    _fold_constants(model)
    return _complete_by_run(_infer_shapes(model))


def default_opset(model: ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def _read(source: ModelSource) -> ModelProto:
    if isinstance(source, ModelProto):
        model = ModelProto()
        model.CopyFrom(source)
        return model
    if isinstance(source, bytes):
        return _parse(source, "<bytes>")
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    model = _parse(path.read_bytes(), str(path))
    _load_external_data(model, path)
    return model


def _parse(data: bytes, name: str) -> ModelProto:
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{name} is not a valid ONNX model (protobuf parse failed: {exc}); "
                         "check the file is a complete .onnx export") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError(f"{name} is not an ONNX model (no graph found); check the file is a complete .onnx export")
    _check_names(model, name)
    return model


def _check_names(message: Message, source: str) -> None:
    """Protobuf hands back undecodable strings (names, dims, attributes) as bytes; onnxruntime would fail on them
    later, and noisily. Only string and message fields are walked: weights are bytes or numbers."""
    for field, value in message.ListFields():
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        for item in value if _repeated(field) else [value]:
            if isinstance(item, Message):
                _check_names(item, source)
            elif not isinstance(item, str):
                raise ModelError(f"{source} holds a string ({field.name}) that is not valid UTF-8; the file looks "
                                 "corrupt, re-export it")


def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; `label` before (and deprecated since)
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _load_external_data(model: ModelProto, path: Path) -> None:
    folder = path.parent.resolve()
    for tensor in _tensors_with_external_data(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise ModelError(f"{path}: external data '{location}' of tensor '{tensor.name}' points outside the "
                             "model's folder; refusing to read it")
        if not target.is_file():
            raise ModelError(f"{path}: external data file '{location}' of tensor '{tensor.name}' is missing; "
                             f"put it next to the model in {folder}")
    try:
        for tensor in _tensors_with_external_data(model):
            _read_external_data(tensor, folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read external data ({exc})") from None


def _read_external_data(tensor: TensorProto, folder: Path) -> None:
    """The tensor's bytes from its file into raw_data (location, offset and length as onnx writes them)."""
    place = {entry.key: entry.value for entry in tensor.external_data}
    with open(folder / place["location"], "rb") as f:
        f.seek(int(place.get("offset", 0)))
        data = f.read(int(place["length"])) if place.get("length") else f.read()
    if place.get("length") and len(data) != int(place["length"]):
        raise ValueError(f"'{place['location']}' ends before tensor '{tensor.name}' does")
    tensor.raw_data = data
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]


def _tensors_with_external_data(model: ModelProto) -> list[TensorProto]:
    return [t for t in _all_tensors(model.graph)
            if t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL]


def _all_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Initializers and tensor attributes of a graph and of the graphs in its nodes' attributes."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _all_tensors(subgraph)


def _check_opset(model: ModelProto, name: str) -> None:
    newest = opset_version()
    if default_opset(model) > newest:
        opset = default_opset(model)
        raise ModelError(f"{name} uses ONNX opset {opset}, newer than this onnx {onnx_version()} knows "
                         f"(up to {newest}); upgrade onnx and onnxruntime, or re-export with an older opset")


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
_PACKED = {getattr(TensorProto, name): per for name, per in
           (("INT4", 2), ("UINT4", 2), ("FLOAT4E2M1", 2), ("INT2", 4), ("UINT2", 4)) if hasattr(TensorProto, name)}


def _check_initializers(model: ModelProto, name: str) -> None:
    """Declared shapes must match the data held: a truncated or forged file must not make us allocate (or reshape
    into) a tensor it never contained."""
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.data_type == TensorProto.STRING:
            continue
        declared = int(np.prod(tensor.dims, dtype=np.float64)) if tensor.dims else 1
        try:
            itemsize = np_dtype(tensor.data_type).itemsize
        except (KeyError, ValueError):
            raise ModelError(f"{name}: initializer '{tensor.name}' has unknown data type {tensor.data_type}; the file "
                             "looks corrupt, re-export it") from None
        packed = _PACKED.get(tensor.data_type, 1)  # 4-bit and 2-bit values share a byte (or an int32_data entry)
        if packed > 1:
            declared = -(-declared // packed) * packed
        if tensor.HasField("raw_data"):
            held = len(tensor.raw_data) * packed if packed > 1 else len(tensor.raw_data) // max(1, itemsize)
        else:
            held = max(len(getattr(tensor, f)) for f in _TYPED_FIELDS) * packed
            if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                held //= 2
        if held != declared:
            raise ModelError(f"{name}: initializer '{tensor.name}' declares shape {tuple(tensor.dims)} "
                             f"({declared} values) but holds {held}; the file looks truncated or corrupt, re-export it")


def _check_domains(model: ModelProto) -> None:
    local = {f.domain for f in model.functions}
    for node in model.graph.node:
        if node.domain not in KNOWN_DOMAINS and node.domain not in local:
            raise ModelError(f"node '{node.name}' uses op '{node.op_type}' from unknown domain '{node.domain}'; "
                             "onnxruntime cannot run it: re-export the model with standard ONNX ops")


def _drop_initializer_inputs(model: ModelProto) -> None:
    """Old exporters (IR < 4) list every weight as a graph input; they are constants, not inputs."""
    weights = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)  # IR 4 is where weights stopped being inputs


def _sort_nodes(model: ModelProto) -> None:
    graph = model.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known |= {t.name for t in graph.sparse_initializer}
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    for node in graph.node:
        for name in node.input:
            if name not in known and name not in produced_by:
                raise ModelError(f"node '{node.name}' ({node.op_type}) reads tensor '{name}' that no node, "
                                 "input or initializer provides; the model is broken, re-export it")
    order: list[int] = []
    state = [0] * len(graph.node)  # 0 new, 1 on stack, 2 done
    for start in range(len(graph.node)):
        stack = [(start, iter(_producers(graph.node[start], produced_by)))]
        if state[start]:
            continue
        state[start] = 1
        while stack:
            index, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                state[index] = 2
                order.append(index)
            elif state[child] == 1:
                raise ModelError(f"the graph has a cycle through node '{graph.node[child].name}' "
                                 f"({graph.node[child].op_type}); ONNX graphs must be acyclic")
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(_producers(graph.node[child], produced_by))))
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _producers(node: NodeProto, produced_by: dict[str, int]) -> list[int]:
    return [produced_by[name] for name in node.input if name in produced_by]


def _upgrade_opset(model: ModelProto) -> ModelProto:
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model
    resized = {n.output[0] for n in model.graph.node if n.op_type in ("Upsample", "Resize") and opset < 11}
    try:
        upgraded = convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors and C++ errors
        if opset >= 13:  # 13..15 -> 16 only widens type lists: raising the import is enough
            for entry in model.opset_import:
                if entry.domain in ("", "ai.onnx"):
                    entry.version = MIN_OPSET
            upgraded = model
        else:
            raise ModelError(f"cannot upgrade the model from opset {opset} to {MIN_OPSET} ({exc}); "
                             "re-export it with opset 13 or newer") from None
    _keep_old_resize_semantics(upgraded, resized)
    if upgraded.ir_version < MIN_IR_VERSION:
        upgraded.ir_version = MIN_IR_VERSION
    return upgraded


def _keep_old_resize_semantics(model: ModelProto, outputs: set[str]) -> None:
    """Upsample and Resize before opset 11 map output to input coordinates as x / scale ("asymmetric", nearest
    rounding down); the converter leaves the opset-11 defaults (half_pixel), which changes linear results."""
    for node in model.graph.node:
        if node.op_type == "Resize" and node.output[0] in outputs:
            kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(make_attribute("coordinate_transformation_mode", "asymmetric"))
            node.attribute.append(make_attribute("nearest_mode", "floor"))


# Results of constant-only nodes up to this many elements become initializers: shape arithmetic that exporters
# emit (Constant, Mod, Slice of constants...) then reaches shape inference and the rules as plain values.
_FOLD_LIMIT = 1 << 16
# DequantizeLinear of int8 weights stays: onnxruntime fuses it into its integer kernels (graph/quantized.py).
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
               "If", "Loop", "Scan", "DequantizeLinear"}


def _fold_constants(model: ModelProto) -> None:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    opsets = list(model.opset_import)
    kept: list[NodeProto] = []
    folded: list[TensorProto] = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NEVER_FOLD
                    and all(name in initializers for name in inputs) and not outputs.intersection(node.output)
                    and all(_elements(initializers[name]) <= _FOLD_LIMIT for name in inputs))
        foldable = foldable and _outputs_fit(node, [initializers[name] for name in inputs], opsets)
        values = _evaluate(node, [initializers[name] for name in inputs], opsets) if foldable else None
        if values is None or any(v.size > _FOLD_LIMIT for v in values):
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            tensor = from_array(value, name)
            initializers[name] = tensor
            folded.append(tensor)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(folded)


def _elements(tensor: TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def _outputs_fit(node: NodeProto, inputs: list[TensorProto],
                 opsets: list[OperatorSetIdProto]) -> bool:
    """Whether every output is known, from shape inference on the node alone with its constant inputs, to hold at
    most _FOLD_LIMIT elements: checked before evaluating, since a 1.5 KB ConstantOfShape([500000000]) would
    allocate 2 GB. An output whose size inference cannot tell stays unfolded."""
    graph = make_graph([node], "fold", [], [ValueInfoProto(name=name) for name in node.output if name], inputs)
    try:
        model = make_model(graph, opset_imports=opsets, ir_version=MAX_IR_VERSION)
        inferred = infer_shapes(model, strict_mode=True)
    except Exception:  # inference rejects the node: evaluating it would fail too, or is not worth the risk
        return False
    shapes = {v.name: v.type.tensor_type for v in inferred.graph.output}
    for name in node.output:
        if not name:
            continue
        tensor = shapes.get(name)
        if tensor is None or not tensor.HasField("shape"):
            return False
        dims = tensor.shape.dim
        if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            return False
        if int(np.prod([d.dim_value for d in dims], dtype=np.float64)) > _FOLD_LIMIT:
            return False
    return True


def _evaluate(node: NodeProto, inputs: list[TensorProto],
              opsets: list[OperatorSetIdProto]) -> list[np.ndarray] | None:
    """The node's outputs, or None when it cannot be evaluated here (it then stays in the graph)."""
    if node.op_type == "Constant":
        value = _constant_value(node)
        return None if value is None else [value]
    if node.op_type == "Identity":
        return [to_array(inputs[0])]
    return _evaluate_by_run(node, inputs, opsets)


_CONSTANT_VALUES = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                    "value_ints": np.int64}


def _constant_value(node: NodeProto) -> np.ndarray | None:
    """A Constant node's value from its one attribute (strings and sparse tensors are left to the node)."""
    if len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    if attribute.name == "value" and attribute.type == AttributeProto.TENSOR:
        return to_array(attribute.t) if attribute.t.data_type != TensorProto.STRING else None
    dtype = _CONSTANT_VALUES.get(attribute.name)
    return None if dtype is None else np.array(attribute_value(attribute), dtype=dtype)


def _evaluate_by_run(node: NodeProto, inputs: list[TensorProto],
                     opsets: list[OperatorSetIdProto]) -> list[np.ndarray] | None:
    """One onnxruntime run of the node alone on its constant inputs: the runtime that will run the model."""
    import onnxruntime as ort

    names = [name for name in node.output if name]
    graph = make_graph([node], "fold", [], [ValueInfoProto(name=name) for name in names], inputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        model = make_model(graph, opset_imports=opsets, ir_version=MAX_IR_VERSION)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results = session.run(names, {})
    except Exception:  # onnxruntime cannot run the node alone (an op it lacks, a type it refuses): it stays
        return None
    if not all(isinstance(r, np.ndarray) for r in results) or len(results) != len(node.output):
        return None  # sequences and maps stay in the graph; so do nodes with skipped (empty-named) outputs
    return list(results)


def _infer_shapes(model: ModelProto) -> ModelProto:
    """Shapes inferred from the graph, trusted over the file's own annotations.

    Exporters can leave stale `value_info` (jax2onnx writes NHWC shapes for tensors that are NCHW by then);
    onnxruntime merges them leniently and runs, but rules built on them emit nodes whose shapes do not fit. So
    inference starts from the graph inputs alone; an annotation that agrees with it adds what inference could
    not tell (a symbolic or unknown dim), one that contradicts it (rank, a static dim, element type) is dropped
    with a debug note, and one inference never reached is kept.
    """
    declared = {v.name: v for v in model.graph.value_info}
    declared_outputs = {o.name: _copy(o) for o in model.graph.output}
    # inference runs on a copy whose large initializers are stubs (name, type and dims only): it never reads
    # their values, and copying a 100 MB model into C++ and back would cost four copies of its weights
    bare = ModelProto()
    _copy_fields(model, bare, skip="graph")
    _copy_fields(model.graph, bare.graph, skip="initializer")
    for tensor in model.graph.initializer:
        stub = bare.graph.initializer.add()
        if _elements(tensor) > _FOLD_LIMIT and tensor.data_location != TensorProto.EXTERNAL:
            stub.name, stub.data_type, stub.data_location = tensor.name, tensor.data_type, TensorProto.EXTERNAL
            stub.dims.extend(tensor.dims)
            stub.external_data.add(key="location", value="onnxcam-shape-stub")
        else:
            stub.CopyFrom(tensor)
    del bare.graph.value_info[:]
    for value in bare.graph.output:  # outputs' shapes can be stale too: keep only their element types
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = infer_across_contrib_quantization(bare, lambda m: infer_shapes(m, data_prop=True))
    except Exception:  # inference is an aid: rules fall back to run-time shapes
        return model
    found = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    unreached = [v for name, v in declared.items() if name not in found]
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        stated = declared.get(value.name) or declared_outputs.get(value.name)
        if stated is not None:
            _reconcile(value, stated)
    if unreached:  # annotations past what inference reaches (custom functions...): let inference go on from them
        inferred.graph.value_info.extend(unreached)
        try:
            inferred = infer_shapes(inferred, data_prop=True)
        except Exception:
            pass
    for name in ("value_info", "output", "node"):  # nodes: inference also annotates If/Loop bodies
        del getattr(model.graph, name)[:]
        getattr(model.graph, name).extend(getattr(inferred.graph, name))
    return model


def _copy(value: ValueInfoProto) -> ValueInfoProto:
    copy = ValueInfoProto()
    copy.CopyFrom(value)
    return copy


def _dims(value: ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def _reconcile(inferred: ValueInfoProto, stated: ValueInfoProto) -> None:
    """Fill what inference left open in `inferred` from the file's annotation `stated`, unless they conflict."""
    got, said = _dims(inferred), _dims(stated)
    stated_type, inferred_type = stated.type.tensor_type.elem_type, inferred.type.tensor_type.elem_type
    conflict = (stated_type and inferred_type and stated_type != inferred_type) or (
        got is not None and said is not None and (len(got) != len(said) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(got, said))))
    if conflict:
        _log.debug("dropped the stale annotation of tensor '%s': the file says %s %s, the graph gives %s %s",
                   inferred.name, said, stated_type, got, inferred_type)
        return
    if said is None:
        return
    if got is None:
        inferred.type.tensor_type.shape.CopyFrom(stated.type.tensor_type.shape)
        return
    for dim, stated_dim in zip(inferred.type.tensor_type.shape.dim, stated.type.tensor_type.shape.dim):
        if not dim.HasField("dim_value") and not dim.dim_param:
            dim.CopyFrom(stated_dim)


# Ops whose output sizes depend on the values computed: a run with zeros says nothing about other inputs.
_DATA_DEPENDENT = {"NonZero", "NonMaxSuppression", "Unique", "Compress", "Loop", "If", "Scan", "SequenceConstruct",
                   "SplitToSequence", "ConcatFromSequence"}


def _complete_by_run(model: ModelProto) -> ModelProto:
    """Sizes that inference could not tell, read from one onnxruntime run on zeros (two with a dynamic batch).

    Static inference loses sizes through shape arithmetic (Swin's window partitions: Shape, Gather, Pad, Reshape),
    and layers without a size are invisible to the catalogue. Only tensors computed from the inputs are read. A
    dim that differs between batch 1 and 2 is the batch (or k times it, named `k*batch`: not one image per row);
    tensors after data-dependent ops (NonZero, NMS...) are left alone, as are models whose inputs have dynamic
    sizes other than the batch.
    """
    graph = model.graph
    known = {v.name: _dims(v) for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    symbols = {d for v in graph.input for d in (_dims(v) or []) if isinstance(d, str)}
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
    varying = _after_data_dependent(graph)
    computed = _computed_from_inputs(graph)
    missing = [o for n in graph.node for o in n.output
               if o in computed and o not in varying and types.get(o, TensorProto.FLOAT) in FLOAT_TYPES
               and _incomplete(known.get(o), symbols)]
    feeds = _zero_feeds(model)
    if not missing or feeds is None:
        return model
    try:
        runs = _run_shapes(model, missing, feeds)
    except Exception as exc:  # a model onnxruntime cannot run is reported later, where it is run
        _log.debug("could not complete shapes by a run: %s", exc)
        return model
    batch_symbol = next(iter(sorted(symbols)), "batch")
    values = {v.name: v for v in graph.value_info}
    for name in missing:
        shapes = [run[name] for run in runs]
        if len({len(s) for s in shapes}) != 1:
            continue
        dims = [_run_dim([s[axis] for s in shapes], batch_symbol) for axis in range(len(shapes[0]))]
        previous = known.get(name)
        if previous is not None and len(previous) == len(dims):  # keep what inference named (a named batch)
            dims = [p if isinstance(p, str) and p in symbols else d for p, d in zip(previous, dims)]
        value = values.get(name)
        if value is None:
            value = graph.value_info.add()
            value.name = name
        value.type.tensor_type.elem_type = types.get(name) or TensorProto.FLOAT
        value.type.tensor_type.shape.CopyFrom(make_tensor_type_proto(1, dims).tensor_type.shape)
    return model


def _computed_from_inputs(graph: GraphProto) -> set[str]:
    reached = {v.name for v in graph.input}
    for node in graph.node:
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def _incomplete(dims: list[int | str | None] | None, symbols: set[str]) -> bool:
    return dims is None or any(d is None or (isinstance(d, str) and d not in symbols) for d in dims)


def _after_data_dependent(graph: GraphProto) -> set[str]:
    """Tensors whose sizes can change with the values fed: after data-dependent ops, or computed from inputs that
    are no images (integers, scalars or vectors: axes, sizes, scales or indices given at run time)."""
    tainted = {v.name for v in graph.input if v.type.tensor_type.elem_type not in FLOAT_TYPES
               or len(_dims(v) or ()) < 3}
    for node in graph.node:
        if node.op_type in _DATA_DEPENDENT or any(i in tainted for i in node.input):
            tainted.update(o for o in node.output if o)
    return tainted


# Elements per image input up to which a zero run may fill in sizes (3 x 40 MP: the pixel limit in colour).
_RUN_LIMIT = 3 * 40_000_000


def _zero_feeds(model: ModelProto) -> list[dict[str, np.ndarray]] | None:
    """Zero inputs at batch 1 (and 2 when the batch is dynamic); None when another size is dynamic."""
    feeds: list[dict[str, np.ndarray]] = [{}, {}]
    dynamic_batch = False
    for value in model.graph.input:
        dims = _dims(value)
        if dims is None:
            return None
        if any(not isinstance(d, int) for d in dims[1:]):
            return None
        dynamic_batch |= bool(dims) and not isinstance(dims[0], int)
        if int(np.prod([int(d) for d in dims[1:] if isinstance(d, int)], dtype=np.int64)) > _RUN_LIMIT:
            return None  # a run on an input this large would allocate more than any image we accept
        try:
            dtype = np_dtype(value.type.tensor_type.elem_type)
        except ValueError:  # an input of no numeric type: onnxruntime says what is wrong when the model is run
            return None
        for batch, feed in zip((1, 2), feeds):
            shape = [batch if not isinstance(d, int) else d for d in dims]
            feed[value.name] = np.zeros(shape, dtype)
    return feeds if dynamic_batch else feeds[:1]


def _run_shapes(model: ModelProto, names: list[str],
                feeds: list[dict[str, np.ndarray]]) -> list[dict[str, tuple[int, ...]]]:
    """The shapes of `names` in one run per feed, from one session."""
    import onnxruntime as ort

    exposed = ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(ValueInfoProto(name=n) for n in names if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [{name: tuple(np.shape(v)) for name, v in zip(names, session.run(names, feed))} for feed in feeds]


def _run_dim(sizes: list[int], batch: str) -> int | str | None:
    """One dim from its sizes at batch 1 (and 2): equal sizes are static, k and 2k are k times the batch."""
    if len(set(sizes)) == 1:
        return int(sizes[0])
    if len(sizes) == 2 and sizes[1] == 2 * sizes[0]:
        return batch if sizes[0] == 1 else f"{sizes[0]}*{batch}"
    return None


def at_input_size(model: ModelProto, image: str, size: tuple[int, int], layout: str = "NCHW") -> ModelProto:
    """A copy of a loaded model whose image input is fixed to batch 1 and `size` (H, W), with the shapes that
    follow inferred again: exports with dynamic sizes (Ultralytics' dynamic=True, most detectors) then have
    static sizes everywhere, for graph facts that need them (the rows of each detection scale)."""
    fixed = ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name != image:
            continue
        dims = value.type.tensor_type.shape.dim
        axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
        for axis, size_value in zip(axes, (1, *size)):
            if axis < len(dims):
                dims[axis].Clear()
                dims[axis].dim_value = int(size_value)
    del fixed.graph.value_info[:]
    return _complete_by_run(_infer_shapes(fixed))


def _copy_fields(source: Message, target: Message, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if _repeated(field):
            getattr(target, field.name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
