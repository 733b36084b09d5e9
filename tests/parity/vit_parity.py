"""Parity of onnxcam on transformer token layers with pytorch-grad-cam and its `reshape_transform`s.

Dev tool (needs torch, torchvision and grad-cam; `pip install -e .[parity]`). From the repository root:

    python tests/parity/vit_parity.py            # ViT and Swin, torchscript (opset 17) and dynamo (opset 18) exports
    python tests/parity/vit_parity.py --models vit --exporters dynamo --methods gradcam scorecam

It prints a markdown table (method x model/export -> smallest r over two images); the exit code is 1 when a method
misses r >= 0.99.

ViT: torchvision's `VisionTransformer(image_size=96, patch_size=16, num_layers=4, num_heads=4, hidden_dim=64,
mlp_dim=128, num_classes=10)` (a 6x6 grid of patches after the class token). The layer is onnxcam's default, which
must be the output of the last encoder block's first LayerNorm (`encoder.layers[-1].ln_1`, pytorch-grad-cam's
recommended `blocks[-1].norm1`), B x T x C; the reference uses the reshape transform of pytorch-grad-cam's ViT
tutorial (class token dropped, 6x6 grid, channels first); onnxcam infers the grid and the class token by itself.

Swin: torchvision's `SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2],
window_size=[4, 4], num_classes=10)` at 64x64. The layer is the final `norm` output, B x h x w x C (Swin's
channels-last grid, no conv before it), which onnxcam's default layer (its NCHW permute) is read from; the reference
permutes it to channels first.

Both: random weights with models/torch_exports/export.py's `randomise` (fixed seed), eval mode, exported into a
temporary folder, two standard-normal images and two different classes. The layer's raw activation and gradient
are compared with torch's first (hooks).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import swin_transformer, vision_transformer

import onnxcam
from onnxcam.explainer import Explainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_parity import THRESHOLD, _exporter, pearson  # noqa: E402

SIZE, PATCH, CLASSES, SEED = 96, 16, 10, 0
GRID = SIZE // PATCH
EXPORTERS = {"torchscript": (17, False), "dynamo": (18, True)}


def build() -> nn.Module:
    return vision_transformer.VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=4, num_heads=4,
                                                hidden_dim=64, mlp_dim=128, num_classes=CLASSES)


def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT reshape: drop the class token, tokens to a grid, channels first."""
    grid = tensor[:, 1:, :].reshape(tensor.size(0), GRID, GRID, tensor.size(2))
    return grid.permute(0, 3, 1, 2)


def _swin_layer(explainer: Explainer) -> str:
    """The B x h x w x C tensor that onnxcam's default layer (a channels-first Transpose of it) is made from."""
    node = next(n for n in explainer.model.graph.node if explainer.default_layer in n.output)
    assert node.op_type == "Transpose", node.op_type
    return node.input[0]


@dataclass(frozen=True)
class Model:
    name: str
    build: Callable[[], nn.Module]
    size: int
    torch_layer: Callable[[Any], nn.Module]
    torch_layer_name: str
    reshape: Callable[[torch.Tensor], torch.Tensor]
    onnx_layer: Callable[[Explainer], str] = lambda explainer: explainer.default_layer


MODELS = {
    "vit": Model("vit", build, SIZE, lambda m: m.encoder.layers[-1].ln_1, "encoder.layers[-1].ln_1",
                 reshape_transform),
    "swin": Model("swin", lambda: swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4], num_classes=CLASSES),
        64, lambda m: m.norm, "norm", lambda t: t.permute(0, 3, 1, 2), _swin_layer),
}


class ZeroAblationVit(AblationLayerVit):
    """pytorch-grad-cam's ViT ablation layer (a channel in every token, the class token included; channels last, so
    Swin's grid too), writing 0 always as onnxcam does; the stock layer writes min - 1e7 unless the minimum is
    exactly 0 (never, after a LayerNorm)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        output = self.activations
        for i in range(output.size(0)):
            output[i, ..., self.indices[i]] = 0
        return output


@dataclass(frozen=True)
class Method:
    name: str
    method: str
    reference: Callable[[nn.Module, list[nn.Module], Model], Any]
    options: dict[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] = ("vit", "swin")


def _cam(kind: Any, **kwargs: Any) -> Callable[[nn.Module, list[nn.Module], Model], Any]:
    return lambda model, layers, spec: kind(model, layers, reshape_transform=spec.reshape, **kwargs)


def _score_cam(model: nn.Module, layers: list[nn.Module], spec: Model) -> Any:
    cam = ScoreCAM(model, layers, reshape_transform=spec.reshape)
    cam.batch_size = 32  # ScoreCAM reads it when present (else 16); only speed depends on it
    return cam


METHODS = [
    Method("gradcam", "gradcam", _cam(GradCAM)),
    Method("gradcam++", "gradcam++", _cam(GradCAMPlusPlus)),
    Method("xgradcam", "xgradcam", _cam(XGradCAM)),
    Method("hirescam", "hirescam", _cam(HiResCAM)),
    Method("gradcam-elementwise", "gradcam-elementwise", _cam(GradCAMElementWise)),
    Method("layercam", "layercam", _cam(LayerCAM)),
    Method("eigencam", "eigencam", _cam(EigenCAM), {"eigen_sign": "svd"}),
    Method("eigengradcam", "eigengradcam", _cam(EigenGradCAM), {"eigen_sign": "svd"}),
    Method("scorecam", "scorecam", _score_cam),
    Method("ablationcam", "ablationcam", _cam(AblationCAM, ablation_layer=ZeroAblationVit(), batch_size=32)),
    # FullGrad ignores the layer in both; on a ViT its only biased conv is the patch embedding
    Method("fullgrad", "fullgrad", lambda model, layers, spec: FullGrad(model, [])),
]


@dataclass
class Result:
    export: str
    layer: str
    activation_error: float
    gradient_error: float
    torch_layer: str = ""
    r: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def prepare(spec: Model, folder: Path, exporter: str) -> tuple[nn.Module, Path, np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = spec.build()
    _exporter().randomise(model, (3, spec.size, spec.size), gen)
    model.eval()
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 3, spec.size, spec.size)).astype(np.float32)
    classes = rng.choice(CLASSES, size=2, replace=False).astype(np.int64)
    opset, dynamo = EXPORTERS[exporter]
    path = folder / f"{spec.name}_{exporter}.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        _exporter().export(model, torch.from_numpy(x), path, opset, dynamo, True)
    return model, path, x, classes


def torch_layer_values(model: nn.Module, layer: nn.Module, x: np.ndarray,
                       classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw activation and gradient of sum_i logits[i, class_i] at the layer's output."""
    saved: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        saved["act"] = output
        output.register_hook(lambda grad: saved.__setitem__("grad", grad))

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(torch.from_numpy(x))
        logits[torch.arange(len(x)), torch.from_numpy(classes)].sum().backward()
    finally:
        handle.remove()
    return saved["act"].detach().numpy(), saved["grad"].numpy()


