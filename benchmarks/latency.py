"""Time to first map, memory and disk for one image through ResNet-50, against a bare onnxruntime script.

    python benchmarks/latency.py [--depth 50] [--size 224] [--repeat 3] [--batch 8] [--calls 6] [--device cpu]

Every measurement runs in a fresh Python process (the way a user meets onnxcam), on the CPU provider (CUDA or
TensorRT with --device cuda / tensorrt, for the bare script and onnxcam alike) with onnxruntime's default thread
count, on a random-weight torchvision ResNet built without torch
(models/build_resnet.py, cached in benchmarks/_models/) and one 640 x 480 JPEG:

  bare script      python: import onnxruntime + OpenCV, create a session on the model, decode and resize the image,
                   one forward (what a user writes without onnxcam); wall time of the whole process
  onnxcam cold     `python -m onnxcam explain MODEL IMAGE --device cpu` with an empty cache folder
  onnxcam warm     the same, with the cache the cold run left
  --help           `python -m onnxcam --help` (and `python -c pass`, the interpreter's own floor)
  gradients loop   onnxcam.gradients(path, x) called `calls` times on a batch of `batch` (one process), per call
                   after the first, against a forward of the plain model's session in the same process
  5 methods        peak RSS (getrusage of the child) of `explain` with gradcam, gradcam++, eigencam, ablationcam and
                   reciprocam, against the bare script's; and how many bytes that run added to an empty cache

The checkout's bytecode is compiled first, as `pip install` does. Timings are medians over `repeat` runs (cold
and warm alternate so drift hits both); ratios are to the bare script measured in the same run. The last lines
compare them with issue 20's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gradients import PROVIDERS, resnet_path  # noqa: E402  (the torch-free ResNet builder and its cache)

FIVE_METHODS = "gradcam,gradcam++,eigencam,ablationcam,reciprocam"

BARE = """
import sys
import cv2
import numpy as np
import onnxruntime as ort

session = ort.InferenceSession(sys.argv[1], providers=sys.argv[4].split(","))
size = int(sys.argv[3])
rgb = cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
pixels = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
x = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)[None]
scores = session.run(None, {session.get_inputs()[0].name: x})[0]
print(int(scores.argmax()))
"""

LOOP = """
import json, sys, time
import numpy as np
import onnxruntime as ort
import onnxcam

path, batch, size, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
plain = ort.InferenceSession(path, providers=sys.argv[5].split(","))
name = plain.get_inputs()[0].name
plain.run(None, {name: x})
forward, per_call = [], []
for i in range(calls):  # interleaved, so load changes hit both alike
    start = time.perf_counter()
    onnxcam.gradients(path, x, device=sys.argv[6])
    per_call.append(time.perf_counter() - start)
    start = time.perf_counter()
    plain.run(None, {name: x})
    forward.append(time.perf_counter() - start)
