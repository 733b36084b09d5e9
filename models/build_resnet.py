"""Build torchvision-style ResNets (18/34/50/101/152) as ONNX with random weights, without torch.

The graph is what PyTorch's exporter writes for a torchvision ResNet in eval mode: BatchNorm folded into the
convolutions' biases (Conv with bias, then Relu), GlobalAveragePool, Flatten and a Gemm head. Tensor names follow
the module names (`layer3.5.relu_2` is the output of block 5 of stage 3), so benchmark output and layer lists
read like those of an exported model.

    python models/build_resnet.py --depth 50 --out resnet50.onnx
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# depth -> (bottleneck?, blocks per stage)
CONFIGS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
OPSET = 17
IR_VERSION = 8
# The folded BatchNorm scale of a block's last conv. Without BatchNorm statistics to fit, a small residual
# branch keeps activations O(1) through deep stacks (what torchvision's zero_init_residual aims at, but nonzero
# so every layer still affects the score).
RESIDUAL_SCALE = 0.3


def stage_output(depth: int, stage: int) -> str:
    """Name of the output tensor of stage 1..4 (its last block's final Relu), e.g. 'layer4.2.relu_2'."""
    bottleneck, blocks = _config(depth)
    return f"layer{stage}.{blocks[stage - 1] - 1}.{'relu_2' if bottleneck else 'relu_1'}"


def _config(depth: int) -> tuple[bool, tuple[int, int, int, int]]:
    if depth not in CONFIGS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[depth]


class _Net:
    """Collects nodes and initializers; each layer helper returns its output tensor's name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def _weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x: str, name: str, cin: int, cout: int, kernel: int, stride: int = 1, scale: float = 1.0) -> str:
        """Conv + folded BatchNorm: He-normal weights (fan_in, for ReLU), a small random bias."""
        std = np.sqrt(2.0 / (cin * kernel * kernel)) * scale
        w = self._weight(f"{name}.weight", self.rng.normal(0.0, std, (cout, cin, kernel, kernel)))
        b = self._weight(f"{name}.bias", self.rng.normal(0.0, 0.05, cout))
        pad = kernel // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, w, b], [name], name=_node_name(name, "Conv"), dilations=[1, 1], group=1,
            kernel_shape=[kernel, kernel], pads=[pad] * 4, strides=[stride, stride]))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=_node_name(name, op_type), **attrs))
        return name

    def relu(self, x: str, name: str) -> str:
        return self.op("Relu", [x], name)

    def block(self, x: str, prefix: str, cin: int, width: int, stride: int, bottleneck: bool) -> tuple[str, int]:
        """One BasicBlock or Bottleneck; returns its output and channel count."""
        cout = width * 4 if bottleneck else width
        if bottleneck:  # torchvision (v1.5) puts the stride on the 3x3 conv
            h = self.relu(self.conv(x, f"{prefix}.conv1", cin, width, 1), f"{prefix}.relu")
            h = self.relu(self.conv(h, f"{prefix}.conv2", width, width, 3, stride), f"{prefix}.relu_1")
            h = self.conv(h, f"{prefix}.conv3", width, cout, 1, scale=RESIDUAL_SCALE)
            last = "relu_2"
        else:
            h = self.relu(self.conv(x, f"{prefix}.conv1", cin, width, 3, stride), f"{prefix}.relu")
            h = self.conv(h, f"{prefix}.conv2", width, cout, 3, scale=RESIDUAL_SCALE)
            last = "relu_1"
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = self.conv(x, f"{prefix}.downsample.0", cin, cout, 1, stride)
        return self.relu(self.op("Add", [h, shortcut], f"{prefix}.add"), f"{prefix}.{last}"), cout


def _node_name(tensor: str, op_type: str) -> str:
    """Exporter-style node name: 'layer3.5.relu_2' -> '/layer3/layer3.5/relu_2/Relu'."""
    parts = tensor.split(".")
    scopes = [".".join(parts[:i + 1]) for i in range(len(parts) - 1)]
    return "/" + "/".join([*scopes, parts[-1], op_type]) if scopes else f"/{tensor}/{op_type}"


def build_resnet(depth: int, num_classes: int = 1000, width: int = 64, seed: int = 0,
                 image_size: int = 224) -> onnx.ModelProto:
    """A torchvision-architecture ResNet with random weights, input 'input' (N, 3, S, S), output 'logits'."""
    bottleneck, blocks = _config(depth)
    net = _Net(seed)
    x = net.relu(net.conv("input", "conv1", 3, width, 7, 2), "relu")
    x = net.op("MaxPool", [x], "maxpool", ceil_mode=0, dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               strides=[2, 2])
    channels = width
    for stage, count in enumerate(blocks, start=1):
        stage_width = width * 2 ** (stage - 1)
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            x, channels = net.block(x, f"layer{stage}.{index}", channels, stage_width, stride, bottleneck)
    x = net.op("GlobalAveragePool", [x], "avgpool")
    x = net.op("Flatten", [x], "flatten", axis=1)
    bound = 1.0 / np.sqrt(channels)
    fc_w = net._weight("fc.weight", net.rng.uniform(-bound, bound, (num_classes, channels)))
    fc_b = net._weight("fc.bias", net.rng.uniform(-bound, bound, num_classes))
    net.op("Gemm", [x, fc_w, fc_b], "logits", alpha=1.0, beta=1.0, transB=1)

    graph = helper.make_graph(
        net.nodes, f"resnet{depth}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        initializer=net.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxcam",
                              doc_string=f"ResNet-{depth} (torchvision architecture), random weights, seed {seed}")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, choices=sorted(CONFIGS))
    parser.add_argument("--out", required=True, help="where to write the .onnx file")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64, help="channels of the stem and first stage")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = build_resnet(args.depth, args.classes, args.width, args.seed, args.size)
    onnx.save(model, args.out)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out}: ResNet-{args.depth}, {len(model.graph.node)} nodes, {params / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
