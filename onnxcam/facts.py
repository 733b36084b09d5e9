"""What onnxcam worked out about a model, kept in the cache beside its rewritten graphs.

Everything the layers above the graph code read from a model (its summary, the tensor catalogue, the score, the
default layer, a detector's scales, a head's extra inputs...) is a JSON value that the graph code computes from
the parsed model. `ModelFacts.ask` computes an answer once and stores it (onnxcam.cache.write_facts); later runs
read it back. A run that finds every answer and every rewritten graph it needs never parses the model and never
imports onnx: a warm start costs what the onnxruntime sessions cost. The stored facts are keyed by the model's
identity and by a hash of onnxcam's code, so a changed rule never answers from an older one's facts.

Answers go through JSON even when just computed, so a first run sees exactly what later runs will read.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onnxcam.cache import model_identity, model_sha256, read_facts, warn_unwritable, write_facts
from onnxcam.graph.contract import ModelSource, ModelSummary

if TYPE_CHECKING:
    import onnx


class ModelFacts:
    """One model's facts, and the model itself, parsed (and normalised) once, only when an answer is missing."""

    def __init__(self, source: ModelSource, identity: str | None = None) -> None:
        self.source = source
        self.identity = identity or model_identity(source)
        self._answers: dict[str, Any] | None = None
        self._model: onnx.ModelProto | None = None
        self._summary: ModelSummary | None = None
        self._lock = threading.RLock()

    @property
    def model(self) -> onnx.ModelProto:
        """The loaded, normalised model (onnxcam.graph.load.load_model), parsed on first use."""
        with self._lock:
            if self._model is None:
                from onnxcam.graph.load import load_model

                self._model = load_model(self.source)
            return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def ask(self, question: str, compute: Callable[[], Any]) -> Any:
        """The stored answer to `question`, else `compute()` (JSON-able), stored for later runs."""
        with self._lock:
            if self._answers is None:
                self._answers = read_facts(self.identity)
            if question in self._answers:
                return self._answers[question]
            answer = json.loads(json.dumps(compute(), allow_nan=False))
            self._answers[question] = answer
            try:
                write_facts(self.identity, {question: answer}, self._file())
            except OSError as exc:
                warn_unwritable(exc)
            return answer

    @property
    def summary(self) -> ModelSummary:
        """Metadata, data inputs, outputs and op types (onnxcam.graph.contract.ModelSummary)."""
        def compute() -> dict[str, Any]:
            from onnxcam.graph.summary import summarize

            return summarize(self._loaded_or_peeked()).to_json()
        if self._summary is None:
            self._summary = ModelSummary.from_json(self.ask("summary", compute))
        return self._summary

    def _loaded_or_peeked(self) -> onnx.ModelProto:
        """The model, loaded (a job goes on to explain it: one parse serves both), else as the file has it, when
        it cannot be loaded: its inputs may say why (a text model, an unbatched image), which a user should read
        rather than a loading error."""
        from onnxcam.errors import ModelError
        from onnxcam.graph.protos import load

        try:
            return self.model
        except ModelError:
            if not isinstance(self.source, (str, os.PathLike)) or not os.path.isfile(self.source):
                raise
            try:
                return load(self.source)
            except Exception:  # protobuf's DecodeError and friends: load_model's message says it better
                pass
            raise

    def _file(self) -> object:
        return self.source if isinstance(self.source, (str,)) or hasattr(self.source, "__fspath__") else None


_known: weakref.WeakValueDictionary[str, ModelFacts] = weakref.WeakValueDictionary()
_known_lock = threading.Lock()
_recent: list[ModelFacts] = []  # the last model asked about, kept: a job's checks hand its parse to the explainer


def model_facts(source: ModelSource, identity: str | None = None) -> ModelFacts:
    """The process's ModelFacts of `source` while anything holds it: the checks before a job, its Explainer and
    its runners share one parse of the model."""
    identity = identity or model_identity(source)
    with _known_lock:
        facts = _known.get(identity)
        if facts is None:
            facts = _known[identity] = ModelFacts(source, identity)
        _recent[:] = [facts]
    return facts


def release(facts: ModelFacts | None = None) -> None:
    """Stop keeping `facts` (None: whichever is kept) alive: what holds it still has it."""
    with _known_lock:
        if facts is None or facts in _recent:
            _recent.clear()


def prefetch_graph_code(source: ModelSource) -> None:
    """Start importing the graph code on a thread, and hashing the model file on another, when the model's facts
    are not in the cache: a first run needs both, and they overlap the rest of the start-up (the hash releases the
    interpreter). A warm run starts nothing."""
    try:
        if read_facts(model_identity(source)):
            return
    except Exception:  # a missing or unreadable file is said where it is used
        return
    threading.Thread(target=_import_graph_code, name="onnxcam-prefetch", daemon=True).start()
    if isinstance(source, (str, os.PathLike)):  # the run's manifest names the file's SHA-256: hashed meanwhile
        threading.Thread(target=_hash_quietly, args=(source,), name="onnxcam-sha256", daemon=True).start()


def _hash_quietly(source: str | os.PathLike) -> None:
    try:
        model_sha256(source)  # kept in the cache's record of the model: the run reads it from there
    except Exception:  # the main thread says what is wrong
        pass


def _import_graph_code() -> None:
    import importlib

    for module in ("onnxcam.graph.load", "onnxcam.graph.survey", "onnxcam.graph.reverse.model"):
        try:
            importlib.import_module(module)
        except Exception:  # the main thread's own import says what is wrong
            return
