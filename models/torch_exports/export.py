"""Export small torchvision-style models to ONNX, with torch.autograd reference values for the parity tests.

Dev-only: needs torch and torchvision (and onnxscript for the dynamo exporter); the test suite that reads the
results (tests/test_torch_exports.py) does not. Run from the repository root:

    pip install torch==2.14.1 torchvision==0.29.1 onnxscript
    python models/torch_exports/export.py            # all models, all opsets
    python models/torch_exports/export.py resnet vit # some of them

For each architecture it builds a reduced-width model with random weights (fixed seed), fills the BatchNorm
running statistics with non-trivial values (a few batches in train mode, then a random rescale) so that folding
bugs show, puts it in eval mode and writes, per export:

    <arch>_op<opset>.onnx   the float32 model, one file, ir_version <= 10, batch dimension dynamic or not
    <arch>.npz              shared by that architecture's exports: x (2 images), target (two different classes), logits, and from torch.autograd in
                            float64: act (the last rank-4 feature map before global pooling, NCHW), grad_act and
                            grad_x, the gradients of sum_i logits[i, target_i] w.r.t. act and x

Each model is split into body(x) -> act and head(act) -> logits; the script checks head(body(x)) == model(x) and
that onnxruntime reproduces the torch logits before it writes anything.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import convnext, densenet, efficientnet, mobilenetv3, resnet, vision_transformer

HERE = Path(__file__).resolve().parent
CLASSES = 10
SEED = 0


class SmallResNet(resnet.ResNet):
    """torchvision's ResNet with reduced widths: BasicBlock stages then Bottleneck stages, maxpool stem."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 24, 32), blocks: tuple[int, ...] = (2, 1, 1, 1),
                 bottleneck_from: int = 2, num_classes: int = CLASSES) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        for i, (width, count) in enumerate(zip(widths, blocks)):
            block = resnet.Bottleneck if i >= bottleneck_from else resnet.BasicBlock
            stages.append(self._make_layer(block, width, count, stride=1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)


class NHWCNet(nn.Module):
    """A small CNN taking NHWC images, shaped like a Keras model after tf2onnx: Transpose in, NCHW convolutions,
    Transpose back to NHWC, global mean over H and W, dense head."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 8, 16, 32]
        for cin, cout in zip(channels, channels[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(32, num_classes)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.permute(0, 3, 1, 2))

    def head(self, act: torch.Tensor) -> torch.Tensor:
        return self.fc(act.permute(0, 2, 3, 1).mean(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Arch:
    name: str
    build: Callable[[], nn.Module]
    body: Callable[[nn.Module, torch.Tensor], torch.Tensor]   # x -> the expected default layer (NCHW)
    head: Callable[[nn.Module, torch.Tensor], torch.Tensor]   # that layer -> logits
    input_shape: tuple[int, ...]                              # one image
    exports: tuple[tuple[int, bool, bool], ...]               # (opset, dynamo, dynamic batch)


def _features_head(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return m.classifier(torch.flatten(m.avgpool(a), 1))


def _resnet_body(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _vit_head(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]
    x = a.reshape(n, m.hidden_dim, -1).permute(0, 2, 1)
    x = torch.cat([m.class_token.expand(n, -1, -1), x], dim=1)
    return m.heads(m.encoder(x)[:, 0])


def _build_mobilenet() -> nn.Module:
    setting, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return mobilenetv3.MobileNetV3(setting, last_channel=64, num_classes=CLASSES)


def _build_efficientnet() -> nn.Module:
    setting, last = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.125, depth_mult=0.34)
    return efficientnet.EfficientNet(setting, dropout=0.2, num_classes=CLASSES, last_channel=last)


def _build_densenet() -> nn.Module:
    return densenet.DenseNet(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2,
                             num_classes=CLASSES)


def _build_convnext() -> nn.Module:
    cfg = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, 32, 2), convnext.CNBlockConfig(32, None, 1)]
    return convnext.ConvNeXt(cfg, stochastic_depth_prob=0.0, layer_scale=0.5, num_classes=CLASSES)


def _build_vit() -> nn.Module:
    return vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=CLASSES)


LEGACY_AND_DYNAMO = ((13, False, True), (18, True, True))
ARCHS = [
    Arch("resnet", SmallResNet, _resnet_body,
         lambda m, a: m.fc(torch.flatten(m.avgpool(a), 1)), (3, 64, 64), ((11, False, False),) + LEGACY_AND_DYNAMO),
    Arch("mobilenetv3", _build_mobilenet, lambda m, x: m.features(x), _features_head, (3, 64, 64), LEGACY_AND_DYNAMO),
    Arch("efficientnet", _build_efficientnet, lambda m, x: m.features(x), _features_head, (3, 64, 64),
         LEGACY_AND_DYNAMO),
    Arch("densenet", _build_densenet, lambda m, x: F.relu(m.features(x)),
         lambda m, a: m.classifier(torch.flatten(F.adaptive_avg_pool2d(a, (1, 1)), 1)), (3, 64, 64),
         LEGACY_AND_DYNAMO),
    Arch("convnext", _build_convnext, lambda m, x: m.features(x), lambda m, a: m.classifier(m.avgpool(a)),
         (3, 64, 64), LEGACY_AND_DYNAMO),
    # torch's legacy exporter writes scaled_dot_product_attention only from opset 14 on.
    Arch("vit", _build_vit, lambda m, x: m.conv_proj(x), _vit_head, (3, 32, 32), ((14, False, True), (18, True, True))),
    Arch("nhwc", NHWCNet, lambda m, x: m.body(x), lambda m, a: m.head(a), (64, 64, 3),
         ((11, False, False),) + LEGACY_AND_DYNAMO),
]


def randomise(model: nn.Module, input_shape: tuple[int, ...], gen: torch.Generator) -> None:
    """Weights of scale 1/sqrt(fan_in), random affine norms and layer scales, then BatchNorm statistics from random
    batches, randomly perturbed (by a fraction of their standard deviation, so activations stay O(1))."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                # torchvision starts some heads at zero or at std 0.02, which would leave tiny logits
                mod.weight.normal_(0, mod.weight[0].numel() ** -0.5, generator=gen)
            if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)) and mod.weight is not None:
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=gen))
            if isinstance(mod, convnext.CNBlock):
                mod.layer_scale.copy_(0.2 + 0.6 * torch.rand(mod.layer_scale.shape, generator=gen))
            if isinstance(mod, vision_transformer.VisionTransformer):
                mod.class_token.normal_(0, 0.5, generator=gen)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.1, generator=gen)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(4):
            model(torch.randn((8, *input_shape), generator=gen))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_var.mul_(0.7 + 0.6 * torch.rand(bn.running_var.shape, generator=gen))
            bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn(bn.running_mean.shape, generator=gen))
    model.eval()


