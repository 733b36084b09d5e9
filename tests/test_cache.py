"""The on-disk cache of rewritten models: cheap identities, one weights file per model, sessions that share
weights in memory, onnxruntime's optimised graphs, the size cap, listing and cleaning."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcam
from onnxcam.cache import (
    CACHE_ENV,
    SIZE_ENV,
    BlobStore,
    cache_entries,
    cache_limit,
    clean_cache,
    evict,
    model_fingerprint,
    model_sha256,
)
from onnxcam.errors import OnnxcamError
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import gradient_model
from onnxcam.runtime import cached_session, make_session

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BUNDLED = ["shapes_resnet", "shapes_mobilenet", "shapes_vit", "shapes_lfi", "shapes_multilabel"]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    monkeypatch.delenv(SIZE_ENV, raising=False)
    return folder


def _resnet(width: int, path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("build_resnet", MODELS / "build_resnet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    onnx.save(module.build_resnet(18, num_classes=10, width=width, seed=3, image_size=64), str(path))
    return path


def _copy(name: str, folder: Path) -> Path:
    target = folder / f"{name}.onnx"
    target.write_bytes((MODELS / f"{name}.onnx").read_bytes())
    return target


def _x(explainer: onnxcam.Explainer, batch: int = 2) -> np.ndarray:
    shape = [batch if not isinstance(d, int) or d <= 0 else d for d in explainer.input_shape]
    shape[0] = batch
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _model_folders(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "models").iterdir() if p.is_dir())


# --- identity ---------------------------------------------------------------------------------------------------
def test_fingerprint_follows_the_file_and_its_external_data(tmp_path: Path) -> None:
    model = _copy("shapes_resnet", tmp_path)
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first and len(first) == 64
    moved = tmp_path / "moved.onnx"
    os.replace(model, moved)  # a move keeps size, mtime and content: the cache still knows the model
    assert model_fingerprint(moved) == first
    data = tmp_path / "moved.onnx.data"
    data.write_bytes(b"weights")
    with_data = model_fingerprint(moved)
    assert with_data != first  # external data beside the model is part of its identity
    data.write_bytes(b"retrained")
    assert model_fingerprint(moved) != with_data
    stat = moved.stat()
    raw = bytearray(moved.read_bytes())
    raw[0] ^= 1
    moved.write_bytes(bytes(raw))
    os.utime(moved, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_fingerprint(moved) != with_data  # a changed first MiB, even with the mtime put back


def test_full_sha256_is_computed_once_and_stored(tmp_path: Path, cache: Path) -> None:
    import hashlib

    model = _copy("shapes_resnet", tmp_path)
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert model_sha256(model) == expected
    records = [json.loads(p.read_text()) for p in cache.glob("models/*/model.json")]
    assert [r["sha256"] for r in records] == [expected] and records[0]["source"] == str(model.resolve())
    # a change that the fingerprint cannot see (same size and mtime, outside the first and last MiB: only possible
    # for files above 2 MiB) would keep the stored hash; here the file is small, so any change is seen
    model.write_bytes(model.read_bytes() + b"\0")
    assert model_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest() != expected


def test_explainer_model_id_is_the_files_sha256(tmp_path: Path, cache: Path) -> None:
    import hashlib

    model = _copy("shapes_resnet", tmp_path)
    assert onnxcam.Explainer(model).model_id == hashlib.sha256(model.read_bytes()).hexdigest()
    proto = onnx.load(str(model))
    assert onnxcam.Explainer(proto).model_id == onnxcam.Explainer(proto).model_id != ""


# --- one copy of the weights ------------------------------------------------------------------------------------
def test_variants_of_a_model_share_one_weights_file(tmp_path: Path, cache: Path) -> None:
    model = _resnet(16, tmp_path / "resnet.onnx")
    ex = onnxcam.Explainer(model, device="cpu")
    x = _x(ex)
    for method in ("gradcam", "eigencam", "ablationcam", "reciprocam"):
        ex.explain(x, method)
    (folder,) = _model_folders(cache)
    graphs = [p for p in folder.glob("*.onnx")]
    assert len(graphs) == 4  # gradients, forward with the layer, two heads: each CPU-optimised
    weights = (folder / "weights.bin").stat().st_size
    assert weights <= model.stat().st_size * 1.02 + 2**16  # one copy: the variants' tensors are deduplicated
    assert sum(p.stat().st_size for p in graphs) < 0.05 * model.stat().st_size
    assert not list(folder.glob(".scratch*")) and not list(folder.glob(".*tmp"))


def test_sessions_of_a_model_share_its_weights_in_memory(tmp_path: Path, cache: Path) -> None:
    """Measured: resident memory grows by far less than the weights for each session after the first."""
    model = _resnet(64, tmp_path / "resnet.onnx")   # 45 MB of weights
    script = f"""
