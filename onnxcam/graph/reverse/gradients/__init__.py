"""Gradient rules: one vector-Jacobian product per op, found through a registry.

A rule receives the builder, the forward node and the gradients of the node's outputs (None where an output
carries none) and returns one gradient per input (None where there is none). Register it with `@rule("Op")`;
`inputs` names the inputs that carry gradient (all by default). Adding an op means adding a function in one of
the modules beside this file; the walker needs no change.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onnxcam.errors import ModelError
from onnxcam.graph.builder import Builder
from onnxcam.graph.protos import NodeProto, attribute_value


class Node:
    """Read access to a forward node: inputs, outputs and attributes with defaults."""

    def __init__(self, proto: NodeProto) -> None:
        self.proto = proto
        self._attrs = {a.name: attribute_value(a) for a in proto.attribute}

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    def input(self, index: int) -> str | None:
        """The name of input `index`, or None when it is absent or empty (an omitted optional input)."""
        return self.proto.input[index] if index < len(self.proto.input) and self.proto.input[index] else None

    def attr(self, name: str, default: Any = None) -> Any:
        value = self._attrs.get(name, default)
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        if default is not None and not isinstance(value, _ATTR_KINDS.get(type(default), type(default))):
            # a corrupt or hand-edited model; a rule would otherwise fail with a TypeError deep inside
            raise ModelError(f"node '{self.name}' ({self.op_type}): attribute '{name}' is a {type(value).__name__}, "
                             f"expected {type(default).__name__}; the model file looks corrupt, re-export it")
        return value


_ATTR_KINDS: dict[type, tuple[type, ...]] = {float: (float, int), list: (list, tuple), tuple: (list, tuple)}


Grads = Sequence[str | None]
RuleFn = Callable[[Builder, Node, list[str | None]], Grads]


@dataclass(frozen=True)
class Rule:
    fn: RuleFn
    inputs: tuple[int, ...] | None  # inputs that carry gradient; None means all
    integer_outputs: bool = False   # gradient flows through its integer outputs (quantisation)
    domains: tuple[str, ...] = ("", "ai.onnx")  # operator domains the rule applies to


RULES: dict[str, Rule] = {}


def rule(*op_types: str, inputs: tuple[int, ...] | None = None, integer_outputs: bool = False,
         domains: tuple[str, ...] = ("", "ai.onnx")) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        for op_type in op_types:
            RULES[op_type] = Rule(fn, inputs, integer_outputs, domains)
        return fn
    return register


def _no_gradient(builder: Builder, node: Node, grads: list[str | None]) -> Grads:
    return []


# Ops whose outputs are integers, booleans or otherwise piecewise constant: gradient flow stops there.
NON_DIFFERENTIABLE = (
    "Shape", "Size", "ConstantOfShape", "Range", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial", "OneHot",
    "EyeLike", "Constant", "NonMaxSuppression", "Hardmax", "BitShift",
)
for _op in NON_DIFFERENTIABLE:
    RULES[_op] = Rule(_no_gradient, ())


def _load_rule_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_rule_modules()
