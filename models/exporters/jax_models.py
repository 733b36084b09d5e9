"""JAX / Flax (NNX) models exported by jax2onnx.

Dev-only; jax2onnx brings its own onnxruntime (CPU), so it lives in a venv of its own:

    python -m venv --system-site-packages /work/venvs/jax
    /work/venvs/jax/bin/pip install jax flax jax2onnx
    cd models/exporters && /work/venvs/jax/bin/python jax_models.py

Flax convolutions are NHWC, like Keras. Two models: a ResNet-style CNN (Conv, BatchNorm in inference mode, ReLU,
a residual block, global mean, Dense) and a ConvNeXt-style one (depthwise Conv, LayerNorm, GELU). jax2onnx
writes opset 23 by default (what users get) and 21 on request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jax2onnx
import numpy as np
from common import HERE, check_and_save, match_tensors, random_images
from flax import nnx

CLASSES = 10
SIZE = 64
PREPROCESSING = {"source": "a user's own model: whatever they trained with (here: pixels / 255 - 0.5)",
                 "colour": "RGB", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1], "layout": "NHWC"}


class ResNetish(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 16, (3, 3), strides=2, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.down = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
        self.down_bn = nnx.BatchNorm(32, use_running_average=True, rngs=rngs)
        self.block_conv1 = nnx.Conv(32, 32, (3, 3), strides=2, rngs=rngs)
        self.block_bn1 = nnx.BatchNorm(32, use_running_average=True, rngs=rngs)
        self.block_conv2 = nnx.Conv(32, 32, (3, 3), rngs=rngs)
        self.block_bn2 = nnx.BatchNorm(32, use_running_average=True, rngs=rngs)
        self.shortcut = nnx.Conv(32, 32, (1, 1), strides=2, rngs=rngs)
        self.head = nnx.Linear(32, CLASSES, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        x = nnx.relu(self.down_bn(self.down(x)))
        y = nnx.relu(self.block_bn1(self.block_conv1(x)))
        y = self.block_bn2(self.block_conv2(y))
        return nnx.relu(y + self.shortcut(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.mean(self.features(x), axis=(1, 2)))


class ConvNeXtish(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 16, (4, 4), strides=4, rngs=rngs)
        self.stem_norm = nnx.LayerNorm(16, rngs=rngs)
        self.dwconv = nnx.Conv(16, 16, (7, 7), feature_group_count=16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.expand = nnx.Linear(16, 32, rngs=rngs)
        self.project = nnx.Linear(32, 16, rngs=rngs)
        self.down = nnx.Conv(16, 32, (2, 2), strides=2, rngs=rngs)
        self.head_norm = nnx.LayerNorm(32, rngs=rngs)
        self.head = nnx.Linear(32, CLASSES, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        x = self.stem_norm(self.stem(x))
        y = self.project(nnx.gelu(self.expand(self.norm(self.dwconv(x))), approximate=False))
        return self.down(x + 0.5 * y)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.head_norm(jnp.mean(self.features(x), axis=(1, 2))))


def randomise_batchnorm(model: nnx.Module, seed: int) -> None:
    """Running statistics away from (0, 1), so that folding them is really exercised."""
    rng = np.random.default_rng(seed)
    for _, module in model.iter_modules():
        if isinstance(module, nnx.BatchNorm):
            shape = module.mean.value.shape
            module.mean.value = jnp.asarray(0.2 * rng.standard_normal(shape), jnp.float32)
            module.var.value = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
            module.scale.value = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
            module.bias.value = jnp.asarray(0.2 * rng.standard_normal(shape), jnp.float32)


def main(folder: Path = HERE, only: tuple[str, ...] = ()) -> None:
    """Export every model (or those whose file stem starts with one of `only`) into `folder`."""
    for index, (name, cls) in enumerate([("flax_resnet", ResNetish), ("flax_convnext", ConvNeXtish)]):
        if only and not name.startswith(only):
            continue
        model = cls(nnx.Rngs(index))
        randomise_batchnorm(model, index)
        x = random_images((SIZE, SIZE, 3), seed=index, low=-0.5, high=0.5)
        logits = np.asarray(model(jnp.asarray(x)))
        features = np.asarray(model.features(jnp.asarray(x)))
        for opset in (21, 23):
            proto = jax2onnx.to_onnx(model, [("B", SIZE, SIZE, 3)], opset=opset, model_name=name,
                                     input_names=["image"], output_names=["logits"])
            found = match_tensors(proto, x, {"nhwc": features, "nchw": features.transpose(0, 3, 1, 2)})
            entry = {
                "framework": f"jax {jax.__version__}, flax {__import__('flax').__version__}",
                "exporter": f"jax2onnx {__import__('importlib.metadata').metadata.version('jax2onnx')} "
                            f"to_onnx, opset {opset}",
                "family": name.replace("_", " "), "layout": "NHWC", "input_shape": [SIZE, SIZE, 3],
                "batch": "dynamic", "input_range": [-0.5, 0.5],
                "expected_layer": {"framework_name": "the output of features() (before the global mean)",
                                   "tensor": found["nhwc"] or found["nchw"],
                                   "tensor_layout": "NHWC" if found["nhwc"] else "NCHW"},
                "modules": {}, "preprocessing": PREPROCESSING,
            }
            check_and_save(proto, f"{name}_jax2onnx_op{opset}.onnx", x, logits, entry, rtol=2e-4, folder=folder)


if __name__ == "__main__":
    main(only=tuple(sys.argv[1:]))
