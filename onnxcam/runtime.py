"""onnxruntime sessions: provider choice, on-disk cache of rewritten models, session reuse."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import json
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import onnxruntime as ort

from onnxcam.cache import (
    CACHE_ENV,
    EXTERNAL_MIN,
    WEIGHTS,
    Variant,
    cache_dir,
    cache_entries,
    clean_cache,
    find_variant,
    model_fingerprint,
    model_folder,
    model_identity,
    model_sha256,
    proto_digest,
    remove_leftovers,
    scratch_variant,
    store_variant,
    temporary_name,
    variant_name,
    warn_unwritable,
)
from onnxcam.errors import ModelError, OnnxcamError
from onnxcam.facts import release

if TYPE_CHECKING:
    import onnx

__all__ = ["CACHE_ENV", "Session", "cache_dir", "cache_entries", "cached_model", "cached_session", "choose_providers",
           "clean_cache", "clear_cache", "cuda_usable", "make_session", "model_fingerprint", "model_identity",
           "model_key", "model_sha256", "provider_problem", "shared_session"]
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


def model_key(model: onnx.ModelProto, *parts: object) -> str:
    """A content hash of the model plus a request (one pass over the weights: prefer `model_identity`)."""
    return hashlib.sha256(f"{proto_digest(model)}\0{parts!r}".encode()).hexdigest()


# --- sessions on cached rewritten models ------------------------------------------------------------------------
def cached_session(identity: str, request: object, build: Callable[[], onnx.ModelProto], providers: Sequence[str],
                   source: object = None) -> Session:
    """A session on the rewritten model `request` of the model known as `identity` (see `model_identity`),
    built with `build` (it returns a fresh model the cache may take apart) and stored on first use.

    On the CPU provider the session runs onnxruntime's own optimised graph, cached too (per CPU and onnxruntime
    version: its layout transforms are hardware specific), so later sessions skip graph optimisation; on every
    provider the weights come from the model's one weights file, mapped once per process and handed to every
    session (SessionOptions.add_initializer), so more sessions do not mean more copies. An unwritable cache
    folder is said once on stderr; sessions are then built in memory. source: the model's path, recorded for
    `onnxcam cache list`.
    """
    providers = list(providers)
    generic = variant_name(request)
    try:
        if providers == ["CPUExecutionProvider"]:
            return _optimised_session(identity, request, build, source)
        variant = find_variant(identity, generic) or store_variant(identity, generic, build(), source)
        return _variant_session(variant, providers)
    except OSError as exc:
        warn_unwritable(exc)
        return make_session(build(), providers)


def _optimised_session(identity: str, request: object, build: Callable[[], onnx.ModelProto],
                       source: object) -> Session:
    """The CPU session of `cached_session`: the optimised variant, made from the provider-independent one when
    that is cached (a GPU asked for it), else from the built model, handed over in memory (below protobuf's
    2 GiB) or as a scratch copy removed afterwards."""
    name = variant_name(request, "cpu-" + _cpu_signature())
    variant = find_variant(identity, name)
    if variant is None:
        generic = find_variant(identity, variant_name(request))
        if generic is not None:
            variant = _optimise(identity, name, generic, source)
        else:
            model = build()
            weights = _detach_weights(model)
            graph = _serialised(model)  # the graph alone: its large tensors go to onnxruntime as arrays
            if graph is None:  # above protobuf's limit even without them
                _attach_weights(model, weights)
                del weights
                with scratch_variant(identity, model) as scratch:
                    variant = _optimise(identity, name, scratch, source)
            else:
                del model  # the arrays hold the weights now: the ModelProto would be a second copy of them
                try:
                    variant = _optimise(identity, name, graph, source, weights)
                except OSError as exc:  # (build may hand back the model just taken apart: not asked again)
                    warn_unwritable(exc)
                    return _detached_session(graph, weights)
                except ModelError:  # an onnxruntime that will not take detached tensors: the whole model then
                    whole = [_whole(graph, weights)]
                    weights.clear()
                    variant = _optimise_whole(identity, name, whole, source)
                del weights  # before the cached graph's session maps the same weights
    return _variant_session(variant, ["CPUExecutionProvider"], optimised=True)


def cached_model(key: str, build: Callable[[], onnx.ModelProto]) -> Path:
    """Path of the rewritten model for `key` (graph only: its weights sit in the cache's weights file), built and
    stored on first use; `make_session` on it shares those weights. Prefer `cached_session`."""
    identity = "key:" + key
    variant = find_variant(identity, "model")
    if variant is None:
        try:
            variant = store_variant(identity, "model", build())
        except OSError:
            path = _fallback_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"
            path.write_bytes(build().SerializeToString())
            return path
    return variant.graph


@functools.cache
def _fallback_folder() -> Path:
    """One temporary folder per process for `cached_model` when the cache cannot be written, removed at exit."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="onnxcam-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _serialised(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None above protobuf's 2 GiB limit."""
    from google.protobuf.message import EncodeError

    try:
        return model.SerializeToString()
    except (EncodeError, ValueError):
        return None


def _optimise_whole(identity: str, name: str, holder: list[onnx.ModelProto], source: object) -> Variant:
    """`_optimise` on the model in `holder` (taken out of it, so that no caller keeps it alive), its weights
    inside: handed over in memory below protobuf's 2 GiB, else as a scratch copy removed afterwards."""
    model = holder.pop()
    serialised = _serialised(model)
    if serialised is not None:
        del model  # onnxruntime parses the bytes: the ModelProto would be a second copy of the weights
        return _optimise(identity, name, serialised, source)
    with scratch_variant(identity, model) as scratch:
        return _optimise(identity, name, scratch, source)


def _detach_weights(model: onnx.ModelProto) -> dict[str, Any]:
    """Take the main graph's large tensors out of `model` as OrtValues (name -> value, each holding its array),
    leaving them marked external: onnxruntime is handed them with the graph (SessionOptions.
    add_external_initializers) instead of parsing them out of serialised bytes, a pass over the weights saved."""
    from onnxcam.cache import constants_to_initializers, stored_dtype
    from onnxcam.graph.protos import TensorProto

    constants_to_initializers(model.graph)
    used = _consumed(model.graph) | {o.name for o in model.graph.output}
    weights = {}
    for tensor in model.graph.initializer:
        dtype = stored_dtype(tensor.data_type)
        if dtype is None or tensor.data_location == TensorProto.EXTERNAL or not tensor.HasField("raw_data") \
                or tensor.name not in used:  # onnxruntime drops unused ones before it looks for detached tensors
            continue
        data = tensor.raw_data  # a copy of the bytes (each read of the field makes one)
        try:
            array = np.frombuffer(data, np.dtype(dtype)).reshape(tuple(tensor.dims))
        except ValueError:  # bytes that do not fit the shape: left to onnxruntime to report
            continue
        if array.nbytes < EXTERNAL_MIN:
            continue
        weights[tensor.name] = ort.OrtValue.ortvalue_from_numpy(array)  # borrows the array and keeps it alive
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", _DETACHED), ("offset", "0"), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return weights


_DETACHED = "onnxcam-detached-weights"  # the location of detached tensors: no file, onnxruntime is given them


def _consumed(graph: onnx.GraphProto) -> set[str]:
    """Names read by the graph's nodes, those of subgraphs (If, Loop, Scan bodies) included."""
    from onnxcam.graph.protos import AttributeProto

    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                names |= _consumed(attribute.g)
            for subgraph in attribute.graphs:
                names |= _consumed(subgraph)
    return names


def _whole(graph: bytes, weights: dict[str, Any]) -> onnx.ModelProto:
    """The model of a detached graph, its weights back inside."""
    from onnxcam.graph.protos import load

    model = load(graph)
    _attach_weights(model, weights)
    return model


def _attach_weights(model: onnx.ModelProto, weights: dict[str, Any]) -> None:
    """Undo `_detach_weights` (the model is then written out whole)."""
    from onnxcam.graph.protos import TensorProto

    for tensor in model.graph.initializer:
        if tensor.name in weights:
            tensor.raw_data = weights[tensor.name].numpy().tobytes()
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]


def _detached_session(graph: bytes, weights: dict[str, Any]) -> Session:
    """An in-memory CPU session on a graph whose large tensors were detached (the cache cannot be written)."""
    options = _session_options()
    options.add_external_initializers(list(weights), list(weights.values()))
    session = _new_session(graph, options, ["CPUExecutionProvider"])
    session.detached = weights  # onnxruntime reads the arrays in place: they live as long as the session
    return session


def _optimise(identity: str, name: str, model: Variant | bytes, source: object = None,
              detached: dict[str, Any] | None = None) -> Variant:
    """onnxruntime's optimised graph of `model` (a stored variant, or serialised bytes whose large tensors are
    `detached`) for the CPU provider, stored as variant `name`."""
    folder = model_folder(identity)
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    tmp = temporary_name(folder, name)
    graph, blobs = tmp.with_name(tmp.name + ".onnx"), tmp.with_name(tmp.name + ".bin")
    options = _session_options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.optimized_model_filepath = str(graph)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", blobs.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(EXTERNAL_MIN))
    if isinstance(model, Variant):
        weights = _shared_weights(model.weights)
        for tensor, value in weights.values(model.manifest).items():
            options.add_initializer(tensor, value)
    elif detached:
        options.add_external_initializers(list(detached), list(detached.values()))
    try:
        try:
            ort.InferenceSession(str(model.graph) if isinstance(model, Variant) else model, options,
                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load the model: {_last_line(exc)}") from None
        from onnxcam.graph.protos import load

        return store_variant(identity, name, load(graph), source, blobs)
    finally:
        for path in (graph, blobs):
            with contextlib.suppress(OSError):
                path.unlink()


@functools.cache
def _cpu_signature() -> str:
    """The CPU's identity for optimised graphs (their NCHWc block size follows the vector width)."""
    import platform

    text = f"{platform.machine()}\0{platform.processor()}"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text += "".join(sorted({line for line in lines if line.startswith(("flags", "model name", "Features"))}))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class SharedWeights:
    """A model's weights file mapped once per process (copy-on-write: nothing is ever written back), with one
    OrtValue per tensor that every session of the model is given."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mapped: np.ndarray = np.zeros(0, np.uint8)
        self._values: dict[tuple[int, str, tuple[int, ...]], tuple[np.ndarray, Any]] = {}
        self._lock = threading.Lock()

    def values(self, manifest: dict[str, list[Any]]) -> dict[str, Any]:
        """Tensor name -> OrtValue for the tensors of `manifest`."""
        out = {}
        with self._lock:
            for name, (offset, length, dtype, dims) in manifest.items():
                key = (int(offset), str(dtype), tuple(int(d) for d in dims))
                if key not in self._values:
                    if offset + length > len(self._mapped):  # appended since it was mapped
                        self._mapped = np.memmap(self.path, dtype=np.uint8, mode="c")
                    array = self._mapped[offset:offset + length].view(np.dtype(dtype)).reshape(key[2])
                    # OrtValues borrow the memory: the array (and through it the mapping) stays with them
                    self._values[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
                out[name] = self._values[key][1]
        return out


_weights: weakref.WeakValueDictionary[tuple[int, int], SharedWeights] = weakref.WeakValueDictionary()
_weights_lock = threading.Lock()


def _shared_weights(path: Path) -> SharedWeights:
    """The process's mapping of a weights file; keyed by the file itself, so a file replaced after eviction is
    never confused with the old one."""
    stat = path.stat()
    with _weights_lock:
        weights = _weights.get((stat.st_dev, stat.st_ino))
        if weights is None:
            weights = _weights[(stat.st_dev, stat.st_ino)] = SharedWeights(path)
    return weights


def _variant_session(variant: Variant, providers: list[str], optimised: bool = False) -> Session:
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimised else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options = _session_options(level)
    weights = None
    if "TensorrtExecutionProvider" not in providers:  # TensorRT builds engines from the graph's own tensors
        weights = _shared_weights(variant.weights)
        for tensor, value in weights.values(variant.manifest).items():
            options.add_initializer(tensor, value)
    session = _new_session(str(variant.graph), options, providers)
    session.weights = weights  # the shared tensors live as long as a session uses them
    return session


# --- in-process cache -------------------------------------------------------------------------------------------
SHARED_LIMIT = 4  # objects kept by shared_session: each holds a session, and a runner its parsed model too
_shared: OrderedDict[Hashable, Any] = OrderedDict()
_shared_lock = threading.Lock()
T = TypeVar("T")


def shared_session(key: Hashable, build: Callable[[], T]) -> T:
    """The object built by `build` for `key` (a model identity plus a request), reused by later calls with the
    same key in this process: `onnxcam.gradients(...)` in a loop pays its set-up once. The SHARED_LIMIT most
    recently used are kept; `clear_cache` drops them all."""
    with _shared_lock:
        if key in _shared:
            _shared.move_to_end(key)
            return cast(T, _shared[key])
    value = build()
    with _shared_lock:
        _shared[key] = value
        while len(_shared) > SHARED_LIMIT:
            _shared.popitem(last=False)
    return value


def clear_cache() -> None:
    """Release the sessions that `onnxcam.gradients` and `onnxcam.relevance` keep between calls (the on-disk
    cache stays: see `clean_cache`), and the parsed model kept for the next explainer of it."""
    with _shared_lock:
        _shared.clear()
    release()


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
        self.weights: SharedWeights | None = None  # the mapped tensors this session was given (kept alive)
        self.detached: dict[str, Any] = {}  # or the arrays it was given (kept alive)

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


def _session_options(level: Any = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Warnings (unused initializers...) are noise, and errors come back to us as exceptions that Session and
    # make_session turn into one line each: onnxruntime's own coloured log line would say the same thing twice.
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
    # Spinning pool threads would steal the CPU from the NumPy work between runs (masks, projections); measured
    # forward time is the same without it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _new_session(source: str | bytes, options: ort.SessionOptions, providers: Sequence[str]) -> Session:
    try:
        return Session(ort.InferenceSession(source, options, providers=[_with_options(p) for p in providers]))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load the model: {_last_line(exc)}") from None


def make_session(model: onnx.ModelProto | Path | bytes, providers: Sequence[str]) -> Session:
    """A session on a model, a file or serialised bytes; a cached graph (`cached_model`) gets the shared weights."""
    if isinstance(model, Path):
        manifest = model.with_suffix(".json")
        if manifest.is_file() and (model.parent / WEIGHTS).is_file():
            return _variant_session(Variant(model, json.loads(manifest.read_bytes())), list(providers))
        return _new_session(str(model), _session_options(), providers)
    return _new_session(model if isinstance(model, bytes) else model.SerializeToString(), _session_options(),
                        providers)
