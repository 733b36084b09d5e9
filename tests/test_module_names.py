"""PyTorch module paths on real exports (onnxcam.graph.names): no torch needed.

The ground truth is in models/exporters/zoo.json: for each module, the ONNX tensor whose values equal the module's
output under a torch forward hook (models/exporters/torch_models.py found it by running both).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from onnxcam.errors import LayerError
from onnxcam.graph.load import load_model
from onnxcam.graph.names import enclosing_module, module_map, module_path, resolve_layer, resolve_module

EXPORTS = Path(__file__).resolve().parent.parent / "models" / "exporters"
ZOO = json.loads((EXPORTS / "zoo.json").read_text())
RESNETS = sorted(name for name in ZOO if name.startswith("torchvision_resnet_"))
DYNAMO = "torchvision_resnet_dynamo_op18.onnx"
TORCHSCRIPT = "torchvision_resnet_torchscript_op13.onnx"
# Modules both exporters keep as a tensor of their own (the others are fused: see test_fused_modules).
BLOCKS = ("layer1", "layer2.0", "layer3", "layer4.0", "layer4.1", "layer4", "avgpool", "fc")


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {name: load_model(EXPORTS / name) for name in RESNETS}


def test_both_exporters_at_every_opset_are_committed() -> None:
    assert {"torchscript_op11", "torchscript_op13", "torchscript_op17", "torchscript_op18", "torchscript_op21",
            "dynamo_op18", "dynamo_op21"} <= {n.removeprefix("torchvision_resnet_").removesuffix(".onnx")
                                              for n in RESNETS}


@pytest.mark.parametrize("name", RESNETS)
def test_module_paths_resolve_to_the_hooked_tensor(models: dict[str, onnx.ModelProto], name: str) -> None:
    truth = ZOO[name]["modules"]
    for path in BLOCKS:
        assert truth[path] is not None
        assert resolve_module(models[name], path) == truth[path], path


@pytest.mark.parametrize("name", RESNETS)
def test_pytorch_grad_cam_spelling(models: dict[str, onnx.ModelProto], name: str) -> None:
    model, truth = models[name], ZOO[name]["modules"]
    assert resolve_module(model, "layer4[-1]") == truth["layer4.1"]
    assert resolve_module(model, "model.layer4[-1]") == truth["layer4.1"]
    assert resolve_module(model, "layer4[-2]") == truth["layer4.0"]
    assert resolve_module(model, "layer4[1]") == resolve_module(model, "layer4.1")
    assert resolve_module(model, " layer2[0] ") == truth["layer2.0"]


@pytest.mark.parametrize("name", RESNETS)
def test_tensor_names_pass_through(models: dict[str, onnx.ModelProto], name: str) -> None:
    model, truth = models[name], ZOO[name]["modules"]
    assert resolve_layer(model, truth["layer3"]) == truth["layer3"]
    assert resolve_layer(model, "layer3") == truth["layer3"]


@pytest.mark.parametrize("name", RESNETS)
def test_module_path_beside_a_tensor(models: dict[str, onnx.ModelProto], name: str) -> None:
    model, truth = models[name], ZOO[name]["modules"]
    # the block's output is also layer4's output: the outermost module is shown, and round-trips
    assert module_path(model, truth["layer4"]) == "layer4"
    assert module_path(model, truth["layer4.0"]) == "layer4.0"
    assert module_path(model, truth["layer3"]) == "layer3"
    assert enclosing_module(model, truth["layer4"]) == "layer4.1.relu"
    assert module_path(model, model.graph.input[0].name) is None


def test_dynamo_records_classes_and_paths(models: dict[str, onnx.ModelProto]) -> None:
    modules = module_map(models[DYNAMO])
    assert modules.exporter == "dynamo"
    assert modules.classes["layer4.1"] == "torchvision.models.resnet.Bottleneck"
    assert modules.classes["layer1.0"] == "torchvision.models.resnet.BasicBlock"
    assert modules.children("layer4") == ["layer4.0", "layer4.1"]
    assert modules.children("")[:5] == ["bn1", "relu", "maxpool", "layer1", "layer2"]  # conv1 is fused into bn1


def test_torchscript_scopes_become_full_paths(models: dict[str, onnx.ModelProto]) -> None:
    modules = module_map(models[TORCHSCRIPT])
    assert modules.exporter == "torchscript"
    assert modules.classes == {}
    # '/layer4/layer4.1/relu_2/Relu': the third call of layer4.1.relu; 'downsample/downsample.0' nests
    assert "layer4.1.relu" in modules.paths and not any(p.endswith("relu_2") for p in modules.paths)
    assert "layer2.0.downsample.0" in modules.paths
    assert modules.children("layer4") == ["layer4.0", "layer4.1"]


def test_fused_modules(models: dict[str, onnx.ModelProto]) -> None:
    """Both exporters fold BatchNorm into the convolution before it: the convolution's own output exists in
    neither file. dynamo files the fused node under the BatchNorm's scope (whose output it is); TorchScript names
    it after the convolution, so 'conv3' there gives bn3's output: the only tensor there is."""
    dynamo, torchscript = models[DYNAMO], models[TORCHSCRIPT]
    assert ZOO[DYNAMO]["modules"]["layer4.1.conv3"] is None
    assert resolve_module(dynamo, "layer4.1.bn3") == ZOO[DYNAMO]["modules"]["layer4.1.bn3"]
    with pytest.raises(LayerError, match=r"no module 'layer4.1.conv3'.*fused away.*layer4.1.bn3"):
        resolve_module(dynamo, "layer4.1.conv3")
    assert resolve_module(torchscript, "layer4.1.conv3") == ZOO[TORCHSCRIPT]["modules"]["layer4.1.bn3"]
    with pytest.raises(LayerError, match="fused away"):
        resolve_module(torchscript, "layer4.1.bn3")


