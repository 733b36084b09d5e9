"""Hostile inputs: the committed corpus (tests/hostile/, built by make_corpus.py: bad models, bad images, model
inputs above the pixel limit, folding bombs), fuzzed model and image bytes, symlink loops and odd file names. Every
case must end in one clear OnnxcamError (API) or one stderr line and the right exit code (CLI), never a traceback, a
hang, a huge allocation or a write outside the output folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from toy_models import tiny_cnn

import onnxcam
from onnxcam.errors import InputError, OnnxcamError
from onnxcam.files import collect_inputs
from onnxcam.graph.load import load_model
from onnxcam.images import IMAGE_SUFFIXES, ImageError, read_image, resolve_preprocessing
from onnxcam.jobs.explain import explain_images

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "hostile"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
DEMO = ROOT / "models" / "shapes_resnet.onnx"
GOOD_IMAGE = ROOT / "examples" / "images" / "01_circle.png"
SMALL_MODEL = tiny_cnn().SerializeToString()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_corpus_is_current():
    """The committed files are what make_corpus.py writes (a stale corpus would test old cases)."""
    assert sorted(EXPECTED) == ["images", "inputs", "loads", "models"]
    for folder in EXPECTED:
        assert sorted(p.name for p in (CORPUS / folder).iterdir()) == sorted(EXPECTED[folder])


@pytest.mark.parametrize("name", sorted(EXPECTED["models"]))
def test_hostile_model_gives_one_clear_error(name):
    with pytest.raises(OnnxcamError) as info:
        ex = onnxcam.Explainer(CORPUS / "models" / name)
        ex.explain(np.zeros((1, 3, 8, 8), np.float32))
    message = str(info.value)
    assert re.search(EXPECTED["models"][name], message), message
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize("name", sorted(EXPECTED["images"]))
def test_hostile_image_gives_one_clear_error(name):
    with pytest.raises(ImageError) as info:
        read_image(CORPUS / "images" / name)
    assert re.search(EXPECTED["images"][name], str(info.value)), str(info.value)
    assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(EXPECTED["inputs"]))
def test_model_input_above_the_pixel_limit_is_refused_when_preprocessing_resolves(name):
    model = load_model(CORPUS / "inputs" / name)
    with pytest.raises(InputError) as info:
        resolve_preprocessing(model, model.graph.input[0].name)
    assert re.search(EXPECTED["inputs"][name], str(info.value)), str(info.value)


@pytest.mark.parametrize("name", sorted(EXPECTED["inputs"]))
def test_cli_model_input_above_the_pixel_limit_one_line_within_a_minute(tmp_path, name):
    started = time.monotonic()
    result = _cli("explain", str(CORPUS / "inputs" / name), str(GOOD_IMAGE), "--out", str(tmp_path / "out"))
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(EXPECTED["inputs"][name], lines[0]), result.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED["loads"]))
def test_model_loads_and_inspects_in_bounded_memory(name):
    """Load-time constant folding checks each output's size before evaluating a node."""
    result = _peak_rss_run(["-m", "onnxcam", "inspect", str(CORPUS / "loads" / name)])
    assert result["returncode"] == 0, result["stderr"]
    assert re.search(EXPECTED["loads"][name], result["stdout"]), result["stdout"]
    assert result["peak_mb"] < 400, result


def _peak_rss_run(args: list[str]) -> dict:
    """Run `python ARGS` from a fresh Python whose only child it is, so getrusage(RUSAGE_CHILDREN) is that run's
    peak resident memory alone (the test process's other children would mix in)."""
    probe = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
             "text=True); print(json.dumps({'returncode': r.returncode, 'stdout': r.stdout, 'stderr': r.stderr, "
             "'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(done.stdout)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcam", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("name", ["truncated.onnx", "forged_initializer.onnx", "bad_utf8_name.onnx", "cycle.onnx"])
