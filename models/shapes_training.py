"""Shared pieces of the training scripts for the shapes demo models (dev-only; needs torch).

models/train_shapes.py made the first model (shapes_resnet.onnx); this module holds what the later scripts
(train_mobilenet.py, train_multilabel.py, train_vit.py) share with it and with each other: the data (single- and
multi-label, generated in memory from fixed seeds), label-preserving augmentation, a training loop with AdamW and
a one-cycle schedule, evaluation (accuracy, and mAP / F1 / exact match for multi-label), and the ONNX export that
stores the labels and the preprocessing in metadata_props. Constants and `preprocess` come from train_shapes.py so
every model shares one input contract.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from train_shapes import MEAN, PREPROCESSING, SIZE, STD, TEST_SEED, TORCH_SEED, TRAIN_SEED, preprocess  # noqa: F401

from onnxcam.datasets.shapes import CLASSES, generate, make_sample

HERE = Path(__file__).resolve().parent
LABELS_FILE = HERE / "shapes_labels.txt"  # written by train_shapes.py; every shapes model shares its classes


def setup(threads: int) -> None:
    """Fix every seed and the CPU thread count (the machine is small and shared)."""
    torch.manual_seed(TORCH_SEED)
    np.random.seed(TORCH_SEED)
    torch.set_num_threads(threads)


def single_label_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 96, 96, 3) and class ids (N,), the same samples as `generate(count, seed)`."""
    images, labels = generate(count, seed, SIZE)
    return torch.from_numpy(images), torch.from_numpy(labels)


def multi_label_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 two-object images (N, 96, 96, 3) and multi-hot float targets (N, 8), the same samples as
    `write_dataset(folder, count, seed, multi=True)`."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    targets = np.zeros((count, len(CLASSES)), np.float32)
    for i in range(count):
        images[i], labels, _, _ = make_sample(rng, SIZE, multi=True)
        targets[i, labels] = 1.0
    return torch.from_numpy(images), torch.from_numpy(targets)


def augment(images: torch.Tensor, gen: torch.Generator, colours: bool = False) -> torch.Tensor:
    """Random flips per image and a random quarter turn per batch on uint8 (N, H, W, 3) images: every class is
    symmetric under them, so they are free extra data. `colours` also shuffles the RGB channels (object and
    background colours are random, so the label does not depend on them)."""
    flip = torch.rand(2, len(images), generator=gen) < 0.5
    images = torch.where(flip[0].view(-1, 1, 1, 1), images.flip(2), images)
    images = torch.where(flip[1].view(-1, 1, 1, 1), images.flip(1), images)
    turns = int(torch.randint(0, 4, (1,), generator=gen))
    images = torch.rot90(images, turns, (1, 2))
    if colours:
        images = images[..., torch.randperm(3, generator=gen)]
    return images


def fit(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss_fn: Callable[..., torch.Tensor],
        epochs: int, batch_size: int, lr: float, weight_decay: float, report: Callable[[], str],
        colours: bool = False, channels_last: bool = True, freeze_norms: bool = False) -> float:
    """Train in place with AdamW and a one-cycle schedule; prints loss and `report()` after each epoch.
    `freeze_norms` keeps BatchNorm statistics fixed (fine-tuning from folded weights). Returns the training wall
    time in seconds."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)  # oneDNN's convolutions run faster channels-last on the CPU
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "token" not in n and "position" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "token" not in n and "position" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(TORCH_SEED)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for norm in (m for m in model.modules() if freeze_norms and isinstance(m, nn.BatchNorm2d)):
            norm.eval()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            x = preprocess(augment(images[idx], gen, colours)).contiguous(memory_format=memory_format)
            loss = loss_fn(model(x), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}, {report()} "
              f"({time.time() - start:.0f}s)", flush=True)
    return time.time() - start


def load_folded(model: nn.Module, path: Path) -> nn.Module:
    """Put an exported model's weights back into its torch module (same architecture): the export folded each
    BatchNorm into the Conv before it, so such a BatchNorm becomes the identity plus the folded bias (mean 0,
    variance 1 - eps, scale 1); train it afterwards with `fit(..., freeze_norms=True)`. ONNX Conv and Gemm nodes
    are matched to the module's Conv2d and Linear layers in order, checked by shape."""
    proto = onnx.load(str(path))
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    nodes = {op: [n for n in proto.graph.node if n.op_type == op] for op in ("Conv", "Gemm")}
    modules = list(model.modules())
    convs = [(m, modules[i + 1] if i + 1 < len(modules) else None) for i, m in enumerate(modules)
             if isinstance(m, nn.Conv2d)]
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if len(convs) != len(nodes["Conv"]) or len(linears) != len(nodes["Gemm"]):
        raise ValueError(f"{path} does not match {type(model).__name__}")
    with torch.no_grad():
        for (conv, after), node in zip(convs, nodes["Conv"]):
            if conv.weight.shape != weights[node.input[1]].shape:
                raise ValueError(f"{path}: {node.name} does not match {type(model).__name__}")
            conv.weight.copy_(weights[node.input[1]])
            bias = weights[node.input[2]] if len(node.input) > 2 else torch.zeros(conv.out_channels)
            if isinstance(after, nn.BatchNorm2d):
                after.weight.fill_(1.0)
                after.bias.copy_(bias)
                after.running_mean.zero_()
                after.running_var.fill_(1.0 - after.eps)
            else:
                conv.bias.copy_(bias)
        for linear, node in zip(linears, nodes["Gemm"]):
            linear.weight.copy_(weights[node.input[1]])
            linear.bias.copy_(weights[node.input[2]])
    return model


