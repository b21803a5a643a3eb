"""Folds side by side: one spawned worker process per slot, each on its device with a fair share of CPU threads.

``--jobs N`` makes N slots; ``--devices`` gives them their devices round-robin. The parent hands each
worker one fold at a time (so it stops handing them out on a Ctrl-C or an error) and replays the
workers' progress messages to the display. Results are read from the fold folders (a fold is finished
when its DONE marker is there), so a lost message never loses a result. Workers sit in their own
process group: a terminal's Ctrl-C reaches only the parent, which forwards a single SIGTERM (train's
graceful stop: checkpoint, then exit); a second signal would skip the checkpoint. Workers whose parent
dies stop the same way.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_mod
import signal
import sys
import time

from sleepstage_cli.errors import Interrupted, SleepstageError
from sleepstage_cli.training.folds import (
    FoldBusy,
    FoldJob,
    Monitor,
    RunPlan,
    StopRelay,
    fold_done,
    fold_summary,
    log_event,
    run_fold,
    taken,
)
from sleepstage_cli.training.train import Callbacks

INTERRUPTED_EXIT = 130
_STEP_INTERVAL = 0.25  # seconds between progress messages from a worker


class _QueueCallbacks(Callbacks):
    """Training progress of a worker, sent to the parent; also notices when the parent is gone."""

    def __init__(self, q, index: int, parent_pid: int, deathsig: bool) -> None:
        self.q, self.index, self.parent_pid = q, index, parent_pid
        self.last = 0.0
        # With the kernel's parent-death signal the SIGTERM is already on its way: a second one
        # would skip the checkpoint.
        self.orphaned = deathsig

    def _check_parent(self) -> None:
        if not self.orphaned and os.getppid() != self.parent_pid:
            self.orphaned = True
            os.kill(os.getpid(), signal.SIGTERM)  # train's graceful stop: checkpoint and exit

    def stage(self, text: str) -> None:
        self._check_parent()
        self.q.put(("stage", self.index, text))

    def start(self, total_steps: int, step: int) -> None:
        self.q.put(("start", self.index, total_steps, step))

    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None:
        self._check_parent()
        now = time.monotonic()
        if now - self.last >= _STEP_INTERVAL:
            self.last = now
            self.q.put(("step", self.index, step, loss, seq_per_s, pass_index))

    def evaluated(self, step: int, metrics: dict, best: bool) -> None:
        small = {k: metrics[k] for k in ("accuracy", "macro_f1", "kappa")}
        self.q.put(("evaluated", self.index, step, small, best))


def _die_with_parent(parent_pid: int) -> bool:
    """Stop gracefully when the parent dies; whether Linux will tell us (else the callbacks poll).

    The kernel's parent-death signal may come once per thread, and a second SIGTERM would skip the
    checkpoint: it comes as SIGUSR1, turned into a single SIGTERM.
    """
    armed = False
    if sys.platform.startswith("linux"):
        relayed = []

        def once(signum, frame) -> None:
            if not relayed:
                relayed.append(signum)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGUSR1, once)
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGUSR1)) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(INTERRUPTED_EXIT)
    return armed


def _next_job(tasks, parent_pid: int):
    """The next fold from the parent (None: no more); waits, but not for a parent that is gone."""
    while True:
        try:
            return tasks.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent_pid:
                return None


def _worker(device: str, threads: int, parent_pid: int, tasks, events) -> None:
    """Entry point of a worker process (spawned): run the folds it is given on ``device``."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    deathsig = _die_with_parent(parent_pid)
    import torch

    from sleepstage_cli.interrupts import GracefulStop
    from sleepstage_cli.training.train import TrainingInterrupted

    torch.set_num_threads(max(1, min(threads, torch.get_num_threads())))
    code, index = 0, None
    try:
        # A SIGTERM while scoring lets the fold's few test nights finish; one before training is relayed.
        with GracefulStop("the fold") as stop:
            while not stop.requested:
                job = _next_job(tasks, parent_pid)
                if job is None:
                    break
                index = job.fold.index
                try:
                    run_fold(dataclasses.replace(job, device=device),
                             StopRelay(_QueueCallbacks(events, index, parent_pid, deathsig), stop))
                    events.put(("end", index, "done", ""))
                except FoldBusy as exc:  # another process (maybe on another machine) runs it: not a failure
                    events.put(("end", index, "busy", exc.owner))
                except SleepstageError as exc:
                    if isinstance(exc, TrainingInterrupted):
                        raise
                    events.put(("end", index, "error", str(exc)))
                except Exception as exc:  # a bug: the parent reports it in one line
                    events.put(("end", index, "error", f"internal error: {type(exc).__name__}: {exc}"))
                index = None
    except (TrainingInterrupted, KeyboardInterrupt):
        if index is not None:
            events.put(("end", index, "interrupted", ""))
        code = INTERRUPTED_EXIT
    finally:
        if os.getppid() != parent_pid:
            events.cancel_join_thread()  # nobody reads the queue any more: do not wait to flush it
    sys.exit(code)


class _Slot:
    """A worker process, its device, its task queue and the fold it is running."""

    def __init__(self, ctx, device: str, threads: int, events) -> None:
        self.device, self.tasks = device, ctx.Queue()
        self.job: FoldJob | None = None
        self.proc = ctx.Process(target=_worker, args=(device, threads, os.getpid(), self.tasks, events),
                                name=f"sleepstage-crossval-{device}")
        self.proc.start()


