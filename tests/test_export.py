"""`onnxcam export`: the exported model's `cam` equals onnxcam's NumPy map, for every exportable method.

Parity bar (the issue's): Pearson r >= 0.999 per image and max |difference| <= 1e-3, on the bundled models, on
the small PyTorch exports in models/torch_exports (opsets 11 to 18, NHWC, ViT tokens), with real images where the
model was trained on them. The exported file is run by onnxruntime only: no onnxcam code at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import GradientError, InputError, LayerError, ModelError
from onnxcam.export import (
    CAM,
    CAM_CLASS,
    EXPORTABLE,
    METADATA_KEY,
    TARGET_INPUT,
    ExportOptions,
    build_export,
    export_model,
    read_export_metadata,
)
from onnxcam.images import preprocess, read_image

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
IMAGES = sorted((ROOT / "examples" / "images").glob("*.png"))
BUNDLED = ["shapes_resnet", "shapes_mobilenet", "shapes_vit", "shapes_multilabel", "shapes_lfi"]
TORCH_EXPORTS = ["resnet_op11", "resnet_op18", "mobilenetv3_op13", "efficientnet_op18", "convnext_op13",
                 "densenet_op18", "nhwc_op13", "vit_op14", "vit_op18"]


def images_for(explainer: onnxcam.Explainer) -> np.ndarray:
    """The eight example images, preprocessed for the model."""
    return np.concatenate([preprocess(read_image(p), explainer.preprocessing) for p in IMAGES])


def random_input(explainer: onnxcam.Explainer, batch: int = 4, seed: int = 0) -> np.ndarray:
    shape = [d if isinstance(d, int) else 1 for d in explainer.input_shape]
    if not isinstance(explainer.input_shape[0], int):
        shape[0] = batch
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def assert_parity(cam: np.ndarray, reference: np.ndarray) -> None:
    assert cam.shape == reference.shape and cam.dtype == np.float32
    assert np.abs(cam - reference).max() <= 1e-3
    for exported, expected in zip(cam, reference):
        if expected.std() == 0:  # a constant map (zeros): nothing to correlate, the difference above decides
            continue
        assert np.corrcoef(exported.ravel(), expected.ravel())[0, 1] >= 0.999


@pytest.fixture(scope="module")
def explainers() -> dict[str, onnxcam.Explainer]:
    return {}


def explainer_for(cache: dict[str, onnxcam.Explainer], path: Path) -> onnxcam.Explainer:
    if str(path) not in cache:
        cache[str(path)] = onnxcam.Explainer(path, device="cpu")
    return cache[str(path)]


@pytest.mark.parametrize("method", EXPORTABLE)
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_match_numpy(tmp_path: Path, explainers: dict, name: str, method: str) -> None:
    path = MODELS / f"{name}.onnx"
    ex = explainer_for(explainers, path)
    x = images_for(ex)
    result = export_model(path, tmp_path / "m.cam.onnx", ExportOptions(method=method))
    outputs = run(result.path, {ex.input_name: x})
    reference, scores, classes = ex.explain_scored(x, method)
    assert (reference.reshape(len(x), -1).std(axis=1) > 0).all()  # real maps, not the constant-map corner case
    assert_parity(outputs[CAM], reference)
    np.testing.assert_array_equal(outputs[CAM_CLASS], classes)
    original = run(path, {ex.input_name: x})
    for output, value in original.items():  # the model's own outputs are untouched
        np.testing.assert_allclose(outputs[output], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", EXPORTABLE)
@pytest.mark.parametrize("name", TORCH_EXPORTS)
def test_torch_exports_match_numpy(tmp_path: Path, explainers: dict, name: str, method: str) -> None:
    path = MODELS / "torch_exports" / f"{name}.onnx"
    ex = explainer_for(explainers, path)
    x = random_input(ex)
    result = export_model(path, tmp_path / "m.cam.onnx", ExportOptions(method=method))
    outputs = run(result.path, {ex.input_name: x})
    assert_parity(outputs[CAM], ex.explain(x, method))


def test_given_targets_and_out_of_range_targets(tmp_path: Path, explainers: dict) -> None:
    """target 'input': each image explains its own class; outside 0..K-1 the map is zeros and cam_class -1."""
    path = MODELS / "shapes_resnet.onnx"
    ex = explainer_for(explainers, path)
    x = images_for(ex)
    result = export_model(path, tmp_path / "t.onnx", ExportOptions(method="gradcam++", target="input"))
    targets = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int64)
    outputs = run(result.path, {ex.input_name: x, TARGET_INPUT: targets})
    assert_parity(outputs[CAM], ex.explain(x, "gradcam++", targets.tolist()))
    np.testing.assert_array_equal(outputs[CAM_CLASS], targets)
    bad = np.array([-1, 8, 100, 3, -5, 7, 0, 2**40], np.int64)
    outputs = run(result.path, {ex.input_name: x, TARGET_INPUT: bad})
    invalid = (bad < 0) | (bad >= 8)
    assert np.all(outputs[CAM][invalid] == 0)
    np.testing.assert_array_equal(outputs[CAM_CLASS], np.where(invalid, -1, bad))
    assert_parity(outputs[CAM][~invalid], ex.explain(x[~invalid], "gradcam++", bad[~invalid].tolist()))
    inputs = [i.name for i in onnx.load(str(result.path)).graph.input]
    assert TARGET_INPUT in inputs and "onnxcam_seed" not in inputs


@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam"])
def test_layer_size_and_explicit_size(tmp_path: Path, explainers: dict, method: str) -> None:
    """size 'layer' leaves the map at the layer's grid; (H, W) resizes as cv2.resize(INTER_LINEAR), up and down."""
    from onnxcam.methods import Evidence, get_method
    from onnxcam.methods.postprocess import combine, normalise

    path = MODELS / "shapes_resnet.onnx"
    ex = explainer_for(explainers, path)
    x = images_for(ex)
    res = onnxcam.gradients(path, x, layers=[ex.default_layer])
    acts, grads = res.activations[ex.default_layer], res.gradients[ex.default_layer]
    evidence = Evidence(acts, res.scores.argmax(axis=1), res.scores, x, ex.default_layer, gradients=grads)
    raw = combine(get_method(method).fn(evidence), acts, False)
    for size in ["layer", (5, 7), (13, 12), (150, 41)]:
        result = export_model(path, tmp_path / "s.onnx", ExportOptions(method=method, size=size))
        cam = run(result.path, {ex.input_name: x})[CAM]
        expected = normalise(raw, None if size == "layer" else size)
        assert cam.shape[1:] == (acts.shape[2:] if size == "layer" else size)
        assert_parity(cam, expected)
        if size == (13, 12):  # the only one where rounding could hide a convention change: be exact to float32
            assert np.abs(cam - expected).max() < 1e-5


