"""Keras 3 (TensorFlow backend) models, exported through tf2onnx and through Keras' own `model.export`.

Dev-only; tensorflow and tf2onnx pin their own numpy/protobuf ranges, so they live in a venv of their own:

    python -m venv --system-site-packages /work/venvs/zoo-tf
    /work/venvs/zoo-tf/bin/pip install tensorflow==2.21.0 tf2onnx==1.17.0
    cd models/exporters && /work/venvs/zoo-tf/bin/python keras_models.py

Keras models take NHWC images. Three keras.applications architectures are built narrow with random weights
(weights=None, never downloaded) from the builders keras.applications itself calls, so their layers and the
preprocessing inside or outside them are Keras': MobileNetV3 and EfficientNet rescale (and normalise) raw
0-255 pixels inside the model; ResNet expects caffe-style input made outside it (RGB -> BGR, minus the ImageNet
channel means, no scaling). A plain functional CNN ending in a softmax Dense stands for a user's own model.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from common import HERE, check_and_save, match_tensors, random_images  # noqa: E402
from keras import layers  # noqa: E402
from keras.src.applications import efficientnet, mobilenet_v3, resnet  # noqa: E402

CLASSES = 10
SIZE = 64
RAW = {"colour": "RGB", "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NHWC",
       "note": "raw 0-255 pixels: the model rescales inside"}
PREPROCESSING = {
    "keras_mobilenetv3": {**RAW, "source": "keras.applications.MobileNetV3*(include_preprocessing=True): "
                          "Rescaling(1/127.5, offset=-1) inside; preprocess_input is a pass-through",
                          "resize": 224},
    "keras_efficientnet": {**RAW, "source": "keras.applications.EfficientNetB0: Rescaling(1/255) and "
                           "Normalization(ImageNet mean/var) inside; preprocess_input is a pass-through",
                           "resize": 224},
    "keras_resnet": {"source": "keras.applications.resnet.preprocess_input (mode 'caffe')", "colour": "BGR",
                     "scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1, 1, 1], "layout": "NHWC",
                     "resize": 224},
    "keras_cnn": {"source": "a user's own model: whatever they trained with (here: pixels / 255)", "colour": "RGB",
                  "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NHWC"},
}


def mobilenetv3() -> keras.Model:
    def stack(x, kernel, activation, se_ratio):  # noqa: ANN001, ANN202 (Keras' own stack_fn signature)
        x = mobilenet_v3._inverted_res_block(x, 1, 8, 3, 2, se_ratio, mobilenet_v3.relu, 0)
        x = mobilenet_v3._inverted_res_block(x, 4, 12, 3, 2, None, mobilenet_v3.relu, 1)
        x = mobilenet_v3._inverted_res_block(x, 4, 16, kernel, 2, se_ratio, activation, 2)
        return mobilenet_v3._inverted_res_block(x, 6, 16, kernel, 1, se_ratio, activation, 3)

    return mobilenet_v3.MobileNetV3(stack, 64, input_shape=(SIZE, SIZE, 3), alpha=1.0, model_type="small",
                                    weights=None, classes=CLASSES, dropout_rate=0.0, name="mobilenetv3_narrow")


def efficientnet_model() -> keras.Model:
    return efficientnet.EfficientNet(0.25, 0.25, SIZE, dropout_rate=0.0, drop_connect_rate=0.0, weights=None,
                                     input_shape=(SIZE, SIZE, 3), classes=CLASSES, name="efficientnet_narrow")


def resnet_model() -> keras.Model:
    def stack(x):  # noqa: ANN001, ANN202
        x = resnet.stack_residual_blocks_v1(x, 8, 1, stride1=1, name="conv2")
        x = resnet.stack_residual_blocks_v1(x, 12, 1, name="conv3")
        x = resnet.stack_residual_blocks_v1(x, 16, 1, name="conv4")
        return resnet.stack_residual_blocks_v1(x, 16, 2, name="conv5")

    return resnet.ResNet(stack, False, True, weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES,
                         name="resnet_narrow")


def cnn() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = inputs
    for index, width in enumerate((8, 16, 32)):
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.BatchNormalization(name=f"bn{index}")(x)
        x = layers.Activation("relu", name=f"relu{index}")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dwconv")(x)
    x = layers.ReLU(6.0, name="last_conv_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="user_cnn")


def randomise(model: keras.Model, seed: int) -> None:
    """BatchNorm statistics and affines away from (0, 1) and (1, 0), so that folding them is really exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.Normalization):
            # what EfficientNet's ImageNet weights file loads into it (weights=None leaves mean 0, variance 1)
            count = layer.get_weights()[2]
            layer.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]) ** 2, count])
            layer.finalize_state()
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), 0.2 * rng.standard_normal(beta.shape),
                               0.2 * rng.standard_normal(mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def sharpen(model: keras.Model, x: np.ndarray) -> None:
    """Scale the classifier's kernel until the softmax is not flat: random weights give logits so close that
    every class scores 1/10, and the gradients of any one of them are noise."""
    head = next(layer for layer in reversed(model.layers) if getattr(layer, "kernel", None) is not None)
    for _ in range(6):
        if float(np.asarray(model(x, training=False)).max()) > 0.4:
            return
        kernel, *rest = head.get_weights()
        head.set_weights([kernel * 3.0, *rest])


def gradcam_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer Keras' Grad-CAM tutorial targets: the last one before the last global pooling (squeeze-excite
    blocks pool too)."""
    pool = next(layer for layer in reversed(model.layers) if isinstance(layer, layers.GlobalAveragePooling2D))
    return pool.input._keras_history[0]


def lost_constants(model: keras.Model, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Keras' own exporter (keras 3.15) turns a Normalization layer's mean and variance into graph inputs
    ('.../normalization_1/Sub/y:0', '.../Sqrt/x:0') instead of constants: the values a user must feed them."""
    norm = next((layer for layer in model.layers if isinstance(layer, layers.Normalization)), None)
    extra: dict[str, np.ndarray] = {}
    for value in proto.graph.input[1:]:
        if norm is None or "normalization" not in value.name:
            raise SystemExit(f"{model.name}: unexpected extra graph input {value.name}")
        source = norm.mean if value.name.endswith("Sub/y:0") else norm.variance
        extra[value.name] = np.asarray(source, np.float32).reshape(1, 1, 1, -1)
    return extra


