"""Ctrl-C and SIGTERM that stop long work at a safe point instead of wherever they land.

A signal raised asynchronously can surface inside a C extension as some unrelated error, halfway
through writing a checkpoint. Inside :class:`GracefulStop` the first SIGINT/SIGTERM only sets
``requested``; the work checks it at safe points (after a training step, between nights), saves its
state and stops. A second signal raises KeyboardInterrupt at once, for a user who will not wait.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType


def _stderr_notice(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


_notify: Callable[[str], None] = _stderr_notice


def set_notifier(fn: Callable[[str], None] | None) -> None:
    """Choose how a first interrupt is announced (the CLI installs its console's ``warn``).

    ``fn`` is called with one message from the signal handler itself, so it should only print.
    ``None`` restores the default, a ``warning: ...`` line on stderr.
    """
    global _notify
    _notify = _stderr_notice if fn is None else fn


class GracefulStop:
    """Context manager: ``with GracefulStop("training") as stop: ... if stop.requested: ...``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        _notify(f"stopping {self.what} at the next safe point (press Ctrl-C again to stop at once)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a scheduler's allocation), to size worker pools."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ignore_interrupts() -> None:
    """For worker processes: the parent decides when to stop, a Ctrl-C must not kill them mid-write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def die_with_parent(parent_pid: int, interrupts: bool = False) -> None:
    """For worker processes (a pool initializer): end when ``parent_pid`` ends, however it ends.

    A parent killed with SIGKILL runs no clean-up, and its pool's workers would live on as orphans.
    On Linux the kernel sends SIGKILL when the process that forked us dies (PR_SET_PDEATHSIG); a
    daemon thread also watches ``parent_pid`` itself, which covers other systems and a worker forked
    by a forkserver (whose own parent is the server, not the command). A worker only reads, or writes
    under temporary names, so dying at any point loses nothing. Ctrl-C is ignored unless ``interrupts``.
    """
    import ctypes
    import os
    import sys
    import time

    if not interrupts:
        ignore_interrupts()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    first_ppid = os.getppid()

    def alive() -> bool:
        if os.getppid() != first_ppid:
            return False
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def watch() -> None:
        while alive():
            time.sleep(0.5)
        os._exit(1)

    if not alive():
        os._exit(1)
    threading.Thread(target=watch, name="sleepstage-parent-watch", daemon=True).start()
