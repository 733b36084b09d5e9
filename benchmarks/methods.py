"""Per-image time of every CAM method next to a plain forward pass, measured in one run.

ResNet-18 and ResNet-50 (torchvision architectures, random weights, built without torch by
models/build_resnet.py) at 224x224 on the CPU provider. With torch and pytorch-grad-cam installed
(`pip install -e ".[parity]"`), the same methods are timed on torchvision's models and the speed-up printed.

    python benchmarks/methods.py [--depths 18,50] [--images 2] [--repeat 3] [--methods gradcam,scorecam]
    python benchmarks/methods.py --scorecam-parity [--depths 50] [--images 1] [--size 112]

--scorecam-parity compares Score-CAM with pytorch-grad-cam's on the same weights: torchvision's ResNet (random
weights, seed 0) exported to ONNX, both explaining the same images at the last stage; it prints both times, the
speed-up and the correlation of the maps (issue 20's targets: >= 3x, r >= 0.99).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars would fill the table
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradients import _cpu_name, resnet_path  # noqa: E402

from onnxcam.explainer import Explainer  # noqa: E402
from onnxcam.methods import METHODS  # noqa: E402
from onnxcam.runtime import make_session  # noqa: E402

# Methods whose cost is K forward passes (K = channels): timed once, on the exact method unless noted.
PERTURBATION = {"scorecam", "sscam", "iscam"}
EXPENSIVE = PERTURBATION | {"ablationcam"}
# Options for the benchmark run: SS-CAM and IS-CAM are 35x and 10x Score-CAM, so they get a channel budget.
OPTIONS: dict[str, dict[str, object]] = {"sscam": {"channels": 64}, "iscam": {"channels": 64}}
TARGETS = {"gradient": 1.15, "eigencam": 1.10}
ABLATION_TARGET = 3.0          # ablationcam on ResNet-50's last stage
SCORE_SPEEDUP_TARGET = 3.0     # Score-CAM family vs pytorch-grad-cam (issue 20)
SCORE_PARITY_TARGET = 0.99     # correlation of Score-CAM maps with pytorch-grad-cam's on the same weights
GRADCAM_CLASSES = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise", "layercam": "LayerCAM", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "fullgrad": "FullGrad",
    "random": "RandomCAM",
}


def median_time(fn: Callable[[], object], repeat: int, warmup: Callable[[], object] | None = None) -> float:
    (warmup or fn)()  # sessions, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_timer(depth: int, x: np.ndarray, targets: list[int]) -> Callable[[str, bool, int], float | None] | None:
    """Times pytorch-grad-cam on torchvision's ResNet of the same depth, or None without torch."""
    try:
        import pytorch_grad_cam
        import torch
        import torchvision
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None
    torch.set_num_threads(2)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    tensor = torch.from_numpy(x)
    classes = [ClassifierOutputTarget(t) for t in targets]

    def run(method: str, expensive: bool, repeat: int) -> float | None:
        name = GRADCAM_CLASSES.get(method)
        if name is None:
            return None
        cam = getattr(pytorch_grad_cam, name)(model=model, target_layers=[model.layer4[-1]])
        if hasattr(cam, "batch_size"):
            cam.batch_size = 32  # as onnxcam's default
        call = partial(cam, input_tensor=tensor, targets=classes)
        cheap = partial(cam, input_tensor=tensor[:1], targets=classes[:1])
        return median_time(call, 1 if expensive else repeat, cheap if expensive else None) / len(x)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="18,50")
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of the cheap methods")
    parser.add_argument("--methods", default=",".join(sorted(METHODS)))
    parser.add_argument("--no-torch", action="store_true", help="skip the pytorch-grad-cam timings")
    parser.add_argument("--scorecam-parity", action="store_true",
                        help="only Score-CAM against pytorch-grad-cam on the same (exported) weights")
    args = parser.parse_args(argv)
    if args.scorecam_parity:
        return scorecam_parity([int(d) for d in args.depths.split(",")], args.images, args.size)
    methods = [m for m in args.methods.split(",") if m]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.images, 3, args.size, args.size)).astype(np.float32)
    targets = list(range(args.images))
    print(f"CPU: {_cpu_name()}; {args.images} images of {args.size}x{args.size}; times are per image (ms)")
    failed = False
    for depth in [int(d) for d in args.depths.split(",")]:
        path, _ = resnet_path(depth, args.size)
        plain = make_session(path, ["CPUExecutionProvider"])
        forward = median_time(partial(plain.run, ["logits"], {"input": x}), max(args.repeat, 5)) / len(x)
        explainer = Explainer(path, device="cpu")
        reference = None if args.no_torch else torch_timer(depth, x, targets)
        print(f"\n### ResNet-{depth} (layer `{explainer.default_layer}`), plain forward {forward * 1e3:.1f} ms/image\n")
        print("| method | ms / image | ratio to forward | target | pytorch-grad-cam ms / image | speed-up |")
        print("|---|---:|---:|---|---:|---:|")
        for name in methods:
            options = OPTIONS.get(name, {})
            expensive = name in EXPENSIVE
            # Expensive methods: one timed run, after a warm-up on one channel that creates the sessions.
            warmup = partial(explainer.explain, x[:1], name, targets=targets[:1], channels=1) if expensive else None
            seconds = median_time(partial(explainer.explain, x, name, targets=targets, **options),
                                  1 if expensive else args.repeat, warmup) / len(x)
            ratio = seconds / forward
            target, ok = _target(name, depth, ratio)
            theirs = reference(name, expensive, args.repeat) if reference else None
            speedup = theirs / seconds if theirs else None
            if name in PERTURBATION and speedup is not None and not options:
                target, ok = f"≥ {SCORE_SPEEDUP_TARGET:.0f}x faster", speedup >= SCORE_SPEEDUP_TARGET
            failed |= ok is False
            label = name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
            verdict = "" if ok is None else (" PASS" if ok else " FAIL")
            print(f"| {label} | {seconds * 1e3:.1f} | {ratio:.2f}x | {target}{verdict} | "
                  f"{'-' if theirs is None else f'{theirs * 1e3:.1f}'} | "
                  f"{'-' if speedup is None else f'{speedup:.1f}x'} |")
    return 1 if failed else 0


