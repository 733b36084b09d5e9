"""YOLOv8 detect, segment, classify, pose and OBB models built from Ultralytics' own yaml files (random weights,
no download) and exported with Ultralytics' own ONNX exporter, as it ships: static batch 1, opset of its choice,
metadata (task, names, imgsz, stride, kpt_shape...) in the file.

To keep each file under 2 MB the architecture is YOLOv8n's (depth multiple 0.33) at a width multiple of 0.0625
instead of 0.25 (channels 8..64 instead of 16..256), with the 8 classes of the shapes data set
(models/shapes_labels.txt; pose: one class with 17 keypoints) and a 128 x 128 input. The graph is otherwise
unchanged: three scales (strides 8, 16, 32; rows 0-255, 256-319, 320-335 of the detection output), DFL box
decoding, the segmentation prototypes, the pose and angle heads.

    python -m venv --system-site-packages /work/venvs/ultra      # ultralytics pulls opencv-python, which would
    /work/venvs/ultra/bin/pip install ultralytics                # clash with opencv-python-headless in the main env
    /work/venvs/ultra/bin/python models/ultralytics/export.py            # all; or name some: ... export.py rtdetr

Any network access (a DNS lookup or a connection) during building or export makes the script fail: Ultralytics is
told it is offline (YOLO_OFFLINE) and sockets are refused, so nothing can be downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WIDTH = 0.0625  # YOLOv8n: 0.25
DEPTH = 0.33    # as YOLOv8n
IMGSZ = 128
RTDETR_IMGSZ = 160  # a multiple of 32 (RT-DETR's largest stride); Ultralytics' RT-DETR takes square inputs only
# task -> Ultralytics yaml (in ultralytics/cfg/models/v8) and the file written here
MODELS = {"detect": ("yolov8.yaml", "yolov8n.onnx"), "segment": ("yolov8-seg.yaml", "yolov8n-seg.onnx"),
          "classify": ("yolov8-cls.yaml", "yolov8n-cls.onnx"), "pose": ("yolov8-pose.yaml", "yolov8n-pose.onnx"),
          "obb": ("yolov8-obb.yaml", "yolov8n-obb.onnx")}

_attempts: list[str] = []


def _refuse(*args: Any, **kwargs: Any) -> Any:
    _attempts.append(repr(args[:2]))
    raise OSError("network access is disabled while exporting")


def forbid_network() -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    socket.getaddrinfo = _refuse  # type: ignore[assignment]
    socket.create_connection = _refuse  # type: ignore[assignment]
    socket.socket.connect = _refuse  # type: ignore[method-assign]


def labels() -> list[str]:
    return (HERE.parent / "shapes_labels.txt").read_text().split()


def export(task: str, folder: Path, out: Path = HERE, family: str = "v8", source: str | None = None,
           target: str | None = None, nms: bool = False) -> Path:
    """Build `task`'s model from Ultralytics' yaml `family/source` (default: YOLOv8's) at the small width, export
    it in `folder` (with NMS inside the graph when `nms`), copy it to `out/target`."""
    import torch
    import ultralytics
    import yaml
    from ultralytics import YOLO

    source = source or MODELS[task][0]
    target = target or MODELS[task][1]
    spec = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "models" / family / source).read_text())
    if "scales" in spec:  # keep the family's depth and channel cap, narrow it
        depth, _, cap = spec["scales"].get("n") or next(iter(spec["scales"].values()))
        spec["scales"] = {"n": [depth, WIDTH, cap]}
    names = ["person"] if task == "pose" else labels()
    spec["nc"] = len(names)
    config = folder / f"{Path(target).stem.split('-')[0].rstrip('n')}n-{task}.yaml"  # "n" picks the scale above
    config.write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)  # Ultralytics' initialisation draws from torch's generator: same seed, same weights
    with contextlib.chdir(folder):  # Ultralytics writes the export (and may make folders) in the working directory
        model = YOLO(str(config), task=task)
        model.model.names = dict(enumerate(names))
        exported = model.export(format="onnx", imgsz=IMGSZ, batch=1, dynamic=False, simplify=False, nms=nms,
                                half=False, device="cpu", verbose=False)
        path = out / target
        shutil.copyfile(exported, path)
    return path


def export_rtdetr(folder: Path, out: Path = HERE, target: str = "rtdetr.onnx") -> Path:
    """RT-DETR from Ultralytics' rtdetr-l.yaml, narrowed to stay under 1 MB: the HGNet backbone's channels / 8
    (its HGBlock and HGStem channels are not scaled by the width multiple), the neck at width 0.0625, AIFI's
    feed-forward 64 wide with 4 heads, the decoder 32 wide, 4 heads, 1 layer (rtdetr-l: 256, 8, 6), still 300
    queries and its GridSample deformable attention; 8 classes, 160 x 160 input. Exported as it ships: one output
    (1, 300, 6) of selected queries cx, cy, w, h (fractions of the input), score, class."""
    import torch
    import ultralytics
    import yaml
    from ultralytics import RTDETR

    spec = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "models" / "rt-detr" / "rtdetr-l.yaml")
                          .read_text())
    spec["scales"] = {"l": [DEPTH, WIDTH, 1024]}
    spec["nc"] = len(labels())
    for layer in spec["backbone"]:  # [from, repeats, module, args]: HGStem [cm, c2], HGBlock [cm, c2, ...], DWConv [c2]
        channels = {"HGStem": 2, "HGBlock": 2, "DWConv": 1}.get(layer[2], 0)
        layer[3] = [max(8, c // 8) for c in layer[3][:channels]] + layer[3][channels:]
    for layer in spec["head"]:
        if layer[2] == "AIFI":
            layer[3] = [64, 4]
        if layer[2] == "RTDETRDecoder":  # nc, hidden dim, queries, decoder points, heads, decoder layers, ffn
            layer[3] = ["nc", 32, 300, 4, 4, 1, 64]
    config = folder / "rtdetr-l.yaml"  # "l": the only scale the yaml has
    config.write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)
    with contextlib.chdir(folder):
        model = RTDETR(str(config))
        model.model.names = dict(enumerate(labels()))
        exported = model.export(format="onnx", imgsz=RTDETR_IMGSZ, batch=1, dynamic=False, simplify=False,
                                half=False, device="cpu", verbose=False)
        path = out / target
        shutil.copyfile(exported, path)
    return path


def main(names: list[str]) -> None:
    """Export the models named (tasks of MODELS, or rtdetr), default all."""
    forbid_network()
    with tempfile.TemporaryDirectory() as tmp:
        for task in names or [*MODELS, "rtdetr"]:
            path = export_rtdetr(Path(tmp)) if task == "rtdetr" else export(task, Path(tmp))
            print(f"{task}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if _attempts:
        raise SystemExit(f"network access was attempted: {', '.join(_attempts)}")
    print("no network access was attempted")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