print(json.dumps({"first": per_call[0], "calls": per_call[1:], "forward": forward}))
"""


WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
sys.stderr.write("peak_kib=%d\\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def measured(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds of `args`, its peak RSS in MiB, its stdout): run under a wrapper process whose only child it is,
    so getrusage(RUSAGE_CHILDREN) is that child's peak alone."""
    start = time.perf_counter()
    # run from the measured checkout: `python -m` and `-c` put the current folder first on sys.path
    process = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, env=env,
                             cwd=env.get("ONNXCAM_CHECKOUT", ROOT))
    seconds = time.perf_counter() - start
    err = process.stderr.decode()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args[:5])}... failed ({process.returncode}):\n{err[-3000:]}")
    peak = next(int(line.split("=")[1]) for line in err.splitlines() if line.startswith("peak_kib="))
    return seconds, peak / 1024, process.stdout.decode()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def write_image(path: Path) -> None:
    """A 640 x 480 photo-like JPEG: smooth shapes plus noise, so decoding costs what a photo's does."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    image = np.stack([128 + 100 * np.sin(xx / 40.0 + c) * np.cos(yy / 55.0 - c) for c in range(3)], axis=-1)
    image += rng.normal(0, 20, image.shape)
    cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth: 18, 34, 50, 101 or 152")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed process (median)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the gradients loop")
    parser.add_argument("--calls", type=int, default=6, help="onnxcam.gradients calls in the loop")
    parser.add_argument("--device", choices=sorted(PROVIDERS), default="cpu",
                        help="execution provider of the bare script and of onnxcam (cuda, tensorrt: a GPU machine)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the onnxcam checkout to measure (default: this one), e.g. an older commit's")
    args = parser.parse_args(argv)
    providers = PROVIDERS[args.device]

    model, _ = resnet_path(args.depth, args.size)
    checkout = args.root.resolve()
    env = {**os.environ, "ONNXCAM_CHECKOUT": str(checkout),
           "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    python = sys.executable
    # a pip install compiles the package's bytecode; a checkout run with PYTHONDONTWRITEBYTECODE would recompile
    # every module on every start and measure the compiler, not onnxcam
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([python, "-m", "compileall", "-q", str(checkout / "onnxcam")], check=True, capture_output=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = "  (busy machine: timings are noisy)" if load > 0.5 else ""
    print(f"onnxcam in {checkout}")
    print(f"ResNet-{args.depth} {args.size}x{args.size} ({model.stat().st_size / 2**20:.0f} MiB), CPU provider, "
          f"{os.cpu_count()} cores, load average {load:.2f}{busy}")
    before = _temporary_folders()
    with tempfile.TemporaryDirectory(prefix="onnxcam-latency-") as tmp:
        root = Path(tmp)
        image = root / "photo.jpg"
        write_image(image)
        bare_cmd = [python, "-c", BARE, str(model), str(image), str(args.size), ",".join(providers)]
        explain = [python, "-m", "onnxcam", "explain", str(model), str(image), "--device", args.device]
        bare, cold, warm, bare_rss = [], [], [], []
        for i in range(args.repeat):
            seconds, peak, _ = measured(bare_cmd, env)
            bare.append(seconds)
            bare_rss.append(peak)
            cache = root / f"cache{i}"
            run_env = {**env, "ONNXCAM_CACHE": str(cache)}
            cold.append(measured([*explain, "--out", str(root / f"cold{i}")], run_env)[0])
            warm.append(measured([*explain, "--out", str(root / f"warm{i}")], run_env)[0])
            shutil.rmtree(cache, ignore_errors=True)
        help_times = [measured([python, "-m", "onnxcam", "--help"], env)[0] for _ in range(args.repeat)]
        floor = [measured([python, "-c", "pass"], env)[0] for _ in range(args.repeat)]

        cache = root / "cache-five"
        five = [*explain, "--method", FIVE_METHODS]
        five_seconds, five_rss, _ = measured([*five, "--out", str(root / "five")], {**env, "ONNXCAM_CACHE": str(cache)})
        growth = folder_bytes(cache)
        five_warm_seconds, five_warm_rss, _ = measured([*five, "--out", str(root / "five-warm")],
                                                       {**env, "ONNXCAM_CACHE": str(cache)})

        loop_cache = root / "cache-loop"
        _, loop_rss, out = measured([python, "-c", LOOP, str(model), str(args.batch), str(args.size),
                                     str(args.calls), ",".join(providers), args.device],
                                    {**env, "ONNXCAM_CACHE": str(loop_cache)})
        loop = json.loads(out.strip().splitlines()[-1])

    leftovers = len(_temporary_folders() - before)  # an unwritable cache must not leave one per run
    med = statistics.median
    b, c, w = med(bare), med(cold), med(warm)
    per_call, forward = med(loop["calls"]), med(loop["forward"])
    weights = model.stat().st_size
    rows = [
        ("bare script (session + resize + forward)", f"{b:.2f} s", "1.00x", ""),
        ("onnxcam explain, cold cache", f"{c:.2f} s", f"{c / b:.2f}x", "<= 2.5x"),
        ("onnxcam explain, warm cache", f"{w:.2f} s", f"{w / b:.2f}x", "<= 1.5x"),
        ("onnxcam --help", f"{med(help_times):.2f} s", f"python -c pass: {med(floor):.2f} s", "<= 0.3 s"),
        (f"onnxcam.gradients, batch {args.batch}, per call after the first", f"{per_call:.3f} s",
         f"{per_call / forward:.2f}x forward ({forward:.3f} s)", "<= 1.15x"),
        ("onnxcam.gradients, first call", f"{loop['first']:.2f} s", f"{loop['first'] / forward:.1f}x forward", ""),
        ("peak RSS, bare script", f"{med(bare_rss):.0f} MiB", "1.00x", ""),
        (f"peak RSS, explain with {FIVE_METHODS}, warm cache", f"{five_warm_rss:.0f} MiB",
         f"{five_warm_rss / med(bare_rss):.2f}x", "<= 1.3x"),
        ("the same, cold cache (rewrites and optimises)", f"{five_rss:.0f} MiB", f"{five_rss / med(bare_rss):.2f}x",
         ""),
        ("cache growth of the cold run", f"{growth / 2**20:.1f} MiB",
         f"{(growth - weights) / 2**20:+.1f} MiB vs one copy of the weights ({weights / 2**20:.0f} MiB)",
         "<= +10 MiB"),
        ("5-method run time, cold / warm", f"{five_seconds:.2f} s / {five_warm_seconds:.2f} s", "", ""),
        ("peak RSS, gradients loop", f"{loop_rss:.0f} MiB", "", ""),
    ]
    print("\n| measurement | value | ratio / note | target |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nruns: bare {_fmt(bare)}; cold {_fmt(cold)}; warm {_fmt(warm)}; gradients per call {_fmt(loop['calls'])}; "
          f"forward {_fmt(loop['forward'])}")
    print(f"temporary onnxcam-* folders left in {tempfile.gettempdir()} by these runs: {leftovers}")
    return 0


def _temporary_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("onnxcam-*")}


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    raise SystemExit(main())
