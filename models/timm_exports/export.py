"""Small vision transformers from timm (random weights, pretrained=False) exported to ONNX: LeViT, Swin, DeiT
(distilled: class and distillation tokens), MaxViT, MobileViT and EfficientViT, each shrunk (widths, depths, a
64 or 128 pixel input, 8 classes) so the files stay small; the architecture of each block is timm's own.

    python models/timm_exports/export.py [--out DIR] [NAME ...]     # needs torch and timm

tests/test_token_defaults.py reads the committed files (those under 2 MB) and, with torch and timm installed,
exports every model afresh. The torchscript exporter (dynamo=False, opset 17) keeps module paths in node names
(/blocks/blocks.1/Add_1), which the tests use to check which module's output the default layer is.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
CLASSES = 8


def levit() -> tuple[nn.Module, int]:
    from timm.models.levit import Levit
    return Levit(img_size=128, num_classes=CLASSES, embed_dim=(32, 48, 64), key_dim=8, depth=(1, 1, 1),
                 num_heads=(2, 2, 2)), 128


def swin() -> tuple[nn.Module, int]:
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 1),
                           num_heads=(1, 2, 4), num_classes=CLASSES, drop_path_rate=0.0), 64


def deit() -> tuple[nn.Module, int]:
    import timm
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, embed_dim=32,
                             depth=2, num_heads=2, num_classes=CLASSES), 64


def maxvit() -> tuple[nn.Module, int]:
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg, MaxxVitTransformerCfg
    cfg = MaxxVitCfg(embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"), stem_width=16,
                     conv_cfg=MaxxVitConvCfg(expand_ratio=2.0),
                     transformer_cfg=MaxxVitTransformerCfg(dim_head=8))
    return MaxxVit(cfg, img_size=64, num_classes=CLASSES), 64


def mobilevit() -> tuple[nn.Module, int]:
    """mobilevit_xxs's layout (inverted residuals, then MobileViT blocks: conv, unfold into 2 x 2 patches,
    transformer, fold back, fuse with a conv) with fewer and narrower blocks."""
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block
    cfg = ByoModelCfg(
        blocks=(_inverted_residual_block(d=1, c=16, s=1, br=2.0),
                _inverted_residual_block(d=1, c=24, s=2, br=2.0),
                _mobilevit_block(d=1, c=32, s=2, transformer_dim=32, transformer_depth=1, patch_size=2, br=2.0),
                _mobilevit_block(d=1, c=48, s=2, transformer_dim=48, transformer_depth=2, patch_size=2, br=2.0)),
        stem_chs=16, stem_type="3x3", stem_pool="", downsample="", act_layer="silu", num_features=96)
    return ByobNet(cfg, num_classes=CLASSES), 64


def efficientvit() -> tuple[nn.Module, int]:
    from timm.models.efficientvit_mit import EfficientVit
    return EfficientVit(widths=(8, 16, 24, 32, 48), depths=(1, 1, 1, 1, 1), head_dim=16, head_widths=(64, 80),
                        num_classes=CLASSES), 64


MODELS: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "levit": levit, "swin": swin, "deit": deit, "maxvit": maxvit, "mobilevit": mobilevit,
    "efficientvit": efficientvit}


def vary_norms(model: nn.Module, seed: int) -> None:
    """Random statistics and affine parameters for every BatchNorm: timm initialises some of them to zero scale
    (LeViT's residual projections), which makes an untrained network an identity whose tokens all look alike."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                count = module.num_features
                module.weight.copy_(0.5 + torch.rand(count, generator=generator))
                module.bias.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))


def export(name: str, folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model, size = MODELS[name]()
    vary_norms(model, seed)
    model.eval()
    x = torch.randn(1, 3, size, size)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = f"torch {torch.__version__} (torchscript exporter), timm"
    path = folder / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    for name in args.names:
        path = export(name, args.out)
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
