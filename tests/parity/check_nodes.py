"""Localise a whole-model gradient mismatch: check every node's rule on the values it sees inside the model.

Runs the model once with every intermediate exposed, then for each node with float inputs builds a one-node model
fed with those values and compares its rewritten gradient with float64 central differences (tests/gradcheck.py).
Prints one line per failing node. Dev tool, not collected by pytest:

    python tests/parity/check_nodes.py models/torch_exports/vit_op18.onnx models/torch_exports/vit.npz [OP ...]

The npz needs `x`; optional OP names restrict the check to those op types. A rule that passes here but fails in
the whole model points at shape handling (symbolic dims), gradient accumulation or the walker, not the rule's maths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradcheck import IR_VERSION, check_model  # noqa: E402

from onnxcam.graph.load import load_model  # noqa: E402


def intermediate_values(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    graph = model.graph
    names = [o for n in graph.node for o in n.output if o]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.extend(helper.make_value_info(n, onnx.TypeProto()) for n in names)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(names, session.run(names, {graph.input[0].name: x})))
    values.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    values[graph.input[0].name] = x
    return values


def check_nodes(path: str, x: np.ndarray, only: set[str] | None = None) -> list[str]:
    model = load_model(path)
    values = intermediate_values(model, x)
    live = {model.graph.input[0].name}  # tensors that depend on the input: the ones gradients flow through
    for node in model.graph.node:
        if any(i in live for i in node.input):
            live.update(node.output)
    failures = []
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape", "Size") or (only and node.op_type not in only):
            continue
        inputs = [i for i in node.input if i]
        feeds = {i: values[i] for i in inputs if values[i].dtype == np.float32 and i in live}
        if not feeds or values[node.output[0]].dtype != np.float32:
            continue
        consts = {i: np.asarray(values[i]) for i in inputs if i not in feeds}
        float_ = onnx.TensorProto.FLOAT
        graph = helper.make_graph(
            [node], "node", [helper.make_tensor_value_info(k, float_, v.shape) for k, v in feeds.items()],
            [helper.make_tensor_value_info(node.output[0], float_, None)],
            [numpy_helper.from_array(v, k) for k, v in consts.items()])
        one = helper.make_model(graph, opset_imports=model.opset_import, ir_version=IR_VERSION)
        try:
            check_model(one, feeds, list(feeds), rtol=1e-4, directions=2, elementwise_limit=0)
        except Exception as error:  # report every failing node, not just the first
            failures.append(f"{node.op_type} '{node.name}': {str(error).splitlines()[0][:300]}")
    return failures


if __name__ == "__main__":
    found = check_nodes(sys.argv[1], np.load(sys.argv[2])["x"], set(sys.argv[3:]) or None)
    print("\n".join(found) or "every node's gradient matches finite differences")