def test_metadata_opset_and_checker(tmp_path: Path) -> None:
    """Metadata says what was added; the opset is kept (>= 16) or raised to 16 and said so; full check passes."""
    kept = export_model(MODELS / "torch_exports" / "resnet_op18.onnx", tmp_path / "a.onnx",
                        ExportOptions(method="hirescam"))
    model = onnx.load(str(kept.path))
    onnx.checker.check_model(model, full_check=True)
    meta = read_export_metadata(model)
    assert meta is not None and meta["method"] == "hirescam" and meta["layer"] == kept.exported.layer
    assert meta["version"] == onnxcam.__version__ and "opset_raised_from" not in meta
    assert next(o.version for o in model.opset_import if o.domain == "") == 18
    assert [o.name for o in model.graph.output][-2:] == [CAM, CAM_CLASS]
    raised = export_model(MODELS / "torch_exports" / "resnet_op11.onnx", tmp_path / "b.onnx")
    model = onnx.load(str(raised.path))
    assert next(o.version for o in model.opset_import if o.domain == "") == 16
    assert read_export_metadata(model)["opset_raised_from"] == 11  # type: ignore[index]
    assert raised.exported.opset_raised_from == 11
    labels = {p.key for p in model.metadata_props}
    assert METADATA_KEY in labels


def test_eigen_metadata_states_the_power_iterations(tmp_path: Path) -> None:
    result = export_model(MODELS / "shapes_resnet.onnx", tmp_path / "e.onnx",
                          ExportOptions(method="eigencam", squarings=5))
    assert result.exported.metadata["power_iterations"] == 32


def test_no_cam_class_output(tmp_path: Path) -> None:
    result = export_model(MODELS / "shapes_resnet.onnx", tmp_path / "n.onnx", ExportOptions(class_output=False))
    outputs = [o.name for o in onnx.load(str(result.path)).graph.output]
    assert CAM in outputs and CAM_CLASS not in outputs


_DETERMINISM = """
import sys
from onnxcam.export import ExportOptions, export_model
export_model(sys.argv[1], sys.argv[2], ExportOptions(method=sys.argv[3]), external_data=sys.argv[4] == "1")
"""


@pytest.mark.parametrize("method,external", [("gradcam", False), ("eigengradcam", False), ("layercam", True)])
def test_byte_identical_across_processes(tmp_path: Path, method: str, external: bool) -> None:
    """Two processes with different hash seeds write the same bytes (and the same external data file)."""
    files = []
    for seed in ("1", "2"):
        out = tmp_path / seed / "m.cam.onnx"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", _DETERMINISM, str(MODELS / "shapes_mobilenet.onnx"), str(out), method,
                        "1" if external else "0"], check=True, env=env, timeout=300)
        files.append(out)
    assert files[0].read_bytes() == files[1].read_bytes()
    side = [f.with_name(f.name + ".data") for f in files]
    assert all(s.is_file() for s in side) == external
    if external:
        assert side[0].read_bytes() == side[1].read_bytes()
        assert files[0].stat().st_size < 200_000 < side[0].stat().st_size  # the weights are in the side file