def test_unknown_paths_name_the_closest(models: dict[str, onnx.ModelProto]) -> None:
    model = models[DYNAMO]
    with pytest.raises(LayerError, match=r"no module 'layer5'.*closest module paths: layer4, layer3"):
        resolve_module(model, "layer5")
    with pytest.raises(LayerError, match=r"index \[2\] is out of range, 'layer4' has 2 numbered children"):
        resolve_module(model, "layer4[2]")
    with pytest.raises(LayerError, match=r"'fc' has no numbered children"):
        resolve_module(model, "fc[0]")
    with pytest.raises(LayerError, match="cannot read 'layer4 1' as a module path"):
        resolve_module(model, "layer4 1")
    with pytest.raises(LayerError, match=r"closest tensor names: relu_1"):
        resolve_layer(model, "relu_1x")


def test_onnxcams_own_models_are_torchscript_exports() -> None:
    model = load_model(Path(__file__).resolve().parent.parent / "models" / "shapes_resnet.onnx")
    modules = module_map(model)
    assert modules.exporter == "torchscript"
    assert resolve_module(model, "stage3[-1]") == resolve_module(model, "stage3.1")


def test_a_model_without_module_names() -> None:
    # the same export after a tool renamed its nodes (as graph optimisers may)
    model = load_model(EXPORTS / TORCHSCRIPT)
    for index, node in enumerate(model.graph.node):
        node.name = f"n{index}"
    assert module_map(model).exporter is None
    with pytest.raises(LayerError, match="carries no PyTorch module names"):
        resolve_module(model, "layer4[-1]")


def test_cli_takes_module_paths_and_several_layers(tmp_path: Path) -> None:
    """--layer layer4[-1] (pytorch-grad-cam's spelling) and --layer a,b reach the job; records name the module."""
    import json

    from typer.testing import CliRunner

    from onnxcam import cli

    model = Path(__file__).resolve().parent.parent / "models" / "exporters" / "torchvision_resnet_dynamo_op18.onnx"
    image = Path(__file__).resolve().parent.parent / "examples" / "images" / "01_circle.png"
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["explain", str(model), str(image), "--out", str(out), "--device", "cpu",
                                          "--layer", "layer4[-1]", "--layer", "layer3"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # the module shown is the outermost one whose output the tensor is (layer4[-1]'s output is layer4's)
    assert record["layer_module"] == "layer4, layer3" and record["layer"].count(",") == 1
    wrong = CliRunner().invoke(cli.app, ["explain", str(model), str(image), "--out", str(out), "--device", "cpu",
                                         "--layer", "layer9"])
    assert wrong.exit_code == 2 and "layer4" in wrong.output and "Traceback" not in wrong.output
