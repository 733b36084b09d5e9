"""onnxruntime sessions: provider choice, on-disk cache of rewritten models, session reuse."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam.errors import ModelError, OnnxcamError

CACHE_ENV = "ONNXCAM_CACHE"
_CUDA_DRIVER = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


_PROVIDER_LIBRARY = {"CUDAExecutionProvider": "onnxruntime_providers_cuda",
                     "TensorrtExecutionProvider": "onnxruntime_providers_tensorrt"}
_GPU_INSTALL = {"CUDAExecutionProvider": "install the CUDA and cuDNN libraries onnxruntime-gpu was built for, e.g. "
                                         "pip install 'onnxruntime-gpu[cuda,cudnn]'",
                "TensorrtExecutionProvider": "install the TensorRT libraries onnxruntime-gpu was built for"}
_warned: set[str] = set()


def cuda_usable() -> bool:
    """CUDA is offered by the installed onnxruntime, a driver is present and its libraries load (so asking for it
    prints no errors)."""
    return provider_problem("CUDAExecutionProvider") is None


@functools.cache
def provider_problem(provider: str, driver: str = _CUDA_DRIVER) -> str | None:
    """Why the GPU `provider` cannot run here, in one line, or None when it can.

    Checked in the order a user fixes them: the onnxruntime build, the NVIDIA driver, then the CUDA/cuDNN (or
    TensorRT) libraries the provider library links to, found by loading it the way onnxruntime will.
    """
    if provider not in ort.get_available_providers():
        return f"this onnxruntime has no {provider} (pip install onnxruntime-gpu)"
    if not _loads(driver):
        return f"no NVIDIA driver ({driver} not found)"
    missing = _missing_library(provider)
    return None if missing is None else f"{missing} is missing; {_GPU_INSTALL[provider]}"


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def _missing_library(provider: str) -> str | None:
    """The first shared library that `provider`'s onnxruntime library cannot load, or None (also when unknown)."""
    name = _PROVIDER_LIBRARY.get(provider)
    if name is None or sys.platform != "linux":
        return None  # elsewhere onnxruntime's own error is the only source
    with contextlib.redirect_stdout(io.StringIO()):  # preload_dlls prints its own notes
        try:
            ort.preload_dlls(directory="")  # CUDA/cuDNN from the nvidia-* pip packages, when installed
        except Exception:  # older onnxruntime, or nothing to preload
            pass
    folder = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(folder / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(folder / f"lib{name}.so"))
    except OSError as exc:
        text = str(exc)
        return text.split(":")[0].strip() if ": cannot open shared object file" in text else _last_line(exc)
    return None


def choose_providers(device: str = "auto", providers: Sequence[str] | None = None) -> list[str]:
    """Execution providers for `device` ("auto", "cpu", "cuda" or "tensorrt"); explicit `providers` win.

    auto: TensorRT (when its libraries are installed) then CUDA when they can run, else the CPU; when a driver is
    present but CUDA libraries are missing, one line on stderr says why the run falls back to the CPU.
    """
    if providers:
        return list(providers)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("auto", "cuda", "tensorrt"):
        raise OnnxcamError(f"unknown device '{device}'; use auto, cpu, cuda or tensorrt")
    cuda = provider_problem("CUDAExecutionProvider")
    tensorrt = provider_problem("TensorrtExecutionProvider") if cuda is None else cuda
    if device in ("cuda", "tensorrt"):
        problem = cuda if device == "cuda" else tensorrt
        if problem is not None:
            raise OnnxcamError(f"{'CUDA' if device == 'cuda' else 'TensorRT'} was requested but cannot run here: "
                               f"{problem}; or use --device cpu")
    elif cuda is not None:
        if cuda not in _warned and _loads(_CUDA_DRIVER) and "CUDAExecutionProvider" in ort.get_available_providers():
            # a GPU machine with onnxruntime-gpu but without the CUDA libraries: say so once, then use the CPU
            _warned.add(cuda)
            print(f"onnxcam: running on the CPU: CUDA cannot run: {cuda}", file=sys.stderr)
        return ["CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["TensorrtExecutionProvider", *gpu] if tensorrt is None and device != "cuda" else gpu


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


_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class Session:
    """An onnxruntime session whose run errors become one-line OnnxcamErrors (no C++ stack in users' faces).

    Float inputs are cast at the boundary to the model's float type and float16 outputs come back as float32, so
    float16 models take and give the same arrays as float32 ones. bind (default: on a GPU provider) runs through
    I/O binding: a read-only input array is copied to the device once and reused while the same array is fed again
    (the explain pipeline feeds one read-only batch to every method's run); outputs come back to host memory,
    where the maps are computed.
    """

    def __init__(self, session: ort.InferenceSession, bind: bool | None = None) -> None:
        self.session = session
        self._floats = {i.name: _FLOATS.get(i.type) for i in session.get_inputs()}
        self.device = "cuda" if session.get_providers()[0] in GPU_PROVIDERS else "cpu"
        self.bind = self.device == "cuda" if bind is None else bind
        self._on_device: dict[str, tuple[np.ndarray, Any]] = {}  # input name -> (read-only array, its OrtValue)
        self.uploads = 0  # arrays copied to the device (bound runs): tells the reuse is working

    def run(self, names: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
        try:
            if self.bind:
                values = self._run_bound(list(names), feeds)
            else:
                values = self.session.run(list(names), {k: self._cast(k, v) for k, v in feeds.items()})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxcamError(f"onnxruntime failed to run the model: {_last_line(exc)}") from None
        return [v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float16 else v for v in values]

    def _cast(self, name: str, value: Any) -> Any:
        want = self._floats.get(name)
        if want is not None and isinstance(value, np.ndarray) and value.dtype != want \
                and np.issubdtype(value.dtype, np.floating):
            return value.astype(want)
        return value

    def _run_bound(self, names: list[str], feeds: dict[str, Any]) -> list[Any]:
        binding = self.session.io_binding()
        keep = []  # OrtValues on the CPU borrow the arrays' memory: keep both alive until the run is over
        for name, value in feeds.items():
            ortvalue, array = self._device_value(name, value)
            keep.append(array)
            binding.bind_ortvalue_input(name, ortvalue)
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def _device_value(self, name: str, value: Any) -> tuple[Any, np.ndarray]:
        cached = self._on_device.get(name)
        if cached is not None and cached[0] is value:
            return cached[1], cached[0]
        array = np.ascontiguousarray(self._cast(name, np.asarray(value)))
        ortvalue = ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)
        self.uploads += 1
        if isinstance(value, np.ndarray) and not value.flags.writeable:  # cannot change behind our back
            self._on_device[name] = (value, ortvalue)
        else:
            self._on_device.pop(name, None)
        return ortvalue, array

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _with_options(provider: str) -> str | tuple[str, dict[str, str]]:
    if provider == "TensorrtExecutionProvider":  # engines take minutes to build: keep them across runs
        folder = cache_dir() / "tensorrt"
        return provider, {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True",
                          "trt_engine_cache_path": str(folder), "trt_timing_cache_path": str(folder)}
    return provider


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
        return Session(ort.InferenceSession(source, options, providers=[_with_options(p) for p in providers]))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load the model: {_last_line(exc)}") from None
