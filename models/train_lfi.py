"""Train models/shapes_lfi.onnx, a small LFI-CAM-style classifier on the synthetic shapes data (dev-only; torch).

LFI-CAM (Lee et al., arXiv 2105.00937) learns its attention map during training instead of computing it post hoc:

- a backbone gives the features A (K x h x w);
- a Feature Importance Network (FIN), shared over channels, sees each channel min-max normalised and multiplied by
  a grey copy of the input resized to h x w, and gives one score per channel; a softmax over the K scores gives
  the channel importance w;
- the attention is att = minmax(relu(sum_k w_k A_k)) (one class-agnostic map per image);
- the classifier (global average pool + linear) sees att * A + A.

To train in a few CPU minutes on a shared machine, the backbone is models/shapes_resnet.onnx's (its convolutions,
BatchNorm already folded, copied by node name) and stays frozen; its features are computed once, and only the FIN
and the classifier (initialised from shapes_resnet's linear head) are trained. The paper trains end to end.

The export has two outputs, `logits` and `attention` (N, 1, h, w), and renames two internal tensors so that the
`attention` method can also recompute the map from them: `features` (A) and `importance` (w, N x K).
Data, preprocessing, seeds and metadata follow models/train_shapes.py, whose helpers this script reuses.

    python models/train_lfi.py            # writes models/shapes_lfi.onnx and models/shapes_lfi.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_shapes import PREPROCESSING, SIZE, TEST_SEED, TORCH_SEED, TRAIN_SEED, preprocess  # noqa: E402

from onnxcam.datasets.shapes import CLASSES, generate  # noqa: E402

HERE = Path(__file__).resolve().parent
EPS = 1e-6


def minmax(t: torch.Tensor) -> torch.Tensor:
    """Per image and channel min-max over the spatial positions of (N, C, h, w)."""
    low = t.amin(dim=(2, 3), keepdim=True)
    high = t.amax(dim=(2, 3), keepdim=True)
    return (t - low) / (high - low + EPS)


class FoldedBlock(nn.Module):
    """train_shapes.BasicBlock as exported: BatchNorm folded into the convolutions (which therefore have biases)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ShapesLFI(nn.Module):
    def __init__(self, classes: int, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 2,
                 fin_width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1), nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(*[FoldedBlock(cin if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1)
                                          for b in range(blocks)]))
            cin = width
        self.stage1, self.stage2, self.stage3 = stages
        # The FIN scores one masked grey image per channel; shared weights, so its cost grows with K but not its size.
        self.fin = nn.Sequential(nn.Conv2d(1, fin_width, 3, 2, 1), nn.ReLU(), nn.Conv2d(fin_width, fin_width, 3, 1, 1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(fin_width, 1))
        self.fc = nn.Linear(widths[-1], classes)
        self.channels, self.stride = widths[-1], 8  # python ints: the export needs static shapes

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(x))))

    def grey(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.mean(dim=1, keepdim=True), self.stride)

    def head(self, features: torch.Tensor, grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = SIZE // self.stride
        masked = (minmax(features) * grey).reshape(-1, 1, size, size)
        importance = torch.softmax(self.fin(masked).reshape(-1, self.channels), dim=1)
        weighted = (importance[:, :, None, None] * features).sum(dim=1, keepdim=True)
        attention = minmax(F.relu(weighted))
        pooled = F.adaptive_avg_pool2d(attention * features + features, 1).flatten(1)
        return self.fc(pooled), attention

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x), self.grey(x))


def load_backbone(model: ShapesLFI, path: Path) -> None:
    """Copy the convolutions and the linear head of models/shapes_resnet.onnx, found by their node names
    (/stage2/stage2.0/shortcut/shortcut.0/Conv -> stage2.0.shortcut.0)."""
    proto = onnx.load(str(path))
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        module = model.get_submodule(".".join(part.split(".")[-1] for part in node.name.split("/")[1:-1]))
        with torch.no_grad():
            module.weight.copy_(weights[node.input[1]])
            module.bias.copy_(weights[node.input[2]])


def cached(model: ShapesLFI, images: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's features and the grey input, computed once."""
    features, greys = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = preprocess(images[i:i + batch])
            features.append(model.backbone(x))
            greys.append(model.grey(x))
    return torch.cat(features), torch.cat(greys)


def accuracy_of(model: ShapesLFI, features: torch.Tensor, greys: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model.head(features[i:i + 250], greys[i:i + 250])[0].argmax(1) == labels[i:i + 250]).sum())
                      for i in range(0, len(labels), 250))
    return correct / len(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=3000, help="training images")
    parser.add_argument("--test", type=int, default=1000, help="held-out test images")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", type=Path, default=HERE / "shapes_resnet.onnx")
    parser.add_argument("--out", type=Path, default=HERE / "shapes_lfi.onnx")
    args = parser.parse_args(argv)

    torch.manual_seed(TORCH_SEED)
    np.random.seed(TORCH_SEED)
    torch.set_num_threads(args.threads)
    start = time.time()
    model = ShapesLFI(len(CLASSES))
    load_backbone(model, args.backbone)
    train_x, train_y = (torch.from_numpy(a) for a in generate(args.train, TRAIN_SEED, SIZE))
    test_x, test_y = (torch.from_numpy(a) for a in generate(args.test, TEST_SEED, SIZE))
    train_a, train_g = cached(model, train_x)
    test_a, test_g = cached(model, test_x)
    print(f"data and backbone features in {time.time() - start:.0f}s; start accuracy "
          f"{accuracy_of(model, test_a, test_g, test_y):.4f}", flush=True)

    trained = [*model.fin.parameters(), *model.fc.parameters()]
    steps = args.epochs * ((args.train + args.batch_size - 1) // args.batch_size)
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    shuffle = torch.Generator().manual_seed(TORCH_SEED)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train, generator=shuffle)
        total = 0.0
        for i in range(0, args.train, args.batch_size):
            idx = order[i:i + args.batch_size]
            loss = F.cross_entropy(model.head(train_a[idx], train_g[idx])[0], train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / args.train:.4f}, "
              f"test accuracy {accuracy_of(model, test_a, test_g, test_y):.4f} ({time.time() - start:.0f}s)",
              flush=True)
    seconds = time.time() - start
    accuracy = accuracy_of(model, test_a, test_g, test_y)
    per_class = {c: accuracy_of(model, test_a[test_y == i], test_g[test_y == i], test_y[test_y == i])
                 for i, c in enumerate(CLASSES)}
    print(f"training took {seconds:.0f}s; test accuracy {accuracy:.4f}")
    export(model, args.out)
    write_card(args, model, accuracy, per_class, seconds)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


