"""Cut the head of a model: the subgraph from a chosen tensor to an output, as a model of its own.

Methods that perturb a layer (Ablation-CAM, ReciproCAM) re-run only this part. When other tensors feed the head
without passing through the chosen one (a skip connection around it, shapes read from the image), they become
extra inputs, fed from the activations of one full forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from onnxcam.graph.autodiff import ancestors
from onnxcam.graph.builder import _elem_types, _static_shapes
from onnxcam.graph.rewrite import check_tensors

SCALE = "onnxcam_scale"


@dataclass
class Head:
    model: onnx.ModelProto
    tensor: str             # the cut tensor, first input of `model`
    extra_inputs: list[str]  # other tensors of the full model that the head reads
    scale: str | None = None  # with scale=True: an input broadcast-multiplied with the cut tensor


def extract_head(model: onnx.ModelProto, tensor: str, output: str, scale: bool = False) -> Head:
    """The head after `tensor`. scale=True adds an input multiplied (with broadcasting) into the cut tensor, so
    one image's features and a batch of channel masks (B, K, 1, 1) make B perturbed copies inside the runtime."""
    check_tensors(model, [tensor, output])
    graph = model.graph
    needed = ancestors(list(graph.node), output)
    after = {tensor}
    nodes = []
    for node in graph.node:
        if any(name in after for name in node.input) and any(out in needed for out in node.output):
            nodes.append(node)
            after.update(out for out in node.output if out)
    produced = {out for node in nodes for out in node.output}
    weights = {t.name for t in graph.initializer}
    reads = [name for node in nodes for name in node.input if name and name not in produced and name not in weights]
    extra = [name for name in dict.fromkeys(reads) if name != tensor]
    shapes, types = _static_shapes(graph), _elem_types(graph)
    used = {name for node in nodes for name in node.input}

    def value(name: str) -> onnx.ValueInfoProto:
        shape = shapes.get(name)
        return helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT),
                                             list(shape) if shape is not None else None)

    inputs = [value(tensor)] + [value(n) for n in extra]
    if scale:
        scaled = f"{tensor}/onnxcam_scaled"
        nodes = [_reading(node, tensor, scaled) for node in nodes]
        nodes.insert(0, helper.make_node("Mul", [tensor, SCALE], [scaled], name="onnxcam/scale"))
        rank = len(shapes.get(tensor) or ())
        inputs.append(helper.make_tensor_value_info(SCALE, types.get(tensor, onnx.TensorProto.FLOAT),
                                                    [f"scale_{i}" for i in range(rank)] if rank else None))
    head_graph = helper.make_graph(
        nodes, f"{graph.name}_head", inputs, [value(output)], [t for t in graph.initializer if t.name in used])
    head = helper.make_model(head_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    head.functions.extend(model.functions)
    return Head(head, tensor, extra, SCALE if scale else None)


def _reading(node: onnx.NodeProto, old: str, new: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.input):
        if name == old:
            copy.input[i] = new
    return copy