def export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool, dynamic: bool) -> None:
    kwargs: dict = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    if dynamo:
        if dynamic:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
        program = torch.onnx.export(model, (x,), dynamo=True, external_data=False, optimize=True, **kwargs)
        proto = program.model_proto
    else:
        if dynamic:
            kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, do_constant_folding=True, **kwargs)
        proto = onnx.load(str(tmp))
        tmp.unlink()
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime 1.31 reads IR <= 10
    for node in proto.graph.node:  # the dynamo exporter's per-node stack traces would triple the file size
        del node.metadata_props[:]
        node.doc_string = ""
    proto.producer_name = f"torch {torch.__version__} ({'dynamo' if dynamo else 'torchscript'} exporter)"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def reference(model: nn.Module, arch: Arch, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    m64 = copy.deepcopy(model).double().eval()
    x64 = torch.from_numpy(x).double().requires_grad_(True)
    act = arch.body(m64, x64)
    logits = arch.head(m64, act)
    with torch.no_grad():
        direct = m64(x64)
    np.testing.assert_allclose(logits.detach().numpy(), direct.numpy(), rtol=1e-10, atol=1e-10)
    score = logits[torch.arange(len(target)), torch.from_numpy(target)].sum()
    grad_act, grad_x = torch.autograd.grad(score, [act, x64])
    out = {"x": x, "target": target, "logits": logits, "act": act, "grad_act": grad_act, "grad_x": grad_x}
    return {k: v if isinstance(v, np.ndarray) else v.detach().numpy().astype(np.float32) for k, v in out.items()}


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    chosen = [a for a in ARCHS if not names or a.name in names]
    for index, arch in enumerate(chosen):
        gen = torch.Generator().manual_seed(SEED + index)
        torch.manual_seed(SEED + index)
        model = arch.build()
        randomise(model, arch.input_shape, gen)
        rng = np.random.default_rng(SEED + index)
        x = rng.standard_normal((2, *arch.input_shape)).astype(np.float32)
        target = rng.choice(CLASSES, size=2, replace=False).astype(np.int64)
        ref = reference(model, arch, x, target)
        np.savez_compressed(HERE / f"{arch.name}.npz", **ref)
        for opset, dynamo, dynamic in arch.exports:
            stem = HERE / f"{arch.name}_op{opset}"
            export(model, torch.from_numpy(x), stem.with_suffix(".onnx"), opset, dynamo, dynamic)
            sess = ort.InferenceSession(str(stem.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(got, ref["logits"], rtol=1e-4, atol=1e-4 * np.abs(ref["logits"]).max())
            size = stem.with_suffix(".onnx").stat().st_size
            print(f"{stem.name}.onnx: {size / 1024:.0f} KiB, {'dynamo' if dynamo else 'torchscript'}, "
                  f"batch {'dynamic' if dynamic else 'static'}, act {tuple(ref['act'].shape)}, "
                  f"logits range {np.abs(ref['logits']).max():.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
