"""Reverse-mode differentiation of an ONNX graph, emitted as more ONNX nodes.

One walker: it restricts the graph to the nodes between the requested tensors and the score, visits them in
reverse topological order and applies each op's rule from a rule table: `gradients.RULES` by default, or
another table with the same signature (`reverse.relevance` propagates LRP relevance this way). No op is
special-cased here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.load import FLOAT_TYPES
from onnxcam.graph.protos import NodeProto
from onnxcam.graph.reverse.gradients import RULES, Node, Rule
from onnxcam.graph.topo import ancestors


def differentiable_inputs(node: NodeProto, rules: Mapping[str, Rule] = RULES) -> list[str]:
    rule = rules.get(node.op_type)
    indices = range(len(node.input)) if rule is None or rule.inputs is None else rule.inputs
    return [node.input[i] for i in indices if i < len(node.input) and node.input[i]]


def depends_on(nodes: Sequence[NodeProto], sources: set[str], builder: Builder,
               rules: Mapping[str, Rule] = RULES) -> set[str]:
    """Float tensors whose value changes with any tensor in `sources` (through differentiable edges)."""
    reached = set(sources)
    for node in nodes:
        if any(name in reached for name in differentiable_inputs(node, rules)):
            rule = rules.get(node.op_type)
            # an op without a rule may carry the dependence on in integers (a quantised op): the walk then
            # reaches it and names it, rather than returning zeros
            integers = rule is None or rule.integer_outputs
            reached.update(out for out in node.output
                           if out and (integers or builder.elem_type(out) in FLOAT_TYPES))
    return reached


def backward(builder: Builder, nodes: Sequence[NodeProto], score: str, seed: str,
             wrt: Sequence[str], rules: Mapping[str, Rule] = RULES, kind: str = "gradient") -> dict[str, str]:
    """Emit d<seed, score>/d t for every t in `wrt`; returns their tensor names. With another rule table, what
    the table propagates instead (`kind` names it in errors)."""
    reached = depends_on(nodes, set(wrt), builder, rules)
    needed = ancestors(nodes, score)
    contributions: dict[str, list[str]] = {score: [seed]}

    def total(name: str) -> str | None:
        parts = contributions.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            parts[:] = [builder.op("Sum", *parts)]
        return parts[0]

    for proto in reversed(nodes):
        on_path = any(out in needed for out in proto.output)
        if not on_path or not any(i in reached for i in differentiable_inputs(proto, rules)):
            continue
        out_grads = [total(out) if out else None for out in proto.output]
        if all(g is None for g in out_grads):
            continue
        rule = rules.get(proto.op_type)
        if rule is None or proto.domain not in rule.domains:
            raise _missing_rule(proto, wrt, kind)
        in_grads = rule.fn(builder, Node(proto), out_grads)
        carried = range(len(proto.input)) if rule.inputs is None else rule.inputs
        for index in carried:
            if index < len(in_grads) and in_grads[index] is not None and proto.input[index] in reached:
                contributions.setdefault(proto.input[index], []).append(in_grads[index])  # type: ignore[arg-type]
    return {name: total(name) or builder.zeros_like(name) for name in wrt}


def _missing_rule(proto: NodeProto, wrt: Sequence[str], kind: str = "gradient") -> GradientError:
    where = f"'{proto.domain}.{proto.op_type}'" if proto.domain else f"'{proto.op_type}'"
    return GradientError(
        f"no {kind} rule for op {where} (node '{proto.name}', output '{proto.output[0]}') on the path from "
        f"{', '.join(repr(w) for w in wrt)} to the score; pick a layer after this node, or use a method that needs "
        f"no {kind}")
