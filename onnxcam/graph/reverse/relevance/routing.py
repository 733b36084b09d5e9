"""Ops that move or pool values.

Routing ops (reshapes, Transpose, Concat, Split, Slice, Gather, Pad, Expand, Tile...) permute, select or copy
elements: their gradient rule already carries each output's relevance back to the element it came from, so
it is reused as is. Max pooling routes relevance to the window's maximum (winner-take-all), which is again its
gradient. Average pooling, means, sums and Resize distribute relevance in proportion to the inputs' values:
the z-rule, x * J^T (R / y), gradient times input.
"""

from __future__ import annotations

from onnxcam.graph.builder import Builder
from onnxcam.graph.reverse.gradients import Grads, Node
from onnxcam.graph.reverse.relevance import LrpOptions, divide, gradient_rule, lrp_rule

ROUTING_OPS = (
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Pad", "Expand", "Tile", "SpaceToDepth", "DepthToSpace",
    "MaxPool", "GlobalMaxPool", "ReduceMax",
)
PROPORTIONAL_OPS = ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Resize", "Upsample")


def _routing(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    return gradient_rule(node.op_type).fn(b, node, rel)


def _proportional(b: Builder, node: Node, rel: list[str | None], options: LrpOptions) -> Grads:
    r = rel[0]
    assert r is not None
    x, y = node.inputs[0], node.outputs[0]
    back = gradient_rule(node.op_type).fn(b, node, [divide(b, r, y, options.epsilon)])
    assert back[0] is not None
    return [b.op("Mul", x, back[0])]


for _op in ROUTING_OPS:
    lrp_rule(_op, inputs=gradient_rule(_op).inputs)(_routing)
for _op in PROPORTIONAL_OPS:
    lrp_rule(_op, inputs=(0,))(_proportional)
