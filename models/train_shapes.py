"""Train the bundled demo model, models/shapes_resnet.onnx, on the synthetic shapes data (dev-only; needs torch).

A small ResNet (stem conv, three residual stages of BasicBlocks, widths 16-32-64, BatchNorm, global average
pool, linear head) learns the eight classes of `onnxcam.datasets.shapes` from generated 96x96 single-object
images, on the CPU in a few minutes. The script fixes every seed, so a rerun reproduces the data and (on the same
machine and torch build) the weights. It exports with the legacy TorchScript exporter (BatchNorm folded into the
convolutions), opset 17, and stores the labels and the preprocessing in the model's metadata_props.

    pip install torch   # CPU build is enough
    python models/train_shapes.py            # writes models/shapes_resnet.onnx, .md card and shapes_labels.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from onnxcam.datasets.shapes import CLASSES, generate, make_sample  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZE = 96
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TRAIN_SEED, TEST_SEED, TORCH_SEED = 1, 2, 0
EXAMPLE_SEED, EXAMPLE_MULTI_SEED = 3, 4  # held out: neither trained nor tested on
PREPROCESSING = {"size": [SIZE, SIZE], "layout": "NCHW", "channel_order": "RGB", "scale": 1 / 255,
                 "mean": list(MEAN), "std": list(STD), "resize": "none (images are generated at 96x96)",
                 "formula": "x = (pixel * scale - mean) / std"}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ShapesResNet(nn.Module):
    def __init__(self, classes: int, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            layers = [BasicBlock(cin if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1)
                      for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), /255 and ImageNet mean/std."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += int((model(preprocess(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--test", type=int, default=1000, help="held-out test images")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--blocks", type=int, default=2, help="BasicBlocks per stage")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "shapes_resnet.onnx")
    parser.add_argument("--examples", type=Path, default=HERE.parent / "examples" / "images",
                        help="folder for the sample images")
    parser.add_argument("--examples-only", action="store_true", help="only write the sample images")
    args = parser.parse_args(argv)
    write_examples(args.examples)
    if args.examples_only:
        return

    torch.manual_seed(TORCH_SEED)
    np.random.seed(TORCH_SEED)
    torch.set_num_threads(args.threads)
    start = time.time()
    train_x, train_y = (torch.from_numpy(a) for a in generate(args.train, TRAIN_SEED, SIZE))
    test_x, test_y = (torch.from_numpy(a) for a in generate(args.test, TEST_SEED, SIZE))
    print(f"generated {args.train} + {args.test} images in {time.time() - start:.1f}s")

    # channels_last: oneDNN's convolutions run about 1.5x faster on the CPU in that layout.
    model = ShapesResNet(len(CLASSES), blocks=args.blocks).to(memory_format=torch.channels_last)
    steps = args.epochs * ((args.train + args.batch_size - 1) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    shuffle = torch.Generator().manual_seed(TORCH_SEED)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train, generator=shuffle)
        total = 0.0
        for i in range(0, args.train, args.batch_size):
            idx = order[i:i + args.batch_size]
            x = preprocess(train_x[idx]).contiguous(memory_format=torch.channels_last)
            # Every class is symmetric under flips, so random flips are free extra data.
            flip = torch.rand(2, generator=shuffle)
            x = x.flip(3) if flip[0] < 0.5 else x
            x = x.flip(2) if flip[1] < 0.5 else x
            loss = F.cross_entropy(model(x), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / args.train:.4f}, "
              f"test accuracy {evaluate(model, test_x, test_y):.4f} ({time.time() - start:.0f}s)", flush=True)
    train_seconds = time.time() - start
    accuracy = evaluate(model, test_x, test_y)
    per_class = {c: evaluate(model, test_x[test_y == i], test_y[test_y == i]) for i, c in enumerate(CLASSES)}
    print(f"training took {train_seconds:.0f}s; test accuracy {accuracy:.4f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    export(model, args.out)
    (args.out.parent / "shapes_labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    write_card(args, model, accuracy, per_class, train_seconds)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


def write_examples(folder: Path, singles: int = 6, multis: int = 2) -> None:
    """Sample images from held-out seeds: `singles` one-object images of different classes, `multis` two-object
    ones, named after their classes, plus boxes.json in the data set's format (boxes of the visible masks)."""
    folder.mkdir(parents=True, exist_ok=True)
    boxes: dict[str, list[dict[str, object]]] = {}
    rng, seen = np.random.default_rng(EXAMPLE_SEED), set()
    multi_rng = np.random.default_rng(EXAMPLE_MULTI_SEED)
    while len(boxes) < singles + multis:
        multi = len(boxes) >= singles
        image, labels, _, sample_boxes = make_sample(multi_rng if multi else rng, SIZE, multi=multi)
        if not multi and labels[0] in seen:
            continue
        seen.add(labels[0])
        name = f"{len(boxes) + 1:02d}_{'_'.join(CLASSES[i] for i in labels)}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        boxes[name] = [{"class": CLASSES[i], "index": i, "box": [int(v) for v in box]}
                       for i, box in zip(labels, sample_boxes)]
    (folder / "boxes.json").write_text(json.dumps(boxes, indent=1) + "\n")


