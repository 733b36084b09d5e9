"""Input files and output paths of batch jobs.

Inputs: files, folders (recursive) and glob patterns become `InputFile`s, each with a `name`: its path relative to
its input root, suffix kept ("cats/x.jpg"), so names never collide between x.jpg and x.png and never shift when
files are added. Names are made safe to use under the output folder: no absolute or `..` parts, no control
characters; bytes that are not UTF-8 are kept reversibly as \\xNN escapes.

Outputs: every path a job writes goes through `OutputFolder.path`, which refuses anything that resolves outside
the folder, and `write_bytes`, which writes a temporary file and renames it into place without following a
symlink planted at the destination.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import itertools
import os
import re
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from onnxcam.errors import InputError, escape_controls

NAME_LIMIT = 180  # bytes of a file name we write, leaving room for ".<method>.c<k>.png" and our temporary suffix


@dataclass(frozen=True)
class InputFile:
    path: Path   # the file as given (relative paths stay relative)
    name: str    # its safe, unique name relative to its input root, suffix kept, '/'-separated


def collect_inputs(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None,
                   suffixes: Collection[str] | None = None) -> list[InputFile]:
    """Files, folders (recursive, image suffixes only) and glob patterns -> inputs with unique safe names.

    Files under `exclude` (the output folder, when it lies inside an input folder) are left out. Folders and `**`
    are walked without following symlinked folders (a loop cannot hang the walk); symlinked files are kept.
    """
    if suffixes is None:
        from onnxcam.images import IMAGE_SUFFIXES  # decoding's list, loaded only when files are walked

        suffixes = IMAGE_SUFFIXES
    skip = os.path.join(os.path.realpath(exclude), "") if exclude is not None else None
    found: list[tuple[Path, Path]] = []  # (file, root)
    for item in inputs:
        text = os.fsdecode(item)
        path = Path(text)
        if path.is_dir():
            found += [(p, path) for p in _walk(path) if p.suffix.lower() in suffixes]
        elif path.exists() or path.is_symlink():
            found.append((path, path.parent))
        elif glob.has_magic(text):
            root = _glob_root(text)
            found += [(p, root) for p in _glob(text, root)]
        else:
            raise InputError(f"input '{printable(text)}' is not a file, folder or matching glob pattern")
    result, seen_files, names = [], set(), set()
    for file, root in found:
        key = os.path.realpath(file)
        if key in seen_files or (skip is not None and os.path.join(key, "").startswith(skip)):
            continue
        seen_files.add(key)
        stem = safe_name(_relative(file, root))
        name, n = stem, 2
        while name.lower() in names:  # the same relative path under two roots (or only by case)
            name, n = f"{stem}~{n}", n + 1
        names.add(name.lower())
        result.append(InputFile(file, name))
    if not result:
        where = ", ".join(printable(os.fsdecode(i)) for i in inputs)
        hint = " (the output folder itself is left out)" if skip is not None and found else ""
        raise InputError(f"no images found in {where}{hint} (image suffixes: {', '.join(sorted(suffixes))})")
    return result


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield path


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def _glob(pattern: str, root: Path) -> list[Path]:
    """Files matching `pattern` (with `**` for any depth) under its fixed prefix, symlinked folders not entered."""
    rest = Path(pattern).parts[len(root.parts) if str(root) != "." else 0:]
    if "**" not in rest:
        return sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    regex = re.compile(_translate(rest))
    matches = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if regex.fullmatch(relative) and path.is_file():
                matches.append(path)
    return matches


def _translate(parts: Sequence[str]) -> str:
    pieces = []
    for part in parts:
        if part == "**":
            pieces.append("(?:.*/)?")
        else:
            pieces.append(fnmatch.translate(part).removeprefix("(?s:").removesuffix(")\\Z") + "/")
    return "".join(pieces).removesuffix("/")


def _relative(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.name


def safe_name(relative: str) -> str:
    """A relative output name: '..', '.', empty and absolute parts dropped or neutralised, control characters and
    undecodable bytes escaped, each part at most NAME_LIMIT bytes (long ones shortened with a hash)."""
    parts = []
    for part in relative.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            part = "%2E%2E"  # kept visible and distinct, never a step up
        part = _escape(part)
        if part.startswith("."):
            part = "_" + part  # our temporaries are hidden files: never collide with one
        if len(part.encode()) > NAME_LIMIT:
            import hashlib

            digest = hashlib.sha256(part.encode()).hexdigest()[:12]
            part = part.encode()[:NAME_LIMIT - 13].decode(errors="ignore") + "~" + digest
        parts.append(part)
    return "/".join(parts) or "_"


def _escape(text: str) -> str:
    """Undecodable bytes (surrogate-escaped by the OS layer) and control characters as \\xNN."""
    text = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
    return escape_controls(text)


def printable(text: str) -> str:
    """Text for a terminal or a one-line message: control characters (ANSI escapes) and undecodable bytes escaped."""
    return _escape(text)


class OutputFolder:
    """The output folder of a job: paths inside it, proven to stay inside it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.given = Path(root)
        self.given.mkdir(parents=True, exist_ok=True)
        self.real = Path(os.path.realpath(self.given))
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    def path(self, relative: str) -> Path:
        """OUT/relative, refused (InputError) when it would resolve outside OUT; parent folders made, never
        through a symlink."""
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if not parts or any(p == ".." for p in parts) or os.path.isabs(relative):
            raise InputError(f"refusing to write '{printable(relative)}': not a plain path inside the output folder")
        target = self.real.joinpath(*parts)
        parent = target.parent
        with self._lock:
            if parent not in self._made:
                self._make_parents(parent)
                self._made.add(parent)
        return target

    def _make_parents(self, folder: Path) -> None:
        current = self.real
        for part in folder.relative_to(self.real).parts:
            current = current / part
            if current.is_symlink():
                raise InputError(f"refusing to write under '{printable(str(current))}': it is a symlink inside the "
                                 "output folder")
            try:
                current.mkdir()
            except FileExistsError:
                if not current.is_dir():
                    raise InputError(f"cannot write under '{printable(str(current))}': it is a file") from None


_counter = itertools.count()  # unique temporary names per process (next() is atomic under the GIL)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write atomically: a hidden temporary beside the file, then rename it over the destination (a rename
    replaces a symlink there instead of writing through it). The temporary is opened with O_NOFOLLOW | O_EXCL."""
    path = Path(path)
    temporary = path.with_name(f".{path.name[:NAME_LIMIT]}.{os.getpid()}.{next(_counter)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def remove_stale_temporaries(out: Path) -> None:
    """A killed run can leave write_bytes' hidden temporaries (.<name>.<pid>.<n>.tmp); never outputs."""
    for folder, _dirs, files in os.walk(out, followlinks=False):
        for name in files:
            parts = name.split(".")
            if name.startswith(".") and len(parts) >= 5 and parts[-1] == "tmp" and parts[-2].isdigit() \
                    and parts[-3].isdigit():
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass
