"""timm models of several families, built narrow with random weights (never pretrained), exported by PyTorch.

Dev-only (torch, timm, onnxscript); run from the repository root:

    pip install timm onnxscript
    python models/exporters/timm_models.py

Each family is built from timm's own classes with tiny widths and depths (the architecture's ops and module
names are timm's; only the sizes differ), exported by the dynamo exporter (opset 18, torch's default) and, for
two families, by the TorchScript exporter too. `preprocessing` in zoo.json is the pretrained_cfg of the named
timm model the tiny one stands for: timm resizes the short side to floor(size / crop_pct) with that
interpolation, centre-crops `size` and normalises with mean/std.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from common import HERE, check_and_save, match_tensors, random_images
from timm.models import convnext, deit, efficientnet, mobilenetv3, regnet, resnet, vision_transformer
from torch import nn
from torch_models import export, module_outputs, randomise

CLASSES = 10


@dataclass
class Family:
    name: str                        # file stem
    stands_for: str                  # the timm model whose conventions (pretrained_cfg) it has
    build: Callable[[], nn.Module]
    size: int                        # input height = width
    layer: str                       # the module a pytorch-grad-cam user targets for this family
    modules: tuple[str, ...]         # other modules whose tensors are recorded
    torchscript: bool = False        # also export with the TorchScript exporter (opset 17)


def _resnet() -> nn.Module:
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 2], channels=(8, 16, 24, 32), stem_width=8,
                         num_classes=CLASSES, zero_init_last=False)


def _efficientnet() -> nn.Module:
    return efficientnet._gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25,
                                          num_classes=CLASSES)


def _mobilenetv3() -> nn.Module:
    model = mobilenetv3._gen_mobilenet_v3("mobilenetv3_large_100", 0.25, depth_multiplier=0.5,
                                          num_classes=CLASSES)
    # timm keeps the head at 1280 features whatever the multiplier: 2 MB of weights; 64 keep its structure
    model.conv_head = nn.Conv2d(model.conv_head.in_channels, 64, 1)
    model.classifier = nn.Linear(64, CLASSES)
    return model


def _convnext() -> nn.Module:
    return convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=CLASSES, ls_init_value=0.5)


def _regnet() -> nn.Module:
    cfg = regnet.RegNetCfg(depth=6, w0=8, wa=8.0, wm=2.0, group_size=8, se_ratio=0.25, stem_width=8)
    return regnet.RegNet(cfg, num_classes=CLASSES, zero_init_last=False)


def _vit() -> nn.Module:
    return vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                                mlp_ratio=2.0, num_classes=CLASSES)


def _deit() -> nn.Module:
    return deit.VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                           mlp_ratio=2.0, num_classes=CLASSES)


FAMILIES = [
    Family("timm_resnet", "resnet18", _resnet, 64, "layer4", ("layer4.1", "layer3")),
    Family("timm_efficientnet", "efficientnet_b0", _efficientnet, 64, "bn2", ("blocks", "conv_head"), True),
    Family("timm_mobilenetv3", "mobilenetv3_large_100", _mobilenetv3, 64, "blocks", ("blocks.5", "conv_head")),
    Family("timm_convnext", "convnext_atto", _convnext, 64, "stages", ("stages.3", "stages.2")),
    Family("timm_regnety", "regnety_002", _regnet, 64, "s4", ("s3", "final_conv")),
    Family("timm_vit", "vit_tiny_patch16_224", _vit, 32, "blocks.1.norm1", ("blocks.1", "norm", "patch_embed"),
           True),
    Family("timm_deit_distilled", "deit_tiny_distilled_patch16_224", _deit, 32, "blocks.1.norm1",
           ("blocks.1", "norm")),
]


def randomise_tokens(model: nn.Module, seed: int) -> None:
    """timm starts class/position tokens and layer scales near zero; random O(1) values make them matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1] in ("cls_token", "dist_token", "pos_embed", "gamma"):
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))


def preprocessing(stands_for: str) -> dict:
    cfg = timm.get_pretrained_cfg(stands_for)
    size = cfg.input_size[-1]
    return {"source": f"timm.get_pretrained_cfg('{stands_for}')", "colour": "RGB",
            "resize_short": math.floor(size / cfg.crop_pct), "crop": size, "interpolation": cfg.interpolation,
            "scale": 1 / 255, "mean": list(cfg.mean), "std": list(cfg.std), "layout": "NCHW"}


def main(folder: Path = HERE, only: tuple[str, ...] = ()) -> None:
    """Export every model (or those whose file stem starts with one of `only`) into `folder`."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    for index, family in enumerate(FAMILIES):
        if only and not family.name.startswith(only):
            continue
        torch.manual_seed(index)
        model = family.build()
        shape = (3, family.size, family.size)
        randomise(model, shape, seed=index)
        randomise_tokens(model, seed=index)
        x = random_images(shape, seed=index, low=-2.0, high=2.0)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
        activations = module_outputs(model, torch.from_numpy(x), (family.layer, *family.modules))
        exports = [("dynamo", 18)] + ([("torchscript", 17)] if family.torchscript else [])
        for exporter, opset in exports:
            proto = export(model, torch.from_numpy(x), exporter, opset, dynamic=True)
            found = match_tensors(proto, x, activations)
            entry = {
                "framework": f"torch {torch.__version__}, timm {timm.__version__}",
                "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'}), opset {opset}",
                "family": f"timm {family.stands_for} (narrow)", "layout": "NCHW", "input_shape": list(shape),
                "batch": "dynamic", "input_range": [-2.0, 2.0],
                "expected_layer": {"framework_name": family.layer, "tensor": found[family.layer]},
                "modules": found, "preprocessing": preprocessing(family.stands_for),
            }
            check_and_save(proto, f"{family.name}_{exporter}_op{opset}.onnx", x, logits, entry, folder=folder)


if __name__ == "__main__":
    main(only=tuple(sys.argv[1:]))
