"""Cut the head of a model: the subgraph from a chosen tensor to an output, as a model of its own.

Methods that perturb a layer (Ablation-CAM, ReciproCAM) re-run only this part. When other tensors feed the head
without passing through the chosen one (a skip connection around it, shapes read from the image), they become
extra inputs, fed from the activations of one full forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcam.graph.contract import SCALE
from onnxcam.graph.protos import (
    ModelProto,
    NodeProto,
    TensorProto,
    ValueInfoProto,
    attribute_value,
    make_graph,
    make_model,
    make_node,
    make_tensor_value_info,
    to_array,
)
from onnxcam.graph.quantized import constant_array
from onnxcam.graph.reverse.model import check_tensors
from onnxcam.graph.topo import ancestors, elem_types, static_shapes


@dataclass
class Head:
    model: ModelProto
    tensor: str             # the cut tensor, first input of `model`
    extra_inputs: list[str]  # other tensors of the full model that the head reads
    scale: str | None = None  # with scale=True: an input broadcast-multiplied with the cut tensor


def extract_head(model: ModelProto, tensor: str, output: str, scale: bool = False) -> Head:
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
    shapes, types = static_shapes(graph), elem_types(graph)
    used = {name for node in nodes for name in node.input}

    def value(name: str) -> ValueInfoProto:
        shape = shapes.get(name)
        return make_tensor_value_info(name, types.get(name, TensorProto.FLOAT),
                                      list(shape) if shape is not None else None)

    inputs = [value(tensor)] + [value(n) for n in extra]
    if scale:
        scaled = f"{tensor}/onnxcam_scaled"
        nodes = [_reading(node, tensor, scaled) for node in nodes]
        nodes.insert(0, make_node("Mul", [tensor, SCALE], [scaled], name="onnxcam/scale"))
        rank = len(shapes.get(tensor) or ())
        inputs.append(make_tensor_value_info(SCALE, types.get(tensor, TensorProto.FLOAT),
                                             [f"scale_{i}" for i in range(rank)] if rank else None))
    head_graph = make_graph(
        nodes, f"{graph.name}_head", inputs, [value(output)], [t for t in graph.initializer if t.name in used])
    head = make_model(head_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    head.functions.extend(model.functions)
    return Head(head, tensor, extra, SCALE if scale else None)


def _reading(node: NodeProto, old: str, new: str) -> NodeProto:
    copy = NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.input):
        if name == old:
            copy.input[i] = new
    return copy


# Ops after which channel k of the input still is (only) channel k of the output, and an all-zero channel stays
# zero: a perturbation that zeroes channels can be applied after them, on far less data.
_CHANNELWISE = {"Relu", "Identity", "Dropout", "GlobalAveragePool", "GlobalMaxPool"}
_SPATIAL_REDUCTIONS = {"ReduceMean", "ReduceMax", "ReduceSum"}
_RELABELS = {"Flatten", "Squeeze", "Reshape"}


def pooled_channels(model: ModelProto, tensor: str, layout: str) -> str | None:
    """The tensor after global pooling of `tensor`'s channels, when the path there is a plain chain of channel-wise,
    zero-preserving ops (ReLU, global pooling, reductions over the spatial axes, reshapes of pooled data); None
    when there is no such pooled tensor (then perturb `tensor` itself)."""
    consumers: dict[str, list[NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    spatial = [2, 3] if layout == "NCHW" else [1, 2]
    current, pooled = tensor, None
    while current not in outputs and len(consumers.get(current, [])) == 1:
        node = consumers[current][0]
        if node.input[0] != current:
            break
        if node.op_type in _SPATIAL_REDUCTIONS:
            axes = _reduce_axes(model, node)
            if axes is None or sorted(a % 4 for a in axes) != spatial:
                break
            pooled = node.output[0]
        elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool") and layout == "NCHW":
            pooled = node.output[0]
        elif node.op_type in _RELABELS:
            if pooled is None:
                break
            pooled = node.output[0]  # pooled data has one value per channel: reshapes only relabel it
        elif node.op_type not in _CHANNELWISE:
            break
        elif pooled is not None:
            pooled = node.output[0]
        current = node.output[0]
    return pooled


def _reduce_axes(model: ModelProto, node: NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    weights = {t.name: t for t in model.graph.initializer}
    if len(node.input) > 1 and node.input[1] in weights:
        return [int(a) for a in to_array(weights[node.input[1]]).reshape(-1)]
    return None


# --- weights read from the head (CAM) and the layers' biases (FullGrad) -------------------------------------
# Ops between the pooled features and the linear layer that keep their values (an int8 model's up to rounding).
_RESHAPES = {"Flatten", "Reshape", "Squeeze", "Identity", "QuantizeLinear", "DequantizeLinear"}


def linear_head_weights(model: ModelProto, layer: str, score: str) -> np.ndarray | None:
    """(classes, K) weights when `score` = Linear(GlobalAveragePool(layer)), else None."""
    consumers: dict[str, list[NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {t.name: t for t in model.graph.initializer}
    users = consumers.get(layer, [])
    if len(users) != 1 or not _is_global_pool(users[0], weights):
        return None
    current = users[0].output[0]
    while True:
        users = consumers.get(current, [])
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type in _RESHAPES:
            current = node.output[0]
            continue
        value = constant_array(model, node.input[1]) if node.op_type in ("Gemm", "MatMul") else None
        if value is None:  # not a linear layer with constant (float or quantised) weights
            return None
        matrix = value.astype(np.float64)
        attrs = {a.name: attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            matrix = matrix * attrs.get("alpha", 1.0)
            matrix = matrix if attrs.get("transB", 0) else matrix.T
        else:
            matrix = matrix.T
        out = node.output[0]
        follow = consumers.get(out, [])
        if out != score and len(follow) == 1 and follow[0].op_type == "Add":
            out = follow[0].output[0]
        return matrix if out == score else None


def _is_global_pool(node: NodeProto, weights: dict[str, TensorProto]) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = next((list(attribute_value(a)) for a in node.attribute if a.name == "axes"), None)
    if len(node.input) > 1 and node.input[1] in weights:  # axes became an input in opset 18
        axes = to_array(weights[node.input[1]]).tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) in ([2, 3], [1, 2])


def biased_outputs(model: ModelProto, score: str) -> dict[str, np.ndarray]:
    """Output tensor -> bias (K,) of each rank-4 Conv with a constant bias and each rank-4 BatchNormalization
    (its effective bias) that `score` depends on; FullGrad differentiates the score w.r.t. these outputs."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    shapes = static_shapes(graph)
    needed = ancestors(list(graph.node), score)
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        name = node.output[0]
        if name not in needed or name == score or len(shapes.get(name) or ()) != 4:
            continue
        bias = constant_array(model, node.input[2]) if node.op_type == "Conv" and len(node.input) > 2 else None
        if bias is not None:  # a float or a quantised (DequantizeLinear of int32) constant bias
            out[name] = bias.astype(np.float64)
        elif node.op_type == "BatchNormalization" and all(n in weights for n in node.input[1:5]):
            scale, bias, mean, var = (to_array(weights[n]).astype(np.float64) for n in node.input[1:5])
            eps = next((attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
            out[name] = bias - mean * scale / np.sqrt(var + eps)
    return out
