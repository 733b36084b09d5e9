"""The Ray Data engine on a local 2-CPU Ray cluster: the same outputs and results.jsonl as the local engine.

Needs `pip install "onnxcam[ray]"`; without Ray only the install-message test runs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from onnxcam import cli
from onnxcam.jobs.explain import explain_images
from onnxcam.report import read_data

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"
runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own deprecated settings


def _records(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "status")} for r in rows]


def test_without_ray_the_flag_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError, as when it is missing
    result = runner.invoke(cli.app, ["explain", str(MODEL), str(IMAGES), "-o", str(tmp_path / "out"),
                                     "--engine", "ray"])
    assert result.exit_code == 2
    assert "pip install 'onnxcam[ray]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'onnxcam[ray]'")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_engine_matches_the_local_run_and_resumes(tmp_path: Path, ray_cluster) -> None:
    folder = tmp_path / "in"
    shutil.copytree(IMAGES, folder / "nested", ignore=shutil.ignore_patterns("*.json", "*.csv", "*.txt"))
    (folder / "broken.png").write_bytes(b"not a png")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    methods = ["gradcam", "eigencam"]
    expected = explain_images(MODEL, [folder], local, methods=methods, batch_size=3, device="cpu")

    summary = explain_images(MODEL, [folder], distributed, methods=methods, batch_size=3, device="cpu",
                             engine="ray", workers=2)
    assert (summary.done, summary.failed, summary.skipped) == (expected.done, expected.failed, 0) == (8, 1, 0)
    assert _records(distributed) == _records(local)  # same lines in the same order (timings aside)
    maps = sorted(p.relative_to(local) for p in local.rglob("*.npy"))
    assert len(maps) == 16 and maps == sorted(p.relative_to(distributed) for p in distributed.rglob("*.npy"))
    for name in maps:
        np.testing.assert_allclose(np.load(distributed / name), np.load(local / name), atol=1e-6, err_msg=str(name))
    assert sorted(p.relative_to(local) for p in local.rglob("*.png")) == \
        sorted(p.relative_to(distributed) for p in distributed.rglob("*.png"))
    shown = read_data(distributed / "report.html")["images"]
    assert sum(len(row[3]) for image in shown for row in image[5]) == 16  # every overlay is in the report
    assert not (distributed / "results.jsonl.partial").exists()

    # A rerun skips the finished images: one map removed is the only image redone.
    (distributed / "nested" / "03_ring.png.eigencam.npy").unlink()
    again = explain_images(MODEL, [folder], distributed, methods=methods, batch_size=3, device="cpu",
                           engine="ray", resume=True)
    assert (again.done, again.failed, again.skipped) == (1, 1, 7)
    assert _records(distributed) == _records(local)
    np.testing.assert_allclose(np.load(distributed / "nested" / "03_ring.png.eigencam.npy"),
                               np.load(local / "nested" / "03_ring.png.eigencam.npy"), atol=1e-6)


def test_ray_engine_from_the_cli(tmp_path: Path, ray_cluster) -> None:
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(MODEL), str(IMAGES / "0[12]_*.png"), "-o", str(out),
                                     "--engine", "ray", "--device", "cpu", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(Path(r["image"]).name, r["status"]) for r in rows] == [("01_circle.png", "ok")] * 2 + \
        [("02_triangle.png", "ok")] * 2
    assert all((out / r["paths"]["map"]).is_file() for r in rows)


def _map_workers() -> list[int]:
    """Process ids of the Ray Data actors (Ray titles them 'ray::MapWorker(MapBatches(ExplainActor))')."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"ray::MapWorker") and b"ExplainActor" in command:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes through /proc")
def test_a_killed_worker_is_replaced_and_its_images_redone(tmp_path: Path, ray_cluster) -> None:
    import os
    import signal
    import threading
    import time

    from onnxcam.datasets.shapes import write_dataset

    write_dataset(tmp_path / "ds", 24, seed=6)
    images, out, local = tmp_path / "ds" / "images", tmp_path / "out", tmp_path / "local"
    methods = ["gradcam", "scorecam"]  # scorecam keeps each batch busy long enough to be killed in the middle
    killed: list[int] = []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            workers = _map_workers()
            if workers and len(list(out.glob("*.npy"))) >= 4:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    try:
        summary = explain_images(MODEL, [images], out, methods=methods, batch_size=4, device="cpu", engine="ray",
                                 workers=1)
    finally:
        killer.join()
    assert killed, "the run ended before a worker could be killed"
    assert (summary.done, summary.failed) == (24, 0)
    explain_images(MODEL, [images], local, methods=methods, batch_size=4, device="cpu")
    assert _records(out) == _records(local)  # each image exactly once, in order
    assert not list(out.rglob("*.tmp"))
    for name in sorted(p.relative_to(local) for p in local.rglob("*.npy")):
        np.testing.assert_allclose(np.load(out / name), np.load(local / name), atol=1e-6, err_msg=str(name))


def test_a_model_error_in_the_workers_is_one_line(tmp_path: Path, ray_cluster) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxcam.errors import OnnxcamError

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Atan", ["conv"], ["bent"]),  # no gradient rule (so far): gradcam cannot run
             helper.make_node("GlobalAveragePool", ["bent"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["logits"])]
    graph = helper.make_graph(nodes, "atan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    model = tmp_path / "atan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(model))
    try:
        explain_images(model, [IMAGES / "01_circle.png"], tmp_path / "local", device="cpu", preset="imagenet",
                       size=8)
    except OnnxcamError as e:
        local = e
    else:
        pytest.skip("Atan has a gradient rule now")
    with pytest.raises(type(local)) as info:
        explain_images(model, [IMAGES / "01_circle.png"], tmp_path / "ray", device="cpu", preset="imagenet", size=8,
                       engine="ray")
    assert str(info.value) == str(local)


@pytest.mark.parametrize("model, options", [
    ("shapes_segmenter.onnx", {}),
    ("shapes_detector.onnx", {"threshold": 0.2, "max_detections": 2}),
    ("shapes_embedder.onnx", {"reference": IMAGES / "02_triangle.png"}),
    ("ultralytics/yolov8n.onnx", {"threshold": 0.0, "max_detections": 2, "per_layer": True}),  # a map per scale
])
def test_ray_engine_runs_every_task_like_the_local_run(tmp_path: Path, ray_cluster, model: str,
                                                       options: dict) -> None:
    local, distributed = tmp_path / "local", tmp_path / "ray"
    args = {"methods": ["gradcam", "layercam"], "batch_size": 3, "device": "cpu",
            "method_options": {"layercam": {"eigen_sign": "activation"}}, **options}
    expected = explain_images(ROOT / "models" / model, [IMAGES], local, **args)
    summary = explain_images(ROOT / "models" / model, [IMAGES], distributed, engine="ray", workers=2, **args)
    assert (summary.done, summary.failed) == (expected.done, expected.failed) and summary.done > 0
    # target values come from each batch's forward pass: equal up to float32 rounding of other batch shapes
    assert _rounded(_records(distributed)) == _rounded(_records(local))
    maps = sorted(p.name for p in local.glob("*.npy"))
    assert maps and maps == sorted(p.name for p in distributed.glob("*.npy"))
    for name in maps:
        np.testing.assert_allclose(np.load(distributed / name), np.load(local / name), atol=1e-6, err_msg=name)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
