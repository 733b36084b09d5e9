"""Decoding, pixel limits, preprocessing presets/layouts/dtypes, labels and rendering helpers."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import onnx
import pytest
from toy_models import nhwc_cnn, tiny_cnn

from onnxcam.errors import InputError
from onnxcam.images import (
    PRESETS,
    ImageError,
    Preprocessing,
    blank_input,
    header_size,
    model_labels,
    preprocess,
    read_image,
    read_labels,
    resolve_preprocessing,
    resolve_target,
)
from onnxcam.render import npy_complete, overlay, write_bytes, write_npy
from onnxcam.report import Header, render_report

RNG = np.random.default_rng(0)


def _write(path, image, ext=".png"):
    ok, buf = cv2.imencode(ext, image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_header_size_matches_decoded(tmp_path, ext):
    h, w = int(RNG.integers(5, 60)), int(RNG.integers(5, 60))
    path = _write(tmp_path / f"a{ext}", RNG.integers(0, 255, (h, w, 3), dtype=np.uint8), ext)
    assert header_size(path.read_bytes()) == (w, h)
    assert read_image(path).shape == (h, w, 3)


def test_colour_conversions(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    assert (read_image(_write(tmp_path / "c.png", bgr))[..., 2] == 200).all()  # RGB: blue last
    gray = RNG.integers(0, 255, (6, 7), dtype=np.uint8)
    out = read_image(_write(tmp_path / "g.png", gray))
    assert out.shape == (6, 7, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    bgra = np.dstack([bgr, np.full((4, 5), 7, np.uint8)])
    assert read_image(_write(tmp_path / "a.png", bgra)).shape == (4, 5, 3)
    deep = (RNG.integers(0, 256, (3, 4, 3)) * 257).astype(np.uint16)
    out16 = read_image(_write(tmp_path / "d.png", deep))
    assert out16.dtype == np.uint8 and (out16[..., ::-1] == deep // 257).all()


def test_bad_images(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "rand.png").write_bytes(RNG.integers(0, 255, 400, dtype=np.uint8).tobytes())
    (tmp_path / "text.jpg").write_text("not a jpeg")
    data = _write(tmp_path / "full.jpg", RNG.integers(0, 255, (40, 40, 3), dtype=np.uint8), ".jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    png = _write(tmp_path / "full.png", RNG.integers(0, 255, (40, 40, 3), dtype=np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:len(png) // 2])
    for name, words in [("zero.png", "empty"), ("rand.png", "not a readable image"), ("text.jpg", "not a readable"),
                        ("cut.jpg", "truncated"), ("cut.png", "truncated"), ("missing.png", "cannot read")]:
        with pytest.raises(ImageError, match=words):
            read_image(tmp_path / name)


def test_pixel_limit_checked_from_header(tmp_path):
    # A PNG header that claims 10000 x 5000 pixels, with no image data behind it: refused before decoding.
    ihdr = struct.pack(">IIBBBBB", 10000, 5000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(ImageError, match="above the limit"):
        read_image(tmp_path / "huge.png")
    small = _write(tmp_path / "s.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="above the limit"):
        read_image(small, max_pixels=99)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_formula(preset):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    p = PRESETS[preset]
    spec = Preprocessing((8, 8), "NCHW", 3, p["bgr"], p["scale"], p["mean"], p["std"])
    x = preprocess(rgb, spec)
    pixels = rgb[..., ::-1] if p["bgr"] else rgb
    want = (pixels * p["scale"] - np.array(p["mean"])) / np.array(p["std"])
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), want, rtol=1e-5, atol=1e-4)
    if preset == "inception":
        assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_blank_input_is_a_preprocessed_black_image_and_masks_in_pixel_space(preset, layout):
    p = PRESETS[preset]
    spec = Preprocessing((6, 5), layout, 3, p["bgr"], p["scale"], p["mean"], p["std"])
    blank = blank_input(spec)
    np.testing.assert_allclose(np.broadcast_to(blank, (1, 6, 5, 3) if layout == "NHWC" else (1, 3, 6, 5)),
                               preprocess(np.zeros((6, 5, 3), np.uint8), spec), rtol=1e-6, atol=1e-5)
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    mask = RNG.uniform(0, 1, (6, 5, 1))
    x = preprocess(rgb, spec)
    faded = blank + np.moveaxis(mask, -1, 0)[None] * (x - blank) if layout == "NCHW" else blank + mask[None] * (
        x - blank)
    np.testing.assert_allclose(faded, _preprocess_float(rgb * mask, spec), rtol=1e-5, atol=1e-4)


def _preprocess_float(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The preprocessing formula on float pixels (no uint8 rounding), as the model sees a masked image."""
    ordered = pixels[..., ::-1] if spec.bgr else pixels
    x = (ordered * spec.scale - np.asarray(spec.mean)) / np.asarray(spec.std)
    return x.transpose(2, 0, 1)[None] if spec.layout == "NCHW" else x[None]