def scorecam_parity(depths: list[int], images: int, size: int) -> int:
    """Score-CAM of onnxcam and of pytorch-grad-cam on one torchvision ResNet (random weights, exported to ONNX):
    seconds per image, speed-up and the maps' correlation."""
    import pytorch_grad_cam
    import torch
    import torchvision
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(os.cpu_count() or 1)
    x = np.random.default_rng(0).standard_normal((images, 3, size, size)).astype(np.float32)
    failed = False
    print(f"CPU: {_cpu_name()}; {images} image(s) of {size}x{size}; Score-CAM at the last stage, batch 32 both")
    print("\n| model | onnxcam s / image | pytorch-grad-cam s / image | speed-up | r (min over images) |")
    print("|---|---:|---:|---:|---:|")
    for depth in depths:
        torch.manual_seed(0)
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
        path = Path(__file__).resolve().parent / "_models" / f"torchvision_resnet{depth}_{size}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        with torch.no_grad():
            targets = model(torch.from_numpy(x)).argmax(dim=1).tolist()
        explainer = Explainer(path, device="cpu")
        explainer.explain(x[:1], "scorecam", targets=targets[:1], channels=1)  # sessions made before the clock
        start = time.perf_counter()
        ours = explainer.explain(x, "scorecam", targets=targets)
        ours_seconds = (time.perf_counter() - start) / images
        cam = pytorch_grad_cam.ScoreCAM(model=model, target_layers=[model.layer4[-1]])
        cam.batch_size = 32
        start = time.perf_counter()
        theirs = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in targets])
        theirs_seconds = (time.perf_counter() - start) / images
        r = min(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs))
        speedup = theirs_seconds / ours_seconds
        failed |= speedup < SCORE_SPEEDUP_TARGET or r < SCORE_PARITY_TARGET
        print(f"| ResNet-{depth} | {ours_seconds:.1f} | {theirs_seconds:.1f} | {speedup:.2f}x | {r:.4f} |")
    return 1 if failed else 0


def _target(name: str, depth: int, ratio: float) -> tuple[str, bool | None]:
    spec = METHODS[name]
    if name == "eigencam":
        return f"≤ {TARGETS['eigencam']:.2f}x", ratio <= TARGETS["eigencam"]
    if spec.family == "gradient" and spec.needs == "gradients" and name != "smoothgradcam++":
        return f"≤ {TARGETS['gradient']:.2f}x", ratio <= TARGETS["gradient"]
    if name == "ablationcam" and depth == 50:
        return f"≤ {ABLATION_TARGET:.0f}x", ratio <= ABLATION_TARGET
    return "-", None


if __name__ == "__main__":
    sys.exit(main())
