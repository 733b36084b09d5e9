"""ONNX's messages, its C++ shape inference and the helpers the graph code uses, without `import onnx`.

Importing the onnx package costs about half a second, nearly all of it ml_dtypes' extension registering its
NumPy types (bfloat16, float8...): as long as a bare onnxruntime script takes in all. The graph code needs none of
that for models in NumPy's own types, so it takes onnx's generated message module (onnx_ml_pb2) and its C++
extension (shape inference, version conversion, schemas) straight from the installed package, under their own
names. A later `import onnx` finds both in sys.modules and reuses them: `onnx.ModelProto is ModelProto`, so
models pass freely between user code and onnxcam. Whatever needs ml_dtypes (tensors in bfloat16, float8, 4-bit
or string types) imports onnx when it is met.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import numbers
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

_MESSAGES = "onnx.onnx_ml_pb2"
_NATIVE = "onnx.onnx_cpp2py_export"


def _load_parts() -> tuple[ModuleType, ModuleType]:
    """onnx's message module and C++ extension: from sys.modules when onnx (or this module) loaded them already,
    else from the package's files without running its __init__; the whole package when its layout is not the one
    expected (a build without ONNX-ML, a future rename)."""
    if "onnx" in sys.modules:  # (perhaps still being imported by another thread: the import waits for it)
        return _whole_package()
    if _MESSAGES in sys.modules and _NATIVE in sys.modules:
        return sys.modules[_MESSAGES], sys.modules[_NATIVE]
    spec = importlib.util.find_spec("onnx")
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec is not None else None
    extensions = [folder / f"onnx_cpp2py_export{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                  if folder is not None and (folder / f"onnx_cpp2py_export{suffix}").is_file()]
    if folder is None or not (folder / "onnx_ml_pb2.py").is_file() or not extensions:
        return _whole_package()
    native = _load_module(_NATIVE, extensions[0], importlib.machinery.ExtensionFileLoader(_NATIVE, str(extensions[0])))
    messages = _load_module(_MESSAGES, folder / "onnx_ml_pb2.py")
    sys.meta_path.insert(0, _BindParts())
    return messages, native


def _whole_package() -> tuple[ModuleType, ModuleType]:
    importlib.import_module("onnx")  # which imports both
    return sys.modules[_MESSAGES], sys.modules[_NATIVE]


def _load_module(name: str, path: Path, loader: importlib.machinery.ExtensionFileLoader | None = None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _BindParts:
    """Import hook: when the onnx package itself is imported later, its modules that were loaded here are set as
    its attributes too (`onnx.onnx_ml_pb2`), as a plain import would have left them."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "onnx":
            return None
        sys.meta_path.remove(self)  # once: the package is found by the usual finders
        spec = importlib.util.find_spec("onnx")
        if spec is None or spec.loader is None:
            return spec
        run_package = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_package(module)
            for name in (_MESSAGES, _NATIVE):
                setattr(module, name.rsplit(".", 1)[1], sys.modules[name])

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_messages, _native = _load_parts()

if TYPE_CHECKING:
    from onnx import (
        AttributeProto,
        FunctionProto,
        GraphProto,
        ModelProto,
        NodeProto,
        OperatorSetIdProto,
        StringStringEntryProto,
        TensorProto,
        TensorShapeProto,
        TypeProto,
        ValueInfoProto,
    )
else:
    AttributeProto = _messages.AttributeProto
    FunctionProto = _messages.FunctionProto
    GraphProto = _messages.GraphProto
    ModelProto = _messages.ModelProto
    NodeProto = _messages.NodeProto
    OperatorSetIdProto = _messages.OperatorSetIdProto
    StringStringEntryProto = _messages.StringStringEntryProto
    TensorProto = _messages.TensorProto
    TensorShapeProto = _messages.TensorShapeProto
    TypeProto = _messages.TypeProto
    ValueInfoProto = _messages.ValueInfoProto