def test_external_data_runs_and_reexports(tmp_path: Path, explainers: dict) -> None:
    """A model whose weights are in a side file exports (to a side file) and runs from its folder."""
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(onnx.load(str(MODELS / "shapes_resnet.onnx")), str(source), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.weights", size_threshold=0)
    result = export_model(source, tmp_path / "out" / "m.cam.onnx", external_data=True)
    assert result.external_data is not None and result.external_data.is_file()
    ex = explainer_for(explainers, MODELS / "shapes_resnet.onnx")
    x = images_for(ex)
    assert_parity(run(result.path, {ex.input_name: x})[CAM], ex.explain(x, "gradcam"))
    onnx.checker.check_model(str(result.path), full_check=True)


def test_double_export_is_refused_or_replaced(tmp_path: Path, explainers: dict) -> None:
    path = MODELS / "shapes_mobilenet.onnx"  # has MaxPool-free SE blocks; the resnet has MaxPool (Indices output)
    for name in (path, MODELS / "shapes_resnet.onnx"):
        first = export_model(name, tmp_path / "first.onnx", ExportOptions(method="gradcam", target="input"))
        with pytest.raises(InputError, match="already an onnxcam export.*gradcam.*--replace"):
            build_export(first.path)
        replaced = export_model(first.path, tmp_path / "second.onnx", ExportOptions(method="hirescam", replace=True))
        assert replaced.exported.replaced
        model = onnx.load(str(replaced.path))
        assert [o.name for o in model.graph.output].count(CAM) == 1
        assert TARGET_INPUT not in [i.name for i in model.graph.input]
        assert read_export_metadata(model)["method"] == "hirescam"  # type: ignore[index]
        ex = explainer_for(explainers, Path(name))
        x = images_for(ex)
        direct = export_model(name, tmp_path / "direct.onnx", ExportOptions(method="hirescam"))
        again, fresh = run(replaced.path, {ex.input_name: x}), run(direct.path, {ex.input_name: x})
        assert set(again) == set(fresh)
        for key in fresh:
            np.testing.assert_allclose(again[key], fresh[key], atol=1e-6)
        assert len(model.graph.node) == len(onnx.load(str(direct.path)).graph.node)


@pytest.mark.parametrize("method,message", [
    ("scorecam", "cannot be exported: it reruns the model.*exportable methods: gradcam, gradcam\\+\\+"),
    ("ablationcam", "cannot be exported"),
    ("opticam", "cannot be exported: it needs per-image optimisation"),
    ("fullgrad", "cannot be exported"),
    ("nosuch", "unknown method 'nosuch'"),
])
def test_methods_that_cannot_be_exported(method: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_export(MODELS / "shapes_resnet.onnx", ExportOptions(method=method))


@pytest.mark.parametrize("options,message", [
    (ExportOptions(method="eigencam", target="input"), "does not depend on the class"),
    (ExportOptions(target="label"), "target must be 'predicted' or 'input'"),
    (ExportOptions(size="big"), "size must be"),
    (ExportOptions(size=(0, 4)), "size must be two positive"),
    (ExportOptions(method="eigencam", squarings=0), "squarings must be"),
    (ExportOptions(layer="/stage3/stage3.1/Relu_1_outptu_0"), "did you mean"),
    (ExportOptions(layer="logits"), "no feature map"),
])
def test_bad_options(options: ExportOptions, message: str) -> None:
    with pytest.raises((InputError, LayerError), match=message):
        build_export(MODELS / "shapes_resnet.onnx", options)


def test_a_users_own_cam_output_is_never_stripped() -> None:
    model = _toy("Relu")
    model.graph.output[0].name = model.graph.node[-1].output[0] = CAM
    for replace in (False, True):
        with pytest.raises(ModelError, match="already has a tensor named 'cam'.*rename it"):
            build_export(model, ExportOptions(layer="features", replace=replace))


def test_non_classifiers_are_refused() -> None:
    with pytest.raises(ModelError, match="export explains classifiers.*not \\(N, classes\\)"):
        build_export(MODELS / "shapes_segmenter.onnx")


def test_out_is_not_the_input(tmp_path: Path) -> None:
    copy = tmp_path / "m.onnx"
    copy.write_bytes((MODELS / "shapes_resnet.onnx").read_bytes())
    with pytest.raises(InputError, match="is the input model itself"):
        export_model(copy, copy)


def _toy(between: str) -> onnx.ModelProto:
    """x -> Conv -> Relu (the layer) -> `between` -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["features"]),
             helper.make_node(between, ["features"], ["changed"]),
             helper.make_node("GlobalAveragePool", ["changed"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_no_differentiable_path_names_the_op() -> None:
    with pytest.raises(LayerError, match="no differentiable path.*at op 'Round'.*eigencam"):
        build_export(_toy("Round"), ExportOptions(layer="features"))
    build_export(_toy("Round"), ExportOptions(method="eigencam", layer="features"))  # no gradient needed


def test_op_without_gradient_rule_names_the_op() -> None:
    with pytest.raises(GradientError, match="no gradient rule for op 'Atan'"):
        build_export(_toy("Atan"), ExportOptions(layer="features"))


def test_constant_and_non_finite_maps_are_zero(tmp_path: Path) -> None:
    """A zero image gives constant features in the toy model: the map is zeros, never NaN; as the NumPy path."""
    model = _toy("Relu")
    path = tmp_path / "toy.onnx"
    onnx.save(model, str(path))
    result = export_model(path, tmp_path / "toy.cam.onnx", ExportOptions(layer="features"))
    x = np.zeros((2, 3, 8, 8), np.float32)
    x[1] = np.float32(np.inf)
    cam = run(result.path, {"x": x})[CAM]
    assert np.all(cam == 0)
    ex = onnxcam.Explainer(path, layer="features", device="cpu")
    with pytest.warns(RuntimeWarning):
        np.testing.assert_array_equal(ex.explain(x, "gradcam"), cam)


def test_cli_export(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from onnxcam.cli.export import export

    app = typer.Typer()
    app.command("export")(export)
    app.command("noop")(lambda: None)  # two commands: typer keeps the command name
    out = tmp_path / "m.cam.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(MODELS / "shapes_resnet.onnx"), "--out", str(out), "--method",
                                 "xgradcam", "--target", "input", "--size", "48x40"])
    assert result.exit_code == 0, result.output
    assert "xgradcam" in result.output and str(out) in result.output.replace("\n", "")
    meta = json.loads(next(p.value for p in onnx.load(str(out)).metadata_props if p.key == METADATA_KEY))
    assert meta["method"] == "xgradcam" and meta["size"] == [48, 40] and meta["inputs"] == [TARGET_INPUT]
    result = runner.invoke(app, ["export", str(MODELS / "shapes_resnet.onnx"), "--out", str(out), "--method",
                                 "scorecam"])
    assert result.exit_code == 2
    assert "cannot be exported" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "again.onnx")])
    assert result.exit_code == 2 and "--replace" in result.output
    result = runner.invoke(app, ["export", str(MODELS / "shapes_resnet.onnx"), "--out", str(out), "--size", "x"])
    assert result.exit_code == 2 and "--size" in result.output


# --- torchvision (optional: skipped without torch; about 3 minutes on 2 cores) ----------------------------------------
TORCHVISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16"]


@pytest.fixture(scope="module")
def torchvision_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    return {}


def torchvision_model(cache: dict[str, Path], folder: Path, name: str) -> Path:
    """torchvision's `name` (weights=None: nothing is downloaded), exported by the TorchScript exporter (opset 17).

    Its LayerNorm affine parameters and classifier are redrawn at random: torchvision initialises them to ones and
    zeros, which makes a ViT's logits all zero (no gradient) and its LayerNorm outputs sum to zero over channels,
    where the sign of a principal component (eigencam's convention) is float noise, in NumPy as in the graph.
    """
    import torch
    import torchvision

    if name not in cache:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1.0, 0.5)
                    module.bias.normal_(0.0, 0.5)
            last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.normal_(0.0, 0.05)
        path = folder / f"{name}.onnx"
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        cache[name] = path
    return cache[name]


@pytest.mark.parametrize("method", EXPORTABLE)
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_exports_match_numpy(tmp_path_factory: pytest.TempPathFactory, torchvision_exports: dict,
                                         explainers: dict, name: str, method: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path_factory.getbasetemp() / "torchvision"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("ONNXCAM_CACHE", str(folder / "cache"))
    path = torchvision_model(torchvision_exports, folder, name)
    ex = explainer_for(explainers, path)
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    result = export_model(path, folder / f"{name}.{method}.onnx", ExportOptions(method=method))
    reference = ex.explain(x, method)
    assert (reference.reshape(len(x), -1).std(axis=1) > 0).all()
    assert_parity(run(result.path, {"input": x})[CAM], reference)
    if name == "vit_b_16":
        assert (result.exported.layer, infer_layout(ex, result.exported.layer)) == (
            "/encoder/layers/encoder_layer_11/ln_1/LayerNormalization_output_0", "BTC")
    result.path.unlink()


def infer_layout(ex: onnxcam.Explainer, layer: str) -> str | None:
    from onnxcam.graph.catalogue import catalogue
    return next(t.layout for t in catalogue(ex.model) if t.name == layer)
