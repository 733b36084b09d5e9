"""Parity of onnxcam's CAM methods with pytorch-grad-cam, the reference implementation, on torchvision models.

Dev tool (needs torch, torchvision and grad-cam; `pip install -e .[parity]`). From the repository root:

    python tests/parity/run_parity.py                    # five torchvision models, every method (~20 min, 2 cores)
    python tests/parity/run_parity.py --models vgg11     # VGG-11 at 224x224 (~12 min)
    python tests/parity/run_parity.py --models resnet18 --methods gradcam scorecam --size 96

It prints a markdown table (method x model -> smallest r) with notes; the exit code is 1 when a method misses.

For each model: random weights (fixed seed) with BatchNorm running statistics far from (0, 1) (so folding mistakes
show; models/torch_exports/export.py's `randomise`), eval mode, exported to ONNX by torch's TorchScript exporter
(opset 17, constant folding, dynamic batch) into a temporary folder. Two images (standard normal), two different
target classes. The torch target layer is the module whose output is onnxcam's default layer; that is checked
first by comparing its activation and gradient with onnxcam.gradients. Each method then runs in both projects and
the score is Pearson's r between the two maps (N, H, W), per image, at the input size, both in [0, 1]; the table
shows the smallest r over the images and a method passes with r >= 0.99.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import densenet

import onnxcam
from onnxcam.explainer import Explainer

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 0.99
SEED = 0


def _exporter() -> Any:
    """models/torch_exports/export.py (a script, not a package): its `randomise` and `export`."""
    name = "onnxcam_torch_export"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "models" / "torch_exports" / "export.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


# --- models -----------------------------------------------------------------------------------------------------
class DenseNetReLU(densenet.DenseNet):
    """torchvision's DenseNet with its functional final ReLU made a module (the same function), so that a hook can
    see the tensor onnxcam picks by default: relu(features(x)), the input of the global pooling."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.final_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.final_relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[[], nn.Module]
    layer: Callable[[Any], nn.Module]  # the torch module whose output is onnxcam's default layer
    classes: int = 1000
    size: int | None = None  # a fixed input size, where the model needs one


def _narrow(name: str) -> Callable[[], nn.Module]:
    """A reduced-width builder from models/torch_exports/export.py (10 classes), for the fast pytest module."""
    return lambda: getattr(_exporter(), name)()