def test_cli_hostile_model_exit_2_one_line(tmp_path, name):
    result = _cli("explain", str(CORPUS / "models" / name), str(GOOD_IMAGE), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_cli_batch_goes_on_past_every_hostile_image(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    collected = [name for name in EXPECTED["images"] if Path(name).suffix in IMAGE_SUFFIXES]  # a walk skips .exr
    for name in collected:
        (folder / name).write_bytes((CORPUS / "images" / name).read_bytes())
    (folder / "good.png").write_bytes(GOOD_IMAGE.read_bytes())
    out = tmp_path / "out"
    result = _cli("explain", str(DEMO), str(folder), "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    records = {Path(r["image"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert records.pop("good.png")["status"] == "ok"
    assert sorted(records) == sorted(collected)
    for name, rec in records.items():
        assert rec["status"] == "failed" and re.search(EXPECTED["images"][name], rec["error"]), rec


def test_symlink_loops_and_dangling_links_are_walked_once(tmp_path):
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(GOOD_IMAGE.read_bytes())
    os.symlink("..", root / "a" / "up")
    os.symlink(root, root / "a" / "loop")
    os.symlink("missing.png", root / "a" / "dangling.png")
    os.symlink("x.png", root / "a" / "alias.png")
    jobs = collect_inputs([root])
    assert [job.name for job in jobs] == ["a/alias.png"] or [job.name for job in jobs] == ["a/x.png"]


# --- fuzzing ------------------------------------------------------------------------------------------------------
def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(SMALL_MODEL))))
@example(edits=[(9, 10)], cut=None)  # a line break inside a tensor name that the message quotes (found by CI)
@example(edits=[(357, 0)], cut=None)  # an input of element type 0 (UNDEFINED), which NumPy has no dtype for (CI)
def test_fuzzed_model_bytes_load_or_fail_cleanly(edits, cut):
    data = _mutate(SMALL_MODEL, edits, cut)
    try:
        model = load_model(data)
        ex = onnxcam.Explainer(model)
        ex.explain(np.random.default_rng(0).random((1, 3, 8, 8), np.float32))
    except OnnxcamError as error:
        assert "\n" not in str(error)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_model_bytes_fail_cleanly(data):
    with pytest.raises(OnnxcamError):
        load_model(data)


def _fuzz_seed(ext: str) -> bytes:
    """A small valid file of each format OpenCV here writes (JPEG 2000 needs 32 px or more; HDR and PFM float)."""
    image = np.random.default_rng(4).integers(0, 256, (40, 48, 3) if ext == ".jp2" else (20, 24, 3), np.uint8)
    return cv2.imencode(ext, image.astype(np.float32) / 255 if ext in (".hdr", ".pfm") else image)[1].tobytes()


IMAGE_BYTES = {ext: _fuzz_seed(ext) for ext in (".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".pam", ".pfm",
                                                ".hdr", ".ras", ".gif", ".jp2", ".avif")}


@FUZZ
@given(ext=st.sampled_from(sorted(IMAGE_BYTES)),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4096)))
def test_fuzzed_image_bytes_decode_or_fail_cleanly(tmp_path_factory, ext, edits, cut):
    path = tmp_path_factory.mktemp("img") / f"fuzz{ext}"
    path.write_bytes(_mutate(IMAGE_BYTES[ext], edits, cut) if cut != 0 else b"")
    try:
        rgb = read_image(path)
    except ImageError as error:
        assert str(path) in str(error) and "\n" not in str(error)
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0


# File names: any characters a Linux file system takes, including '..'-looking parts, spaces, dots and Unicode.
NAME_PART = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                    max_size=12).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)


@FUZZ
@given(st.lists(st.lists(NAME_PART, min_size=1, max_size=3), min_size=1, max_size=4))
def test_output_paths_stay_under_out(tmp_path_factory, paths):
    base = tmp_path_factory.mktemp("names")
    root, out = base / "in", base / "out"
    root.mkdir()
    for parts in paths:
        target = root.joinpath(*parts[:-1], parts[-1] + ".png")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
        except OSError:  # a name clashes with a folder of the same name: not a case for this test
            continue
    try:
        jobs = collect_inputs([root], exclude=out)
    except OnnxcamError:
        return  # no image found (every write clashed)
    names = [job.name for job in jobs]
    assert len(set(names)) == len(names)
    for name in names:
        for suffix in (".gradcam.png", ".gradcam.npy"):
            resolved = os.path.realpath(out / f"{name}{suffix}")
            assert resolved.startswith(os.path.realpath(out) + os.sep), (name, resolved)


def test_odd_names_are_written_under_out_and_escaped(tmp_path):
    root = tmp_path / "in"
    odd = ["..png", "...png", "-rf.png", "<script>alert(1)<\\script>.png", "a b'\"&.png", "ünï cødé 画像.png",
           " leading space.png", "new\nline.png"]
    for name in odd:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(GOOD_IMAGE.read_bytes())
    out = tmp_path / "out"
    summary = explain_images(DEMO, [root], out, device="cpu")
    assert summary.done == len(odd) and summary.failed == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents and root not in p.parents]
    assert written == []
    html = (out / "report.html").read_text()
    assert "<script>alert" not in html and "\\u003cscript\\u003ealert" in html  # escaped in the page's data
