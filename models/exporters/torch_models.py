"""PyTorch's two ONNX exporters on one torchvision ResNet, at the opsets users meet: TorchScript (`dynamo=False`)
at 11, 13, 17, 18, 21 and dynamo (`dynamo=True`, the default since torch 2.9) at 18 and 21.

Dev-only (torch, torchvision, onnxscript); run from the repository root:

    python models/exporters/torch_models.py

The dynamo exporter cannot write opsets below 18 for this model: asked for 11, 13 or 17 it warns, tries onnx's
version converter, fails (ReduceMean's axes input) and silently keeps opset 18, so no such file is written.
Its per-node stack traces are dropped (size); the module scopes (`pkg.torch.onnx.name_scopes`,
`pkg.torch.onnx.class_hierarchy`) stay, since they are what onnxcam.graph.names reads.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from common import HERE, check_and_save, match_tensors, random_images
from torch import nn
from torchvision.models import resnet

CLASSES = 10
SIZE = 64
# The modules whose ONNX tensors are recorded: what users pass to pytorch-grad-cam for a ResNet, and a convolution
# that both exporters fold into the BatchNorm after it (so it has no tensor of its own).
MODULES = ("layer1", "layer2.0", "layer3", "layer4.0", "layer4.1", "layer4", "layer4.1.conv1", "layer4.1.conv3",
           "layer4.1.bn3", "avgpool", "fc")
EXPORTS = [("torchscript", 11, False), ("torchscript", 13, True), ("torchscript", 17, True),
           ("torchscript", 18, True), ("torchscript", 21, True), ("dynamo", 18, True), ("dynamo", 21, True)]
# torchvision's eval transform for its ImageNet weights (ResNet50_Weights.IMAGENET1K_V1.transforms()).
TORCHVISION_PREPROCESSING = {
    "source": "torchvision ResNet*_Weights.IMAGENET1K_V1.transforms()", "colour": "RGB", "resize_short": 256,
    "crop": 224, "interpolation": "bilinear", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


class SmallResNet(resnet.ResNet):
    """torchvision's ResNet with widths 8-16-24-32: BasicBlocks in stages 1-2, Bottlenecks in 3-4 (two in 4)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(resnet.BasicBlock, 8, 1)
        self.layer2 = self._make_layer(resnet.BasicBlock, 16, 1, stride=2)
        self.layer3 = self._make_layer(resnet.Bottleneck, 24, 1, stride=2)
        self.layer4 = self._make_layer(resnet.Bottleneck, 32, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, CLASSES)


def randomise(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> None:
    """Weights of scale 1/sqrt(fan_in) (torchvision starts heads at zero or tiny, which gives flat logits) and
    BatchNorm statistics away from (0, 1), so that folding them into convolutions is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5, generator=gen)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=gen)
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for _ in range(3):
            model(torch.randn((8, *input_shape), generator=gen))
        for bn in norms:
            bn.momentum = 0.1
            bn.running_var.mul_(0.7 + 0.6 * torch.rand(bn.running_var.shape, generator=gen))
            bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn(bn.running_mean.shape, generator=gen))
    model.eval()


def module_outputs(model: nn.Module, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The output of each named module on x (the last call's, for a module called more than once)."""
    captured: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().clone().numpy())) for name in names]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return captured


def export(model: nn.Module, x: torch.Tensor, exporter: str, opset: int, dynamic: bool) -> onnx.ModelProto:
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    if exporter == "dynamo":
        shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
        program = torch.onnx.export(model, (x,), dynamo=True, optimize=True, external_data=False,
                                    dynamic_shapes=shapes, **names)
        return program.model_proto
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, do_constant_folding=True, dynamic_axes=axes, **names)
    return onnx.load_from_string(buffer.getvalue())


def main(folder: Path = HERE, only: tuple[str, ...] = ()) -> None:
    """Export every model (or those whose file stem starts with one of `only`) into `folder`."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = SmallResNet()
    randomise(model, (3, SIZE, SIZE), seed=0)
    x = random_images((3, SIZE, SIZE), seed=0, low=-2.0, high=2.0)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    activations = module_outputs(model, torch.from_numpy(x), MODULES)
    for exporter, opset, dynamic in EXPORTS:
        name = f"torchvision_resnet_{exporter}_op{opset}.onnx"
        if only and not name.startswith(only):
            continue
        proto = export(model, torch.from_numpy(x), exporter, opset, dynamic)
        proto.producer_name += f" (torch {torch.__version__}, {exporter} exporter)"
        entry = {
            "framework": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
            "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'}), opset {opset}",
            "family": "torchvision resnet", "layout": "NCHW", "input_shape": [3, SIZE, SIZE],
            "batch": "dynamic" if dynamic else "fixed 2", "input_range": [-2.0, 2.0],
            "expected_layer": {"framework_name": "layer4", "tensor": None,
                               "note": "layer4's output is layer4[-1]'s, pytorch-grad-cam's choice for ResNets"},
            "modules": match_tensors(proto, x, activations),
            "preprocessing": TORCHVISION_PREPROCESSING,
        }
        entry["expected_layer"]["tensor"] = entry["modules"]["layer4"]
        check_and_save(proto, name, x, logits, entry, folder=folder)


if __name__ == "__main__":
    main(only=tuple(sys.argv[1:]))
