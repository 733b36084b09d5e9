"""The overlapped batch pipeline: order, bounded queues, failures per stage, and a real killed-then-resumed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.datasets.shapes import write_dataset
from onnxcam.jobs.explain import explain_images
from onnxcam.jobs.pipeline import run_ordered

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"


def test_results_come_back_in_order_with_bounded_queues() -> None:
    produced, emitted, gap = [], [], []

    def units():
        for i in range(50):
            produced.append(i)
            gap.append(len(produced) - len(emitted))
            yield i

    def slow_write(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # writes finish at uneven times; emission must still be in order
        return i * 10

    run_ordered(units(), read=lambda i: i + 1, compute=lambda i: i - 1, write=slow_write, emit=emitted.append,
                readers=3, writers=3, ahead=2)
    assert emitted == [i * 10 for i in range(50)]
    # at most `ahead` units being read, one computing, `ahead` + `writers` waiting to be written or emitted
    assert max(gap) <= 2 + 1 + 2 + 3 + 1


def test_stages_run_on_their_own_threads() -> None:
    names: dict[str, set[str]] = {"read": set(), "compute": set(), "write": set()}

    def stage(kind: str):
        def fn(x: int) -> int:
            names[kind].add(threading.current_thread().name)
            return x
        return fn

    run_ordered(range(6), stage("read"), stage("compute"), stage("write"), lambda _r: None)
    assert names["compute"] == {threading.current_thread().name}
    assert all(n.startswith("onnxcam-read") for n in names["read"])
    assert all(n.startswith("onnxcam-write") for n in names["write"])


@pytest.mark.parametrize("writers", [1, 3])
@pytest.mark.parametrize("stage", ["read", "compute", "write"])
def test_a_failing_stage_stops_the_run_and_is_raised(stage: str, writers: int) -> None:
    emitted: list[int] = []

    def fail_at_3(kind: str):
        def fn(x: int) -> int:
            if kind == stage and x == 3:
                raise OSError(f"{kind} broke at {x}")
            return x
        return fn

    with pytest.raises(OSError, match=f"{stage} broke at 3"):
        run_ordered(range(20), fail_at_3("read"), fail_at_3("compute"), fail_at_3("write"), emitted.append,
                    writers=writers)
    assert emitted == list(range(len(emitted))) and len(emitted) <= 3  # nothing after the failure


def test_a_failed_write_is_reported_per_image(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", 5, seed=4)
    out = tmp_path / "out"
    blocked = out / "shape_00002.png.gradcam.png"
    blocked.mkdir(parents=True)  # a folder where the overlay should go: os.replace onto it fails
    summary = explain_images(MODEL, [tmp_path / "ds" / "images"], out, batch_size=2, device="cpu")
    assert (summary.done, summary.failed) == (4, 1)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == [f"shape_{i:05d}.png" for i in range(5)]
    (bad,) = [r for r in records if r["status"] == "failed"]
    assert bad["name"] == "shape_00002.png" and "writing the outputs failed" in bad["error"]


def _outputs(out: Path) -> dict[str, Path]:
    return {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.suffix in (".png", ".npy")
            and not p.name.startswith(".")}


def _check_complete(out: Path) -> None:
    for name, path in _outputs(out).items():
        if name.endswith(".npy"):
            assert np.isfinite(np.load(path)).all(), name
        else:
            assert cv2.imread(str(path)) is not None, name


def test_killed_run_resumes_to_the_same_outputs(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", 40, seed=5)
    images = tmp_path / "ds" / "images"
    methods = "gradcam,scorecam"  # scorecam's many forwards keep the run long enough to be killed mid-way
    ref = tmp_path / "ref"
    explain_images(MODEL, [images], ref, methods=methods.split(","), batch_size=4, device="cpu")

    out = tmp_path / "out"
    args = [sys.executable, "-m", "onnxcam", "explain", str(MODEL), str(images), "-o", str(out), "-m", methods,
            "-b", "4", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        log = out / "results.jsonl.partial"  # written as each batch's files are done
        while (len([n for n in _outputs(out) if n.endswith(".npy")]) < 8 or not log.is_file()
               or not log.read_text()) and proc.poll() is None:
            assert time.monotonic() < deadline, "no outputs appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = _outputs(out)
    assert 8 <= len([n for n in written if n.endswith(".npy")]) < 80  # killed mid-way
    assert not (out / "results.jsonl").exists() and not (out / "report.html").exists()
    _check_complete(out)  # every visible output is whole; temporaries are hidden .tmp files

    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not list(out.rglob("*.tmp")) and not (out / "results.jsonl.partial").exists()
    _check_complete(out)
    assert set(_outputs(out)) == set(_outputs(ref))
    for name, path in _outputs(ref).items():
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(out / name), np.load(path), atol=1e-6, err_msg=name)
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["name"], r["method"]) for r in records] == [(f"shape_{i:05d}.png", m) for i in range(40)
                                                           for m in methods.split(",")]
    statuses = {r["status"] for r in records}
    assert statuses == {"ok", "skipped"}  # some kept from the killed run, the rest redone
    ref_records = [json.loads(line) for line in (ref / "results.jsonl").read_text().splitlines()]
    for got, want in zip(records, ref_records):
        assert (got["predicted"], got["target"], got["paths"]) == (want["predicted"], want["target"], want["paths"])