MODELS = [
    Model("resnet18", lambda: torchvision.models.resnet18(), lambda m: m.layer4),
    Model("mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(), lambda m: m.features),
    Model("densenet121", lambda: DenseNetReLU(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
          lambda m: m.final_relu),
    Model("efficientnet_b0", lambda: torchvision.models.efficientnet_b0(), lambda m: m.features),
    Model("convnext_tiny", lambda: torchvision.models.convnext_tiny(), lambda m: m.features),
    # 224: below it the TorchScript exporter cannot write VGG's adaptive_avg_pool2d (7 must divide the feature size)
    Model("vgg11", lambda: torchvision.models.vgg11(), lambda m: m.avgpool, size=224),
    # reduced widths (models/torch_exports): seconds instead of minutes
    Model("resnet-narrow", _narrow("SmallResNet"), lambda m: m.layer4, 10),
    Model("efficientnet-narrow", _narrow("_build_efficientnet"), lambda m: m.features, 10),
    Model("convnext-narrow", _narrow("_build_convnext"), lambda m: m.features, 10),
]
DEFAULT_MODELS = ["resnet18", "mobilenet_v3_small", "densenet121", "efficientnet_b0", "convnext_tiny"]


# --- methods ----------------------------------------------------------------------------------------------------
class ZeroAblation(AblationLayer):
    """pytorch-grad-cam's AblationLayer, ablating with 0 always (onnxcam's and the paper's choice). The stock layer
    uses 0 only when the whole batch's minimum is exactly 0, else `min - 1e7` (see the notes)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        output = self.activations
        for i in range(output.size(0)):
            output[i, self.indices[i], :] = 0
        return output


@dataclass(frozen=True)
class Method:
    name: str                 # onnxcam's name (the table's row)
    method: str               # onnxcam method
    reference: Callable[[nn.Module, list[nn.Module]], Any]
    options: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] = field(default_factory=dict)  # extra arguments of both calls (eigen_smooth, aug_smooth)
    note: str = ""
    gated: bool = True        # False: shown for information, a known difference of convention; never fails a run
    zero_min_same_as: str = ""  # a method whose reference run is identical when the layer's minimum is exactly 0


def _with_batch(cam: Any, size: int = 32) -> Any:
    cam.batch_size = size  # ScoreCAM reads it when present (else 16); only speed depends on it
    return cam


METHODS = [
    Method("gradcam", "gradcam", GradCAM),
    Method("gradcam++", "gradcam++", GradCAMPlusPlus),
    Method("xgradcam", "xgradcam", XGradCAM),
    Method("hirescam", "hirescam", HiResCAM),
    Method("gradcam-elementwise", "gradcam-elementwise", GradCAMElementWise),
    Method("layercam", "layercam", LayerCAM),
    Method("eigencam", "eigencam", EigenCAM, {"eigen_sign": "svd"},
           note="onnxcam `eigen_sign=\"svd\"` (LAPACK's sign, as the reference; onnxcam's default flips the "
                "component to correlate with the activation sum)"),
    Method("eigengradcam", "eigengradcam", EigenGradCAM, {"eigen_sign": "svd"}, note="as eigencam"),
    Method("scorecam", "scorecam", lambda m, layers: _with_batch(ScoreCAM(m, layers)),
           note="onnxcam defaults: masks upsampled with align_corners=True, softmax over channels of the target "
                "logits, as the reference. Min-max per channel makes a near-constant channel (dead SiLU units, "
                "values ~ -1e-6) a full-range mask, so float32 noise there (onnxruntime's Sigmoid has an absolute "
                "error ~5e-8, i.e. 10-100% below x = -15) changes whole masks: see tests/parity/README.md"),
    Method("ablationcam", "ablationcam",
           lambda m, layers: AblationCAM(m, layers, ablation_layer=ZeroAblation(), batch_size=32),
           note="reference with an ablation layer that writes 0 (onnxcam's ablation value, the paper's)"),
    Method("ablationcam (stock reference)", "ablationcam",
           lambda m, layers: AblationCAM(m, layers, ablation_layer=AblationLayer(), batch_size=32),
           note="the reference's own AblationLayer: 0 when the image's layer minimum is exactly 0 (ReLU layers: "
                "then the run is the ablationcam row's), else min - 1e7 (growing by 1e7 per channel of a batch, as "
                "it re-reads the minimum after each write); onnxcam always writes 0 and has no option for this",
           gated=False, zero_min_same_as="ablationcam"),
    Method("fullgrad", "fullgrad", lambda m, layers: FullGrad(m, []),
           note="target layer ignored by both; bias layers: torch Conv2d/BatchNorm2d with a bias, onnxcam Conv "
                "with a bias / BatchNormalization (the exporter folds BatchNorm into the Conv before it)"),
    Method("gradcam + eigen_smooth", "gradcam", GradCAM, {"eigen_sign": "svd"}, call={"eigen_smooth": True},
           note="onnxcam `eigen_sign=\"svd\"` as for eigencam (its default orients the component with the "
                "activations)"),
    Method("gradcam + aug_smooth", "gradcam", GradCAM, call={"aug_smooth": True}),
]


# --- one model --------------------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    model: str
    layer: str
    torch_layer: str
    activation_error: float   # max |onnxcam - torch| / max |torch| at the layer
    gradient_error: float
    minimum_zero: bool        # every image's layer minimum is exactly 0 (a ReLU layer)
    size: int = 0             # input height and width
    r: dict[str, list[float]] = field(default_factory=dict)      # method -> r per image
    seconds: dict[str, tuple[float, float]] = field(default_factory=dict)  # method -> (onnxcam, reference)
    errors: dict[str, str] = field(default_factory=dict)

    def failures(self, methods: list[Method]) -> list[str]:
        gated = {m.name for m in methods if m.gated}
        return [f"{name}: r = {min(r):.4f}" for name, r in self.r.items() if name in gated and min(r) < THRESHOLD]


def prepare(spec: Model, index: int, size: int, folder: Path) -> tuple[nn.Module, Path, np.ndarray, np.ndarray]:
    """The randomised torch model in eval mode, its ONNX export, two images and two different classes."""
    exporter = _exporter()
    gen = torch.Generator().manual_seed(SEED + index)
    torch.manual_seed(SEED + index)
    model = spec.build()
    exporter.randomise(model, (3, size, size), gen)
    rng = np.random.default_rng(SEED + index)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    classes = rng.choice(spec.classes, size=2, replace=False).astype(np.int64)
    path = folder / f"{spec.name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exporter.export(model, torch.from_numpy(x), path, 17, False, True)
    return model, path, x, classes


def _targets(classes: np.ndarray) -> list[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(int(c)) for c in classes]


def reference_maps(model: nn.Module, layer: nn.Module, method: Method, x: np.ndarray,
                   classes: np.ndarray) -> np.ndarray:
    cam = method.reference(model, [layer])
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # tqdm bars
            maps = cam(input_tensor=torch.from_numpy(x), targets=_targets(classes), **method.call)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(maps, np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Pearson r per image; a constant map (e.g. all zero after ReLU) counts as 1 against an equal map, else 0."""
    out = []
    for u, v in zip(a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)):
        if u.std() == 0 or v.std() == 0:
            out.append(1.0 if np.allclose(u, v) else 0.0)
        else:
            out.append(float(np.corrcoef(u, v)[0, 1]))
    return out


def check_layer(model: nn.Module, layer: nn.Module, path: Path, explainer: Explainer, x: np.ndarray,
                classes: np.ndarray) -> tuple[float, float, bool]:
    """Relative max errors of onnxcam's default-layer activation and gradient against the torch module's, and
    whether every image's activation has minimum 0."""
    cam = GradCAM(model, [layer])
    try:
        cam(input_tensor=torch.from_numpy(x), targets=_targets(classes))
        act = cam.activations_and_grads.activations[0].numpy()
        grad = cam.activations_and_grads.gradients[0].numpy()
    finally:
        cam.activations_and_grads.release()
    minimum_zero = bool(np.all(act.reshape(len(act), -1).min(axis=1) == 0))
    res = onnxcam.gradients(path, x, layers=[explainer.default_layer], targets=classes,
                            providers=["CPUExecutionProvider"])
    got_act, got_grad = res.activations[explainer.default_layer], res.gradients[explainer.default_layer]
    if got_act.shape != act.shape:
        return float("inf"), float("inf"), minimum_zero
    return (float(np.abs(got_act - act).max() / np.abs(act).max()),
            float(np.abs(got_grad - grad).max() / np.abs(grad).max()), minimum_zero)


def run_model(spec: Model, index: int, methods: list[Method], size: int, folder: Path,
              log: Callable[[str], None] = lambda s: None) -> ModelResult:
    model, path, x, classes = prepare(spec, index, spec.size or size, folder)
    explainer = Explainer(path, providers=["CPUExecutionProvider"])
    layer = spec.layer(model)
    torch_layer = next(n for n, m in model.named_modules() if m is layer)
    result = ModelResult(spec.name, explainer.default_layer, torch_layer,
                         *check_layer(model, layer, path, explainer, x, classes), size=x.shape[-1])
    log(f"{spec.name}: default layer '{result.layer}' = torch '{torch_layer}' (activation error "
        f"{result.activation_error:.1e}, gradient error {result.gradient_error:.1e})")
    for method in methods:
        if result.minimum_zero and method.zero_min_same_as in result.r:
            result.r[method.name] = result.r[method.zero_min_same_as]
            log(f"  {method.name}: the same runs as {method.zero_min_same_as} (the layer's minimum is 0)")
            continue
        try:
            start = time.perf_counter()
            ours = explainer.explain(x, method.method, [int(c) for c in classes], **method.call, **method.options)
            middle = time.perf_counter()
            theirs = reference_maps(model, layer, method, x, classes)
            end = time.perf_counter()
        except Exception as error:  # a failing method is a table entry, not the end of the run
            result.errors[method.name] = f"{type(error).__name__}: {error}"
            log(f"  {method.name}: {result.errors[method.name]}")
            continue
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        result.r[method.name] = pearson(ours, theirs)
        result.seconds[method.name] = (middle - start, end - middle)
        log(f"  {method.name}: r = {', '.join(f'{r:.5f}' for r in result.r[method.name])} "
            f"({middle - start:.1f} s onnxcam, {end - middle:.1f} s reference)")
    return result


# --- report -----------------------------------------------------------------------------------------------------
def table(results: list[ModelResult], methods: list[Method]) -> str:
    lines = ["| method | " + " | ".join(r.model for r in results) + " |",
             "| --- |" + " ---: |" * len(results)]
    for method in methods:
        cells = []
        for res in results:
            if method.name in res.errors:
                cells.append("error")
            elif method.name in res.r:
                r = min(res.r[method.name])
                cells.append(f"{r:.4f}" + ("" if r >= THRESHOLD else " **FAIL**" if method.gated else " (†)"))
            else:
                cells.append("-")
        lines.append(f"| {method.name}{'' if method.gated else ' †'} | " + " | ".join(cells) + " |")
    lines += ["", "| model | input | onnxcam default layer | torch module | activation error | gradient error |",
              "| --- | --- | --- | --- | ---: | ---: |"]
    lines += [f"| {r.model} | {r.size}x{r.size} | `{r.layer}` | `{r.torch_layer}` | {r.activation_error:.1e} | "
              f"{r.gradient_error:.1e} |" for r in results]
    notes = [f"- {m.name}{'' if m.gated else ' †'}: {m.note}" for m in methods if m.note]
    errors = [f"- {r.model} / {name}: {text}" for r in results for name, text in r.errors.items()]
    return "\n".join(lines + ["", "Errors are max |onnxcam - torch| / max |torch| at the layer (float32). "
                                  "† a known difference of convention, shown for information (never a failure)."]
                     + ([""] + notes if notes else []) + ([""] + errors if errors else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS,
                        choices=[m.name for m in MODELS])
    parser.add_argument("--methods", nargs="*", default=[m.name for m in METHODS], choices=[m.name for m in METHODS])
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    chosen = [m for m in METHODS if m.name in args.methods]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ONNXCAM_CACHE"] = str(Path(tmp) / "cache")  # rewritten models (VGG's: 0.5 GB) go with it
        for index, spec in enumerate(MODELS):  # the seed is the model's index in MODELS
            if spec.name in args.models:
                results.append(run_model(spec, index, chosen, args.size, Path(tmp),
                                         lambda s: print(s, file=sys.stderr, flush=True)))
    print(f"Pearson r between onnxcam and pytorch-grad-cam maps, smallest over 2 images (two different classes); "
          f"pass: r >= {THRESHOLD}\n")
    print(table(results, chosen))
    return 1 if any(r.failures(chosen) or r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
