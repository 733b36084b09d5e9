"""Default layers of vision transformers exported from timm (models/timm_exports, random weights): the output of the
last transformer block (or after it), or, where the head reads a class token, the last block's first LayerNorm;
never a tensor inside attention (before issue 19: LeViT's default was a Transpose inside attention, Swin's the
attention's window-reverse Reshape).

Checked on the committed small exports always, and on fresh exports of the same models when torch and timm are
installed (`pip install timm`; then `python -m pytest tests/test_token_defaults.py`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from layer_gradcheck import layer_gradients

import onnxcam
from onnxcam.graph.dominators import dominator_chain, dominators
from onnxcam.graph.topo import ancestors

EXPORTS = Path(__file__).resolve().parent.parent / "models" / "timm_exports"
# the module whose output the default is (torchscript exporter names: module path / op)
DEFAULTS = {
    "levit": "/stages/stages.2/blocks/blocks.0/Add_1_output_0",     # the last block's residual output
    "swin": "/norm/LayerNormalization_output_0",                    # the final norm, right after the last block
    "deit": "/blocks/blocks.1/norm1/LayerNormalization_output_0",   # class + distillation tokens: last norm1
    "maxvit": "/norm/Transpose_output_0",                           # the final norm (LayerNorm2d), NCHW again
    "mobilevit": "/final_conv/bn/act/Mul_output_0",                 # the conv after the last MobileViT block
    "efficientvit": "/head/in_conv/act/HardSwish_output_0",         # the head's conv after the last stage
}
CLASS_TOKEN = {"deit"}


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


def _attention_products(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls of two computed tensors (Q.K^T and A.V), in graph order."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input[:2])]


def _check_default(path: Path, name: str) -> None:
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    layer = ex.default_layer
    model = ex.model
    nodes = list(model.graph.node)
    order = {o: i for i, n in enumerate(nodes) for o in n.output}
    products = _attention_products(model)
    assert products, f"{name}: no attention found"
    if name in CLASS_TOKEN:
        # what both operands of the last attention product are computed from: the last block's first norm
        last = products[-1]
        assert all(layer in ancestors(nodes, operand) for operand in last.input[:2])
        assert next(n for n in nodes if layer in n.output).op_type == "LayerNormalization"
    else:
        # after the last attention product, and on every path from the image to the score: outside attention
        # and outside the MLP branches, i.e. a block output or later
        assert order[layer] > order[products[-1].output[0]], f"{name}: {layer} comes before the last attention"
        idom = dominators(model, ex.input_name)
        assert layer in dominator_chain(ex.score, idom), f"{name}: {layer} is bypassed by a residual connection"
    assert "/attn/" not in layer and "attention" not in layer

    x = np.random.default_rng(0).standard_normal([int(d) for d in ex.input_shape]).astype(np.float32)  # type: ignore[union-attr]
    maps = ex.explain(x, "gradcam")
    assert maps.shape == (1, *ex.input_size(x))
    assert maps.max() > 0 and maps.std() > 0.01, f"{name}: a flat map at {layer}"
    layer_gradients(path, x, [layer], directions=2)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_committed_exports(name: str) -> None:
    path = EXPORTS / f"{name}.onnx"
    assert path.stat().st_size < 2_000_000
    assert onnxcam.Explainer(path, providers=["CPUExecutionProvider"]).default_layer == DEFAULTS[name]
    _check_default(path, name)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_fresh_timm_exports(name: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    spec = importlib.util.spec_from_file_location("timm_export", EXPORTS / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.export(name, tmp_path, seed=1)
    assert onnxcam.Explainer(path, providers=["CPUExecutionProvider"]).default_layer == DEFAULTS[name]
    _check_default(path, name)
