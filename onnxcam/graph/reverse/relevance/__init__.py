"""Relevance rules (layer-wise relevance propagation), a second rule table for the reverse walker.

A relevance rule has the gradient rules' shape: it receives the builder, the forward node and the relevance of
the node's outputs, and returns one relevance per input (None where none flows). `autodiff.backward` walks the
graph with this table instead of the gradient table, so the walk (path restriction, summing what reaches a tensor
from several consumers) is the same code. Register a rule with `@lrp_rule("Op")` in a module beside this file;
`rule_table(options)` binds the options (which rule for linear layers, alpha, beta, epsilon...) into a table.

Several rules are "gradient times input": LRP's z-rule for a linear map y = f(x) is R_x = x * J^T (R / y), and
J^T is exactly what the op's gradient rule emits. So pooling and the linear layers reuse the gradient rules, fed
with R / z instead of a gradient (for z+ and alpha-beta, of a copy of the node with clamped weights).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from onnxcam.graph.builder import Builder
from onnxcam.graph.contract import FIRST_LAYER_RULES as FIRST_LAYER_RULES
from onnxcam.graph.contract import LINEAR_RULES as LINEAR_RULES
from onnxcam.graph.contract import LrpOptions
from onnxcam.graph.protos import NodeProto
from onnxcam.graph.reverse.gradients import NON_DIFFERENTIABLE, RULES, Grads, Node, Rule, RuleFn

LrpFn = Callable[[Builder, Node, list[str | None], LrpOptions], Grads]


@dataclass(frozen=True)
class LrpRule:
    fn: LrpFn
    inputs: tuple[int, ...] | None  # inputs that receive relevance; None means all


LRP_RULES: dict[str, LrpRule] = {}


def lrp_rule(*op_types: str, inputs: tuple[int, ...] | None = None) -> Callable[[LrpFn], LrpFn]:
    def register(fn: LrpFn) -> LrpFn:
        for op_type in op_types:
            LRP_RULES[op_type] = LrpRule(fn, inputs)
        return fn
    return register


def rule_table(options: LrpOptions | None = None) -> dict[str, Rule]:
    """The relevance rules with `options` bound, in the walker's table format. Ops whose outputs are piecewise
    constant (Shape, ArgMax, comparisons...) stop the flow as they stop gradients."""
    bound = options or LrpOptions()
    table = {op: RULES[op] for op in NON_DIFFERENTIABLE}
    for op_type, entry in LRP_RULES.items():
        gradient = RULES.get(op_type)  # quantisation: relevance flows through integer tensors as gradients do
        table[op_type] = Rule(_bind(entry.fn, bound), entry.inputs, *(
            (gradient.integer_outputs, gradient.domains) if gradient is not None else ()))
    return table


def _bind(fn: LrpFn, options: LrpOptions) -> RuleFn:
    def bound_rule(b: Builder, node: Node, relevance: list[str | None]) -> Grads:
        return fn(b, node, relevance, options)
    return bound_rule


# --- helpers shared by the rule modules ------------------------------------------------------------------------
def divide(b: Builder, r: str, z: str, epsilon: float) -> str:
    """r / (z + epsilon * sign(z)), and 0 where z is 0 (no contribution there to share out)."""
    zero = b.op("Equal", z, b.scalar_like(0.0, z))
    stabilised = b.op("Add", z, b.op("Mul", b.op("Sign", z), b.scalar_like(epsilon, z))) if epsilon else z
    safe = b.op("Where", zero, b.scalar_like(1.0, z), stabilised)
    return b.op("Where", zero, b.scalar_like(0.0, z), b.op("Div", r, safe))


def gradient_rule(op_type: str) -> Rule:
    return RULES[op_type]


def copy_node(b: Builder, node: Node, inputs: list[str], hint: str) -> Node:
    """A copy of the forward node reading `inputs`, emitted into the new graph; its output is `.outputs[0]`."""
    proto = NodeProto()
    proto.CopyFrom(node.proto)
    del proto.input[:]
    proto.input.extend(inputs)
    del proto.output[:]
    out = b.fresh(hint)
    proto.output.append(out)
    proto.name = b.fresh(hint + "_node")
    b.nodes.append(proto)
    b.set_shape(out, b.static_shape(node.outputs[0]), b.elem_type(node.outputs[0]))
    return Node(proto)


def _load_rule_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_rule_modules()
