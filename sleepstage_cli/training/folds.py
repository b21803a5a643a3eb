"""One fold of a cross-validation run, in its run folder: what the orchestrator and the worker processes share.

The run plan and a fold's job, the run folder's names, its diary (crossval.log), the fold bookkeeping
(DONE markers, metrics) and :func:`run_fold`: train (or resume) a fold, score its test nights, write its
metrics. :mod:`sleepstage_cli.training.crossval` runs the folds in sequence or hands them to
:mod:`sleepstage_cli.training.jobs`; both import this module, and it imports neither.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.errors import SleepstageError
from sleepstage_cli.fsutil import atomic_write_json, read_json
from sleepstage_cli.locks import FolderBusy, exclusive_lock, holder
from sleepstage_cli.training.split import CVSplit, Fold
from sleepstage_cli.training.train import Callbacks, Split, TrainOptions

RUN_FILE, SPLIT_FILE, LOG_FILE = "crossval.json", "split.json", "crossval.log"
RUNNING = ".running"  # held shared by every process training folds of the run: --force waits for none of them
PREDICTIONS, EVALUATION, FOLDS_CSV, NIGHTS_CSV = "predictions", "evaluation", "folds.csv", "nights.csv"
DONE = "DONE"
CARD_JSON, CARD_MD = "card.json", "card.md"  # the run's model card: cross-validated metrics (model/card.py)
OWNED = (RUN_FILE, SPLIT_FILE, LOG_FILE, PREDICTIONS, EVALUATION, FOLDS_CSV, NIGHTS_CSV, CARD_JSON,
         CARD_MD)  # besides the fold-NN/
SUMMARY_METRICS = ("accuracy", "kappa", "macro_f1", "mean_sensitivity", "mean_specificity")


class Monitor:
    """What the command line shows; the core calls it from the main process only."""

    def info(self, text: str) -> None: ...

    def run_begin(self, total: int, done: list[int]) -> None:
        """Folds in the run, and those an earlier session finished (not run again)."""

    def fold_begin(self, fold: Fold, device: str) -> Callbacks:
        """A fold starts (or resumes) on ``device``; returns the callbacks its training reports to."""
        return Callbacks()

    def fold_end(self, fold: Fold, summary: dict | None) -> None:
        """A fold finished (``summary``: its row of folds.csv) or stopped (None)."""


@dataclass
class RunPlan:
    """A validated cross-validation run, before anything is written."""

    run_dir: Path
    dataset: Path
    opts: TrainOptions
    split: CVSplit
    identity: dict
    digest: str
    inputs: list[Path] = field(default_factory=list)  # the files the run reads: split file, manifest, nights

    def fold_dir(self, fold: Fold) -> Path:
        return self.run_dir / fold.name

    def outputs(self) -> list[Path]:
        """What the run writes (or clears with --force) in its folder."""
        return ([self.run_dir / name for name in (*OWNED, ".lock", RUNNING)]
                + [self.fold_dir(f) for f in self.split.folds])


@dataclass(frozen=True)
class FoldJob:
    """Everything a (possibly separate) process needs to run one fold."""

    run_dir: Path
    dataset: Path
    opts: TrainOptions
    fold: Fold
    digest: str
    device: str


# --------------------------------------------------------------------------- the run folder

def log_event(run_dir: Path, text: str) -> None:
    """Append one line to RUN/crossval.log (a diary, not a result: appending is enough)."""
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {text}\n")


def fold_summary(plan: RunPlan, fold: Fold) -> dict:
    """A finished fold's row of folds.csv (from its metrics.json)."""
    return read_json(plan.fold_dir(fold) / "metrics.json", "fold metrics")["fold"]


def fold_done(plan: RunPlan, fold: Fold) -> bool:
    """Whether this run finished the fold (its DONE marker holds the run's digest)."""
    return _marked_done(plan.fold_dir(fold), plan.digest)