def run_parallel(plan: RunPlan, todo: list[FoldJob], slots: list[str], monitor: Monitor) -> None:
    """Run ``todo`` on ``len(slots)`` worker processes, slot i on device ``slots[i]``."""
    import multiprocessing as mp

    from sleepstage_cli.interrupts import GracefulStop, usable_cores

    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and any CUDA state
    events = ctx.Queue()
    threads = max(1, usable_cores() // len(slots))
    with GracefulStop("cross-validation") as stop:
        pool = _Dispatcher(plan, todo, monitor, events, stop)
        try:
            pool.workers = [_Slot(ctx, device, threads, events) for device in slots[:len(todo)]]
            pool.run()
        finally:
            _stop_all(pool.workers)
    pool.raise_unless_finished()


class _Dispatcher:
    """The parent's side of the pool: hands folds to the workers, replays their messages, notes how folds end."""

    def __init__(self, plan: RunPlan, todo: list[FoldJob], monitor: Monitor, events, stop) -> None:
        self.plan, self.monitor, self.events, self.stop = plan, monitor, events, stop
        self.pending = list(todo)
        self.callbacks: dict[int, Callbacks] = {}
        self.failed: list[str] = []
        self.interrupted = self.forwarded = False
        self.workers: list[_Slot] = []

    def run(self) -> None:
        """Until every worker has exited: forward a stop once, replay messages, notice workers that died."""
        for w in self.workers:
            self.give(w)
        while any(w.proc.is_alive() for w in self.workers):
            if self.stop.requested and not self.forwarded:
                self.forward_stop()
            try:
                self.handle(self.events.get(timeout=0.2))
            except queue_mod.Empty:
                pass
            self.reap()
        _drain(self.events, self.handle)

    def give(self, w: _Slot) -> None:
        """Hand the worker its next fold; none (it exits) once the folds are out, a stop is asked or one failed."""
        if self.pending and not self.stop.requested and not self.failed:
            w.job = self.pending.pop(0)
            self.callbacks[w.job.fold.index] = self.monitor.fold_begin(w.job.fold, w.device)
            w.tasks.put(w.job)
        else:
            w.job = None
            w.tasks.put(None)

    def forward_stop(self) -> None:
        """One SIGTERM to each live worker (its own process group: the terminal's Ctrl-C did not reach it)."""
        self.forwarded = True
        for w in self.workers:
            if w.proc.is_alive():
                os.kill(w.proc.pid, signal.SIGTERM)

    def handle(self, message: tuple) -> None:
        """A worker's message: the end of its fold, or training progress for the fold's callbacks."""
        kind, index, *args = message
        if kind == "end":
            self.ended(index, *args)
        elif index in self.callbacks:
            getattr(self.callbacks[index], kind)(*args)

    def ended(self, index: int, status: str, text: str) -> None:
        """Fold ``index`` ended ("done", "busy", "error" or "interrupted"): report it, give its worker the next one.

        "busy": another process holds the fold's lock (``text`` names it); the fold is left to it.
        """
        w = next((w for w in self.workers if w.job is not None and w.job.fold.index == index), None)
        if w is None:
            return
        fold = w.job.fold
        if status == "done" and fold_done(self.plan, fold):  # the DONE marker, not the message, says it finished
            self.monitor.fold_end(fold, fold_summary(self.plan, fold))
        else:
            self.monitor.fold_end(fold, None)
            if status == "busy":
                self.monitor.info(f"{taken(index, text)}: not run here")
            elif status == "interrupted":
                self.interrupted = True
                log_event(self.plan.run_dir, f"{fold.name}: interrupted (checkpoint saved)")
            else:
                text = text or "it did not finish"
                self.failed.append(f"fold {index} failed: {text}")
                log_event(self.plan.run_dir, f"{fold.name}: failed: {text}")
        w.job = None
        if status != "interrupted":
            self.give(w)

    def reap(self) -> None:
        """End the fold of a worker that exited without a word about it (killed, out of memory...)."""
        for w in self.workers:
            if w.job is not None and not w.proc.is_alive():
                _drain(self.events, self.handle)  # its last messages may still be in the pipe
                if w.job is not None:
                    self.ended(w.job.fold.index, "error", f"its process ended unexpectedly (exit code "
                                                          f"{w.proc.exitcode}); run the same command again to "
                                                          "resume it")

    def raise_unless_finished(self) -> None:
        """After the workers exited: raise if a fold failed or the run was stopped before every fold was done."""
        if self.failed:
            more = f" ({len(self.failed) - 1} other fold(s) failed too)" if len(self.failed) > 1 else ""
            raise SleepstageError(f"{self.failed[0]}{more}; the finished folds are kept: fix the cause and run the "
                                  "same command again")
        if self.stop.requested or self.interrupted or self.pending:
            log_event(self.plan.run_dir, "interrupted")
            raise Interrupted("cross-validation interrupted (the running folds saved checkpoints); run the same "
                              "command again to resume", self.plan.run_dir)


def _drain(events, handle) -> None:
    """Handle what is left in the queue, waiting briefly for messages still on their way."""
    deadline = time.monotonic() + 0.5
    while True:
        try:
            handle(events.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue_mod.Empty:
            return


def _stop_all(workers: list[_Slot]) -> None:
    """On the way out with workers still running (second Ctrl-C, an error): stop them, then make sure."""
    for w in workers:
        if w.proc.is_alive():
            w.proc.terminate()
    for w in workers:
        w.proc.join(timeout=30)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
