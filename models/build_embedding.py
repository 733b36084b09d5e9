"""Build models/shapes_embedder.onnx: the shapes_resnet trunk up to its pooled features, by graph surgery.

The classifier's graph ends GlobalAveragePool -> Flatten -> Gemm (logits). Cutting at the Flatten output leaves
a 64-d embedding model (N, 64) with the same weights, input and preprocessing; no torch needed.

    python models/build_embedding.py
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import helper

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "shapes_resnet.onnx"
TARGET = HERE / "shapes_embedder.onnx"


def build(source: Path = SOURCE, target: Path = TARGET) -> onnx.ModelProto:
    model = onnx.load(str(source))
    graph = model.graph
    flatten = next(n for n in graph.node if n.op_type == "Flatten")
    cut = flatten.output[0]
    # Keep only the nodes the embedding needs, and the weights they read.
    needed, kept = {cut}, []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    rename = helper.make_node("Identity", [cut], ["embedding"], name="embedding")
    del graph.node[:]
    graph.node.extend([*kept, rename])
    weights = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 64]))
    del graph.value_info[:]
    props = {p.key: p.value for p in model.metadata_props}
    props.pop("labels", None)
    props["task"] = "embedding"
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    model.doc_string = "shapes_resnet's trunk up to the pooled 64-d features; see models/shapes_embedder.md."
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))
    return model


if __name__ == "__main__":
    built = build()
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1024:.0f} KiB), nodes {len(built.graph.node)}; "
          f"metadata {json.dumps({p.key: p.value[:40] for p in built.metadata_props})}")