def _marked_done(fold_dir: Path, digest: str) -> bool:
    marker = fold_dir / DONE
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("digest") == digest
    except (OSError, ValueError):
        return False


def this_process() -> str:
    """How the run's diary and lock files name this process: "pid 1234 on node7"."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def taken(index: int, owner: str) -> str:
    """"fold 3 is being run by another sleepstage process (pid 1234 on node7)"."""
    return f"fold {index} is being run by another sleepstage process ({owner})"


class FoldBusy(SleepstageError):
    """Another process (on this machine or another sharing the run folder) is running the fold."""

    def __init__(self, index: int, owner: str, run_dir: Path) -> None:
        super().__init__(taken(index, owner), run_dir)
        self.index, self.owner = index, owner


def fold_owner(plan: RunPlan, fold: Fold) -> str | None:
    """The process running the fold now ("pid 1234 on node7"), or None."""
    return holder(plan.fold_dir(fold))


@contextlib.contextmanager
def fold_lock(run_dir: Path, fold: Fold):
    """Hold the fold's lock (FOLD/.lock) while this process runs it; FoldBusy when another process does."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(run_dir / fold.name))
        except FolderBusy as exc:
            raise FoldBusy(fold.index, exc.owner, run_dir) from None
        yield


# --------------------------------------------------------------------------- one fold

CALIBRATION_COLUMNS = ("temperature", "val_ece_before", "val_ece_after", "ece")


def calibration_columns(meta: dict, pooled: dict) -> dict:
    """A fold's calibration figures for folds.csv: its model's T, the validation nights' ECE before and after
    calibration (from the model file), and the test nights' ECE with the calibrated probabilities."""
    cal = meta.get("calibration") or {}
    return {"temperature": meta.get("temperature", 1.0), "val_ece_before": cal.get("ece_before"),
            "val_ece_after": cal.get("ece_after"), "ece": pooled.get("ece")}


class StopRelay(Callbacks):
    """Hands a stop asked for outside training (loading, statistics) on to training's own graceful stop.

    Training installs its own SIGINT/SIGTERM handler only once its loop starts; a signal caught before
    that by the outer handler is re-raised at the first step, so the fold stops with a checkpoint.
    """

    def __init__(self, inner: Callbacks, stop) -> None:
        self.inner, self.stop, self.relayed = inner, stop, False

    def stage(self, text: str) -> None:
        self.inner.stage(text)

    def start(self, total_steps: int, step: int) -> None:
        self.inner.start(total_steps, step)

    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None:
        self.inner.step(step, loss, seq_per_s, pass_index)
        if self.stop.requested and not self.relayed:
            self.relayed = True
            os.kill(os.getpid(), signal.SIGTERM)

    def evaluated(self, step: int, metrics: dict, best: bool) -> None:
        self.inner.evaluated(step, metrics, best)


def _score_test_nights(job: FoldJob, ds: PreparedDataset, pred_dir: Path, device,
                       cb: Callbacks) -> list[tuple[str, Path]]:
    """Score the fold's test nights with test-time aggregation; one hypnogram CSV each."""
    from sleepstage_cli.io.export import hypnogram_table, write_csv
    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.scoring.inference import score_night
    from sleepstage_cli.scoring.pipeline import stage_names
    from sleepstage_cli.training.train import channel_index, nights_of

    loaded = load_model(job.run_dir / job.fold.name / "model.pt", device)
    _, index = channel_index(ds, tuple(loaded.kinds))
    nights = nights_of(ds, list(job.fold.test))
    cb.stage(f"scoring {len(nights)} test night(s)")
    amp = job.opts.amp and device.type == "cuda"
    paths = []
    for night in nights:
        rec = ds.open(night)
        result = score_night(loaded.model, np.asarray(rec["x"][:, index], dtype=np.float32), device, amp=amp,
                             temperature=loaded.temperature)
        stages = result.stages
        confidence = result.probabilities[np.arange(stages.size), stages]
        flags = ["short night" if result.padded else ""] * int(stages.size)
        table = hypnogram_table(np.asarray(rec["onset"], dtype=np.float64), stage_names(stages),
                                result.probabilities, confidence, flags)
        path = pred_dir / f"{night.id}.csv"
        write_csv(path, table)
        paths.append((night.id, path))
    return paths