def export(model: nn.Module, path: Path) -> None:
    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"labels": json.dumps(list(CLASSES)),
                                        "preprocessing": json.dumps(PREPROCESSING)})
    proto.doc_string = "Small ResNet for onnxcam's synthetic shapes benchmark; see models/shapes_resnet.md."
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def write_card(args: argparse.Namespace, model: nn.Module, accuracy: float, per_class: dict[str, float],
               seconds: float) -> None:
    params = sum(p.numel() for p in model.parameters())
    rows = "\n".join(f"| {i} | {c} | {per_class[c]:.3f} |" for i, c in enumerate(CLASSES))
    card = f"""# shapes_resnet.onnx

Demo classifier shipped with onnxcam: it recognises the eight classes of the synthetic shapes benchmark
(`onnxcam.datasets.shapes`), whose images come with exact masks and boxes, so explanation maps can be scored
against ground truth (pointing game, energy inside the mask). Made by `models/train_shapes.py`; rerunning it
reproduces the data and, on the same torch build, the weights.

## Architecture

ResNet-style CNN, {params:,} parameters:

- stem: Conv 3x3 stride 2 (3 -> 16), BatchNorm, ReLU -> 16 x 48 x 48
- stage1: {_blocks(args.blocks)} (16) -> 16 x 48 x 48
- stage2: {_blocks(args.blocks)} (32), the first with stride 2 and a 1x1 projection shortcut -> 32 x 24 x 24
- stage3: {_blocks(args.blocks)} (64), the first with stride 2 and a 1x1 projection shortcut -> 64 x 12 x 12
- global average pool, linear head (64 -> 8) -> logits

A BasicBlock is Conv 3x3, BatchNorm, ReLU, Conv 3x3, BatchNorm, add the shortcut, ReLU. The ONNX file comes
from the legacy exporter (`dynamo=False`, opset 17, ir_version {onnx.load(str(args.out)).ir_version}), which folds
each BatchNorm into its convolution: the graph holds only Conv, Relu, Add, GlobalAveragePool, Flatten and Gemm.
The last feature map, stage3's output `/stage3/stage3.{args.blocks - 1}/Relu_1_output_0` (64 x 12 x 12), is the
natural Grad-CAM layer.

## Input and output

- input `input`: float32 `[batch, 3, 96, 96]` (NCHW, batch dynamic), RGB
- preprocessing: `x = (pixel / 255 - mean) / std` with ImageNet mean {list(MEAN)} and
  std {list(STD)}; images are generated at 96 x 96, so no resize
- output `logits`: float32 `[batch, 8]`, pre-softmax scores
- metadata_props: `labels` (JSON list of the class names in output order) and `preprocessing`
  (JSON: {json.dumps(PREPROCESSING)})

## Data and training

- data: `onnxcam.datasets.shapes.generate(count, seed, size=96)`, single-object images: one object per image on
  a cluttered background (colour gradient, thin lines, small blobs, Gaussian noise), random position, scale
  (radius 16-32% of the image), rotation and colour, half of the objects partly hidden by a bar
- training set: {args.train} images from seed {TRAIN_SEED}; test set: {args.test} held-out images from
  seed {TEST_SEED}; torch seed {TORCH_SEED}; sample images in examples/images from seeds {EXAMPLE_SEED} and
  {EXAMPLE_MULTI_SEED}
- {args.epochs} epochs, batch {args.batch_size}, AdamW (weight decay 5e-4), one-cycle learning rate up
  to {args.lr}, random horizontal and vertical flips, torch {torch.__version__} on the CPU with {args.threads} threads:
  {seconds / 60:.1f} minutes wall clock

## Accuracy

Test accuracy on the {args.test} held-out images: **{accuracy:.3f}**.

| index | label | test accuracy |
|---|---|---|
{rows}

Labels, one per line in output order, are also in `models/shapes_labels.txt`.
"""
    (args.out.parent / "shapes_resnet.md").write_text(card)


def _blocks(n: int) -> str:
    return f"{n} BasicBlock{'s' if n > 1 else ''}"


if __name__ == "__main__":
    main()