# ONNX element types NumPy holds natively, and the other way round; the others go through onnx (ml_dtypes)
NUMPY_TYPES: dict[int, np.dtype[Any]] = {
    TensorProto.FLOAT: np.dtype(np.float32), TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT8: np.dtype(np.int8), TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT16: np.dtype(np.int16), TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64), TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.UINT32: np.dtype(np.uint32), TensorProto.UINT64: np.dtype(np.uint64),
    TensorProto.COMPLEX64: np.dtype(np.complex64), TensorProto.COMPLEX128: np.dtype(np.complex128)}
_ONNX_TYPES = {dtype: code for code, dtype in NUMPY_TYPES.items()}
# where the typed (non-raw) fields of a TensorProto keep each native type, and as what
_TYPED_FIELD: dict[int, str] = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data", TensorProto.UINT64: "uint64_data", TensorProto.COMPLEX64: "float_data",
    TensorProto.COMPLEX128: "double_data"}
IR_VERSION = int(_messages.Version.Value("IR_VERSION"))


def _onnx() -> Any:
    """The whole onnx package, for what only it does (the types NumPy lacks, through ml_dtypes)."""
    import onnx

    return onnx


# --- tensors ----------------------------------------------------------------------------------------------------
def np_dtype(elem_type: int) -> np.dtype[Any]:
    """NumPy's dtype for an ONNX element type (onnx.helper.tensor_dtype_to_np_dtype)."""
    native = NUMPY_TYPES.get(elem_type)
    if native is not None:
        return native
    try:
        return np.dtype(_onnx().helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError) as exc:  # UNDEFINED (0), STRING's object, or a number onnx does not know
        raise ValueError(f"ONNX element type {elem_type} has no NumPy dtype") from exc


def type_name(elem_type: int) -> str:
    """'FLOAT', 'INT8'...: the element type's name in onnx.proto."""
    return str(TensorProto.DataType.Name(elem_type))


def to_array(tensor: TensorProto) -> np.ndarray:
    """A TensorProto's values as an array (onnx.numpy_helper.to_array); its data must be in memory."""
    dtype = NUMPY_TYPES.get(tensor.data_type)
    external = tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL
    if dtype is None or external or tensor.HasField("segment"):
        return np.asarray(_onnx().numpy_helper.to_array(tensor))
    dims = tuple(tensor.dims)
    if tensor.HasField("raw_data"):  # a read-only view of the bytes, as onnx gives
        values = np.frombuffer(tensor.raw_data, dtype=dtype.newbyteorder("<"))
        return (values if sys.byteorder == "little" else values.astype(dtype)).reshape(dims)
    field = _TYPED_FIELD.get(tensor.data_type, "int32_data")
    values = np.asarray(getattr(tensor, field))
    if tensor.data_type == TensorProto.FLOAT16:  # half floats are kept as their 16-bit patterns
        return values.astype(np.uint16).view(np.float16).reshape(dims)
    if dtype.kind == "c":  # complex numbers are kept as (real, imaginary) pairs
        return values.astype(dtype.type(0).real.dtype).view(dtype).reshape(dims)
    return values.astype(dtype).reshape(dims)


def from_array(array: Any, name: str | None = None) -> TensorProto:
    """A TensorProto holding `array` as raw little-endian bytes (onnx.numpy_helper.from_array)."""
    array = np.asarray(array)
    code = _ONNX_TYPES.get(array.dtype.newbyteorder("="))
    if code is None:
        return _onnx().numpy_helper.from_array(array, name)
    tensor = TensorProto()
    tensor.dims.extend(array.shape)
    tensor.data_type = code
    if name:
        tensor.name = name
    tensor.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return tensor


def make_tensor(name: str, elem_type: int, dims: Sequence[int], values: Any) -> TensorProto:
    """A TensorProto of `values` (a flat sequence) in `elem_type`, with `dims` (onnx.helper.make_tensor)."""
    return from_array(np.asarray(values, dtype=np_dtype(elem_type)).reshape(tuple(dims)), name)


