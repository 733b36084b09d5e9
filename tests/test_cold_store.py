"""The cold path of the cache: onnxruntime's optimised weights file becomes the model's weights.bin (renamed, not
copied) and is indexed by content when the next variant needs it; a killed writer leaves nothing pointing at
missing bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
import onnxcam.errors
from onnxcam.cache import ALIGN, CACHE_ENV, SIZE_ENV, BlobStore
from onnxcam.graph.reverse.model import expose, gradient_model
from onnxcam.runtime import cached_session, make_session

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    monkeypatch.delenv(SIZE_ENV, raising=False)
    onnxcam.clear_cache()
    return folder


def _resnet(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("build_resnet", MODELS / "build_resnet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    onnx.save(module.build_resnet(18, num_classes=10, width=16, seed=3, image_size=64), str(path))
    return path


def _folder(cache: Path) -> Path:
    (folder,) = [p for p in (cache / "models").iterdir() if p.is_dir()]
    return folder


def _manifests(folder: Path) -> dict[str, dict[str, list]]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")
            if p.name not in ("model.json", "blobs.json") and not p.name.startswith("facts-")}


def _check_index(folder: Path) -> dict:
    """blobs.json against weights.bin: the end is the file's size, every digest is that of the bytes it names,
    every manifest entry lies inside the committed bytes, aligned."""
    index = json.loads((folder / "blobs.json").read_text())
    data = (folder / "weights.bin").read_bytes()
    assert index["end"] == len(data)
    for digest, (offset, length) in index["blobs"].items():
        assert hashlib.blake2b(data[offset:offset + length], digest_size=20).hexdigest() == digest
    for manifest in _manifests(folder).values():
        for offset, length, _, _ in manifest.values():
            assert offset % ALIGN == 0 and offset + length <= index["end"]
    return index


def _same_results(session: object, reference: object, feeds: dict[str, np.ndarray]) -> None:
    names = [o.name for o in reference.get_outputs()]  # type: ignore[attr-defined]
    for want, got in zip(reference.run(names, feeds), session.run(names, feeds)):  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_first_variant_adopts_onnxruntimes_file_and_the_next_dedupes_against_it(tmp_path: Path,
                                                                                cache: Path) -> None:
    model = _resnet(tmp_path / "resnet.onnx")
    ex = onnxcam.Explainer(model, device="cpu")
    layer = ex.default_layer
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    builds = {"gradients": lambda: gradient_model(ex.model, [layer]).model,  # what gradcam and eigencam run
              "forward": lambda: expose(ex.model, [layer])}
    feeds = {"gradients": {ex.input_name: x, "onnxcam_seed": np.zeros((2, 10), np.float32)},
             "forward": {ex.input_name: x}}
    sizes = []
    for kind, build in builds.items():
        session = cached_session(ex.identity, ("cold store test", kind), build, ["CPUExecutionProvider"])
        folder = _folder(cache)
        index = _check_index(folder)
        sizes.append((folder / "weights.bin").stat().st_size)
        if kind == "gradients":
            # onnxruntime's file, renamed into place: its blobs are indexed later, when something is deduplicated
            assert index.get("unhashed") and len(index["blobs"]) < len(index["unhashed"])
        else:
            assert "unhashed" not in index and index["blobs"]
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".lock"]  # no temporary files
        _same_results(session, make_session(build(), ["CPUExecutionProvider"]), feeds[kind])
    assert sizes[1] - sizes[0] < 0.02 * sizes[0]  # the forward graph's weights were found, not stored again
    assert sizes[1] <= model.stat().st_size * 1.02 + 2**16
    assert len(_manifests(_folder(cache))) == 2


def _odd_sizes_model() -> onnx.ModelProto:
    """Tensors whose byte sizes are not multiples of 64: onnxruntime packs them, so most of them start unaligned
    in its file (it aligns only tensors above 1 MiB)."""
    rng = np.random.default_rng(5)
    nodes, weights, previous = [], [], "x"
    for i, count in enumerate((257, 300, 1031, 300_001, 4099, 17)):
        weights.append(numpy_helper.from_array(rng.standard_normal(count).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Mul", [f"w{i}", "x"], [f"m{i}"]),
                  helper.make_node("ReduceSum", [f"m{i}"], [f"s{i}"], keepdims=0),
                  helper.make_node("Add", [previous, f"s{i}"], [f"a{i}"])]
        previous = f"a{i}"
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_tensors_onnxruntime_left_unaligned_are_stored_again_aligned(cache: Path) -> None:
    session = cached_session("test:odd", ("odd",), _odd_sizes_model, ["CPUExecutionProvider"])
    folder = _folder(cache)
    index = _check_index(folder)  # every manifest offset aligned
    (manifest,) = _manifests(folder).values()
    assert len(manifest) == 5  # the 17-float tensor stays in the graph
    assert index["blobs"] and index["unhashed"]  # some moved (hashed to be stored), some kept where they were
    feeds = {"x": np.array(0.37, np.float32)}
    _same_results(session, make_session(_odd_sizes_model(), ["CPUExecutionProvider"]), feeds)
    onnxcam.clear_cache()
    again = cached_session("test:odd", ("odd",), _odd_sizes_model, ["CPUExecutionProvider"])  # from the cache
    _same_results(again, make_session(_odd_sizes_model(), ["CPUExecutionProvider"]), feeds)


def _blob_file(path: Path, blobs: list[bytes], align: int) -> list[tuple[int, int]]:
    """A file like onnxruntime's: blobs one after the other, each starting at a multiple of `align` (1: three
    bytes after the previous one), and their spans."""
    spans, data = [], b""
    for blob in blobs:
        start = -(-len(data) // align) * align if align > 1 else len(data) + 3
        data += b"\0" * (start - len(data))
        spans.append((start, len(blob)))
        data += blob
    path.write_bytes(data)
    return spans


def test_weights_stored_meanwhile_are_appended_to_not_replaced(tmp_path: Path) -> None:
    """The rename happens only while the model has no committed weights: a second file is deduplicated against
    the first (hashed then) and only its new blobs are appended; the file itself is left to its owner."""
    folder = tmp_path / "model"
    folder.mkdir()
    store = BlobStore(folder)
    a, b, c = (bytes([n]) * 5000 for n in (1, 2, 3))
    first = tmp_path / "model" / ".first.bin"
    spans = _blob_file(first, [a, b], ALIGN)
    with store.writer() as put:
        adopted = put.take(first, spans)
    assert not first.exists() and adopted == {s: s for s in spans}  # renamed, blobs where they were
    assert json.loads(store.index_path.read_text())["unhashed"] == [list(s) for s in spans]
    size = store.path.stat().st_size
    second = tmp_path / "model" / ".second.bin"
    spans2 = _blob_file(second, [b, c, b], 1)
    with store.writer() as put:
        moved = put.take(second, spans2)
    assert second.exists()  # not adopted: weights.bin had committed blobs
    assert moved[spans2[0]] == moved[spans2[2]] == spans[1]  # b: found among the adopted blobs
    assert moved[spans2[1]][0] % ALIGN == 0 and moved[spans2[1]][0] >= size  # c: appended, aligned
    data = store.path.read_bytes()
    offset, length = moved[spans2[1]]
    assert data[offset:offset + length] == c and len(data) == offset + length
    index = _check_index(folder)
    assert "unhashed" not in index and len(index["blobs"]) == 3


KILLED = """
import os, sys
import numpy as np
import onnxcam.cache as cache
from onnxcam.graph.reverse.model import expose, gradient_model
from onnxcam.graph.load import load_model
from onnxcam.runtime import cached_session

