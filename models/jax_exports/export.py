"""Small Flax CNNs exported with jax2onnx, random weights: real files whose `value_info` is stale.

jax2onnx keeps JAX's NHWC convention in its annotations: where it moves a tensor to NCHW for a Conv it can leave
the old NHWC shape on the tensors after it (here a Relu after BatchNormalization), and a rank-0 shape on the
BatchNormalization output. onnxruntime runs such files with a "lenient merge" warning; onnxcam must rewrite them
(tests/test_stale_shapes.py).

    /work/venvs/jax/bin/python models/jax_exports/export.py      # jax, flax, jax2onnx (its own venv: jax2onnx
                                                                 # pulls the CPU onnxruntime)

writes jax_cnn_nhwc.onnx (NHWC input, as JAX takes it) and jax_cnn_nchw.onnx (NCHW input, inputs_as_nchw).
Channel counts differ from the spatial sizes so that NHWC and NCHW shapes of a tensor never coincide.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import onnx
from flax import nnx
from jax2onnx import to_onnx

HERE = Path(__file__).resolve().parent
SIZE = (40, 32)  # H, W of the input


class SmallCnn(nnx.Module):
    """conv, max pooling, BN/ReLU, a residual block, a strided conv, global average pooling, a dense head of 5
    classes. Max pooling comes before the first ReLU: windows of tied zeros would make the finite differences of
    tests/test_stale_shapes.py meaningless (the max is not differentiable there)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 12, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(12, use_running_average=True, rngs=rngs)
        self.conv_a = nnx.Conv(12, 12, (3, 3), rngs=rngs)
        self.conv_b = nnx.Conv(12, 24, (3, 3), strides=(2, 2), rngs=rngs)
        self.head = nnx.Linear(24, 5, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nnx.max_pool(self.stem(x), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.norm(x))
        x = x + nnx.relu(self.conv_a(x))
        x = nnx.relu(self.conv_b(x))
        return self.head(x.mean(axis=(1, 2)))


def build(nchw: bool, seed: int = 0) -> onnx.ModelProto:
    net = SmallCnn(nnx.Rngs(seed))
    # BatchNorm statistics other than 0/1, so the normalisation is not an identity
    net.norm.mean.value = jnp.linspace(-0.2, 0.3, 12)
    net.norm.var.value = jnp.linspace(0.5, 1.5, 12)
    return to_onnx(net, [(1, *SIZE, 3)], inputs_as_nchw=[0] if nchw else None, opset=17,
                   model_name="jax_cnn_nchw" if nchw else "jax_cnn_nhwc")


def main() -> None:
    for nchw in (False, True):
        path = HERE / f"jax_cnn_{'nchw' if nchw else 'nhwc'}.onnx"
        onnx.save(build(nchw), str(path))
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