def run_fold(job: FoldJob, cb: Callbacks | None = None) -> dict:
    """Train (or resume) one fold, score its test nights, write its metrics and then its DONE marker.

    The fold's lock is held throughout: FoldBusy when another process runs it. A fold another process
    finished meanwhile is not run again, and one whose model file exists is not trained again (only its
    scoring is redone). Returns the fold's row of folds.csv.
    """
    with fold_lock(job.run_dir, job.fold):
        fold_dir = job.run_dir / job.fold.name
        if _marked_done(fold_dir, job.digest):
            (cb or Callbacks()).stage("finished by another process")
            return read_json(fold_dir / "metrics.json", "fold metrics")["fold"]
        where = "" if job.device == "auto" else f" on {job.device}"
        log_event(job.run_dir, f"{job.fold.name}: started by {this_process()}{where}")
        return _train_and_score(job, cb)


def _train_and_score(job: FoldJob, cb: Callbacks | None) -> dict:
    """run_fold's work, under the fold's lock."""
    from sleepstage_cli.evaluation.evaluate import dataset_hypnogram, evaluate_pairs, jsonable, name_sources
    from sleepstage_cli.io.hypnogram import read_hypnogram
    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.training.train import checkpoint_path, resolve_device, train_model

    cb = cb or Callbacks()
    fold, fold_dir = job.fold, job.run_dir / job.fold.name
    model_path = fold_dir / "model.pt"
    ckpt = checkpoint_path(model_path)
    fold_dir.mkdir(parents=True, exist_ok=True)
    if model_path.exists():
        # Killed after training, before DONE: the model is final, only the scoring is redone.
        ckpt.unlink(missing_ok=True)
        cb.stage("model already trained")
    else:
        if ckpt.exists():
            log_event(job.run_dir, f"{fold.name}: resuming training from its checkpoint")
        train_model(job.dataset, model_path, dataclasses.replace(job.opts, device=job.device),
                    split=Split(train=list(fold.train), val=list(fold.val)), resume=True, callbacks=cb)
    device = resolve_device(job.device)
    ds = PreparedDataset(job.dataset)
    pred_dir = fold_dir / PREDICTIONS
    paths = _score_test_nights(job, ds, pred_dir, device, cb)
    ev = evaluate_pairs([(night, read_hypnogram(p), dataset_hypnogram(ds, night)) for night, p in paths])
    name_sources(ev, pred_dir, job.dataset)  # metrics.json says no path
    meta = load_model(model_path).meta
    training, validation = meta.get("training") or {}, meta.get("validation") or {}
    summary = {"fold": fold.index, "test_subjects": list(fold.test), "val_subjects": list(fold.val),
               "train_subjects": list(fold.train), "test_nights": [night for night, _ in paths],
               "epochs": ev.pooled["n"],
               **{k: ev.pooled[k] for k in SUMMARY_METRICS},
               "steps": training.get("steps"), "best_step": training.get("best_step"),
               "val_accuracy": validation.get("accuracy"), "train_seconds": training.get("seconds"),
               "device": training.get("device"), **calibration_columns(meta, ev.pooled)}
    ev.title = f"Cross-validation {fold.name}: test subjects {', '.join(fold.test)}"
    atomic_write_json(fold_dir / "metrics.json", jsonable({**ev.to_dict(), "fold": summary}))
    atomic_write_json(fold_dir / DONE, {"digest": job.digest, "finished":
                                        dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    log_event(job.run_dir, f"{fold.name}: done (accuracy {summary['accuracy']:.4f}, kappa {summary['kappa']:.4f})")
    return summary
