"""PaddlePaddle models exported by paddle2onnx (through `paddle.onnx.export`).

Dev-only; paddle2onnx pins onnx 1.17, so paddle lives in a venv of its own (not sharing the main packages):

    python -m venv /work/venvs/zoo-paddle
    /work/venvs/zoo-paddle/bin/pip install paddlepaddle paddle2onnx onnxruntime
    cd models/exporters && /work/venvs/zoo-paddle/bin/python paddle_models.py

`paddle.onnx.export` writes opset 9 unless told otherwise, so that is what users who do not ask get: it is
written here along with opsets 13 and 17. Models: paddle.vision's MobileNetV3Small at scale 0.25 and a small
ResNet built from paddle.vision's BasicBlock. PaddleClas, whose eval pipeline these families come with,
decodes with OpenCV (BGR), converts to RGB, resizes the short side to 256, centre-crops 224 and normalises with
the ImageNet mean/std after / 255.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import paddle
import paddle2onnx
from common import HERE, check_and_save, match_tensors, random_images
from paddle import nn
from paddle.vision.models import MobileNetV3Small
from paddle.vision.models.resnet import BasicBlock

CLASSES = 10
SIZE = 64
PREPROCESSING = {"source": "PaddleClas ImageNet eval pipeline (DecodeImage to_rgb, ResizeImage resize_short 256, "
                 "CropImage 224, NormalizeImage)", "colour": "RGB", "resize_short": 256, "crop": 224,
                 "interpolation": "bilinear", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "layout": "NCHW"}


class SmallResNet(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(3, 8, 3, stride=2, padding=1, bias_attr=False), nn.BatchNorm2D(8),
                                  nn.ReLU())
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=nn.Sequential(
            nn.Conv2D(8, 16, 1, stride=2, bias_attr=False), nn.BatchNorm2D(16)))
        self.layer3 = BasicBlock(16, 32, stride=2, downsample=nn.Sequential(
            nn.Conv2D(16, 32, 1, stride=2, bias_attr=False), nn.BatchNorm2D(32)))
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(32, CLASSES)

    def features(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(paddle.flatten(self.pool(self.features(x)), 1))


class MobileNet(MobileNetV3Small):
    def features(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.lastconv(self.blocks(self.conv(x)))


def randomise(model: nn.Layer, seed: int) -> None:
    """BatchNorm statistics and affines away from (0, 1), so that folding them is really exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            size = layer._mean.shape[0]
            layer._mean.set_value(0.2 * rng.standard_normal(size).astype(np.float32))
            layer._variance.set_value(rng.uniform(0.5, 1.5, size).astype(np.float32))
            layer.weight.set_value(rng.uniform(0.5, 1.5, size).astype(np.float32))
            layer.bias.set_value(0.2 * rng.standard_normal(size).astype(np.float32))
    model.eval()


def export(model: nn.Layer, opset: int) -> onnx.ModelProto:
    spec = [paddle.static.InputSpec([None, 3, SIZE, SIZE], "float32", "x")]
    with tempfile.TemporaryDirectory() as folder:
        stem = os.path.join(folder, "model")
        if opset == 9:
            paddle.onnx.export(model, stem, input_spec=spec)  # the default opset
        else:
            paddle.onnx.export(model, stem, input_spec=spec, opset_version=opset)
        return onnx.load(stem + ".onnx")


def main(folder: Path = HERE, only: tuple[str, ...] = ()) -> None:
    """Export every model (or those whose file stem starts with one of `only`) into `folder`."""
    paddle.seed(0)
    builders = {"paddle_resnet": SmallResNet, "paddle_mobilenetv3": lambda: MobileNet(scale=0.25,
                                                                                       num_classes=CLASSES)}
    for index, (name, build) in enumerate(builders.items()):
        if only and not name.startswith(only):
            continue
        model = build()
        randomise(model, index)
        x = random_images((3, SIZE, SIZE), seed=index, low=-2.0, high=2.0)
        logits = model(paddle.to_tensor(x)).numpy()
        features = model.features(paddle.to_tensor(x)).numpy()
        for opset in (9, 13, 17):
            proto = export(model, opset)
            found = match_tensors(proto, x, {"features": features})
            entry = {
                "framework": f"paddlepaddle {paddle.__version__}",
                "exporter": f"paddle2onnx {paddle2onnx.__version__} via paddle.onnx.export, opset {opset}"
                            + (" (its default)" if opset == 9 else ""),
                "family": name.replace("_", " "), "layout": "NCHW", "input_shape": [3, SIZE, SIZE],
                "batch": "dynamic", "input_range": [-2.0, 2.0],
                "expected_layer": {"framework_name": "the output of features() (before global pooling)",
                                   "tensor": found["features"]},
                "modules": {}, "preprocessing": PREPROCESSING,
            }
            check_and_save(proto, f"{name}_paddle2onnx_op{opset}.onnx", x, logits, entry, folder=folder)


if __name__ == "__main__":
    main(only=tuple(sys.argv[1:]))
