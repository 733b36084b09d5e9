"""Attention read-out: the map a model computes itself (LFI-CAM, ABN, L-CAM-style attention branches).

Such models produce a class-agnostic attention or importance map in their forward pass. `attention` reads it from a
graph output or an internal tensor, or recomputes it as relu(sum_k w_k A_k) from the feature map A and the
model's channel importance w (N, K) when only those exist (LFI-CAM: w is the softmax output of its Feature
Importance Network). The explainer then applies the shared ReLU, min-max and bilinear resize.
"""

from __future__ import annotations

import re

import numpy as np

from onnxcam.errors import InputError, LayerError
from onnxcam.methods import Evidence, method

_NAMED = re.compile(r"att|cam|saliency|heatmap|importance_map", re.IGNORECASE)


@method("attention", "research", ("tensors_of", "graph_outputs"), "2 forwards",
        "Lee et al., ICCV 2021 (LFI-CAM); Fukui et al., CVPR 2019 (ABN)")
def attention(ev: Evidence, tensor: str | None = None, weights: str | np.ndarray | None = None,
              features: str | None = None) -> np.ndarray:
    """The model's own attention map (N, h, w), the same whatever the target class.

    tensor: the output or internal tensor holding the map ((N, 1, h, w), (N, h, w, 1) or (N, h, w)); None finds
    it among the graph outputs. weights: instead, a tensor name (or an array) with channel importance (N, K): the
    map is sum_k w_k A_k over the layer's activations, or over the tensor `features` when given.
    """
    if ev.tensors_of is None:
        raise InputError("'attention' needs the explainer's tensors_of callable (use onnxcam.Explainer)")
    if weights is not None:
        return _recompute(ev, weights, features)
    if tensor is None:
        return _find_output(ev)
    return _as_map(tensor, ev.tensors_of([tensor])[tensor], len(ev.x))


def _recompute(ev: Evidence, weights: str | np.ndarray, features: str | None) -> np.ndarray:
    assert ev.tensors_of is not None
    names = [n for n in (weights, features) if isinstance(n, str)]
    values = ev.tensors_of(names) if names else {}
    w = np.asarray(values[weights] if isinstance(weights, str) else weights, np.float64)
    acts = ev.activations if features is None else values[features]
    label = features or ev.layer
    if acts.ndim != 4:
        raise LayerError(f"features '{label}' have shape {acts.shape}; the attention recomputation needs "
                         "(N, K, h, w)")
    w = w.reshape(len(w), -1)
    if w.shape != acts.shape[:2]:
        raise InputError(f"importance weights have shape {w.shape} but features '{label}' have {acts.shape[1]} "
                         f"channels for {len(acts)} images; pass features=/layer= naming the tensor they weight")
    return np.einsum("nk,nkhw->nhw", w, acts.astype(np.float64))


def _find_output(ev: Evidence) -> np.ndarray:
    """The one graph output that is a map: preferably by name (attention, att, cam, saliency), else by shape."""
    assert ev.tensors_of is not None
    values = ev.tensors_of(list(ev.graph_outputs))
    maps = {name: v for name, v in values.items() if _map_shape(v, len(ev.x))}
    named = [name for name in maps if _NAMED.search(name)]
    chosen = named if len(named) == 1 else list(maps)
    if len(chosen) != 1:
        found = ", ".join(chosen) if chosen else "none"
        raise LayerError(f"cannot tell which output is the attention map (map-shaped outputs: {found}); pass "
                         "tensor=NAME (CLI: --option tensor=NAME), or weights=NAME with the importance tensor")
    return _as_map(chosen[0], values[chosen[0]], len(ev.x))


def _map_shape(value: np.ndarray, batch: int) -> bool:
    """(N, 1, h, w), (N, h, w, 1) or (N, h, w) with a real spatial extent."""
    if value.ndim == 0 or value.shape[0] != batch:
        return False
    shape = value.shape[1:]
    if len(shape) == 3:
        shape = shape[1:] if shape[0] == 1 else shape[:2] if shape[2] == 1 else ()
    return len(shape) == 2 and min(shape) > 1


def _as_map(name: str, value: np.ndarray, batch: int) -> np.ndarray:
    if not _map_shape(value, batch):
        raise LayerError(f"tensor '{name}' has shape {value.shape}; an attention map is (N, 1, h, w), (N, h, w, 1) "
                         "or (N, h, w): for channel importance (N, K) pass weights= instead")
    if value.ndim == 4:
        value = value[:, 0] if value.shape[1] == 1 else value[..., 0]
    return value.astype(np.float64)
