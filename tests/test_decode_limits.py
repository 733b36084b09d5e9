"""Decoding stays within the pixel limit for every format and any file: OpenCV's own limit is in force, header sizes
are checked before decoding, reads are bounded, non-regular files are refused; orientation and odd pixel values are
shown as viewers show them; constant folding checks sizes before evaluating. Peak memory is measured with
getrusage in a fresh process."""

from __future__ import annotations

import ast
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile.make_corpus import fold_bomb, graph_model, head, png_header, radiance_rle, tiff_file
from onnx import TensorProto, helper, numpy_helper

from onnxcam.decode import ORIENTATIONS, decode_image, read_pixels
from onnxcam.graph.load import load_model
from onnxcam.image_headers import image_size
from onnxcam.images import ImageError, read_image

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "shapes_resnet.onnx"
GOOD_IMAGE = ROOT / "examples" / "images" / "01_circle.png"
RNG = np.random.default_rng(0)


def peak_rss_run(args: list[str], timeout: int = 300) -> dict:
    """Run `python ARGS` from a fresh Python whose only child it is, so getrusage(RUSAGE_CHILDREN) is that run's
    peak resident memory alone (the test process's other children would mix in)."""
    probe = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
             "text=True); print(json.dumps({'returncode': r.returncode, 'stdout': r.stdout, 'stderr': r.stderr, "
             "'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(done.stdout)


def _read_in_subprocess(path: Path) -> dict:
    code = ("import sys; from onnxcam.images import ImageError, read_image\n"
            "try:\n    print(read_image(sys.argv[1]).shape)\nexcept ImageError as e:\n    print(e)")
    return peak_rss_run(["-c", code, str(path)])


# --- OpenCV's limit ---------------------------------------------------------------------------------------------
def test_onnxcam_sets_opencvs_pixel_limit_before_any_module_imports_cv2():
    """Importing an onnxcam module that imports cv2, first thing in a fresh process: OpenCV itself then refuses a
    PNG of 7000 x 7000 (49 M pixels) after its header; without the limit in force it would allocate 147 MB and try
    to decode (None)."""
    users = sorted(p for p in (ROOT / "onnxcam").rglob("*.py") if re.search(r"^\s*import cv2", p.read_text(), re.M))
    leaf = next(p for p in users if p.name not in ("opencv.py", "__init__.py"))
    module = ".".join(leaf.relative_to(ROOT).with_suffix("").parts)
    code = (f"import {module}\nimport cv2, numpy as np\n"
            "try:\n    cv2.imdecode(np.frombuffer(bytes.fromhex(sys.argv[1]), np.uint8), cv2.IMREAD_UNCHANGED)\n"
            "except cv2.error as e:\n    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(e) else str(e))\n"
            "else:\n    print('decoded')")
    png = png_header(7000, 7000) + _png_chunk(b"IDAT", zlib.compress(bytes(64))) + _png_chunk(b"IEND", b"")
    result = peak_rss_run(["-c", "import sys\n" + code, png.hex()])
    assert result["stdout"].strip() == "refused", (module, result)


