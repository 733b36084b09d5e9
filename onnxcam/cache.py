"""The on-disk cache of rewritten models, and cheap model identities.

One folder per source model (and onnxcam / onnx / onnxruntime version), so every rewritten variant of a model
shares one copy of its tensors on disk:

    $ONNXCAM_CACHE/models/<model>/
        model.json      the source: path, fingerprint and (once someone asked for it) the file's full SHA-256
        weights.bin     every large tensor of every variant, stored once by content, 64-byte aligned: the first
                        variant's CPU-optimised graph brings onnxruntime's own file of them, renamed into place
        blobs.json      content digest -> [offset, length] in weights.bin, and the file's committed end
        <variant>.onnx  a rewritten graph: its large tensors are external data in weights.bin
        <variant>.json  that graph's manifest (tensor name -> offset, length, dtype, dims); written last, so a
                        variant with a manifest is complete
        facts-<code>.json  what onnxcam worked out about the model (onnxcam.facts), per version of its own code
        used            touched on every use: its mtime orders least-recently-used eviction
        .lock           serialises writers (processes and threads) of this folder
    $ONNXCAM_CACHE/tensorrt/   onnxruntime's TensorRT engines

Nothing here imports onnx at start-up: a warm run reads a manifest (JSON) and hands the graph file to
onnxruntime. The cache is capped (ONNXCAM_CACHE_SIZE, default 2 GiB): after a write, whole model folders are
evicted least recently used first, never the one just written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxcam.errors import ModelError, OnnxcamError

if TYPE_CHECKING:
    import onnx

CACHE_ENV = "ONNXCAM_CACHE"
SIZE_ENV = "ONNXCAM_CACHE_SIZE"
DEFAULT_SIZE = 2 * 2**30
FORMAT = "onnxcam-cache-2"   # bump when the layout changes: older folders then simply age out
WEIGHTS = "weights.bin"
ALIGN = 64                   # tensors start on 64-byte boundaries: what SIMD kernels like to read
EXTERNAL_MIN = 1024          # smaller tensors stay inside the graph file
MIB = 2**20
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}
_lock = threading.Lock()     # guards the per-process memo dicts below
_fingerprints: dict[tuple[Any, ...], str] = {}
_warned: set[str] = set()


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                      os.path.join(Path.home(), ".cache"), "onnxcam")
    return Path(root)


def cache_limit() -> int:
    """The cache's size cap in bytes, from ONNXCAM_CACHE_SIZE ("2G", "500M", "1.5GB", a byte count; 0 keeps only
    the model in use)."""
    text = os.environ.get(SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_SIZE
    number = text.rstrip("bBiIkKmMgGtT ")
    unit = text[len(number):].strip().upper()
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise OnnxcamError(f"{SIZE_ENV}={text!r} is not a size; use e.g. 2G, 500M or a number of bytes") from None
    if value < 0:
        raise OnnxcamError(f"{SIZE_ENV}={text!r} is negative; use e.g. 2G, 500M or 0")
    return int(value)


# --- model identity ---------------------------------------------------------------------------------------------
def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a model file, read before parsing anything: size, mtime and the first and last MiB of
    the file, plus size and mtime of external-data files beside it (names starting with the model's stem, other
    .onnx files excepted). Re-exporting or editing a model changes it; moving a file (mtime kept) does not.
    Memoised per process while the file's stat is unchanged."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    siblings = _external_data_files(resolved)
    memo = (str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino, tuple(siblings))
    with _lock:
        known = _fingerprints.get(memo)
    if known is not None:
        return known
    digest = hashlib.sha256(f"{FORMAT}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(resolved, "rb") as f:
        digest.update(f.read(MIB))
        if stat.st_size > MIB:
            f.seek(max(MIB, stat.st_size - MIB))
            digest.update(f.read(MIB))
    for name, size, mtime in siblings:
        digest.update(f"\0{name}\0{size}\0{mtime}".encode())
    value = digest.hexdigest()
    with _lock:
        _fingerprints[memo] = value
    return value


def _external_data_files(model: Path) -> list[tuple[str, int, int]]:
    stem = model.name.split(".")[0]
    found = []
    with contextlib.suppress(OSError), os.scandir(model.parent) as entries:
        for entry in entries:
            if entry.name != model.name and entry.name.startswith(stem) and not entry.name.endswith(".onnx") \
                    and entry.is_file():
                stat = entry.stat()
                found.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def model_identity(source: Any) -> str:
    """What the cache knows a model by: the fingerprint of a file (cheap), else a SHA-256 of the bytes or of the
    serialised ModelProto (one pass over the weights)."""
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise ModelError(f"model file not found: {source}")
        try:
            return "file:" + model_fingerprint(source)
        except OSError as exc:
            raise ModelError(f"cannot read the model file {source}: {exc.strerror or exc}") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "bytes:" + hashlib.sha256(source).hexdigest()
    return "proto:" + proto_digest(source)


def proto_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of a ModelProto's deterministic serialisation (part by part above protobuf's 2 GiB limit)."""
    digest = hashlib.sha256()
    if model.ByteSize() < 2**31 - 1:
        digest.update(model.SerializeToString(deterministic=True))
    else:
        graph = model.graph
        for part in [*model.opset_import, *graph.input, *graph.output, *graph.node, *graph.initializer]:
            digest.update(part.SerializeToString(deterministic=True))
    return digest.hexdigest()


