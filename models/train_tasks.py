"""Train the small segmentation and detection models for onnxcam's target tests (dev-only; needs torch).

    python models/train_tasks.py segment   # models/shapes_segmenter.onnx: logits (N, 9, 96, 96)
    python models/train_tasks.py detect    # models/shapes_detector.onnx: raw YOLO-style (N, 13, 144)

Each writes the model and <name>.metrics.json (the numbers in the model cards, <name>.md).

Both learn the synthetic shapes benchmark (`onnxcam.datasets.shapes.make_sample`), half single-object and half
two-object images, on the CPU with 2 threads in a few minutes. Seeds are fixed (train data seed 1, test seed 2,
torch seed 0). Exported with the legacy TorchScript exporter, opset 17; labels, preprocessing and the task (with
the detector's output layout) are stored in metadata_props, where onnxcam's targets read them.
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
from onnxcam.datasets.shapes import CLASSES, make_sample  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZE, STRIDE = 96, 8
GRID = SIZE // STRIDE
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TRAIN_SEED, TEST_SEED, TORCH_SEED = 1, 2, 0
PREPROCESSING = {"size": [SIZE, SIZE], "layout": "NCHW", "channel_order": "RGB", "scale": 1 / 255,
                 "mean": list(MEAN), "std": list(STD), "resize": "none (images are generated at 96x96)",
                 "formula": "x = (pixel * scale - mean) / std"}
SEGMENT_WEIGHTS = torch.tensor([0.25] + [1.0] * len(CLASSES))
DETECTION_LAYOUT = {"layout": "attributes_first", "box": "cxcywh", "objectness": True,
                    "attributes": "cx, cy, w, h (input pixels), objectness, 8 class scores (sigmoids)"}


def data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, list[int]]]]]:
    """Images (N, 3, 96, 96) preprocessed, label maps (N, 96, 96) (0 background, class + 1), objects per image."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    maps = np.zeros((count, SIZE, SIZE), np.int64)
    objects = []
    for i in range(count):
        images[i], labels, masks, boxes = make_sample(rng, SIZE, multi=i % 2 == 1)
        for label, mask in zip(labels, masks):
            maps[i][mask] = label + 1
        objects.append([(label, [int(v) for v in box]) for label, box in zip(labels, boxes)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.from_numpy(maps), objects


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Segmenter(nn.Module):
    """A small U-Net: a stride-2 stem, two more stride-2 stages down to 12x12, bilinear upsampling with skip
    connections back to 48x48, 1x1 class head, and a final bilinear x2 to the input's 96x96."""

    def __init__(self, classes: int = len(CLASSES) + 1) -> None:
        super().__init__()
        self.d1 = nn.Sequential(conv(3, 16, 2), conv(16, 16))         # 48
        self.d2 = nn.Sequential(conv(16, 32, 2), conv(32, 32))        # 24
        self.d3 = nn.Sequential(conv(32, 64, 2), conv(64, 64))        # 12
        self.u2 = conv(64 + 32, 32)
        self.u1 = conv(32 + 16, 16)
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        b = self.d2(a)
        c = self.d3(b)
        up = self.u2(torch.cat([F.interpolate(c, scale_factor=2.0, mode="bilinear"), b], 1))
        up = self.u1(torch.cat([F.interpolate(up, scale_factor=2.0, mode="bilinear"), a], 1))
        return F.interpolate(self.head(up), scale_factor=2.0, mode="bilinear")


class Detector(nn.Module):
    """Single-scale YOLO-style detector: one prediction per cell of a 12x12 grid (stride 8).

    Output (N, 4 + 1 + 8, 144): cx, cy, w, h in input pixels, objectness and class sigmoids; cell = row * 12 + col.
    """

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(3, 16, 2), conv(16, 16), conv(16, 32, 2), conv(32, 32), conv(32, 64, 2),
                                  conv(64, 64), conv(64, 64))
        # A wider context for the box size: objects span up to ~8 cells.
        self.context = nn.Sequential(conv(64, 64, 2), conv(64, 64))
        self.fuse = conv(128, 64)
        self.head = nn.Conv2d(64, 5 + classes, 1)
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys]).float().view(1, 2, GRID * GRID))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        g = F.interpolate(self.context(f), scale_factor=2.0, mode="bilinear")
        return self.head(self.fuse(torch.cat([f, g], 1))).flatten(2)  # (N, 13, 144)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.raw(x)
        centre = (torch.sigmoid(t[:, 0:2]) + self.grid) * STRIDE
        size = torch.sigmoid(t[:, 2:4]) * SIZE
        return torch.cat([centre, size, torch.sigmoid(t[:, 4:])], 1)


