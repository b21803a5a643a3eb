"""Folder locks between sleepstage processes, on one machine or on several sharing a file system.

A lock is ``flock`` on a small file in the folder (``.lock`` unless named otherwise), holding who took it
("pid 1234 on node7") so that a refusal can name the process. ``flock`` is advisory and released by the
kernel when its holder dies however it dies, so a killed run never leaves a stale lock behind. Across
machines it needs a file system whose locks are shared between clients: NFS (Linux emulates ``flock``
with NFS byte-range locks), CephFS, BeeGFS, Lustre mounted with ``-o flock``.

Used by ``prepare`` (the dataset folder, the whole run) and by ``crossval`` (the run folder while its
description is written or its results pooled, a shared ``.running`` lock while folds train, and one
lock per fold folder so that processes on many machines never train the same fold twice).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from sleepstage_cli.errors import SleepstageError

LOCK = ".lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_POLL = 0.05  # s between attempts while waiting for a lock
GRACE = 1.0
"""Seconds every taker waits at least: :func:`holder` takes a lock for an instant to see whether it is free,
and that must not pass for a run holding it (a real holder keeps it for the whole run)."""


class FolderBusy(SleepstageError):
    """Another process holds the folder's lock; ``owner`` names it ("pid 1234 on node7")."""

    def __init__(self, message: str, path: Path, owner: str) -> None:
        super().__init__(message, path)
        self.owner = owner


def _owner(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    if not text:
        return "another process"
    return text if text.startswith("pid ") else f"pid {text}"  # an older sleepstage wrote the bare pid


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def _busy(root: Path, owner: str) -> FolderBusy:
    return FolderBusy(f"another sleepstage run ({owner}) is writing to this folder; wait for it to finish or "
                      "choose another output", root, owner)


def _lock_or_refuse(fd: int, root: Path, mode: int, wait: float = 0.0) -> None:
    """``flock(fd, mode)``, waiting at most ``wait`` s (at least :data:`GRACE`); when another process keeps it,
    the one-line error naming it."""
    deadline = time.monotonic() + max(wait, GRACE)
    while not _try(fd, mode):
        if time.monotonic() >= deadline:
            raise _busy(root, _owner(fd))
        time.sleep(_POLL)


def holder(root: Path, name: str = LOCK) -> str | None:
    """Who holds ``root/name`` now ("pid 1234 on node7"), or None when nobody does (or it cannot be told)."""
    try:
        fd = os.open(root / name, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try(fd, fcntl.LOCK_SH):
            return None
        return _owner(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def refuse_if_locked(root: Path, name: str = LOCK) -> None:
    """Raise exclusive_lock's "another sleepstage run" error when another process holds ``root/name`` now."""
    owner = holder(root, name)
    if owner is not None:
        raise _busy(root, owner)


@contextlib.contextmanager
def exclusive_lock(root: Path, wait: float = 0.0, name: str = LOCK) -> Iterator[None]:
    """Hold ``root/name`` exclusively; another holder makes it wait up to ``wait`` s, then refuse (FolderBusy)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_or_refuse(fd, root, fcntl.LOCK_EX, wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_lock(root: Path, name: str) -> Iterator[None]:
    """Hold ``root/name`` shared with other such holders: an exclusive_lock of it is refused meanwhile."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_or_refuse(fd, root, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
