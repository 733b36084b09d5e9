"""Cost of an exported model's explanation: `onnxcam export` (Grad-CAM, predicted class, map at the input size)
against the plain model, per batch, in one onnxruntime session each.

Models: the bundled shapes_resnet (96 x 96), a ResNet-50 built without torch (models/build_resnet.py, 224 x 224)
and, when torch and torchvision are installed, torchvision's resnet18, mobilenet_v3_small, efficientnet_b0,
convnext_tiny and vit_b_16 (weights=None, TorchScript exporter, opset 17; cached under benchmarks/_models/). Both
sessions of a model run round-robin, starting with a different one each round, so frequency drift and cache effects
hit both alike; the table gives medians and their ratio (target <= 1.15x for Grad-CAM).

    python benchmarks/export.py [--batch 8] [--repeat 7] [--models shapes_resnet,resnet50,...] [--method gradcam]
    python benchmarks/export.py --device cuda    # the CUDA provider (and --device tensorrt) where available
    python benchmarks/export.py --agreement      # eigencam/eigengradcam: power iterations vs NumPy's eigh
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxcam  # noqa: E402
from onnxcam.export import ExportOptions, export_model  # noqa: E402
from onnxcam.runtime import choose_providers, make_session  # noqa: E402

CACHE = Path(__file__).resolve().parent / "_models"
TORCHVISION = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16")
TARGET = 1.15


def _builder():  # models/ is a folder of scripts, not a package
    spec = importlib.util.spec_from_file_location("build_resnet", ROOT / "models" / "build_resnet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_path(name: str) -> tuple[Path, int] | None:
    """(the plain model, its input size), built once into benchmarks/_models/; None when torch is needed and
    missing."""
    if name.startswith("shapes_"):
        return ROOT / "models" / f"{name}.onnx", 96
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}_224.onnx"
    if name == "resnet50":
        if not path.is_file():
            onnx.save(_builder().build_resnet(50, image_size=224), str(path))
        return path, 224
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    if not path.is_file():
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        with torch.no_grad():  # torchvision zeroes some classifiers: a zero logit has no gradient to time
            [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.normal_(0.0, 0.05)
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path, 224


def _time(session: onnxcam.runtime.Session, feeds: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run([o.name for o in session.get_outputs()], feeds)
    return time.perf_counter() - start


def measure(path: Path, size: int, batch: int, repeat: int, warmup: int, method: str,
            providers: list[str]) -> tuple[float, float, str]:
    """(plain median s, exported median s, layer)."""
    with tempfile.TemporaryDirectory() as folder:
        exported = export_model(path, Path(folder) / "model.cam.onnx", ExportOptions(method=method))
        sessions = [make_session(path, providers), make_session(exported.path, providers)]
    name = sessions[0].get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    feeds = {name: x}
    times: list[list[float]] = [[], []]
    for session in sessions:
        for _ in range(warmup):
            _time(session, feeds)
    first = _time(sessions[0], feeds)
    rounds = max(repeat, min(60, int(3.0 / max(first, 1e-6))))  # small models: more rounds against noise
    for round_ in range(rounds):
        for i in range(2):
            which = (round_ + i) % 2
            times[which].append(_time(sessions[which], feeds))
    return statistics.median(times[0]), statistics.median(times[1]), exported.exported.layer


def agreement(names: list[str], squarings: list[int]) -> None:
    """How close the exported Eigen methods come to NumPy's exact decomposition, by number of squarings, on the
    example images (bundled models) or random inputs (others): worst Pearson r and max |difference| per model."""
    from onnxcam.images import preprocess, read_image

    images = sorted((ROOT / "examples" / "images").glob("*.png"))
    print("| model | method | " + " | ".join(f"{2 ** s} steps ({s} squarings)" for s in squarings) + " |")
    print("|---|---|" + "---:|" * len(squarings))
    for name in names:
        found = model_path(name)
        if found is None:
            continue
        path, size = found
        ex = onnxcam.Explainer(path, device="cpu")
        x = (np.concatenate([preprocess(read_image(p), ex.preprocessing) for p in images]) if size == 96 else
             np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32))
        for method in ("eigencam", "eigengradcam"):
            reference = ex.explain(x, method)
            cells = []
            for count in squarings:
                with tempfile.TemporaryDirectory() as folder:
                    out = export_model(path, Path(folder) / "m.onnx", ExportOptions(method=method, squarings=count))
                    session = make_session(out.path, ["CPUExecutionProvider"])
                    cam = session.run(["cam"], {ex.input_name: x})[0]
                r = min(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(cam, reference))
                cells.append(f"r {r:.6f}, {np.abs(cam - reference).max():.1e}")
            print(f"| {name} | {method} | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shapes_resnet,resnet50," + ",".join(TORCHVISION))
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or tensorrt")
    parser.add_argument("--agreement", action="store_true", help="eigen methods' agreement with NumPy instead")
    args = parser.parse_args(argv)
    if args.agreement:
        agreement(args.models.split(","), [2, 4, 8, 12])
        return 0
    providers = choose_providers(args.device)
    print(f"{args.method}, batch {args.batch}, {providers[0]}; onnxruntime {ort.__version__}, onnxcam "
          f"{onnxcam.__version__}, {os.cpu_count()} logical CPUs; median of {args.repeat} round-robin rounds after "
          f"{args.warmup} warm-up runs each")
    print()
    print("| model | input | layer | plain ms | exported ms | ratio | target | result |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    failed = False
    for name in args.models.split(","):
        found = model_path(name)
        if found is None:
            print(f"| {name} | | skipped: needs torch and torchvision | | | | | |")
            continue
        path, size = found
        plain, exported, layer = measure(path, size, args.batch, args.repeat, args.warmup, args.method, providers)
        ratio = exported / plain
        ok = ratio <= TARGET or args.method != "gradcam"
        failed |= not ok
        print(f"| {name} | {size}x{size} | `{layer}` | {plain * 1e3:.1f} | {exported * 1e3:.1f} | {ratio:.2f}x | "
              f"≤ {TARGET:.2f}x | {'PASS' if ok else 'FAIL'} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
