"""Folder locks between processes (sleepstage_cli/locks.py): who holds them, waiting, shared vs exclusive."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sleepstage_cli.locks import FolderBusy, exclusive_lock, holder, shared_lock

HOLD = """
import sys, time
from pathlib import Path
from sleepstage_cli.locks import exclusive_lock, shared_lock
lock = shared_lock if sys.argv[3] == "shared" else exclusive_lock
with lock(Path(sys.argv[1]), name=sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
"""


def hold(folder: Path, name: str, kind: str, seconds: float) -> subprocess.Popen:
    """Another process holding ``folder/name`` for ``seconds`` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name, kind, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_names_its_process_and_is_released_when_it_dies(tmp_path: Path) -> None:
    import socket

    proc = hold(tmp_path, ".lock", "exclusive", 60)
    try:
        assert holder(tmp_path) == f"pid {proc.pid} on {socket.gethostname()}"
        with pytest.raises(FolderBusy, match=f"another sleepstage run .pid {proc.pid} on ") as info:
            with exclusive_lock(tmp_path):
                pass
        assert info.value.owner == f"pid {proc.pid} on {socket.gethostname()}"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert holder(tmp_path) is None  # killed: the kernel released it
    with exclusive_lock(tmp_path):
        pass


def test_waiting_for_a_lock(tmp_path: Path) -> None:
    proc = hold(tmp_path, ".lock", "exclusive", 2.5)
    try:
        with pytest.raises(FolderBusy):
            with exclusive_lock(tmp_path, wait=0.1):  # (at least GRACE, 1 s)
                pass
        start = time.monotonic()
        with exclusive_lock(tmp_path, wait=60):
            assert proc.poll() is not None or time.monotonic() - start > 0.5  # only once the other let go
    finally:
        proc.wait()
        proc.stdout.close()


def test_shared_holders_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    proc = hold(tmp_path, ".running", "shared", 60)
    try:
        with shared_lock(tmp_path, ".running"):  # shared with the other holder
            pass
        with pytest.raises(FolderBusy):
            with exclusive_lock(tmp_path, name=".running"):
                pass
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    with exclusive_lock(tmp_path, name=".running"):
        pass


def test_a_glance_at_a_lock_is_not_taken_for_a_holder(tmp_path: Path) -> None:
    """holder() takes a lock shared for an instant: a process taking it at that moment waits, is not refused
    (else a fold would be skipped as "being run by another process" that is only looking)."""
    glance = hold(tmp_path, ".lock", "shared", 0.3)
    try:
        with exclusive_lock(tmp_path):
            pass
    finally:
        glance.wait()
        glance.stdout.close()
