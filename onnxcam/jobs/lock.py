"""One run per output folder at a time: an advisory lock file, OUT/.onnxcam.lock, that holds the owner's pid.

A second run on the same folder is refused with the owner's pid; a lock left by a killed run (its process is gone)
is detected and taken over. The lock is a plain file created with O_EXCL, so it works on any local file system.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from onnxcam.errors import InputError
from onnxcam.files import printable

LOCK = ".onnxcam.lock"


class OutputLock:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self.held = False

    def __enter__(self) -> OutputLock:
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise InputError(f"another onnxcam run (process {owner}) is writing to "
                                     f"{printable(str(self.path.parent))}; wait for it to finish or use another "
                                     "--out") from None
                self._remove()  # a killed run's lock (or an unreadable one): take it over
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return self
        raise InputError(f"cannot take the lock {printable(str(self.path))}; remove it if no onnxcam run is using "
                         "that folder")

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self._remove()
            self.held = False

    def _owner(self) -> int | None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            return None
        if len(text) >= 2 and text[1] != socket.gethostname():
            return None  # another machine's lock cannot be checked; its run is not ours to judge
        return int(text[0]) if text and text[0].isdigit() else None

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