def predict(model: nn.Module, images: torch.Tensor, batch: int = 250) -> np.ndarray:
    """Logits (N, 8) of uint8 images, in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(preprocess(images[i:i + batch])) for i in range(0, len(images), batch)]).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {c: accuracy(logits[labels == i], labels[labels == i]) for i, c in enumerate(CLASSES)}


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall curve of one class: mean precision at the rank of each positive."""
    order = np.argsort(-scores, kind="stable")
    hits = truth[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def multi_label_metrics(logits: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, object]:
    """mAP, per-class AP and F1 at probability `threshold`, exact match (predicted set == true set at the
    threshold) and top-2 exact match (the two highest scores are the two objects; every image has two)."""
    predicted = 1 / (1 + np.exp(-logits)) >= threshold
    positive = truth > 0
    ap = {c: average_precision(logits[:, i], truth[:, i]) for i, c in enumerate(CLASSES)}
    f1 = {}
    for i, c in enumerate(CLASSES):
        tp = int((predicted[:, i] & positive[:, i]).sum())
        fp = int((predicted[:, i] & ~positive[:, i]).sum())
        fn = int((~predicted[:, i] & positive[:, i]).sum())
        f1[c] = 2 * tp / max(2 * tp + fp + fn, 1)
    top2 = np.zeros_like(positive)
    np.put_along_axis(top2, np.argsort(-logits, axis=1)[:, :2], True, axis=1)
    return {"mAP": float(np.mean(list(ap.values()))), "ap": ap, "f1": f1,
            "macro_f1": float(np.mean(list(f1.values()))),
            "exact_match": float((predicted == positive).all(1).mean()),
            "top2_exact_match": float((top2 == positive).all(1).mean())}


def export(model: nn.Module, path: Path, doc: str, output_name: str = "logits", opset: int = 17) -> None:
    """Legacy TorchScript export (BatchNorm folded), dynamic batch, labels + preprocessing in metadata_props."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=[output_name],
                      dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}})
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {"labels": json.dumps(list(CLASSES)),
                                        "preprocessing": json.dumps(PREPROCESSING)})
    proto.doc_string = doc
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def write_labels(folder: Path) -> None:
    """shapes_labels.txt (one class name per line, output order), shared by every shapes model."""
    (folder / "shapes_labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))


def input_section(output: str) -> str:
    """The card's "Input and output" section, shared by every shapes model."""
    return f"""## Input and output

- input `input`: float32 `[batch, 3, 96, 96]` (NCHW, batch dynamic), RGB
- preprocessing: `x = (pixel / 255 - mean) / std` with ImageNet mean {list(MEAN)} and
  std {list(STD)}; images are generated at 96 x 96, so no resize
- {output}
- metadata_props: `labels` (JSON list of the class names in output order) and `preprocessing`
  (JSON: {json.dumps(PREPROCESSING)})
- labels, one per line in output order, also in `models/shapes_labels.txt`
"""


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, label_smoothing=0.05)
