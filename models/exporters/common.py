"""Shared by the export scripts beside this file: check an export against its framework, write it, record it.

Needs only numpy, onnx and onnxruntime, so every framework's environment (each script may run in its own venv)
can import it. Each export is recorded in zoo.json, which tests/test_exporters.py reads:

    file            the ONNX file, beside this script
    framework       "torch", "timm", "keras", "jax", "paddle" and the versions that made it
    exporter        the converter and its options, opset
    layout          "NCHW" or "NHWC": the layout of the model's image input
    input_shape     one image's shape in that layout (a fixed or dynamic batch comes first in the file)
    expected_layer  the tensor a user of that framework would pick for Grad-CAM (the output of the last block
                    before global pooling), named as the framework names it, and the ONNX tensor that holds it
    preprocessing   what the family's pretrained weights expect (source noted), or what the model does inside
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ZOO = HERE / "zoo.json"
MAX_BYTES = 2 * 1024 * 1024
# Keys of the dynamo exporter's per-node metadata that only help debugging and triple a file's size.
DEBUG_METADATA = {"pkg.torch.onnx.stack_trace"}


def strip_debug_metadata(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key not in DEBUG_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def check_and_save(proto: onnx.ModelProto, name: str, x: np.ndarray, expected: np.ndarray,
                   entry: dict[str, Any], rtol: float = 1e-4, extra: dict[str, np.ndarray] | None = None,
                   folder: Path = HERE) -> Path:
    """Write `proto` as <folder>/<name> once onnxruntime reproduces the framework's output on `x` (with `extra`
    fed to the other inputs an exporter left), and record `entry` for it in <folder>/zoo.json."""
    strip_debug_metadata(proto)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if len(data) > MAX_BYTES:
        raise SystemExit(f"{name}: {len(data) / 2**20:.1f} MiB, above the {MAX_BYTES / 2**20:.0f} MiB aim; "
                         "make the model narrower")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x, **(extra or {})})[0]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, err_msg=f"{name}: onnxruntime vs framework")
    if scale < 0.1 or float(np.ptp(expected)) < 0.05:
        raise SystemExit(f"{name}: the framework's outputs are nearly constant (max |logit| {scale:.3g}); "
                         "random weights this small would make every map noise")
    path = folder / name
    path.write_bytes(data)
    record(name, {**entry, "bytes": len(data), "output_shape": list(got.shape[1:])}, folder / ZOO.name)
    print(f"{name}: {len(data) / 1024:.0f} KiB, opset {opset_of(proto)}, logits {got.shape}, max |logit| {scale:.2f}")
    return path


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def record(name: str, entry: dict[str, Any], zoo_file: Path = ZOO) -> None:
    zoo = json.loads(zoo_file.read_text()) if zoo_file.exists() else {}
    zoo[name] = entry
    zoo_file.write_text(json.dumps(dict(sorted(zoo.items())), indent=1) + "\n")


def random_images(shape: tuple[int, ...], seed: int, low: float = 0.0, high: float = 255.0) -> np.ndarray:
    """Two smooth random images in [low, high] (blobs, not white noise, so that maps have structure)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (2, *shape))
    spatial = (1, 2) if shape[-1] in (1, 3) else (2, 3)
    for axis in spatial:  # a few box blurs along each spatial axis
        for _ in range(3):
            base = (base + np.roll(base, 1, axis=axis) + np.roll(base, -1, axis=axis)) / 3
    base = (base - base.min()) / (base.max() - base.min())
    return (low + (high - low) * base).astype(np.float32)


def match_tensors(proto: onnx.ModelProto, x: np.ndarray, wanted: dict[str, np.ndarray], rtol: float = 1e-4,
                  extra: dict[str, np.ndarray] | None = None) -> dict[str, str | None]:
    """For each framework activation in `wanted` (label -> array, in the ONNX tensor's layout), the last float
    tensor of the export (in graph order) that holds the same values, or None when no tensor does (the exporter
    fused it away). This is the ground truth the tests compare onnxcam's layer choices with."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = [out for node in probe.graph.node for out in node.output if out]
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x, **(extra or {})}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    found: dict[str, str | None] = {}
    for label, array in wanted.items():
        found[label] = None
        for name in names:
            value = values.get(name)
            if (isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == array.shape
                    and np.allclose(value, array, rtol=rtol, atol=rtol * float(np.abs(array).max()))):
                found[label] = name
    return found