def test_package_imports_opencv_settings_first():
    """onnxcam/__init__.py must import onnxcam.opencv before anything else (a reorder would silently undo it)."""
    tree = ast.parse((ROOT / "onnxcam" / "__init__.py").read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    first = imports[0]
    assert isinstance(first, ast.ImportFrom) and first.module == "onnxcam" and first.names[0].name == "opencv"


# --- header sizes for every format ------------------------------------------------------------------------------
FORMATS = {".png": (17, 23, 3), ".jpg": (17, 23, 3), ".bmp": (17, 23, 3), ".tif": (17, 23, 3),
           ".webp": (17, 23, 3), ".ppm": (17, 23, 3), ".pgm": (17, 23), ".pbm": (17, 23), ".pam": (17, 23, 3),
           ".pfm": (17, 23, 3), ".ras": (17, 23, 3), ".hdr": (17, 23, 3), ".jp2": (40, 56, 3),
           ".avif": (17, 23, 3), ".gif": (17, 23, 3)}


def _encode(ext: str, shape: tuple[int, ...]) -> bytes:
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    if ext in (".pfm", ".hdr"):
        image = image.astype(np.float32) / 255
    try:
        ok, buf = cv2.imencode(ext, image)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV cannot write {ext}")
    return buf.tobytes()


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_format_opencv_writes_has_its_size_read_from_the_header(tmp_path, ext):
    shape = FORMATS[ext]
    data = _encode(ext, shape)
    assert image_size(data) == (shape[1], shape[0])
    (tmp_path / f"a{ext}").write_bytes(data)
    assert read_image(tmp_path / f"a{ext}").shape == (shape[0], shape[1], 3)
    with pytest.raises(ImageError, match="above the limit"):
        read_image(tmp_path / f"a{ext}", max_pixels=shape[0] * shape[1] - 1)


def test_tiff_directory_past_the_first_16_mib_is_read_on_demand(tmp_path):
    """Many writers put the directory after the pixels; the size check fetches it from the end of the file."""
    image = RNG.integers(0, 256, (2100, 3000, 3), dtype=np.uint8)  # 18.9 MB of pixels before the directory
    path = tmp_path / "late.tif"
    path.write_bytes(tiff_file(image, directory_last=True))
    np.testing.assert_array_equal(read_image(path), image)
    with pytest.raises(ImageError, match="3000x2100 = 6,300,000 pixels, above the limit"):
        read_image(path, max_pixels=6_000_000)


def test_a_real_hdr_decodes_under_the_limit_and_is_refused_above_it(tmp_path):
    """radiance_rle writes real, decodable HDR files: the peak-memory test below refuses a file that would decode."""
    path = tmp_path / "small.png"
    path.write_bytes(radiance_rle(300, 200, (128, 64, 32, 129)))
    rgb = read_image(path)
    assert rgb.shape == (200, 300, 3) and (rgb[..., 0] > rgb[..., 1]).all() and (rgb[..., 1] > rgb[..., 2]).all()
    with pytest.raises(ImageError, match="300x200 = 60,000 pixels, above the limit"):
        read_image(path, max_pixels=50_000)


@pytest.mark.parametrize("side", [8000, 12_000])
def test_hdr_renamed_png_run_peak_memory_below_700_mb(tmp_path, side):
    """Before the fix: 1.6 GB (8000^2) and 3.4 GB (12000^2), decoded in full because OpenCV's limit was set after
    cv2 was imported and the HDR header was not read."""
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    path.write_bytes(radiance_rle(side, side))
    out = tmp_path / "out"
    result = peak_rss_run(["-m", "onnxcam", "explain", str(DEMO), str(path), "--out", str(out)])
    assert result["returncode"] == 1, result["stderr"]
    assert result["peak_mb"] < 700, result["peak_mb"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[0]["status"] == "failed" and "above the limit" in records[0]["error"], records


# --- bounded reads, non-regular files ---------------------------------------------------------------------------
def _sparse(path: Path, data: bytes, size: int) -> Path:
    with open(path, "wb") as file:
        file.write(data)
        file.truncate(size)
    return path


def test_4_gb_sparse_file_that_starts_like_a_png_reads_only_its_bound(tmp_path):
    """Before the fix: 4.3 GB resident (the whole file read). Now the 64 x 64 PNG header bounds the read to
    64 * 64 * 9 bytes + 16 MiB."""
    path = _sparse(tmp_path / "big.png", png_header(64, 64), 4 << 30)
    result = _read_in_subprocess(path)
    assert result["peak_mb"] < 300, result["peak_mb"]
    message = result["stdout"].strip()
    assert "truncated or corrupt" in message and "only the first" in message and "\n" not in message, message


def test_image_followed_by_lots_of_other_data_still_decodes(tmp_path):
    """What lies past the bound is not what the decoder needs: a PNG with 200 MB of trailing data decodes."""
    image = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = _sparse(tmp_path / "tail.png", cv2.imencode(".png", image)[1].tobytes(), 200 << 20)
    result = _read_in_subprocess(path)
    assert result["stdout"].strip() == "(30, 40, 3)" and result["peak_mb"] < 300, result


def test_special_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(ImageError, match="is a character device, not a regular file"):
        read_image("/dev/zero")
    with pytest.raises(ImageError, match="is a folder, not a regular file"):
        read_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-c", "import sys; from onnxcam.images import ImageError, read_image\n"
                             "try:\n    read_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)", str(fifo)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == f"{fifo} is a FIFO (named pipe), not a regular file; pass image files only"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_cli_batch_fails_special_files_alone(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "onnxcam", "explain", str(DEMO), "/dev/zero", str(fifo),
                             str(GOOD_IMAGE), "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
    records = {r["image"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert records["/dev/zero"]["error"] == "/dev/zero is a character device, not a regular file; pass image files only"
    assert "FIFO" in records[str(fifo)]["error"]
    assert [r["status"] for r in records.values()].count("ok") == 1


# --- orientation ------------------------------------------------------------------------------------------------
# EXIF 2.3, tag 274: the visual side of the stored 0th row and the stored 0th column.
ROW_COLUMN_SIDES = {1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"), 4: ("bottom", "left"),
                    5: ("left", "top"), 6: ("right", "top"), 7: ("right", "bottom"), 8: ("left", "bottom")}
OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
CORNER_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # RGB at stored TL, TR, BL, BR


def _quadrants(height: int = 16, width: int = 24) -> np.ndarray:
    rgb = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    for colour, (rows, cols) in zip(CORNER_COLOURS, [(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)),
                                                     (slice(h, None), slice(0, w)), (slice(h, None), slice(w, None))]):
        rgb[rows, cols] = colour
    return rgb


def _exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block with one entry: Orientation."""
    return b"II*\0" + struct.pack("<IHHHIHHI", 8, 1, 274, 3, 1, orientation, 0, 0)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _with_orientation(ext: str, rgb: np.ndarray, orientation: int) -> bytes:
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if ext == ".tif":
        return tiff_file(rgb, {274: (3, [orientation])})
    if ext == ".jpg":
        data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
        block = b"Exif\0\0" + _exif(orientation)
        return data[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(block)) + block + data[2:]
    if ext == ".png":
        data = cv2.imencode(".png", bgr)[1].tobytes()
        return data[:33] + _png_chunk(b"eXIf", _exif(orientation)) + data[33:]  # right after IHDR
    data = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()  # lossless: one VP8L chunk
    h, w = rgb.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x08\0\0\0" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(
        3, "little")
    exif = _exif(orientation)
    chunks = vp8x + data[12:] + b"EXIF" + struct.pack("<I", len(exif)) + exif + bytes(len(exif) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def _displayed_corner(orientation: int, stored_row: str, stored_column: str) -> tuple[int, int]:
    """(row, column) index in the displayed image of a stored corner ('first'/'last' row and column)."""
    row_side, column_side = ROW_COLUMN_SIDES[orientation]
    sides = {row_side if stored_row == "first" else OPPOSITE[row_side],
             column_side if stored_column == "first" else OPPOSITE[column_side]}
    return (0 if "top" in sides else -1), (0 if "left" in sides else -1)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_orientation_is_applied_as_the_exif_standard_says(tmp_path, ext, orientation):
    stored = _quadrants()
    path = tmp_path / f"o{ext}"
    path.write_bytes(_with_orientation(ext, stored, orientation))
    shown = decode_image(path)
    assert shown.orientation == orientation and shown.orientation_applied == ORIENTATIONS[orientation]
    assert shown.rgb.shape == ((16, 24, 3) if orientation <= 4 else (24, 16, 3))
    for colour, corner in zip(CORNER_COLOURS, [("first", "first"), ("first", "last"), ("last", "first"),
                                               ("last", "last")]):
        row, column = _displayed_corner(orientation, *corner)
        assert np.abs(shown.rgb[row, column].astype(int) - colour).max() < 40, (corner, shown.rgb[row, column])


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
def test_orientation_matches_pillow(tmp_path, ext):
    """A second opinion from Pillow's ImageOps.exif_transpose, for every orientation."""
    image_ops = pytest.importorskip("PIL.ImageOps")
    from PIL import Image

    stored = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    for orientation in ORIENTATIONS:
        path = tmp_path / f"o{orientation}{ext}"
        path.write_bytes(_with_orientation(ext, stored, orientation))
        with Image.open(path) as opened:
            want = np.asarray(image_ops.exif_transpose(opened).convert("RGB")).astype(int)
        got = read_image(path).astype(int)
        assert got.shape == want.shape and np.abs(got - want).max() <= (12 if ext == ".jpg" else 0), orientation


def test_no_exif_means_as_stored(tmp_path):
    path = tmp_path / "plain.jpg"
    path.write_bytes(cv2.imencode(".jpg", _quadrants())[1].tobytes())
    decoded = decode_image(path)
    assert decoded.orientation == 1 and decoded.orientation_applied == "as stored" and decoded.format == "JPEG"


def test_read_pixels_keeps_depth_and_channels_for_masks(tmp_path):
    labels = RNG.integers(0, 1000, (7, 5), dtype=np.uint16)
    path = tmp_path / "mask.png"
    path.write_bytes(cv2.imencode(".png", labels)[1].tobytes())
    np.testing.assert_array_equal(read_pixels(path), labels)
    path.write_bytes(_with_orientation(".png", np.dstack([labels.astype(np.uint8)] * 3), 6))
    assert read_pixels(path).shape == (5, 7, 3)  # turned like the image it belongs to
    with pytest.raises(ImageError, match="above the limit"):
        read_pixels(ROOT / "tests" / "hostile" / "images" / "hdr_renamed.png")


# --- float pixels -----------------------------------------------------------------------------------------------
def test_one_nan_or_inf_pixel_does_not_blacken_a_float_tiff(tmp_path):
    unit = RNG.random((6, 9)).astype(np.float32)
    unit[2, 3], unit[4, 5], unit[0, 0] = np.nan, np.inf, -np.inf
    path = tmp_path / "f.tif"
    path.write_bytes(cv2.imencode(".tif", unit)[1].tobytes())
    gray = read_image(path)[..., 0]
    finite = np.isfinite(unit)
    assert (gray[~finite] == 0).all()
    np.testing.assert_array_equal(gray[finite], (unit[finite] * 255).astype(np.uint8))
    assert gray[finite].mean() > 60  # a 0..1 image, scaled as one: not black
    wide = (unit * 200).astype(np.float32)  # values above 1: taken as 0..255, NaN/Inf still 0
    path.write_bytes(cv2.imencode(".tif", wide)[1].tobytes())
    np.testing.assert_array_equal(read_image(path)[..., 0][finite], wide[finite].astype(np.uint8))


# --- load-time constant folding ---------------------------------------------------------------------------------
def _constant_model(nodes: list, inits: list) -> bytes:
    return graph_model([*nodes, helper.make_node("Add", ["x", "s"], ["a"]), *head("a")], [*inits, _KERNEL])


_KERNEL = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "k")
_ZERO = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])


def _fill(count: int) -> bytes:
    shape = numpy_helper.from_array(np.array([count], np.int64), "shape")
    return _constant_model([helper.make_node("ConstantOfShape", ["shape"], ["big"], value=_ZERO),
                            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0)], [shape])