# --- nodes, values, graphs ----------------------------------------------------------------------------------------
def make_attribute(key: str, value: Any) -> AttributeProto:
    """An AttributeProto whose type follows the value, as onnx.helper.make_attribute does: integers, reals,
    strings, tensors, graphs and type protos, and non-empty lists of one of them."""
    attribute = AttributeProto(name=key)
    single = _single_attribute(value)
    if single is not None:
        field, kind = single
        if field in ("t", "g", "tp"):
            getattr(attribute, field).CopyFrom(value)
        else:
            setattr(attribute, field, _attribute_scalar(field, value))
        attribute.type = kind
        return attribute
    if not isinstance(value, Iterable):
        raise TypeError(f"{value!r} is not an attribute value")
    items = list(value)
    kinds = {_single_attribute(item) for item in items}
    for plural, singulars in (("ints", {("i", AttributeProto.INT)}),
                              ("floats", {("f", AttributeProto.FLOAT), ("i", AttributeProto.INT)}),
                              ("strings", {("s", AttributeProto.STRING)}),
                              ("tensors", {("t", AttributeProto.TENSOR)}),
                              ("graphs", {("g", AttributeProto.GRAPH)}),
                              ("type_protos", {("tp", AttributeProto.TYPE_PROTO)})):
        if items and kinds <= singulars:
            singular = "s" if plural == "strings" else ("f" if plural == "floats" else "")
            getattr(attribute, plural).extend(_attribute_scalar(singular, item) if singular else item
                                              for item in items)
            attribute.type = getattr(AttributeProto, plural.upper())
            return attribute
    raise ValueError(f"cannot tell the type of attribute '{key}' from {items!r}")


def _single_attribute(value: Any) -> tuple[str, Any] | None:
    if isinstance(value, numbers.Integral):  # bool and NumPy integers included, as in onnx.helper
        return "i", AttributeProto.INT
    if isinstance(value, numbers.Real):
        return "f", AttributeProto.FLOAT
    if isinstance(value, (str, bytes)):
        return "s", AttributeProto.STRING
    for cls, field, kind in ((TensorProto, "t", AttributeProto.TENSOR), (GraphProto, "g", AttributeProto.GRAPH),
                             (TypeProto, "tp", AttributeProto.TYPE_PROTO)):
        if isinstance(value, cls):
            return field, kind
    return None


def _attribute_scalar(field: str, value: Any) -> Any:
    if field == "i":
        return int(value)
    if field == "f":
        return float(value)
    return value.encode() if isinstance(value, str) else bytes(value)


def attribute_value(attribute: AttributeProto) -> Any:
    """An attribute's value: a number, bytes, a message or a list of them (onnx.helper.get_attribute_value)."""
    if attribute.ref_attr_name:
        raise ValueError(f"attribute '{attribute.name}' refers to a function's attribute: it has no value here")
    kind = attribute.type
    for field, singular in (("f", AttributeProto.FLOAT), ("i", AttributeProto.INT), ("s", AttributeProto.STRING),
                            ("t", AttributeProto.TENSOR), ("sparse_tensor", AttributeProto.SPARSE_TENSOR),
                            ("g", AttributeProto.GRAPH), ("tp", AttributeProto.TYPE_PROTO)):
        if kind == singular:
            return getattr(attribute, field)
    for field, plural in (("floats", AttributeProto.FLOATS), ("ints", AttributeProto.INTS),
                          ("strings", AttributeProto.STRINGS), ("tensors", AttributeProto.TENSORS),
                          ("sparse_tensors", AttributeProto.SPARSE_TENSORS), ("graphs", AttributeProto.GRAPHS),
                          ("type_protos", AttributeProto.TYPE_PROTOS)):
        if kind == plural:
            return list(getattr(attribute, field))
    if kind == AttributeProto.UNDEFINED:
        return None
    raise ValueError(f"attribute '{attribute.name}' has an unknown type {kind}")