def test_layouts_and_dtypes():
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    nchw = preprocess(rgb, Preprocessing((10, 12), "NCHW"))
    nhwc = preprocess(rgb, Preprocessing((10, 12), "NHWC"))
    assert nchw.shape == (1, 3, 10, 12) and nhwc.shape == (1, 10, 12, 3)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)
    raw = preprocess(rgb, Preprocessing((10, 12), "NHWC", dtype="uint8"))
    assert raw.dtype == np.uint8
    gray = preprocess(rgb, Preprocessing((10, 12), "NCHW", channels=1, mean=(0.5,), std=(0.25,)))
    assert gray.shape == (1, 1, 10, 12)


def test_resolve_from_model_and_options():
    model = tiny_cnn(size=8)
    spec = resolve_preprocessing(model, "input", "NCHW")
    assert spec.size == (8, 8) and spec.mean == PRESETS["imagenet"]["mean"]
    dynamic = tiny_cnn(size="S")
    assert resolve_preprocessing(dynamic, "input", "NCHW").size == (224, 224)
    assert resolve_preprocessing(dynamic, "input", "NCHW", size=[32, 48]).size == (32, 48)
    with pytest.raises(InputError, match="does not fit"):
        resolve_preprocessing(model, "input", "NCHW", size=16)
    caffe = resolve_preprocessing(model, "input", "NCHW", preset="caffe")
    assert caffe.bgr and caffe.scale == 1.0
    assert resolve_preprocessing(model, "input", "NCHW", preset="unit", mean=[0.1]).mean == (0.1, 0.1, 0.1)
    with pytest.raises(InputError, match="did you mean 'imagenet'"):
        resolve_preprocessing(model, "input", "NCHW", preset="imagenett")
    nhwc = resolve_preprocessing(nhwc_cnn(size=16), "img", "NHWC")
    assert nhwc.layout == "NHWC" and nhwc.size == (16, 16)
    onnx.helper.set_model_props(model, {"preprocessing": json.dumps(
        {"size": [8, 8], "channel_order": "BGR", "scale": 1.0, "mean": [1, 2, 3], "std": [2, 2, 2]})})
    meta = resolve_preprocessing(model, "input", "NCHW")
    assert meta.bgr and meta.mean == (1.0, 2.0, 3.0) and meta.scale == 1.0
    assert resolve_preprocessing(model, "input", "NCHW", preset="imagenet").bgr is False  # the option wins


def test_model_input_above_the_pixel_limit_is_refused_whatever_sets_it():
    """Checked where preprocessing is resolved, before one image is allocated at that size."""
    with pytest.raises(InputError, match="the model's input 'input' is 20000x20000 = 400,000,000 pixels per image"):
        resolve_preprocessing(tiny_cnn(size=20_000), "input", "NCHW")
    dynamic = tiny_cnn(size="S")
    with pytest.raises(InputError, match="the requested --size is 9000x9000 .* above the limit of 40,000,000"):
        resolve_preprocessing(dynamic, "input", "NCHW", size=9000)
    assert resolve_preprocessing(dynamic, "input", "NCHW", size=6000).size == (6000, 6000)  # 36 M pixels: allowed
    onnx.helper.set_model_props(dynamic, {"preprocessing": json.dumps({"size": [10_000, 10_000]})})
    with pytest.raises(InputError, match="the size in the model's preprocessing metadata is 10000x10000"):
        resolve_preprocessing(dynamic, "input", "NCHW")


def test_labels(tmp_path):
    (tmp_path / "l.txt").write_text("cat\ndog\n\n")
    assert read_labels(tmp_path / "l.txt") == ["cat", "dog"]
    (tmp_path / "l.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert read_labels(tmp_path / "l.json") == ["cat", "dog"]
    (tmp_path / "bad.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(InputError, match="do not cover"):
        read_labels(tmp_path / "bad.json")
    model = tiny_cnn()
    onnx.helper.set_model_props(model, {"labels": json.dumps(["a", "b"])})
    assert model_labels(model) == ["a", "b"]
    assert resolve_target("1", ["a", "b"], 2) == 1 and resolve_target("B", ["a", "b"], 2) == 1
    with pytest.raises(InputError, match="out of range"):
        resolve_target("5", None, 2)
    with pytest.raises(InputError, match="did you mean 'dog'"):
        resolve_target("dgo", ["cat", "dog"], 2)


def test_render_helpers(tmp_path):
    rgb = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    cam = RNG.random((3, 4)).astype(np.float32)
    assert overlay(rgb, cam, alpha=0.0).tolist() == rgb.tolist()
    assert overlay(rgb, cam, alpha=1.0).shape == rgb.shape
    write_npy(tmp_path / "m.npy", cam)
    assert npy_complete(tmp_path / "m.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "m.npy").read_bytes()[:-8])
    assert not npy_complete(tmp_path / "cut.npy")
    write_bytes(tmp_path / "sub" / "x.txt", b"hi")
    assert (tmp_path / "sub" / "x.txt").read_bytes() == b"hi" and len(list((tmp_path / "sub").iterdir())) == 1
    page = render_report([{"image": "<script>x</script>.png", "status": "ok", "label": "a&b", "method": "gradcam",
                           "paths": {"overlay": "x.png"}}], Header("t<", [("model", "m\"q")]))
    assert "<script>x" not in page and "\\u003cscript\\u003e" in page and "a\\u0026b" in page
    assert "m&quot;q" in page and "<title>t&lt;</title>" in page
