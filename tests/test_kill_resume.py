"""A run killed (SIGKILL) at random moments and resumed with --resume ends with exactly the outputs of an
uninterrupted run: every map equal, every overlay readable, results.jsonl valid with each image once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.datasets.shapes import write_dataset

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
COMMAND = [sys.executable, "-m", "onnxcam", "explain", str(MODEL)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("bench"), 64, seed=7) / "images"


def _run(images: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*COMMAND, str(images), "--out", str(out), "--batch-size", "4", "--method",
                             "gradcam,eigencam", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _maps(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.rglob("*.npy"))}


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert _run(images, out).wait(timeout=300) == 0
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killed_at_random_points_then_resumed_equals_uninterrupted(images, reference, tmp_path, seed):
    rng = np.random.default_rng(seed)
    out = tmp_path / "out"
    kills = 0
    for _ in range(40):
        # kill once a random number of new maps has appeared (plus a random few ms: mid-write, mid-batch), so
        # every attempt makes progress whatever this machine's start-up time
        process = _run(images, out, "--resume")
        wanted = len(list(out.rglob("*.npy"))) + int(rng.integers(1, 40))
        while process.poll() is None and len(list(out.rglob("*.npy"))) < wanted:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""
        break
    else:
        pytest.fail("the run never completed after 40 attempts")
    assert kills >= 2, f"the schedule interrupted the run {kills} time(s) only"
    want, got = _maps(reference), _maps(out)
    assert sorted(got) == sorted(want)
    for name, cam in want.items():
        np.testing.assert_allclose(got[name], cam, atol=1e-6, err_msg=name)
        overlay = cv2.imread(str(out / name.replace(".npy", ".png")))
        assert overlay is not None and overlay.shape[:2] == cam.shape
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["name"], r["method"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * len(list(images.glob("*.png")))
    assert all(r["status"] in ("ok", "skipped") for r in records)
    leftovers = [p.name for p in out.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.endswith(".partial"))]
    assert leftovers == [] or all(p.endswith(".partial") for p in leftovers), leftovers


def test_resume_removes_only_our_stale_temporaries(tmp_path):
    """write_bytes' temporaries are .<name>.<pid>.<thread>.tmp; a user's own .tmp files in --out stay."""
    import threading

    from onnxcam.files import remove_stale_temporaries as _remove_stale_temporaries
    from onnxcam.render import write_bytes

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    ours = [out / f".a.gradcam.png.{os.getpid()}.{threading.get_ident()}.tmp", out / "sub" / ".b.c.npy.12.34.tmp",
            out / ".report.html.7.8.tmp"]
    theirs = [out / ".notes.tmp", out / ".x.png.tmp", out / ".a.png.abc.def.tmp", out / "keep.png"]
    for path in ours + theirs:
        path.write_bytes(b"partial")
    _remove_stale_temporaries(out)
    assert [p.exists() for p in ours] == [False] * len(ours)
    assert all(p.exists() for p in theirs)
    write_bytes(out / "a.png.gradcam.png", b"whole")  # the name write_bytes uses is the one removed above
    assert (out / "a.png.gradcam.png").read_bytes() == b"whole" and not list(out.glob(".a.gradcam.png.*"))


TASKS = {
    "segment": (ROOT / "models" / "shapes_segmenter.onnx", []),
    "detect": (ROOT / "models" / "shapes_detector.onnx", ["--threshold", "0.2", "--max-detections", "2"]),
    "embed": (ROOT / "models" / "shapes_embedder.onnx", ["--reference", str(ROOT / "examples" / "images" /
                                                                        "01_circle.png")]),
}


def _run_task(task: str, images: Path, out: Path, *extra: str) -> subprocess.Popen:
    model, options = TASKS[task]
    return subprocess.Popen([sys.executable, "-m", "onnxcam", "explain", str(model), str(images), "--out", str(out),
                             "--batch-size", "4", "--method", "gradcam,layercam", "--option", "eigen_sign=activation",
                             *options, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_models_killed_then_resumed_equal_an_uninterrupted_run(images, tmp_path, task):
    subset = tmp_path / "in"
    subset.mkdir()
    for path in sorted(images.glob("*.png"))[:24]:
        (subset / path.name).write_bytes(path.read_bytes())
    reference = tmp_path / "reference"
    assert _run_task(task, subset, reference).wait(timeout=300) == 0 or task == "detect"
    out = tmp_path / "out"
    rng = np.random.default_rng(len(task))
    kills = 0
    for _ in range(20):
        process = _run_task(task, subset, out, "--resume")
        wanted = len(list(out.rglob("*.npy"))) + int(rng.integers(1, 12))
        while process.poll() is None and len(list(out.rglob("*.npy"))) < wanted:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        else:
            break
    final = _run_task(task, subset, out, "--resume")
    final.wait(timeout=300)
    assert kills >= 1
    expected, got = _maps(reference), _maps(out)
    assert expected and sorted(expected) == sorted(got)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-6, err_msg=name)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["name"], r["method"], (r.get("paths") or {}).get("map")) for r in records]
    assert len(keys) == len(set(keys))  # every image once per method and target