def make_node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
              domain: str | None = None, **attributes: Any) -> NodeProto:
    """A NodeProto; attributes set to None are left out, the others are sorted by name (onnx.helper.make_node)."""
    node = NodeProto(op_type=op_type, input=inputs, output=outputs)
    if name:
        node.name = name
    if domain is not None:
        node.domain = domain
    node.attribute.extend(make_attribute(key, value) for key, value in sorted(attributes.items())
                          if value is not None)
    return node


def make_tensor_type_proto(elem_type: int, shape: Sequence[str | int | None] | None) -> TypeProto:
    """A tensor type: dims are sizes, symbols, or None for unknown; shape None leaves the rank unknown."""
    type_proto = TypeProto()
    tensor_type = type_proto.tensor_type
    tensor_type.elem_type = elem_type
    if shape is not None:
        tensor_type.shape.dim.extend([])  # an empty shape (a scalar) differs from no shape
        for size in shape:
            dim = tensor_type.shape.dim.add()
            if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
                dim.dim_value = int(size)
            elif isinstance(size, str):
                dim.dim_param = size
            elif size is not None:
                raise ValueError(f"dim {size!r} is neither a size nor a symbol")
    return type_proto


def make_tensor_value_info(name: str, elem_type: int, shape: Sequence[str | int | None] | None) -> ValueInfoProto:
    value = ValueInfoProto(name=name)
    value.type.CopyFrom(make_tensor_type_proto(elem_type, shape))
    return value


def make_graph(nodes: Sequence[NodeProto], name: str, inputs: Sequence[ValueInfoProto],
               outputs: Sequence[ValueInfoProto], initializer: Sequence[TensorProto] | None = None,
               value_info: Sequence[ValueInfoProto] | None = None) -> GraphProto:
    return GraphProto(node=nodes, name=name, input=inputs, output=outputs, initializer=initializer or [],
                      value_info=value_info or [])


def make_model(graph: GraphProto, opset_imports: Sequence[OperatorSetIdProto] | None = None,
               ir_version: int | None = None, **fields: Any) -> ModelProto:
    """A ModelProto around `graph`, at this onnx's IR version and newest opset unless told otherwise."""
    model = ModelProto(ir_version=IR_VERSION if ir_version is None else ir_version, **fields)
    model.graph.CopyFrom(graph)
    if opset_imports is None:
        opset_imports = [OperatorSetIdProto(version=opset_version())]
    model.opset_import.extend(opset_imports)
    return model


# --- what onnx's C++ extension does -------------------------------------------------------------------------------
def opset_version() -> int:
    """The newest ai.onnx opset this onnx knows."""
    return int(_native.defs.schema_version_map()[""][1])


def onnx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx")
    except PackageNotFoundError:
        return "?"


def infer_shapes(model: ModelProto, strict_mode: bool = False, data_prop: bool = False) -> ModelProto:
    """onnx's shape inference (onnx.shape_inference.infer_shapes): a copy of `model` with value_info filled in."""
    inferred = ModelProto()
    inferred.ParseFromString(_native.shape_inference.infer_shapes(model.SerializeToString(), False, strict_mode,
                                                                  data_prop))
    return inferred


def convert_version(model: ModelProto, opset: int) -> ModelProto:
    """onnx's version converter (onnx.version_converter.convert_version)."""
    converted = ModelProto()
    converted.ParseFromString(_native.version_converter.convert_version(model.SerializeToString(), opset))
    return converted


def load(source: str | os.PathLike[str] | bytes) -> ModelProto:
    """The ModelProto in a file (or serialised), as it is: external data is not read."""
    model = ModelProto()
    model.ParseFromString(source if isinstance(source, bytes) else Path(source).read_bytes())
    return model