def model_sha256(source: Any) -> str:
    """The SHA-256 of a model: of the file for a path (computed once, then kept in the cache beside the file's
    fingerprint, so later runs pay only the fingerprint), else of the bytes or the serialised ModelProto."""
    if not isinstance(source, (str, os.PathLike)):
        return model_identity(source).split(":", 1)[1]
    fingerprint = model_fingerprint(source)
    folder = _model_folder("file:" + fingerprint)
    record = _read_json(folder / "model.json") or {}
    if record.get("fingerprint") == fingerprint and record.get("sha256"):
        return str(record["sha256"])
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(8 * MIB), b""):
            digest.update(block)
    value = digest.hexdigest()
    with contextlib.suppress(OSError):
        _write_model_record(folder, "file:" + fingerprint, source, sha256=value)
    return value


# --- variants ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A cached rewritten graph: the .onnx file, its manifest and the weights file its tensors live in."""
    graph: Path
    manifest: dict[str, list[Any]]   # initializer name -> [offset, length, numpy dtype, dims]

    @property
    def weights(self) -> Path:
        return self.graph.parent / WEIGHTS


def environment_digest() -> str:
    """What makes a rewritten model stale: the graph code, onnx (normalisation) and onnxruntime versions."""
    return hashlib.sha256(f"{FORMAT}\0{_rewriter_digest()}\0{_version('onnx')}\0{_version('onnxruntime')}"
                          .encode()).hexdigest()


def _model_folder(identity: str) -> Path:
    name = hashlib.sha256(f"{environment_digest()}\0{identity}".encode()).hexdigest()[:32]
    return cache_dir() / "models" / name


def variant_name(request: object, flavour: str = "") -> str:
    name = hashlib.sha256(repr(request).encode()).hexdigest()[:24]
    return f"{name}-{flavour}" if flavour else name


def find_variant(identity: str, name: str) -> Variant | None:
    """The cached variant `name` of the model, or None; a hit marks the model as recently used."""
    folder = _model_folder(identity)
    manifest = _read_json(folder / f"{name}.json")
    graph = folder / f"{name}.onnx"
    if manifest is None or not graph.is_file() or not (folder / WEIGHTS).is_file():
        return None
    _touch(folder)
    return Variant(graph, manifest)


def store_variant(identity: str, name: str, model: onnx.ModelProto, source: object = None,
                  external: Path | None = None) -> Variant:
    """Write `model` as variant `name` of the model: its large tensors go to the model's weights.bin (each stored
    once, whatever variant brought it), the graph and its manifest beside it; `model` is emptied of those
    tensors. external: the file that `model`'s external-data tensors point into (onnxruntime's optimised graphs).
    Raises OSError when the cache folder cannot be written."""
    folder = _model_folder(identity)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.json").is_file():
        _write_model_record(folder, identity, source)
    variant = write_variant(folder, name, model, external)
    _touch(folder)
    evict(keep=folder)
    return variant