def detection_targets(objects: list[list[tuple[int, list[int]]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell: (N, 144) object class + 1 (0 none) at the cell holding each box's centre; (N, 4, 144) the box."""
    labels = torch.zeros(len(objects), GRID * GRID, dtype=torch.long)
    boxes = torch.zeros(len(objects), 4, GRID * GRID)
    for i, objs in enumerate(objects):
        for label, (x0, y0, x1, y1) in objs:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            cell = int(min(cy // STRIDE, GRID - 1)) * GRID + int(min(cx // STRIDE, GRID - 1))
            labels[i, cell] = label + 1
            boxes[i, :, cell] = torch.tensor([cx, cy, x1 - x0, y1 - y0], dtype=torch.float32)
    return labels, boxes


def detection_loss(model: Detector, x: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    t = model.raw(x)
    positive = labels > 0
    objectness = F.binary_cross_entropy_with_logits(t[:, 4], positive.float(), pos_weight=torch.tensor(10.0))
    if not positive.any():
        return objectness
    cls_target = F.one_hot((labels - 1).clamp(min=0), len(CLASSES)).float().permute(0, 2, 1)
    cls = F.binary_cross_entropy_with_logits(t[:, 5:].permute(0, 2, 1)[positive], cls_target.permute(0, 2, 1)[positive])
    centre = (torch.sigmoid(t[:, 0:2]) + model.grid) * STRIDE
    size = torch.sigmoid(t[:, 2:4]) * SIZE
    pred = torch.cat([centre, size], 1).permute(0, 2, 1)[positive]
    box = F.smooth_l1_loss(pred / STRIDE, boxes.permute(0, 2, 1)[positive] / STRIDE)
    return objectness + cls + box


def decode(output: np.ndarray, threshold: float = 0.5) -> list[list[tuple[int, float, list[float]]]]:
    """(N, 13, 144) -> per image [(class, score, [x0, y0, x1, y1])] of cells above threshold, greedy NMS."""
    result = []
    for out in output:
        scores = out[4] * out[5:].max(0)
        keep: list[tuple[int, float, list[float]]] = []
        for cell in np.argsort(-scores):
            if scores[cell] < threshold:
                break
            cx, cy, w, h = out[:4, cell]
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            if all(iou(box, k[2]) < 0.5 for k in keep):
                keep.append((int(out[5:, cell].argmax()), float(scores[cell]), box))
        result.append(keep)
    return result


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=["segment", "detect"])
    parser.add_argument("--train", type=int, default=None,
                        help="training images (default: 2000 segment, 2500 detect: the committed models)")
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 40 segment, 6 detect: the committed models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.train = args.train or (2000 if args.task == "segment" else 2500)
    args.epochs = args.epochs or (40 if args.task == "segment" else 6)
    torch.manual_seed(TORCH_SEED)
    torch.set_num_threads(args.threads)
    train_x, train_maps, train_objects = data(args.train, TRAIN_SEED)
    test_x, test_maps, test_objects = data(args.test, TEST_SEED)
    model: nn.Module = Segmenter() if args.task == "segment" else Detector()
    labels, boxes = detection_targets(train_objects)
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
            if isinstance(model, Segmenter):
                # background covers ~85% of the pixels: weigh it down so the objects' classes are learnt
                loss = F.cross_entropy(model(train_x[idx]), train_maps[idx], weight=SEGMENT_WEIGHTS)
            else:
                loss = detection_loss(model, train_x[idx], labels[idx], boxes[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / args.train:.4f} ({time.time() - start:.0f}s)",
              flush=True)
    seconds = time.time() - start
    model.eval()
    with torch.no_grad():
        test_out = torch.cat([model(test_x[i:i + 100]) for i in range(0, args.test, 100)]).numpy()
    name = "shapes_segmenter" if args.task == "segment" else "shapes_detector"
    path = HERE / f"{name}.onnx"
    if isinstance(model, Segmenter):
        metrics = segmentation_metrics(test_out, test_maps.numpy())
        export(model, path, "segmentation", {})
    else:
        metrics = detection_metrics(test_out, test_objects)
        export(model, path, "detection", {"detection": json.dumps(DETECTION_LAYOUT)})
    params = sum(p.numel() for p in model.parameters())
    print(f"trained in {seconds:.0f}s; {params} parameters; {metrics}")
    (HERE / f"{name}.metrics.json").write_text(json.dumps(
        {"seconds": round(seconds), "parameters": params, "train": args.train, "test": args.test,
         "epochs": args.epochs, **metrics}, indent=1) + "\n")


def segmentation_metrics(logits: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    predicted = logits.argmax(1)
    ious = []
    for c in range(1, len(CLASSES) + 1):
        inter = ((predicted == c) & (maps == c)).sum()
        union = ((predicted == c) | (maps == c)).sum()
        if union:
            ious.append(inter / union)
    return {"pixel_accuracy": round(float((predicted == maps).mean()), 4),
            "mean_iou_objects": round(float(np.mean(ious)), 4)}


def detection_metrics(output: np.ndarray, objects: list[list[tuple[int, list[int]]]]) -> dict[str, float]:
    """Recall and precision at IoU 0.5 with the right class, detections above score 0.5."""
    found, hits, total = 0, 0, 0
    for detections, truth in zip(decode(output), objects):
        total += len(truth)
        found += len(detections)
        for label, box in truth:
            hits += any(c == label and iou(b, [float(v) for v in box]) >= 0.5 for c, _, b in detections)
    return {"recall_iou50": round(hits / total, 4), "precision_iou50": round(hits / max(found, 1), 4)}


def export(model: nn.Module, path: Path, task: str, extra: dict[str, str]) -> None:
    labels = (["background"] if task == "segmentation" else []) + list(CLASSES)
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"labels": json.dumps(labels), "task": task,
                                        "preprocessing": json.dumps(PREPROCESSING), **extra})
    proto.doc_string = f"Small {task} model for onnxcam's synthetic shapes benchmark; see models/{path.stem}.md."
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


if __name__ == "__main__":
    main()
