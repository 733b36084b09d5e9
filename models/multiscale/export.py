"""A small anchor-based detector in YOLOv5's output convention, written here in PyTorch (random weights) and
exported with torch's TorchScript exporter: three scales (strides 8, 16, 32) from an FPN + PAN neck, three anchors
per cell, rows of (cx, cy, w, h, objectness, 8 class scores) boxes-first, scale by scale, anchor-major within a
scale (anchor, y, x), as YOLOv5's Detect flattens them. It checks onnxcam.graph.scales on a head whose rows are
several per cell (tests/test_detect_scales.py); Ultralytics' own exports cover the anchor-free heads.

    python models/multiscale/export.py      # needs torch; writes anchor_yolo.onnx (input 1 x 3 x 128 x 128)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
CLASSES = 8
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))  # pixels, w h pairs
STRIDES = (8, 16, 32)
SIZE = 128


def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class AnchorHead(nn.Module):
    """One 1x1 convolution per scale to anchors x (5 + classes) maps, decoded to boxes in input pixels."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.outputs = 5 + CLASSES
        self.anchors = len(ANCHORS[0]) // 2
        self.convs = nn.ModuleList(nn.Conv2d(c, self.anchors * self.outputs, 1) for c in channels)
        for i, (stride, pairs) in enumerate(zip(STRIDES, ANCHORS)):
            cells = SIZE // stride
            ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
            self.register_buffer(f"grid{i}", torch.stack([xs, ys], -1).float().view(1, 1, cells, cells, 2))
            self.register_buffer(f"anchor{i}", torch.tensor(pairs, dtype=torch.float32).view(1, self.anchors, 1, 1, 2))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        rows = []
        for i, (conv, x) in enumerate(zip(self.convs, features)):
            batch, _, h, w = x.shape
            p = conv(x).view(batch, self.anchors, self.outputs, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            xy = (p[..., :2] * 2 - 0.5 + getattr(self, f"grid{i}")) * STRIDES[i]
            wh = (p[..., 2:4] * 2) ** 2 * getattr(self, f"anchor{i}")
            rows.append(torch.cat([xy, wh, p[..., 4:]], -1).view(batch, -1, self.outputs))
        return torch.cat(rows, 1)


class AnchorYolo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(block(3, 8, 2), block(8, 16, 2), block(16, 16, 2))   # stride 8
        self.down4, self.down5 = block(16, 24, 2), block(24, 32, 2)                    # strides 16, 32
        self.lat5, self.lat4, self.lat3 = block(32, 24), block(24 + 24, 16), block(16 + 16, 16)
        self.pan4, self.pan5 = block(16, 16, 2), block(24, 16, 2)
        self.out4, self.out5 = block(16 + 16, 24), block(16 + 24, 32)
        self.head = AnchorHead((16, 24, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.stem(x)
        c4 = self.down4(c3)
        c5 = self.down5(c4)
        p5 = self.lat5(c5)                                                     # top-down
        p4 = self.lat4(torch.cat([nn.functional.interpolate(p5, scale_factor=2.0), c4], 1))
        n3 = self.lat3(torch.cat([nn.functional.interpolate(p4, scale_factor=2.0), c3], 1))
        n4 = self.out4(torch.cat([self.pan4(n3), p4], 1))                     # bottom-up
        n5 = self.out5(torch.cat([self.pan5(n4), p5], 1))
        return self.head([n3, n4, n5])


def main() -> None:
    torch.manual_seed(0)
    model = AnchorYolo().eval()
    path = HERE / "anchor_yolo.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["output"])
    print(path, f"{path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