def write_variant(folder: Path, name: str, model: onnx.ModelProto, external: Path | None = None) -> Variant:
    """`model` as folder/name.onnx with its large tensors in folder/weights.bin, and its manifest."""
    manifest = externalise(model, folder, external)
    graph = folder / f"{name}.onnx"
    _write_atomic(graph, model.SerializeToString())
    _write_atomic(folder / f"{name}.json", json.dumps(manifest).encode())
    return Variant(graph, manifest)


@contextlib.contextmanager
def scratch_variant(identity: str, model: onnx.ModelProto) -> Iterator[Variant]:
    """`model` written like a variant into a scratch folder of the model's cache folder, removed afterwards: the
    input of onnxruntime's optimiser, whose output alone is kept (one copy of the weights on disk, not two)."""
    parent = _model_folder(identity)
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(".scratch.*"):  # left by a killed process
        if not _alive(old.name.split(".")[2]):
            shutil.rmtree(old, ignore_errors=True)
    folder = parent / f".scratch.{os.getpid()}.{threading.get_ident()}"
    folder.mkdir(exist_ok=True)
    try:
        yield write_variant(folder, "scratch", model)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_leftovers(folder: Path) -> None:
    """Remove the temporary files (see `temporary_name`, `_write_atomic`) of processes that died writing into
    `folder`: a cold run killed while onnxruntime optimised leaves a graph and a weights file as large as the
    model, hidden from the size count."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            parts = entry.name.split(".")
            if entry.name.startswith(".") and len(parts) >= 5 and parts[-1] in ("onnx", "bin", "tmp") \
                    and parts[-3].isdigit() and parts[-2].isdigit() and not _alive(parts[-3]):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except OSError:  # someone else's process, or a system without signals: assume it is alive
        return True
    return True


def externalise(model: onnx.ModelProto, folder: Path, external: Path | None = None) -> dict[str, list[Any]]:
    """Move the main graph's large numeric tensors (initializers, and Constant nodes turned into initializers)
    into folder/weights.bin, leaving external-data references; returns the manifest. Tensors already external
    are read from `external` (onnxruntime's optimised graphs): when the model has no weights yet, that file
    becomes weights.bin itself (renamed, not copied; `external` is then gone)."""
    from onnxcam.graph.protos import TensorProto

    graph = model.graph
    constants_to_initializers(graph)
    usable = external is not None and external.is_file() and external.stat().st_size > 0
    spans = {t.name: _span(t) for t in graph.initializer if usable and t.data_location == TensorProto.EXTERNAL}
    inline = [t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL
              and stored_dtype(t.data_type) and _nbytes(t) >= EXTERNAL_MIN]
    places: dict[str, tuple[int, int]] = {}
    with BlobStore(folder).writer() as put:
        if spans:
            assert external is not None
            moved = put.take(external, list(spans.values()))
            places.update({name: moved[span] for name, span in spans.items()})
        for tensor in inline:
            places[tensor.name] = put(_tensor_bytes(tensor))
    manifest: dict[str, list[Any]] = {}
    for tensor in graph.initializer:
        if tensor.name not in places:
            continue
        offset, length = places[tensor.name]
        dtype = stored_dtype(tensor.data_type)
        if dtype:  # others (bfloat16...): onnxruntime reads them from weights.bin
            manifest[tensor.name] = [offset, length, dtype, list(tensor.dims)]
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return manifest


def stored_dtype(elem_type: int) -> str | None:
    """The little-endian NumPy type string ('<f4', '|u1'...) under which weights.bin holds tensors of an ONNX
    element type: NumPy's own real types (graph/protos.py's table); None for the others (bfloat16, complex...)."""
    from onnxcam.graph.protos import NUMPY_TYPES

    dtype = NUMPY_TYPES.get(elem_type)
    return None if dtype is None or dtype.kind == "c" else dtype.newbyteorder("<").str


def _span(tensor: onnx.TensorProto) -> tuple[int, int]:
    """(offset, length) of an external tensor's bytes in its file."""
    place = {e.key: e.value for e in tensor.external_data}
    return int(place.get("offset", 0)), int(place["length"])


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Large Constant nodes (some exporters keep weights in them) become initializers, so they are shared too."""
    from onnxcam.graph.protos import AttributeProto

    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR),
                     None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None \
                and len(node.attribute) == 1 and _nbytes(value) >= EXTERNAL_MIN:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _nbytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = 1
    for d in tensor.dims:
        count *= d
    return count * int((stored_dtype(tensor.data_type) or "|u1")[2:])


def _tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnxcam.graph.protos import to_array

    return to_array(tensor).astype(stored_dtype(tensor.data_type)).tobytes()


class BlobStore:
    """weights.bin of one model folder: tensors stored by content, appended under a lock, never rewritten in
    place (other processes may have the file mapped).

    blobs.json indexes it: {"end": committed end, "blobs": {content digest: [offset, length]}, "unhashed":
    [[offset, length]...]}; unhashed blobs (those of an adopted onnxruntime file) are hashed by the first writer
    that has something to store, so a run that stores one variant never reads its weights back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / WEIGHTS
        self.index_path = folder / "blobs.json"

    @contextlib.contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """Yields a BlobWriter (put(blob) -> (offset, length), and take); the index is committed when the block
        ends, so readers never see a blob that is not wholly written."""
        with open(self.folder / ".lock", "a+b") as handle:
            _lock_file(handle)
            with BlobWriter(self.path, _read_json(self.index_path) or {}) as writer:
                yield writer
            self.path.touch()  # a model without large tensors has an empty one (a variant needs the file)
            index: dict[str, Any] = {"end": writer.end, "blobs": writer.places}
            if writer.unhashed:
                index["unhashed"] = writer.unhashed
            _write_atomic(self.index_path, json.dumps(index).encode())