def run(spec: Model, exporter: str, methods: list[Method], folder: Path,
        log: Callable[[str], None] = lambda s: None) -> Result:
    model, path, x, classes = prepare(spec, folder, exporter)
    explainer = Explainer(path, providers=["CPUExecutionProvider"])
    onnx_layer, layer = spec.onnx_layer(explainer), spec.torch_layer(model)
    act, grad = torch_layer_values(model, layer, x, classes)
    res = onnxcam.gradients(path, x, layers=[onnx_layer], targets=classes, providers=["CPUExecutionProvider"])
    got_act, got_grad = res.activations[onnx_layer], res.gradients[onnx_layer]
    errors = ((float(np.abs(got_act - act).max() / np.abs(act).max()),
               float(np.abs(got_grad - grad).max() / np.abs(grad).max()))
              if got_act.shape == act.shape else (float("inf"), float("inf")))
    result = Result(f"{spec.name} ({exporter})", onnx_layer, *errors, torch_layer=spec.torch_layer_name)
    log(f"{result.export}: layer '{onnx_layer}' (activation error {errors[0]:.1e}, gradient error {errors[1]:.1e})")
    for method in methods:
        if spec.name not in method.models:
            continue
        try:
            ours = explainer.explain(x, method.method, [int(c) for c in classes], layer=onnx_layer, **method.options)
            cam = method.reference(model, [layer], spec)
            try:
                with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                    theirs = cam(input_tensor=torch.from_numpy(x),
                                 targets=[ClassifierOutputTarget(int(c)) for c in classes])
            finally:
                cam.activations_and_grads.release()
        except Exception as error:  # a failing method is a table entry, not the end of the run
            result.errors[method.name] = f"{type(error).__name__}: {error}"
            log(f"  {method.name}: {result.errors[method.name]}")
            continue
        result.r[method.name] = pearson(ours, np.asarray(theirs, np.float32))
        log(f"  {method.name}: r = {', '.join(f'{r:.5f}' for r in result.r[method.name])}")
    return result


def table(results: list[Result], methods: list[Method]) -> str:
    lines = ["| method | " + " | ".join(r.export for r in results) + " |", "| --- |" + " ---: |" * len(results)]
    for method in methods:
        cells = [("error" if method.name in r.errors else f"{min(r.r[method.name]):.4f}"
                  + ("" if min(r.r[method.name]) >= THRESHOLD else " **FAIL**")) if method.name in r.r
                 or method.name in r.errors else "-" for r in results]
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    lines += ["", "| model (export) | onnxcam layer | torch module | activation error | gradient error |",
              "| --- | --- | --- | ---: | ---: |"]
    lines += [f"| {r.export} | `{r.layer}` | `{r.torch_layer}` | {r.activation_error:.1e} | "
              f"{r.gradient_error:.1e} |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--exporters", nargs="*", default=list(EXPORTERS), choices=list(EXPORTERS))
    parser.add_argument("--methods", nargs="*", default=[m.name for m in METHODS], choices=[m.name for m in METHODS])
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    chosen = [m for m in METHODS if m.name in args.methods]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ONNXCAM_CACHE"] = str(Path(tmp) / "cache")
        results = [run(MODELS[model], name, chosen, Path(tmp), lambda s: print(s, file=sys.stderr, flush=True))
                   for model in args.models for name in args.exporters]
    print(f"Pearson r between onnxcam and pytorch-grad-cam maps on transformer token layers, smallest over 2 images; "
          f"pass: r >= {THRESHOLD}\n")
    print(table(results, chosen))
    failed = any(min(rs) < THRESHOLD for r in results for rs in r.r.values())
    return 1 if failed or any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
