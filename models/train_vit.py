"""Train models/shapes_vit.onnx, a small Vision Transformer, on the synthetic shapes data (dev-only; needs torch).

ViT after Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), scaled down: 12x12 patches of the
96x96 image (an 8 x 8 token grid), a learned CLS token and position embeddings, pre-norm transformer blocks,
and a linear head on the final CLS token. The patches are embedded by a small convolutional stem (three 3x3
convs of strides 2, 2, 3, then a 1x1 projection) instead of one 12x12 linear patchify: Xiao et al., "Early
Convolutions Help Transformers See Better" (NeurIPS 2021). With the plain patchify, this budget got the
ViT to only 30% test accuracy after 6 of 16 epochs. Attention is written out (MatMul, Softmax) rather than through
torch's fused kernel, so the ONNX graph is plain and every token tensor has a name onnxcam can pick.
ViTs learn slowly from little data, so training uses more images than the CNNs and also shuffles colour
channels. Same seeds, preprocessing and export as shapes_resnet.onnx (helpers in models/shapes_training.py).

    python models/train_vit.py     # writes models/shapes_vit.onnx and models/shapes_vit.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import shapes_training as st
import torch
from torch import nn

from onnxcam.datasets.shapes import CLASSES


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def conv_stem(dim: int) -> nn.Sequential:
    """96 x 96 -> an 8 x 8 grid of dim-wide patch embeddings: each token sees its 12 x 12 patch (and a margin)."""
    layers: list[nn.Module] = []
    for cin, cout, stride, pad in ((3, 16, 2, 1), (16, 32, 2, 1), (32, 64, 3, 0)):
        layers += [nn.Conv2d(cin, cout, 3, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(64, dim, 1))


class ShapesViT(nn.Module):
    def __init__(self, classes: int, patch: int = 12, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp: int = 128, size: int = st.SIZE, stem: bool = True) -> None:
        super().__init__()
        self.patch_embed = conv_stem(dim) if stem else nn.Conv2d(3, dim, patch, patch)
        tokens = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=20000, help="training images")
    parser.add_argument("--test", type=int, default=1000, help="held-out test images")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--depth", type=int, default=4, help="transformer blocks")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=st.HERE / "shapes_vit.onnx")
    args = parser.parse_args(argv)

    st.setup(args.threads)
    train_x, train_y = st.single_label_data(args.train, st.TRAIN_SEED)
    test_x, test_y = st.single_label_data(args.test, st.TEST_SEED)
    model = ShapesViT(len(CLASSES), dim=args.dim, depth=args.depth, mlp=2 * args.dim)
    report = lambda: f"test accuracy {st.accuracy(st.predict(model, test_x), test_y.numpy()):.4f}"  # noqa: E731
    seconds = st.fit(model, train_x, train_y, st.cross_entropy, args.epochs, args.batch_size, args.lr, 0.05,
                     report, colours=True, channels_last=False)
    logits = st.predict(model, test_x)
    accuracy = st.accuracy(logits, test_y.numpy())
    print(f"training took {seconds:.0f}s; test accuracy {accuracy:.4f}")
    st.export(model, args.out, "Small Vision Transformer for onnxcam's synthetic shapes benchmark; "
                               "see models/shapes_vit.md.")
    st.write_labels(args.out.parent)
    write_card(args, model, accuracy, st.per_class_accuracy(logits, test_y.numpy()), seconds)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


def token_tensors(proto: onnx.ModelProto) -> tuple[str, str]:
    """(tokens entering the first block, the last block's first LayerNorm output). The Add of the position
    embedding is the first Add; each block has two LayerNorms and the final norm comes last."""
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    norms = [n for n in proto.graph.node if n.op_type == "LayerNormalization"]
    return adds[0].output[0], norms[-3].output[0]


def write_card(args: argparse.Namespace, model: nn.Module, accuracy: float, per_class: dict[str, float],
               seconds: float) -> None:
    params = sum(p.numel() for p in model.parameters())
    proto = onnx.load(str(args.out))
    ops = sorted({n.op_type for n in proto.graph.node})
    first, last = token_tensors(proto)
    rows = "\n".join(f"| {i} | {c} | {per_class[c]:.3f} |" for i, c in enumerate(CLASSES))
    verdict = ("meets the 90% aim" if accuracy >= 0.9 else
               "below the 90% aim: ViTs learn slowly from little data, and the CPU budget of minutes on a small, "
               "shared machine allowed no longer training")
    card = f"""# shapes_vit.onnx

Small Vision Transformer demo classifier for the eight classes of onnxcam's synthetic shapes benchmark
(`onnxcam.datasets.shapes`, images with exact masks and boxes). Made by `models/train_vit.py` (shared helpers
in `models/shapes_training.py`); rerunning it reproduces the data and, on the same torch build, the weights.
Architecture after Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale" (ICLR 2021), scaled down, with the convolutional patch stem of Xiao et al., "Early Convolutions Help
Transformers See Better" (NeurIPS 2021).

## Architecture

{params:,} parameters:

- patch embedding, a convolutional stem: Conv 3x3 stride 2 (3 -> 16), BatchNorm, ReLU -> 48 x 48; Conv 3x3
  stride 2 (16 -> 32), BatchNorm, ReLU -> 24 x 24; Conv 3x3 stride 3 (32 -> 64), BatchNorm, ReLU -> 8 x 8;
  Conv 1x1 (64 -> {args.dim}) -> an 8 x 8 grid of 64 patch tokens, one per 12 x 12 patch
- a learned CLS token prepended (65 tokens) and learned position embeddings added
- {args.depth} pre-norm transformer blocks, width {args.dim}: LayerNorm, multi-head self-attention (4 heads,
  written out as MatMul and Softmax), residual add; LayerNorm, MLP {args.dim} -> {2 * args.dim} -> {args.dim}
  with GELU, residual add
- final LayerNorm, linear head on the CLS token ({args.dim} -> 8) -> logits

The ONNX file comes from the legacy exporter (`dynamo=False`, opset 17, ir_version {proto.ir_version});
operators: {', '.join(ops)}. Token tensors are `[batch, 65, {args.dim}]`, CLS first, then the 64 patch tokens in
row-major order of the 8 x 8 grid: e.g. `{first}` (tokens entering the first block) and `{last}` (the
last block's first LayerNorm output, the usual layer for token CAMs, as in pytorch-grad-cam's ViT example: drop
the CLS token, reshape to 8 x 8). The last block's own output is a poor CAM layer: the score reads only the CLS
token from it (LayerNorm works per token), so its gradient is zero on every patch token.

{st.input_section("output `logits`: float32 `[batch, 8]`, pre-softmax scores")}
## Data and training

- data: `onnxcam.datasets.shapes.generate(count, seed, size=96)`, single-object images (one object on a
  cluttered background, random position, scale, rotation and colour, half partly occluded)
- training set: {args.train} images from seed {st.TRAIN_SEED}; test set: {args.test} held-out images from
  seed {st.TEST_SEED} (the same test set as shapes_resnet.onnx); torch seed {st.TORCH_SEED}
- {args.epochs} epochs, batch {args.batch_size}, AdamW (weight decay 0.05 on weight matrices), one-cycle learning
  rate up to {args.lr}, cross-entropy with label smoothing 0.05, random horizontal and vertical flips, quarter
  turns and RGB channel shuffles, torch {torch.__version__} on the CPU with {args.threads} threads:
  {seconds / 60:.1f} minutes wall clock (on a 2-core machine shared with other jobs)

## Accuracy

Test accuracy on the {args.test} held-out images: **{accuracy:.3f}** ({verdict}).

| index | label | test accuracy |
|---|---|---|
{rows}
"""
    (args.out.parent / "shapes_vit.md").write_text(card)


if __name__ == "__main__":
    main()