class BlobWriter:
    """Stores blobs in a weights file while its folder's lock is held (see BlobStore.writer)."""

    def __init__(self, path: Path, index: dict[str, Any]) -> None:
        self.path = path
        self.end = int(index.get("end", 0))  # the committed end: bytes after it are a killed writer's
        self.places: dict[str, list[int]] = index.get("blobs", {}) if self.end else {}  # digest -> [offset, length]
        self.unhashed: list[list[int]] = index.get("unhashed", []) if self.end else []
        self._file: Any = None
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > self.end:
                os.truncate(path, self.end)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __call__(self, blob: Any) -> tuple[int, int]:
        """put: store `blob` (bytes, or any contiguous buffer) unless the same bytes are stored already."""
        self._hash_unhashed()
        return self._add(_digest(blob), blob)

    def take(self, file: Path, spans: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        """The blobs at `spans` (offset, length) of `file` (onnxruntime's external initializers) stored; returns
        span -> (offset, length) in weights.bin.

        While the model has no weights yet, `file` itself becomes weights.bin, renamed (the weights are written
        once, by onnxruntime) and not read: its blobs stay where onnxruntime put them, indexed as unhashed, but
        for those it did not align (it packs tensors under 1 MiB) which are stored again, aligned. Otherwise
        the blobs are hashed (on a few threads) and those not stored yet appended."""
        size = file.stat().st_size
        unique = sorted(set(spans))
        if any(offset < 0 or length < 0 or offset + length > size for offset, length in unique):
            raise OSError(f"{file}: a tensor lies outside the file")
        if self.end == 0 and self._adopt(file):
            kept = [span for span in unique if span[0] % ALIGN == 0]
            self.unhashed = [list(span) for span in kept]
            moved = {span: span for span in kept}
            moved.update(self._store(self.path, [span for span in unique if span[0] % ALIGN]))
            return moved
        self._hash_unhashed()
        return self._store(file, unique)

    def _store(self, file: Path, spans: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        if not spans:
            return {}
        import numpy as np

        mapped = np.memmap(file, dtype=np.uint8, mode="r")
        blobs = [mapped[offset:offset + length] for offset, length in spans]
        return {span: self._add(digest, blob) for span, digest, blob in zip(spans, _digests(blobs), blobs)}

    def _adopt(self, file: Path) -> bool:
        """`file` becomes weights.bin: only while nothing is committed to it (no manifest can point into it)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.replace(file, self.path)  # same folder: a rename
        except OSError:  # another file system, or a platform that will not replace a file in use: copy
            return False
        self.end = self.path.stat().st_size
        return True

    def _hash_unhashed(self) -> None:
        """Index the unhashed blobs by content, before anything is deduplicated against the index."""
        if not self.unhashed:
            return
        import numpy as np

        spans = [(int(offset), int(length)) for offset, length in self.unhashed if offset + length <= self.end]
        if spans:
            mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
            blobs = [mapped[offset:offset + length] for offset, length in spans]
            for (offset, length), digest in zip(spans, _digests(blobs)):
                self.places.setdefault(digest, [offset, length])
        self.unhashed = []

    def _add(self, digest: str, blob: Any) -> tuple[int, int]:
        if digest not in self.places:
            if self._file is None:
                self._file = open(self.path, "r+b" if self.path.is_file() else "w+b")
            offset = -(-self.end // ALIGN) * ALIGN
            self._file.seek(self.end)
            self._file.write(b"\0" * (offset - self.end))
            self._file.write(blob)
            self.places[digest] = [offset, len(blob)]
            self.end = offset + len(blob)
        offset, length = self.places[digest]
        return offset, length


def _digest(blob: Any) -> str:
    return hashlib.blake2b(blob, digest_size=20).hexdigest()


def _digests(blobs: list[Any]) -> list[str]:
    """The blobs' digests, hashed on a few threads when there is much to hash (hashlib lets go of the GIL on
    large buffers)."""
    workers = min(4, os.cpu_count() or 1)
    if workers < 2 or sum(len(b) for b in blobs) < 16 * MIB:
        return [_digest(b) for b in blobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_digest, blobs))


def _lock_file(handle: Any) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte
        import msvcrt

        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
                return
            except OSError:
                time.sleep(0.05)
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


# --- listing, cleaning, eviction --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    """One model folder of the cache (or onnxruntime's TensorRT engines)."""
    path: Path
    source: str | None       # the model file it was made from (None: an in-memory model)
    size: int                # bytes on disk
    variants: int            # rewritten graphs held
    last_used: float         # seconds since the epoch
    stale: bool              # made by another onnxcam/onnx/onnxruntime version, or its source file has changed


def cache_entries(check_sources: bool = True) -> list[CacheEntry]:
    """Everything in the cache, least recently used first; check_sources: find out whether each source file has
    changed since (reads the start and end of each, for `stale`)."""
    root = cache_dir()
    current = environment_digest()
    entries = []
    models = root / "models"
    if models.is_dir() and not models.is_symlink():
        for folder in models.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                entries.append(_entry(folder, current, check_sources))
    engines = root / "tensorrt"
    if engines.is_dir() and not engines.is_symlink():
        entries.append(CacheEntry(engines, "TensorRT engines", _folder_size(engines), 0,
                                  _last_used(engines), False))
    return sorted(entries, key=lambda e: e.last_used)


def _entry(folder: Path, current: str, check_source: bool) -> CacheEntry:
    record = _read_json(folder / "model.json") or {}
    source = record.get("source")
    stale = record.get("environment") != current
    if check_source and source and not stale and str(record.get("identity", "")).startswith("file:"):
        try:
            stale = "file:" + model_fingerprint(source) != record["identity"]
        except OSError:
            stale = True  # the source file is gone
    variants = sum(1 for p in folder.glob("*.json") if p.name not in ("model.json", "blobs.json")
                   and not p.name.startswith("facts-"))
    return CacheEntry(folder, source, _folder_size(folder), variants, _last_used(folder), stale)


def clean_cache(older_than: float | timedelta | None = None) -> list[CacheEntry]:
    """Remove cache entries not used for `older_than` (seconds or a timedelta; None: every entry). Returns the
    removed entries. Processes using a removed model keep working (their files stay open until they end)."""
    seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    cutoff = None if seconds is None else time.time() - seconds
    removed = []
    for entry in cache_entries():
        if cutoff is None or entry.last_used < cutoff:
            _remove(entry.path)
            removed.append(entry)
    return removed


def evict(keep: Path | None = None, limit: int | None = None) -> list[CacheEntry]:
    """Remove least recently used model folders until the cache fits `limit` (default: cache_limit()); `keep`
    (the folder in use) stays whatever its size."""
    limit = cache_limit() if limit is None else limit
    entries = cache_entries(check_sources=False)
    total = sum(e.size for e in entries)
    removed = []
    for entry in entries:
        if total <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        _remove(entry.path)
        total -= entry.size
        removed.append(entry)
    return removed


def _remove(folder: Path) -> None:
    root = cache_dir().resolve()
    resolved = folder.resolve()
    if folder.is_symlink() or root not in resolved.parents:
        return  # only real folders inside the cache are ever deleted
    shutil.rmtree(resolved, ignore_errors=True)


def _folder_size(folder: Path) -> int:
    """Bytes held, hidden files and folders excepted: they live only while a variant is being written."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and not path.name.startswith(".") \
                    and not path.parent.name.startswith("."):
                total += path.stat().st_size
    return total


def _last_used(folder: Path) -> float:
    for path in (folder / "used", folder):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0


def _touch(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / "used").touch()


# --- facts ------------------------------------------------------------------------------------------------------
def read_facts(identity: str) -> dict[str, Any]:
    """The facts stored for the model (question -> JSON answer; see onnxcam.facts), {} when there are none."""
    return _read_json(_facts_path(identity)) or {}


def write_facts(identity: str, answers: dict[str, Any], source: object = None) -> None:
    """Add `answers` to the model's stored facts (merged with what another process may have added since).
    Raises OSError when the cache folder cannot be written."""
    path = _facts_path(identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.parent / "model.json").is_file():
        _write_model_record(path.parent, identity, source)
    with open(path.parent / ".lock", "a+b") as handle:  # the merge is a read-modify-write: one writer at a time
        _lock_file(handle)
        merged = {**(_read_json(path) or {}), **answers}
        _write_atomic(path, json.dumps(merged, allow_nan=False).encode())
    _touch(path.parent)


def _facts_path(identity: str) -> Path:
    return _model_folder(identity) / f"facts-{_code_digest()[:16]}.json"


@functools.cache
def _code_digest() -> str:
    """A hash of all of onnxcam's code: facts are answers of that code (layouts, default layers, task guesses)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- small helpers ----------------------------------------------------------------------------------------------
def _write_model_record(folder: Path, identity: str, source: object, sha256: str | None = None) -> None:
    record: dict[str, Any] = {"identity": identity, "environment": environment_digest(), "created": time.time()}
    if isinstance(source, (str, os.PathLike)):
        record["source"] = str(Path(source).resolve())
    if identity.startswith("file:"):
        record["fingerprint"] = identity[5:]
    if sha256:
        record["sha256"] = sha256
    folder.mkdir(parents=True, exist_ok=True)
    old = _read_json(folder / "model.json") or {}
    _write_atomic(folder / "model.json", json.dumps({**old, **record, "created": old.get("created",
                                                                                        record["created"])}).encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when there is none (absent, unreadable, not an object)."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def warn_unwritable(exc: OSError) -> None:
    """Say once per process that the cache folder cannot be written (whatever part of it failed first)."""
    if "unwritable" not in _warned:
        _warned.add("unwritable")
        warn_once(f"cannot write the cache folder {cache_dir()} ({exc.strerror or exc}); rewritten models and model "
                  f"facts are kept in memory (set {CACHE_ENV} to a writable folder to keep them across runs)")


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"onnxcam: {message}", file=sys.stderr)


@functools.cache
def _rewriter_digest() -> str:
    """A hash of the graph code, so that a changed rule or normalisation never serves a stale cached model."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "graph").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def model_folder(identity: str) -> Path:
    """The folder holding the model's variants (it may not exist yet)."""
    return _model_folder(identity)


def temporary_name(folder: Path, stem: str) -> Path:
    """A file name in `folder` no other process or thread uses, for files moved into place afterwards."""
    return folder / f".{stem}.{os.getpid()}.{threading.get_ident()}"