adopt = cache.BlobWriter._adopt
def adopt_then_die(self, file):
    adopt(self, file)
    os._exit(3)   # killed between the rename and the index commit
if sys.argv[2] == "kill":
    cache.BlobWriter._adopt = adopt_then_die
model = load_model(sys.argv[1])
session = cached_session("test:killed", ("killed",), lambda: gradient_model(model, ["relu"]).model,
                         ["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
np.save(sys.argv[3], session.run(["onnxcam_scores"], {"input": x, "onnxcam_seed": np.zeros((1, 10), np.float32)})[0])
"""


def test_a_writer_killed_after_the_rename_leaves_no_variant(tmp_path: Path, cache: Path) -> None:
    model = _resnet(tmp_path / "resnet.onnx")
    graph = onnx.load(str(model), load_external_data=False).graph
    assert "relu" in {o for n in graph.node for o in n.output} and graph.input[0].name == "input"
    env = {**os.environ, "PYTHONPATH": str(ROOT), CACHE_ENV: str(cache)}
    killed = subprocess.run([sys.executable, "-c", KILLED, str(model), "kill", str(tmp_path / "k.npy")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 3, killed.stderr
    folder = _folder(cache)
    assert (folder / "weights.bin").stat().st_size > 0  # onnxruntime's file was renamed into place...
    assert not _manifests(folder) and not (folder / "blobs.json").exists()  # ...but nothing points into it
    assert [p for p in folder.glob(".*.onnx")]  # the killed process's optimised graph, left behind
    for attempt in ("first", "warm"):
        run = subprocess.run([sys.executable, "-c", KILLED, str(model), "run", str(tmp_path / f"{attempt}.npy")],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
    assert len(_manifests(folder)) == 1
    _check_index(folder)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".lock"]  # its leftovers removed
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "warm.npy"))
    reference = make_session(gradient_model(onnx.load(str(model)), ["relu"]).model, ["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    want = reference.run(["onnxcam_scores"], {"input": x, "onnxcam_seed": np.zeros((1, 10), np.float32)})[0]
    np.testing.assert_allclose(np.load(tmp_path / "first.npy"), want, rtol=1e-5, atol=1e-6)


def _with_unused_weight() -> onnx.ModelProto:
    """A model with a large initializer no node reads (what cutting a graph leaves): onnxruntime drops it before
    it looks for the tensors it is handed."""
    model = _odd_sizes_model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(5000, np.float32), "unused"))
    return model


def test_unused_weights_stay_in_the_graph_and_a_refused_handover_falls_back(cache: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxcam.runtime as runtime

    feeds = {"x": np.array(1.25, np.float32)}
    reference = make_session(_odd_sizes_model(), ["CPUExecutionProvider"])
    _same_results(cached_session("test:unused", ("a",), _with_unused_weight, ["CPUExecutionProvider"]), reference,
                  feeds)
    # handed over anyway (as a detaching that misjudged what onnxruntime keeps would), onnxruntime refuses the
    # model: it is then given the whole model, with the same results
    monkeypatch.setattr(runtime, "_consumed", lambda graph: {t.name for t in graph.initializer} |
                        {i for n in graph.node for i in n.input})
    with pytest.raises(onnxcam.errors.ModelError, match="initializer"):
        model = _with_unused_weight()
        weights = runtime._detach_weights(model)
        assert "unused" in weights
        runtime._optimise("test:refused", "probe", model.SerializeToString(), None, weights)
    session = cached_session("test:refused", ("a",), _with_unused_weight, ["CPUExecutionProvider"])
    _same_results(session, reference, feeds)
    assert len(_manifests(_folder_of("test:refused"))) == 1


def _folder_of(identity: str) -> Path:
    from onnxcam.cache import model_folder

    return model_folder(identity)
