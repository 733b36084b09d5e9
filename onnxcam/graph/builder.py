"""A small op-builder that appends nodes to a graph; rules are written with it.

Every helper returns the name of the tensor it made. Helpers whose ONNX form changed across opsets (reductions,
Squeeze/Unsqueeze) hide the difference, so rules read the same for every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcam.graph.protos import GraphProto, NodeProto, TensorProto, from_array, make_node, np_dtype, to_array
from onnxcam.graph.quantized import dequantized_constant
from onnxcam.graph.topo import Shape, elem_types, static_shapes

# Ops whose `axes` moved from an attribute to an input, and the opset where that happened.
_AXES_AS_INPUT_SINCE = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13, "Split": 13}
_AXES_AS_INPUT_DEFAULT = 18


class Builder:
    def __init__(self, graph: GraphProto, opset: int, prefix: str = "onnxcam") -> None:
        self.graph = graph
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self._new_initializers: list[TensorProto] = []
        self._count = 0
        self._shapes = static_shapes(graph)
        self._types = elem_types(graph)
        self._consts: dict[tuple[bytes, str, tuple[int, ...]], str] = {}

    # --- naming and emission -------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str | None, outputs: int = 1, **attrs: Any) -> Any:
        """Append one node; return its output name, or a list of names when outputs > 1."""
        names = [self.fresh(op_type) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = make_node(op_type, [i or "" for i in inputs], names, name=self.fresh(op_type + "_node"),
                         **attrs)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: Any = None) -> str:
        """A constant initializer; equal constants share one tensor."""
        array = np.asarray(value, dtype=dtype)
        key = (array.tobytes(), array.dtype.str, array.shape)
        if key not in self._consts:
            name = self.fresh("const")
            tensor = from_array(array, name)
            self._new_initializers.append(tensor)
            self.initializers[name] = tensor
            self._consts[key] = name
            self._shapes[name] = tuple(array.shape)
        return self._consts[key]

    def weight(self, array: np.ndarray, hint: str) -> str:
        """A new initializer holding `array`, not shared like `const`'s (keying large arrays by their bytes would
        hold a second copy of them)."""
        name = self.fresh(hint)
        tensor = from_array(np.ascontiguousarray(array), name)
        self._new_initializers.append(tensor)
        self.initializers[name] = tensor
        self._shapes[name] = tuple(array.shape)
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def scalar_like(self, value: float, like: str) -> str:
        """A scalar constant of `like`'s element type (float32 unless known otherwise)."""
        return self.const(np.asarray(value, dtype=self.np_dtype(like)))

    def finish(self) -> tuple[list[NodeProto], list[TensorProto]]:
        return self.nodes, self._new_initializers

    # --- static facts ------------------------------------------------------------------------------------------
    def static_shape(self, name: str) -> Shape | None:
        return self._shapes.get(name)

    def rank(self, name: str) -> int | None:
        shape = self._shapes.get(name)
        return None if shape is None else len(shape)

    def constant_value(self, name: str) -> np.ndarray | None:
        """An initializer's value, or a quantised weight's (DequantizeLinear of initializers); None otherwise."""
        tensor = self.initializers.get(name)
        if tensor is None:
            return dequantized_constant(self.graph, self.initializers, name)
        return to_array(tensor)

    def elem_type(self, name: str) -> int:
        return self._types.get(name, TensorProto.FLOAT)

    def np_dtype(self, name: str) -> Any:
        return np_dtype(self.elem_type(name))

    def set_shape(self, name: str, shape: Shape | None, elem_type: int | None = None) -> None:
        if shape is not None:
            self._shapes[name] = shape
        if elem_type is not None:
            self._types[name] = elem_type

    # --- opset-independent helpers --------------------------------------------------------------------------
    def _axes_op(self, op_type: str, x: str, axes: Sequence[int] | None, **attrs: Any) -> str:
        since = _AXES_AS_INPUT_SINCE.get(op_type, _AXES_AS_INPUT_DEFAULT)
        if axes is None:
            return self.op(op_type, x, **attrs)
        if self.opset >= since:
            return self.op(op_type, x, self.ints(axes), **attrs)
        return self.op(op_type, x, axes=list(axes), **attrs)

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool = True) -> str:
        return self._axes_op(op_type, x, axes, keepdims=int(keepdims))

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        if not axes:
            return x
        return self.reduce("ReduceSum", x, axes, keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self._axes_op("Unsqueeze", x, axes)

    def squeeze(self, x: str, axes: Sequence[int] | None = None) -> str:
        return self._axes_op("Squeeze", x, axes)

    def shape(self, x: str, start: int | None = None, end: int | None = None) -> str:
        if start is None and end is None:
            return self.op("Shape", x)
        full = self.op("Shape", x)
        return self.op("Slice", full, self.ints([start or 0]), self.ints([end if end is not None else 2**62]))

    def zeros_like(self, x: str) -> str:
        dtype = self.np_dtype(x)
        return self.op("ConstantOfShape", self.shape(x), value=from_array(np.zeros(1, dtype)))

    def ones_like(self, x: str) -> str:
        dtype = self.np_dtype(x)
        return self.op("ConstantOfShape", self.shape(x), value=from_array(np.ones(1, dtype)))

    def cast_like(self, x: str, like: str) -> str:
        return self.op("CastLike", x, like) if self.opset >= 15 else self.op("Cast", x, to=self.elem_type(like))

    def unbroadcast(self, grad: str, x: str, out: str) -> str:
        """Sum `grad` (shaped like the broadcast result `out`) down to the shape of input `x`."""
        x_shape, out_shape = self.static_shape(x), self.static_shape(out)
        if x_shape is not None and out_shape is not None:
            if x_shape == out_shape and None not in x_shape:  # equal symbols are equal sizes
                return grad
            lead = len(out_shape) - len(x_shape)
            static = [d for d in x_shape if isinstance(d, int)]
            if len(static) == len(x_shape):
                axes = list(range(lead)) + [lead + i for i, d in enumerate(x_shape) if d == 1
                                            and out_shape[lead + i] != 1]
                if not axes:
                    return grad
                summed = self.reduce_sum(grad, axes, keepdims=True)
                return self.op("Reshape", summed, self.ints(static)) if lead else summed
        return self._unbroadcast_dynamic(grad, x)

    def _unbroadcast_dynamic(self, grad: str, x: str) -> str:
        """Sum over the axes where x has size 1 (or is missing) at run time; then reshape to x's shape."""
        grad_shape = self.op("Shape", grad)
        x_shape = self.op("Shape", x)
        # Left-pad x's shape with ones to grad's rank: Concat(ones(rank_g - rank_x), x_shape).
        pad_len = self.op("Sub", self.op("Shape", grad_shape), self.op("Shape", x_shape))
        ones = self.op("ConstantOfShape", pad_len, value=from_array(np.ones(1, np.int64)))
        padded = self.op("Concat", ones, x_shape, axis=0)
        differs = self.op("Not", self.op("Equal", padded, grad_shape))
        axes = self.op("Reshape", self.op("NonZero", differs), self.ints([-1]))
        summed = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", summed, x_shape)
