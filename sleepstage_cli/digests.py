"""Content digests (sha256) that name files and datasets in what sleepstage writes, instead of their paths.

Model files, model metadata, run folders and reports never record where a file lies on the user's
machine: paths carry user and patient names. A file is named by its file name and the sha256 of its
bytes, a prepared dataset by its folder name and the sha256 of its content
(:meth:`sleepstage_cli.data.dataset.PreparedDataset.identity`). Paths stay in memory and in messages
on the terminal.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

SHORT = 12  # hex digits of a digest shown to people (a report, a message)
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_seen: dict[tuple, str] = {}


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 as recorded here (64 lowercase hex digits)."""
    return isinstance(value, str) and bool(_HEX64.match(value))


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks (never the whole file in memory).

    Remembered for this process while the file is unchanged (same device, inode, size and mtime), so
    that naming one dataset several times in a run reads its files once.
    """
    path = Path(path)
    st = path.stat()
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _seen:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        _seen[key] = digest.hexdigest()
    return _seen[key]


class HashingWriter:
    """A writable file as ``np.save`` (or any writer) sees it, hashing every byte on its way to the file.

    Writes go through Python's ``write`` (np.save uses C ``fwrite`` on a real file, and a full disk then
    surfaces as "30 requested and 21 written" with no errno; through ``write`` it raises
    OSError(ENOSPC)). ``hexdigest()`` is the sha256 of what was written, with no second read.
    """

    def __init__(self, fh) -> None:
        self._fh = fh
        self._sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self._sha256.update(data)
        return self._fh.write(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def named(name: str, sha256: str) -> str:
    """How people see a file or dataset: ``name (sha256 abcdef123456)``."""
    return f"{name} (sha256 {sha256[:SHORT]})"


def last_name(path: str) -> str:
    """The last component of a path recorded as text (``/home/a/data`` -> ``data``; a backslash separates too)."""
    parts = [p for p in re.split(r"[\\/]", path) if p]
    return parts[-1] if parts else ""


def without_folders(args: list[str]) -> list[str]:
    """Command-line arguments as a run folder records them: a path keeps only its last name
    (``/home/a/data`` -> ``data``, ``--split=/x/s.json`` -> ``--split=s.json``)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if "/" in value or "\\" in value:
            value = last_name(value) or value
        out.append(key + eq + value)
    return out