def tf2onnx_export(model: keras.Model, opset: int) -> onnx.ModelProto:
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    return proto


def keras_export(model: keras.Model) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        model.export(path, format="onnx", verbose=False)
        return onnx.load(path)


def main(folder: Path = HERE, only: tuple[str, ...] = ()) -> None:
    """Export every model (or those whose file stem starts with one of `only`) into `folder`."""
    keras.utils.set_random_seed(0)
    builders = {"keras_mobilenetv3": mobilenetv3, "keras_efficientnet": efficientnet_model,
                "keras_resnet": resnet_model, "keras_cnn": cnn}
    for index, (name, build) in enumerate(builders.items()):
        if only and not name.startswith(only):
            continue
        model = build()
        randomise(model, index)
        raw = PREPROCESSING[name]["scale"] == 1.0
        x = random_images((SIZE, SIZE, 3), seed=index, low=0.0 if raw else -1.0, high=255.0 if raw else 1.0)
        if name == "keras_resnet":  # caffe-style input: pixels minus the channel means
            x = x - np.array(PREPROCESSING[name]["mean"], np.float32)
        sharpen(model, x)
        expected = np.asarray(model(x, training=False))
        layer = gradcam_layer(model)
        wanted = np.asarray(keras.Model(model.inputs, layer.output)(x, training=False))
        logits_layer = model.layers[-1]
        for exporter, opset, export in [("tf2onnx", 13, lambda m: tf2onnx_export(m, 13)),
                                        ("tf2onnx", 17, lambda m: tf2onnx_export(m, 17)),
                                        ("keras", None, keras_export)]:
            try:
                proto = export(model)
            except Exception as exc:  # report, go on with the other exporters
                print(f"{name} {exporter}: export failed: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            extra = lost_constants(model, proto)
            found = match_tensors(proto, x, {"nhwc": wanted, "nchw": wanted.transpose(0, 3, 1, 2)}, extra=extra)
            opset_written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            entry = {
                "framework": f"keras {keras.__version__}, tensorflow {tf.__version__}",
                "exporter": (f"tf2onnx {tf2onnx.__version__} convert.from_keras, opset {opset}" if exporter == "tf2onnx"
                             else f"keras Model.export(format='onnx'), opset {opset_written}"),
                "family": name.replace("_", " "), "layout": "NHWC", "input_shape": [SIZE, SIZE, 3],
                "batch": "dynamic", "input_range": [float(x.min()), float(x.max())],
                "expected_layer": {"framework_name": f"{layer.name} (the layer before GlobalAveragePooling2D)",
                                   "tensor": found["nhwc"] or found["nchw"],
                                   "tensor_layout": "NHWC" if found["nhwc"] else "NCHW"},
                "modules": {}, "ends_with": logits_layer.__class__.__name__,
                "preprocessing": PREPROCESSING[name],
            }
            if extra:
                entry["extra_inputs"] = {k: v.tolist() for k, v in extra.items()}
            suffix = "_extra_inputs" if extra else ""
            check_and_save(proto, f"{name}_{exporter}_op{opset_written}{suffix}.onnx", x, expected, entry,
                           rtol=2e-4, extra=extra, folder=folder)


if __name__ == "__main__":
    main(only=tuple(sys.argv[1:]))