def export(model: nn.Module, path: Path) -> None:
    model = model.eval()
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits", "attention"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "attention": {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    nodes = list(proto.graph.node)
    softmax = next(n for n in nodes if n.op_type == "Softmax")
    # A = the last backbone ReLU before the FIN: the output of stage3
    features = [n for n in nodes if n.op_type == "Relu" and n.name.startswith("/stage3/")][-1]
    assert features.output[0] == "/stage3/stage3.1/Relu_1_output_0", features.output[0]
    _rename(proto, features.output[0], "features")
    _rename(proto, softmax.output[0], "importance")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"labels": json.dumps(list(CLASSES)),
                                        "preprocessing": json.dumps(PREPROCESSING)})
    proto.doc_string = "LFI-CAM-style classifier for onnxcam's shapes benchmark; see models/shapes_lfi.md."
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def _rename(proto: onnx.ModelProto, old: str, new: str) -> None:
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in list(proto.graph.value_info) + list(proto.graph.output):
        if value.name == old:
            value.name = new


def write_card(args: argparse.Namespace, model: nn.Module, accuracy: float, per_class: dict[str, float],
               seconds: float) -> None:
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in [*model.fin.parameters(), *model.fc.parameters()])
    rows = "\n".join(f"| {i} | {c} | {per_class[c]:.3f} |" for i, c in enumerate(CLASSES))
    card = f"""# shapes_lfi.onnx

An LFI-CAM-style classifier (Lee et al., "LFI-CAM: Learning Feature Importance for Better Visual Explanation",
ICCV 2021, arXiv 2105.00937) for the synthetic shapes benchmark (`onnxcam.datasets.shapes`). It computes its own
class-agnostic attention map in the forward pass and returns it as a second output, which the `attention` method
reads. Made by `models/train_lfi.py`; rerunning it reproduces the data and, on the same torch build, the weights.

## Architecture

{params:,} parameters ({trained:,} trained here):

- backbone: models/shapes_resnet.onnx up to stage3 (stem, three stages of two BasicBlocks, BatchNorm folded),
  copied and frozen -> features A, 64 x 12 x 12, tensor `features`
- Feature Importance Network (shared over channels): each channel of A, min-max normalised per image, times the
  channel mean of the input average-pooled to 12 x 12 -> Conv 3x3 stride 2 (1 -> 8), ReLU, Conv 3x3 (8 -> 8),
  ReLU, global average pool, Linear (8 -> 1): one score per channel; softmax over the 64 channels -> importance w,
  tensor `importance` (N x 64)
- attention: att = minmax(relu(sum_k w_k A_k)), output `attention` (N x 1 x 12 x 12), in [0, 1]
- classifier: global average pool of att * A + A, Linear (64 -> 8) -> output `logits`

Simplifications against the paper: a small pretrained backbone kept frozen (the paper trains ResNets end to end,
so its backbone also learns to suit the attention), the grey input resized to the feature size (not the features
to the input size), and a two-convolution FIN. Exported with the legacy exporter (`dynamo=False`, opset 17).

## Input and output

- input `input`: float32 `[batch, 3, 96, 96]` (NCHW, batch dynamic), RGB
- preprocessing: `x = (pixel / 255 - mean) / std` with ImageNet mean and std, as models/shapes_resnet.onnx
- outputs: `logits` float32 `[batch, 8]` (pre-softmax scores), `attention` float32 `[batch, 1, 12, 12]`
- metadata_props: `labels` (JSON list of class names in output order), `preprocessing` (JSON, as shapes_resnet)

## Use

    onnxcam explain models/shapes_lfi.onnx examples/images --method attention
    # Python: Explainer("models/shapes_lfi.onnx").explain(x, "attention")                      (reads `attention`)
    #         .explain(x, "attention", weights="importance", layer="features")                (recomputes it)

## Data and training

- data: `onnxcam.datasets.shapes.generate(count, seed, size=96)`, single-object images; training set:
  {args.train} images from seed {TRAIN_SEED}; test set: {args.test} held-out images from seed {TEST_SEED}; torch
  seed {TORCH_SEED}
- backbone features computed once; {args.epochs} epochs over them, batch {args.batch_size}, AdamW (weight decay
  5e-4) on the FIN and the classifier, one-cycle learning rate up to {args.lr}, no augmentation, torch
  {torch.__version__} on the CPU with {args.threads} threads: {seconds / 60:.1f} minutes wall clock in all (on a
  2-core machine shared with other jobs)

## Accuracy

Test accuracy on the {args.test} held-out images: **{accuracy:.3f}**.

| index | label | test accuracy |
|---|---|---|
{rows}
"""
    (args.out.parent / "shapes_lfi.md").write_text(card)


if __name__ == "__main__":
    main()
