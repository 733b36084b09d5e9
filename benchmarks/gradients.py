"""Cost of onnxcam's in-graph gradients relative to a plain forward pass, measured in one run.

Builds a random-weight torchvision ResNet (cached under benchmarks/_models/), then times on the CPU provider
(or CUDA / TensorRT with --device):
the unmodified model, and the rewritten model returning scores, activations and gradients at the default layer
(last stage output), at a middle layer (output of layer3) and at the input. Variants run round-robin, with the
starting variant rotated each round, so frequency drift and cache effects hit all of them alike; the table shows
medians and each variant's ratio to the plain forward.

    python benchmarks/gradients.py [--depth 50] [--batch 8] [--size 224] [--repeat 7] [--device cpu|cuda|tensorrt]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxcam  # noqa: E402
from onnxcam.runtime import make_session  # noqa: E402

CACHE = Path(__file__).resolve().parent / "_models"
BUILDER = ROOT / "models" / "build_resnet.py"
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def _load_builder():  # models/ is a folder of scripts, not a package
    spec = importlib.util.spec_from_file_location("build_resnet", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet_path(depth: int, size: int) -> tuple[Path, str]:
    """The cached model (rebuilt when the builder script is newer) and the name of layer3's output."""
    builder = _load_builder()
    path = CACHE / f"resnet{depth}_{size}.onnx"
    if not path.is_file() or path.stat().st_mtime < BUILDER.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        onnx.save(builder.build_resnet(depth, image_size=size), str(path))
    return path, builder.stage_output(depth, 3)


@dataclass
class Variant:
    name: str
    layer: str
    target: float | None    # highest acceptable ratio to the plain forward
    run: Callable[[], object]
    times: list[float]


def _threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth: 18, 34, 50, 101 or 152")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (each variant once per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each variant first")
    parser.add_argument("--device", choices=sorted(PROVIDERS), default="cpu",
                        help="execution provider of both the plain and the rewritten model")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    path, middle = resnet_path(args.depth, args.size)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)

    before = _threads()
    providers = PROVIDERS[args.device]
    plain = make_session(path, providers)  # same session options as onnxcam's own sessions
    pool = _threads() - before  # onnxruntime starts intra-op threads - 1 workers per session
    threads = f"{pool + 1} intra-op (1 caller + {pool} pool workers)" if before else "unknown (no /proc)"

    setup = time.perf_counter()
    default = onnxcam.ReverseRunner(path, providers=providers)
    at_middle = onnxcam.ReverseRunner(path, layers=middle, providers=providers)
    at_input = onnxcam.ReverseRunner(path, with_input=True, providers=providers)
    setup = time.perf_counter() - setup

    variants = [
        Variant("forward (plain model)", "-", None, lambda: plain.run(["logits"], {"input": x}), []),
        Variant("forward + gradient, default layer", default.default_layer, 1.10, lambda: default.run(x), []),
        Variant("forward + gradient, middle layer", middle, 2.0, lambda: at_middle.run(x), []),
        Variant("forward + gradient, input", "input", 3.0, lambda: at_input.run(x), []),
    ]
    for variant in variants:
        for _ in range(args.warmup):
            variant.run()
    for round_ in range(args.repeat):
        for i in range(len(variants)):
            variant = variants[(round_ + i) % len(variants)]
            variant.times.append(_time(variant.run))

    base = statistics.median(variants[0].times)
    print(f"ResNet-{args.depth}, batch {args.batch} x 3 x {args.size} x {args.size}, float32, "
          f"{'+'.join(plain.get_providers())}; onnxruntime {ort.__version__}, onnxcam {onnxcam.__version__}")
    print(f"CPU: {_cpu_name()} ({os.cpu_count()} logical CPUs); onnxruntime threads: {threads}")
    print(f"median of {args.repeat} round-robin rounds after {args.warmup} warm-up runs each; "
          f"rewrite + session setup {setup:.1f} s (cached rewrites load faster)")
    if load > 0.5:
        print(f"warning: load average {load:.1f} before the run; other processes compete for the CPU")
    print()
    print("| run | layer | median ms | min–max ms | ratio to forward | target | result |")
    print("|---|---|---:|---:|---:|---:|---|")
    failed = False
    for variant in variants:
        median = statistics.median(variant.times)
        ratio = median / base
        ok = variant.target is None or ratio <= variant.target
        failed |= not ok
        target = "-" if variant.target is None else f"≤ {variant.target:.2f}x"
        result = "-" if variant.target is None else ("PASS" if ok else "FAIL")
        print(f"| {variant.name} | `{variant.layer}` | {median * 1e3:.1f} | {min(variant.times) * 1e3:.1f}–"
              f"{max(variant.times) * 1e3:.1f} | {ratio:.2f}x | {target} | {result} |")
    return 1 if failed else 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
