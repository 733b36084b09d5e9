"""onnxruntime sessions: provider choice, on-disk cache of rewritten models, session reuse."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from onnxcam.errors import ModelError, OnnxcamError

CACHE_ENV = "ONNXCAM_CACHE"
_CUDA_DRIVER = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


def cuda_usable() -> bool:
    """CUDA is offered by the installed onnxruntime and a driver is present (so asking for it prints no errors)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL(_CUDA_DRIVER)
    except OSError:
        return False
    return True


def choose_providers(device: str = "auto", providers: Sequence[str] | None = None) -> list[str]:
    """Execution providers for `device` ("auto", "cpu" or "cuda"); explicit `providers` win."""
    if providers:
        return list(providers)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if not cuda_usable():
            raise OnnxcamError("CUDA was requested but is not usable here (no NVIDIA driver or no onnxruntime-gpu); "
                               "use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise OnnxcamError(f"unknown device '{device}'; use auto, cpu or cuda")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_usable() else ["CPUExecutionProvider"]


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                      os.path.join(Path.home(), ".cache"), "onnxcam")
    return Path(root)


def cached_model(key: str, build: Callable[[], onnx.ModelProto]) -> Path:
    """Path of the rewritten model for `key`, built and written (atomically) on first use."""
    digest = hashlib.sha256(f"{_rewriter_digest()}\0{ort.__version__}\0{key}".encode()).hexdigest()[:32]
    folder = cache_dir()
    path = folder / f"{digest}.onnx"
    if path.is_file():
        return path
    model = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _save_atomic(model, path)
    except OSError:  # a read-only home still works: keep the model in a temporary folder
        folder = Path(tempfile.mkdtemp(prefix="onnxcam-"))
        path = folder / f"{digest}.onnx"
        _save_atomic(model, path)
    return path


@functools.cache
def _rewriter_digest() -> str:
    """A hash of the graph-rewriting code, so that a changed rule never serves a stale cached model."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "graph").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _save_atomic(model: onnx.ModelProto, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    if weights > 1_500_000_000:  # protobuf cannot serialise 2 GiB; keep weights beside the model
        onnx.save(model, str(tmp), save_as_external_data=True, location=f"{path.name}.data")
    else:
        tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)


def model_key(model: onnx.ModelProto, *parts: object) -> str:
    """A content hash of the model plus the rewrite request, used as a cache key."""
    digest = hashlib.sha256()
    if model.ByteSize() < 2**31 - 1:
        digest.update(model.SerializeToString(deterministic=True))
    else:  # protobuf cannot serialise 2 GiB at once: hash the parts
        graph = model.graph
        for part in [*model.opset_import, *graph.input, *graph.output, *graph.node, *graph.initializer]:
            digest.update(part.SerializeToString(deterministic=True))
    digest.update(repr(parts).encode())
    return digest.hexdigest()


class Session:
    """An onnxruntime session whose run errors become one-line OnnxcamErrors (no C++ stack in users' faces)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def run(self, names: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
        try:
            return self.session.run(list(names), feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxcamError(f"onnxruntime failed to run the model: {_last_line(exc)}") from None

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def make_session(model: onnx.ModelProto | Path, providers: Sequence[str]) -> Session:
    options = ort.SessionOptions()
    # Warnings (unused initializers...) are noise, and errors come back to us as exceptions that Session and
    # make_session turn into one line each: onnxruntime's own coloured log line would say the same thing twice.
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads would steal the CPU from the NumPy work between runs (masks, projections); measured
    # forward time is the same without it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    try:
        return Session(ort.InferenceSession(source, options, providers=list(providers)))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load the model: {_last_line(exc)}") from None