def test_folding_checks_the_output_size_before_evaluating():
    """5 M elements (20 MB) would be allocated by evaluating the node; the size check comes first."""
    tracemalloc.start()
    try:
        model = load_model(_fill(5_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20, peak
    assert "ConstantOfShape" in [n.op_type for n in model.graph.node]
    small = load_model(_fill(16))
    assert "ConstantOfShape" not in [n.op_type for n in small.graph.node]  # small results still fold


def test_folding_still_folds_shape_arithmetic_and_skips_large_results():
    ints = {name: numpy_helper.from_array(np.array(v, np.int64), name)
            for name, v in {"start": 0, "small": 10, "large": 100_000, "step": 1}.items()}
    for limit, folded in (("small", True), ("large", False)):
        nodes = [helper.make_node("Range", ["start", limit, "step"], ["r"]),
                 helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceSum", ["rf"], ["s"], keepdims=0)]
        model = load_model(_constant_model(nodes, list(ints.values())))
        assert ("Range" not in [n.op_type for n in model.graph.node]) == folded, limit


def test_fold_bomb_loads_in_bounded_memory():
    """The corpus file (tests/hostile/loads/) is this builder's output; here in a fresh process for its peak."""
    assert (ROOT / "tests" / "hostile" / "loads" / "fold_bomb.onnx").read_bytes() == fold_bomb()
    code = "import sys; from onnxcam.graph.load import load_model; load_model(sys.argv[1]); print('ok')"
    result = peak_rss_run(["-c", code, str(ROOT / "tests" / "hostile" / "loads" / "fold_bomb.onnx")])
    assert result["stdout"].strip() == "ok" and result["peak_mb"] < 400, result