import sys, numpy as np, onnxcam
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
ex = onnxcam.Explainer({str(model)!r}, device="cpu")
x = np.zeros((1, 3, 64, 64), np.float32)
ex.explain(x, "gradcam")
ex.explain(x, "eigencam")
before = rss()
ex.explain(x, "gradcam", layer=ex.layers[-4])   # two more sessions over the whole model
ex.explain(x, "eigencam", layer=ex.layers[-4])
print(rss() - before)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    warm = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert warm.returncode == 0, warm.stderr
    weights_mib = model.stat().st_size / 2**20
    assert float(warm.stdout.split()[-1]) < 0.5 * weights_mib  # two private copies would be 2x weights_mib


@pytest.mark.parametrize("name", BUNDLED)
def test_optimised_cached_graph_gives_the_same_results(name: str, cache: Path) -> None:
    """onnxruntime's optimised graph, stored and reloaded without optimisation, computes what a session that
    optimises the rewritten model itself computes."""
    ex = onnxcam.Explainer(MODELS / f"{name}.onnx", device="cpu")
    layer = ex.default_layer
    rewritten = gradient_model(load_model(MODELS / f"{name}.onnx"), [layer]).model
    reference = make_session(rewritten, ["CPUExecutionProvider"])
    cached = cached_session(ex.identity, ("test", layer), lambda: gradient_model(ex.model, [layer]).model,
                            ["CPUExecutionProvider"])
    assert cached.session.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
    x = _x(ex)
    names = [o.name for o in reference.get_outputs()]
    feeds = {i.name: x if i.name == ex.input_name else np.zeros((len(x), ex.scores(x).shape[1]), np.float32)
             for i in reference.get_inputs()}
    for want, got in zip(reference.run(names, feeds), cached.run(names, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gpu_providers_get_the_provider_independent_graph(cache: Path) -> None:
    """Another provider list (here CUDA, which falls back to the CPU on a machine without a GPU) gets the
    rewritten graph itself, its weights in the same weights file, not the CPU's optimised graph."""
    ex = onnxcam.Explainer(MODELS / "shapes_resnet.onnx", device="cpu")
    x = _x(ex)
    def build() -> onnx.ModelProto:
        return gradient_model(ex.model, [ex.default_layer]).model
    cpu = cached_session(ex.identity, ("test",), build, ["CPUExecutionProvider"])
    gpu = cached_session(ex.identity, ("test",), build, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    (folder,) = _model_folders(cache)
    assert len(list(folder.glob("*-cpu-*.onnx"))) == 1 and len(list(folder.glob("*.onnx"))) == 2
    assert gpu.weights is not None and gpu.weights is cpu.weights  # one mapping of the one weights file
    feeds = {ex.input_name: x, "onnxcam_seed": np.zeros((len(x), 8), np.float32)}
    names = [o.name for o in cpu.get_outputs()]
    for a, b in zip(cpu.run(names, feeds), gpu.run(names, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_models_above_protobufs_limit_are_optimised_from_a_scratch_copy(cache: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Above 2 GiB a model cannot be handed to onnxruntime as bytes: it goes through a scratch folder (here
    forced on a small model), removed afterwards, with the same results."""
    import onnxcam.runtime as runtime

    ex = onnxcam.Explainer(MODELS / "shapes_resnet.onnx", device="cpu")
    x = _x(ex)
    reference = ex.explain(x, "gradcam")
    runtime.clear_cache()
    monkeypatch.setattr(runtime, "_serialised", lambda model: None)
    fresh = onnxcam.Explainer(MODELS / "shapes_resnet.onnx", device="cpu")
    fresh.identity += "-scratch"  # another cache entry, so that it is built again
    np.testing.assert_allclose(fresh.explain(x, "gradcam"), reference, atol=1e-6)
    assert not list(cache.rglob(".scratch*")) and len(_model_folders(cache)) == 2


# --- size cap, listing, cleaning --------------------------------------------------------------------------------
def test_size_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for text, value in (("", 2 * 2**30), ("500M", 500 * 2**20), ("1.5GB", int(1.5 * 2**30)), ("4096", 4096),
                        ("0", 0), ("3 GiB", 3 * 2**30)):
        monkeypatch.setenv(SIZE_ENV, text)
        assert cache_limit() == value
    monkeypatch.setenv(SIZE_ENV, "lots")
    with pytest.raises(OnnxcamError, match="ONNXCAM_CACHE_SIZE"):
        cache_limit()


def test_cache_is_capped_least_recently_used_first(tmp_path: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    models = [_copy(name, tmp_path) for name in ("shapes_resnet", "shapes_mobilenet", "shapes_lfi")]
    for i, model in enumerate(models[:2]):
        onnxcam.Explainer(model, device="cpu").explain(_x(onnxcam.Explainer(model)), "gradcam")
        folder = next(f for f in _model_folders(cache) if json.loads((f / "model.json").read_text())["source"]
                      == str(model.resolve()))
        os.utime(folder / "used", (time.time() - 1000 + i, time.time() - 1000 + i))
    sizes = {e.source: e.size for e in cache_entries()}
    # room for the newer entry and the one about to be written (about its model's size), not for all three
    monkeypatch.setenv(SIZE_ENV, str(int(sizes[str(models[1].resolve())] + 1.2 * models[2].stat().st_size)))
    ex = onnxcam.Explainer(models[2], device="cpu")
    ex.explain(_x(ex), "gradcam")  # writing the third evicts the oldest until the cache fits
    left = [e.source for e in cache_entries()]
    assert str(models[0].resolve()) not in left and str(models[2].resolve()) in left
    assert evict(limit=0, keep=_model_folders(cache)[0]) and len(_model_folders(cache)) == 1


def test_entries_and_clean(tmp_path: Path, cache: Path) -> None:
    model = _copy("shapes_resnet", tmp_path)
    ex = onnxcam.Explainer(model, device="cpu")
    ex.explain(_x(ex), "gradcam")
    (entry,) = cache_entries()
    assert entry.source == str(model.resolve()) and entry.variants == 1 and not entry.stale
    assert entry.size > model.stat().st_size * 0.9 and time.time() - entry.last_used < 600
    changed = onnx.load(str(model))
    changed.doc_string = "re-exported"
    onnx.save(changed, str(model))  # the source changed: its entry is stale
    assert cache_entries()[0].stale
    assert clean_cache(older_than=3600) == []
    os.utime(entry.path / "used", (time.time() - 7200, time.time() - 7200))
    assert [e.path for e in clean_cache(older_than=3600)] == [entry.path] and not entry.path.exists()
    ex.explain(_x(ex), "gradcam")  # sessions already made keep working; a new explainer rebuilds
    onnxcam.Explainer(model, device="cpu").explain(_x(ex), "gradcam")
    assert len(clean_cache()) == 1 and cache_entries() == []


# --- robustness -------------------------------------------------------------------------------------------------
def test_blob_store_drops_bytes_of_a_killed_writer(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with store.writer() as put:
        first = put(b"a" * 100)
        assert put(b"a" * 100) == first  # stored once
    with open(tmp_path / "weights.bin", "ab") as f:
        f.write(b"half-written tensor")  # what a killed writer leaves: bytes no index entry points to
    with store.writer() as put:
        second = put(b"b" * 10)
    assert second[0] == 128 and (tmp_path / "weights.bin").stat().st_size == 138
    data = (tmp_path / "weights.bin").read_bytes()
    assert data[:100] == b"a" * 100 and data[128:] == b"b" * 10


def test_processes_filling_the_cache_at_once(tmp_path: Path, cache: Path) -> None:
    model = _copy("shapes_resnet", tmp_path)
    script = f"""
import numpy as np, onnxcam
ex = onnxcam.Explainer({str(model)!r}, device="cpu")
x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
for method in ("gradcam", "eigencam", "ablationcam"):
    np.save("{tmp_path}/" + method + str(__import__("os").getpid()) + ".npy", ex.explain(x, method))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE) for _ in range(3)]
    assert all(run.wait(600) == 0 for run in runs), [run.stderr.read() for run in runs if run.stderr]
    (folder,) = _model_folders(cache)
    blobs = json.loads((folder / "blobs.json").read_text())
    assert blobs["end"] == (folder / "weights.bin").stat().st_size
    for method in ("gradcam", "eigencam", "ablationcam"):
        maps = [np.load(p) for p in sorted(tmp_path.glob(f"{method}*.npy"))]
        assert len(maps) == 3 and all(np.array_equal(maps[0], m) for m in maps[1:])


def test_unwritable_cache_says_so_once_and_leaves_no_temporary_folders(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = f"""
import numpy as np, onnxcam
ex = onnxcam.Explainer({str(MODELS / "shapes_resnet.onnx")!r}, device="cpu")
x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
for method in ("gradcam", "eigencam", "ablationcam"):
    assert ex.explain(x, method).shape == (1, 96, 96)
assert onnxcam.gradients({str(MODELS / "shapes_resnet.onnx")!r}, x).scores.shape == (1, 8)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), CACHE_ENV: str(blocked / "cache"), "TMPDIR": str(temporary)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("cannot write the cache folder") == 1
    assert list(temporary.glob("onnxcam*")) == []  # (onnxruntime itself leaves a '.ses' file there)


def test_cache_commands_list_and_clean(tmp_path: Path, cache: Path) -> None:
    from typer.testing import CliRunner

    from onnxcam import cli

    model = _copy("shapes_resnet", tmp_path)
    onnxcam.Explainer(model, device="cpu").explain(_x(onnxcam.Explainer(model, device="cpu")), "gradcam")
    runner = CliRunner()
    listed = runner.invoke(cli.app, ["cache", "list"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0 and "shapes_resnet.onnx" in listed.output and "1 entries" in listed.output
    assert runner.invoke(cli.app, ["cache", "clean", "--older-than", "1d"]).output.startswith("removed 0 entries")
    bad = runner.invoke(cli.app, ["cache", "clean", "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than takes" in bad.output
    cleaned = runner.invoke(cli.app, ["cache", "clean"])
    assert cleaned.exit_code == 0 and cleaned.output.startswith("removed 1 entries")
    assert not _model_folders(cache)


WARM_RUN = """
import sys, runpy
sys.argv = ["onnxcam", "explain", *sys.argv[1:]]
try:
    runpy.run_module("onnxcam", run_name="__main__")
except SystemExit as e:
    code = e.code
print("IMPORTED", "onnxcam.graph.load" in sys.modules, "onnx" in sys.modules, "ml_dtypes" in sys.modules,
      file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("model, methods", [("shapes_resnet.onnx", "gradcam,eigencam,ablationcam,reciprocam"),
                                            ("shapes_detector.onnx", "gradcam++,eigencam"),
                                            ("shapes_segmenter.onnx", "gradcam,scorecam"),
                                            ("shapes_vit.onnx", "gradcam,layercam"),
                                            ("exporters/keras_resnet_tf2onnx_op13.onnx", "gradcam,hirescam")])
def test_a_warm_run_neither_parses_the_model_nor_imports_onnx(tmp_path: Path, model: str, methods: str) -> None:
    """The second run of a job finds every rewritten graph and every fact about the model in the cache: it never
    imports the graph code, and its maps are the first run's. Neither run imports the onnx package (whose import
    alone costs more than a ResNet-50 forward) for a model in NumPy's types."""
    images = ROOT / "examples" / "images"
    env = {**os.environ, "PYTHONPATH": str(ROOT), CACHE_ENV: str(tmp_path / "cache")}
    runs = []
    for name in ("cold", "warm"):
        args = [str(MODELS / model), str(images), "--method", methods, "--out", str(tmp_path / name),
                "--device", "cpu"]
        run = subprocess.run([sys.executable, "-c", WARM_RUN, *args], capture_output=True, text=True, env=env,
                             timeout=600)
        assert run.returncode == 0, run.stderr
        runs.append(run.stderr)
    assert "IMPORTED True" in runs[0]  # the first run parsed and rewrote the model
    if model == "shapes_resnet.onnx":  # ... with onnx's messages and C++ inference alone (graph/protos.py)
        assert "IMPORTED True False False" in runs[0], runs[0]
    assert "IMPORTED False False False" in runs[1], runs[1]
    cold = sorted((tmp_path / "cold").glob("*.npy"))
    assert len(cold) >= 4
    for path in cold:
        np.testing.assert_array_equal(np.load(path), np.load(tmp_path / "warm" / path.name))


def test_facts_that_cannot_be_read_are_worked_out_again(tmp_path: Path, cache: Path) -> None:
    """A facts file cut short (a full disk, a killed writer) is as good as none: the model is parsed again and
    the facts rewritten whole."""
    import gc

    from onnxcam.inputs import prepare_model

    path = str(tmp_path / "resnet.onnx")  # a copy: its own identity, whatever other tests keep alive
    (tmp_path / "resnet.onnx").write_bytes((MODELS / "shapes_resnet.onnx").read_bytes())
    prepare_model(path)  # the job's first question: the summary
    first = onnxcam.Explainer(path, device="cpu")
    layer, score = first.layer, first.score
    del first
    onnxcam.clear_cache()  # the process kept the parsed model for a next explainer of it: no longer
    gc.collect()
    (stored,) = cache.rglob("facts-*.json")
    answers = json.loads(stored.read_text())
    assert any(key.endswith(": survey") for key in answers) and "summary" in answers
    warm = onnxcam.Explainer(path, device="cpu")
    assert not warm.view.facts.loaded and warm.layer == layer  # read back: nothing parsed
    del warm
    onnxcam.clear_cache()
    gc.collect()
    stored.write_text(stored.read_text()[: len(stored.read_text()) // 2])
    again = onnxcam.Explainer(path, device="cpu")
    assert again.view.facts.loaded  # nothing readable: the model was parsed
    assert again.layer == layer and again.score == score
    prepare_model(path)
    assert json.loads(stored.read_text()).keys() >= answers.keys()
