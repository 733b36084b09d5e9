"""An ordered three-stage pipeline: read the next batches, run the current one, write the previous ones.

Decoding (OpenCV), inference (onnxruntime) and PNG/npy encoding all release the GIL, so plain threads overlap
them: a reader pool decodes and preprocesses up to `ahead` batches in advance, the calling thread runs the model,
and a writer pool encodes and writes finished batches. Queues are bounded (at most `ahead` batches wait to be
computed, `ahead` + `writers` to be written), so memory stays flat however many images there are, and results are
emitted in input order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

U = TypeVar("U")   # a unit of work (a batch of jobs)
D = TypeVar("D")   # a decoded unit
C = TypeVar("C")   # a computed unit
R = TypeVar("R")   # a written unit's result


def run_ordered(units: Iterable[U], read: Callable[[U], D], compute: Callable[[D], C], write: Callable[[C], R],
                emit: Callable[[R], None], readers: int = 1, writers: int = 1, ahead: int = 2) -> None:
    """read(unit) on `readers` threads, compute on this thread, write on `writers` threads; emit(result) runs on a
    writer thread as soon as the unit's files are written and every earlier unit has been emitted (unit order).

    An exception in any stage stops the run and is raised here (a writer failure included); nothing after it is
    emitted, work not yet started is cancelled and work in progress finishes (file writes are atomic, so an
    interrupted run leaves whole files).
    """
    if ahead < 1 or readers < 1 or writers < 1:
        raise ValueError("ahead, readers and writers must be at least 1")
    read_pool = ThreadPoolExecutor(readers, thread_name_prefix="onnxcam-read")
    write_pool = ThreadPoolExecutor(writers, thread_name_prefix="onnxcam-write")
    reading: deque[Future[Any]] = deque()
    writing: deque[Future[Any]] = deque()
    source = iter(units)
    exhausted = False

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(reading) < ahead:
            unit = next(source, _END)
            if unit is _END:
                exhausted = True
            else:
                reading.append(read_pool.submit(read, unit))

    stop = threading.Event()  # set by a failure: later units are neither written nor emitted

    def write_and_emit(computed: C, previous: threading.Event, emitted: threading.Event) -> None:
        try:
            if stop.is_set():
                return
            try:
                result = write(computed)
                while not previous.wait(0.05):  # the unit before this one is emitted first...
                    if stop.is_set():  # ...unless the run stopped (its task may never run)
                        return
                if not stop.is_set():
                    emit(result)
            except BaseException:
                stop.set()
                raise
        finally:
            emitted.set()

    def drain(keep: int) -> None:
        # raise a writer failure as soon as it is seen; block only while more than `keep` writes are queued
        while writing and (len(writing) > keep or writing[0].done()):
            writing.popleft().result()

    last = threading.Event()
    last.set()
    try:
        refill()
        while reading:
            decoded = reading.popleft().result()
            refill()
            computed = compute(decoded)
            emitted = threading.Event()
            writing.append(write_pool.submit(write_and_emit, computed, last, emitted))
            last = emitted
            drain(ahead + writers - 1)
        drain(0)
    finally:
        stop.set()
        for future in (*reading, *writing):
            future.cancel()
        read_pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True, cancel_futures=True)


_END: Any = object()
