"""Subject-wise cross-validation (the paper's protocol): folds, per-fold training and scoring, pooled metrics.

A run folder (RUN) holds::

    crossval.json            what the run is: dataset and nights, training options, split (checked on restart)
    split.json               the folds (test / validation / training subjects), reusable with --split;
                             with a reference split, its source and epoch-count comparison too
    crossval.log             one line per event (started, fold resumed, fold done, interrupted...)
    fold-01/model.pt         the fold's model (model.pt.ckpt while it trains; model.train.csv/.json logs)
    fold-01/predictions/     one hypnogram CSV per test night (score's format)
    fold-01/metrics.json     the fold's metrics (evaluate's figures over its test nights)
    fold-01/DONE             written last: the fold is finished and never redone
    predictions/             every test night's CSV, collected from the folds
    evaluation/              write_evaluation's files over predictions/ (metrics.json, report.html...)
    folds.csv, nights.csv    per-fold figures (calibration too: T, validation ECE before/after, test ECE);
                             per night its subject, fold and figures
    card.json, card.md       the run's model card: data, channels, network, cross-validated metrics
                             pooled and mean ± SD over the folds (sleepstage_cli/model/card.py)

Everything is written atomically. The pooled figures are ``evaluate_paths(RUN/predictions, DATASET)``,
so ``sleepstage evaluate RUN/predictions DATASET`` reproduces them exactly. Folds run in this process
(one after the other) or in spawned worker processes (:mod:`sleepstage_cli.training.jobs`); one fold in
its folder is :mod:`sleepstage_cli.training.folds`, which holds the run plan and the folder's names.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sleepstage_cli import __version__
from sleepstage_cli.data.dataset import MANIFEST, PreparedDataset, dataset_label, same_dataset
from sleepstage_cli.digests import last_name, without_folders
from sleepstage_cli.errors import InputError, Interrupted, SleepstageError
from sleepstage_cli.fsutil import atomic_write_json, atomic_write_text, check_writable_folder, read_json
from sleepstage_cli.locks import FolderBusy, exclusive_lock, shared_lock
from sleepstage_cli.model.card import build_crossval_card, write_card
from sleepstage_cli.training.folds import (
    CALIBRATION_COLUMNS,
    CARD_JSON,
    CARD_MD,
    EVALUATION,
    FOLDS_CSV,
    NIGHTS_CSV,
    OWNED,
    PREDICTIONS,
    RUN_FILE,
    RUNNING,
    SPLIT_FILE,
    SUMMARY_METRICS,
    FoldBusy,
    FoldJob,
    Monitor,
    RunPlan,
    StopRelay,
    fold_done,
    fold_owner,
    fold_summary,
    log_event,
    run_fold,
    taken,
    this_process,
)
from sleepstage_cli.training.jobs import run_parallel
from sleepstage_cli.training.reference_splits import REFERENCE_SPLITS, is_reference_name, reference_split
from sleepstage_cli.training.split import CVSplit, Fold, load_split, make_split
from sleepstage_cli.training.train import TrainOptions

# The orchestrator's API; the run plan, Monitor, FoldJob and run_fold live in folds and are re-exported.
__all__ = ["CrossvalResult", "FoldJob", "Monitor", "RunPlan", "check_options", "check_run_dir", "check_selection",
           "crossval", "describe_difference", "finish_run", "missing_text", "parse_fold_list", "plan_run",
           "refuse_replacing_inputs", "run_fold", "run_sequential", "select_folds", "start_run"]

RUN_FORMAT = "sleepstage-crossval"
_FOLD_DIR = re.compile(r"^fold-\d+$")

# Command-line names of the options a restart must share with the first start.
_FLAGS = {"net": "--model", "channels": "--channels", "seq_len": "--seq-len", "epochs": "--epochs",
          "batch_size": "--batch-size", "lr": "--lr", "l2": "--l2", "eval_every": "--eval-every", "seed": "--seed",
          "max_steps": "--max-steps", "rnn": "--rnn", "output": "--output-layer", "dropout": "--dropout",
          "select": "--select", "preset": "--preset",
          "folds": "--folds", "val_subjects_per_fold": "--val-subjects-per-fold", "test_fraction": "--test-fraction",
          "file": "--split", "reference": "--split"}


SETUP_WAIT = 900.0
"""Seconds a process waits for another that holds the run folder's lock: taken only to write the run's
description and split (a moment) or to pool the results (a minute on the paper's 200 subjects), never while
folds train. A lock dies with its holder, so waiting long never waits for a crashed process."""


@dataclass
class CrossvalResult:
    """What a crossval command did. ``evaluation`` is None while folds are missing (nothing pooled):
    ``missing`` maps each unfinished fold to the process running it ("pid 1234 on node7") or None."""

    run_dir: Path
    split: CVSplit
    folds: list[dict]
    evaluation: object | None  # sleepstage_cli.evaluation.evaluate.Evaluation
    skipped: list[int] = field(default_factory=list)
    missing: dict[int, str | None] = field(default_factory=dict)


# --------------------------------------------------------------------------- planning and the run folder

def check_options(ds: PreparedDataset, opts: TrainOptions, devices: list[str]) -> None:
    """Refuse bad training options and devices before the run folder is touched."""
    from sleepstage_cli.training import train
    train.check_options(ds, opts)
    for d in devices or [opts.device]:
        train.resolve_device(d)


def plan_run(dataset: str | Path, run_dir: str | Path, opts: TrainOptions, folds: int = 20,
             val_subjects_per_fold: int | None = None, test_fraction: float | None = None,
             split_file: str | Path | None = None, devices: list[str] | None = None,
             allow_missing: bool = False) -> RunPlan:
    """Validate everything and make (or read) the split; nothing is written.

    ``split_file`` is a split file, a run folder, or the name of a shipped reference split (when no such
    path exists); ``allow_missing`` lets a reference split run without the nights the dataset lacks.
    """
    ds = PreparedDataset(dataset)
    if not ds.nights:
        raise InputError("prepared dataset holds no night", ds.root)
    check_options(ds, opts, devices or [])
    for night in ds.nights:  # a damaged dataset is refused before anything is trained (or cleared)
        ds.open(night)
    if is_reference_name(split_file):
        split = reference_split(str(split_file), ds, allow_missing)
    elif allow_missing:
        raise InputError(f"--allow-missing goes with a reference split (--split {'|'.join(REFERENCE_SPLITS)})")
    elif split_file is not None:
        if not Path(split_file).exists():
            raise InputError(f"split file not found (the reference splits are named "
                             f"{', '.join(REFERENCE_SPLITS)})", split_file)
        split = load_split(split_file, ds.subjects)
    else:
        split = make_split(ds.subjects, folds, val_subjects_per_fold, opts.seed, test_fraction)
    identity = json.loads(json.dumps({
        "dataset": ds.identity(), "dataset_created": ds.manifest.get("created"),
        "dataset_setup": {k: ds.manifest.get(k) for k in ("channel_spec", "conditioning", "options")},
        "nights": [n.id for n in ds.nights], "options": opts.fingerprint(),
        "folds": [f.to_json() for f in split.folds]}))
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    inputs = [split.path] if split.path is not None else []
    inputs += [ds.root / MANIFEST, *(ds.root / n.file for n in ds.nights)]
    return RunPlan(Path(run_dir), Path(dataset), opts, split, identity, digest, inputs)


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def describe_difference(old: dict, plan: RunPlan) -> str:
    """What differs between a run folder's crossval.json and this command ('' when nothing)."""
    new = plan.identity
    if not same_dataset(old.get("dataset"), new["dataset"]):  # a path (older sleepstage): its folder name
        return f"another dataset ({dataset_label(old.get('dataset'))}, now {dataset_label(new['dataset'])})"
    if old.get("nights") != new["nights"]:
        gone = sorted(set(old.get("nights") or []) - set(new["nights"]))
        added = sorted(set(new["nights"]) - set(old.get("nights") or []))
        return f"other nights of the dataset ({len(added)} added, {len(gone)} removed since)"
    if old.get("dataset_created") != new["dataset_created"] or old.get("dataset_setup") != new["dataset_setup"]:
        return (f"the dataset as prepared on {old.get('dataset_created')} (it was prepared again since, "
                "with other channels, filters or options)")
    parts = []
    o_opts, n_opts = old.get("options") or {}, new["options"]
    flat_old = {**{k: v for k, v in o_opts.items() if k != "hparams"}, **(o_opts.get("hparams") or {})}
    flat_new = {**{k: v for k, v in n_opts.items() if k != "hparams"}, **(n_opts.get("hparams") or {})}
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key) != flat_new.get(key):
            parts.append(f"{_FLAGS.get(key, key)} {_shown(flat_old.get(key))} (now {_shown(flat_new.get(key))})")
    if old.get("folds") != new["folds"]:
        o_made, n_made = old.get("split_made_by") or {}, plan.split.made_by
        if _split_kind(o_made) != _split_kind(n_made):
            named = [f"another split (made by {_made_by(o_made)} then, by {_made_by(n_made)} now)"]
        else:
            renamed = _made_by(o_made) != _made_by(n_made)  # another file or name: its sha256 differs too
            named = [f"{_FLAGS.get(k, k)} {_shown(o_made.get(k))} (now {_shown(n_made.get(k))})"
                     for k in sorted(set(o_made) | set(n_made))
                     if k != "seed" and o_made.get(k) != n_made.get(k) and not (renamed and k == "sha256")]
        if named:
            parts.extend(named)
        elif not parts:
            parts.append("another split of the subjects")
    return "other settings: " + "; ".join(parts) if parts else ""


def _split_kind(made: dict) -> str:
    return next((key for key in ("file", "reference") if key in made), "folds")


def _made_by(made: dict) -> str:
    """How a split was given: ``--split FILE``, ``--split NAME`` (a reference split) or ``--folds``."""
    kind = _split_kind(made)
    return "--folds" if kind == "folds" else "--split " + _shown(made[kind])


def check_run_dir(plan: RunPlan, force: bool) -> bool:
    """Whether RUN holds this very run (to be resumed); refuse a different one unless ``force``."""
    run_dir = plan.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise SleepstageError("is a file, not a run folder", run_dir)
    refuse_replacing_inputs(plan)
    check_writable_folder(run_dir, f"run folder {run_dir}")
    if not run_dir.exists():
        return False
    info = run_dir / RUN_FILE
    if not info.exists():
        foreign = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]
        if foreign and not force:
            raise SleepstageError(f"folder is not empty and holds no cross-validation run (no {RUN_FILE}); "
                                  "choose a new folder or pass --force", run_dir)
        return False
    if force:
        return False
    old = read_json(info, "run description")
    if not isinstance(old, dict) or old.get("format") != RUN_FORMAT:
        raise SleepstageError(f"{RUN_FILE} is not a sleepstage cross-validation run description", run_dir)
    diff = describe_difference(old, plan)
    if diff:
        raise SleepstageError(f"{run_dir} holds a cross-validation run with {diff}; run the same command as "
                              "before to resume it, or pass --force to start over (its results are deleted)")
    # The same run: its DONE markers hold its own digest (an older sleepstage's differs: it hashed a path).
    plan.digest = old.get("digest") or plan.digest
    return True


def refuse_replacing_inputs(plan: RunPlan) -> None:
    """Refuse, --force or not, a run folder that is the dataset folder or whose outputs hold an input.

    A run folder inside the dataset folder is fine (its names are not the dataset's); the dataset
    folder itself is not (its nights.csv and lock are a run's names too), nor a --split file, the
    dataset or a night file where the run writes (or --force clears) its results.
    """
    run_dir = plan.run_dir.resolve()
    if run_dir == plan.dataset.resolve():
        raise SleepstageError(f"cannot use the dataset folder {plan.dataset} as the run folder: it is one of this "
                              "command's inputs; choose another folder (--force never replaces an input)")
    outputs = [out.resolve() for out in plan.outputs()]
    for given in [*plan.inputs, plan.dataset]:
        where = Path(given).resolve()
        for out in outputs:
            if where == out or out in where.parents:
                raise SleepstageError(f"cannot write the run folder {plan.run_dir}: its {out.name} would replace "
                                      f"one of this command's inputs ({given}); choose another run folder "
                                      "(--force never replaces an input)")


def _clear(run_dir: Path) -> None:
    """Delete what an earlier run wrote (only the names a run writes: other files stay)."""
    for p in run_dir.iterdir():
        if p.name in OWNED or (_FOLD_DIR.match(p.name) and p.is_dir()):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def start_run(plan: RunPlan, resuming: bool, force: bool, command: str = "", only: list[int] | None = None) -> None:
    """Write crossval.json and split.json (before any training), clearing an old run with ``force``.

    Called under the run folder's lock: of processes starting one run at once, the first writes them.
    """
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if force and not resuming:
        _clear(run_dir)
    if not resuming or not (run_dir / RUN_FILE).exists():
        atomic_write_json(run_dir / RUN_FILE, {
            "format": RUN_FORMAT, "format_version": 1, "sleepstage_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
            "digest": plan.digest, "split_made_by": plan.split.made_by, **plan.identity})
    else:
        _drop_paths(run_dir / RUN_FILE, plan)
    split_json = plan.split.to_json(plan.identity["dataset"])
    if not (run_dir / SPLIT_FILE).exists() or any(read_json(run_dir / SPLIT_FILE).get(k) != split_json[k]
                                                   for k in ("folds", "dataset")):
        atomic_write_json(run_dir / SPLIT_FILE, split_json)
    folds = f" for fold {_ranges(only)}" if only is not None else ""
    log_event(run_dir, f"{'resumed' if resuming else 'started'} by {this_process()}{folds}: {command}".rstrip(": "))


def _drop_paths(run_file: Path, plan: RunPlan) -> None:
    """Name the dataset (and a --split file) of a run folder an older sleepstage wrote as this one does.

    It recorded their absolute paths (and the command with the paths as typed); resuming the run rewrites
    them as names (the rest, its digest included, stays).
    """
    old = read_json(run_file, "run description")
    if isinstance(old.get("dataset"), str):
        made_by = old.get("split_made_by") or {}
        if isinstance(made_by.get("file"), str):
            made_by = {**made_by, "file": last_name(made_by["file"])}
        try:
            command = shlex.join(without_folders(shlex.split(old.get("command") or "")))
        except ValueError:
            command = ""
        atomic_write_json(run_file, {**old, "dataset": plan.identity["dataset"], "split_made_by": made_by,
                                     "command": command})


# --------------------------------------------------------------------------- the whole run

def _slots(jobs: int, devices: list[str] | None, default: str) -> list[str]:
    """One device per concurrent fold: the given devices round-robin, else the --device for all."""
    if devices:
        return [devices[i % len(devices)] for i in range(jobs)]
    return [default] * jobs


def parse_fold_list(text: str) -> list[int]:
    """``--fold``: "3", "3,7,12" or "1-5,9" as fold numbers (sorted, once each)."""
    out: set[int] = set()
    for item in (t.strip() for t in str(text).split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise InputError(f"--fold {text}: give fold numbers such as 3, 3,7,12 or 1-5 (not {item or 'nothing'!r})")
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return sorted(out)


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    parts, i = [], 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if j == i else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return ", ".join(parts)


def select_folds(plan: RunPlan, only: list[int] | None) -> list[Fold]:
    """The folds this process runs: ``only`` (``--fold``), else all; a number the split lacks is refused."""
    if only is None:
        return list(plan.split.folds)
    known = {f.index: f for f in plan.split.folds}
    unknown = [k for k in only if k not in known]
    if unknown:
        raise InputError(f"--fold {_ranges(unknown)}: the split has no such fold (its folds are "
                         f"{_ranges(sorted(known))})")
    return [known[k] for k in only]


def check_selection(force: bool, only: list[int] | None, pool_only: bool) -> None:
    """Refuse --force with --fold or --pool-only: it would delete what other processes of the run did."""
    if force and (only is not None or pool_only):
        raise InputError("--force starts the whole run over: it does not go with --fold or --pool-only")


def missing_text(missing: dict[int, str | None], total: int) -> str:
    """"2 of 20 folds not finished: fold 3 (running: pid 1234 on node7); fold 7 (not running: ...)"."""
    running = [f"fold {k} (running: {owner})" for k, owner in sorted(missing.items()) if owner]
    idle = sorted(k for k, owner in missing.items() if not owner)
    if idle:
        running.append(f"fold{'s' * (len(idle) > 1)} {_ranges(idle)} (not running: not started yet, failed or "
                       "stopped)")
    return f"{len(missing)} of {total} folds not finished: {'; '.join(running)}"


def run_sequential(plan: RunPlan, todo: list[FoldJob], monitor: Monitor) -> None:
    """Run folds one after the other in this process; a first Ctrl-C checkpoints the current fold.

    A fold another process has started meanwhile (its lock is held) is left to it.
    """
    from sleepstage_cli.interrupts import GracefulStop
    from sleepstage_cli.training.train import TrainingInterrupted

    with GracefulStop("cross-validation") as stop:
        for job in todo:
            if stop.requested:
                break
            cb = monitor.fold_begin(job.fold, job.device)
            try:
                summary = run_fold(job, StopRelay(cb, stop))
            except FoldBusy as exc:
                monitor.fold_end(job.fold, None)
                monitor.info(f"{taken(exc.index, exc.owner)}: not run here")
                continue
            except TrainingInterrupted:
                monitor.fold_end(job.fold, None)
                log_event(plan.run_dir, f"{job.fold.name}: interrupted (checkpoint saved)")
                raise Interrupted(f"cross-validation interrupted in fold {job.fold.index} (its checkpoint is "
                                  "saved); run the same command again to resume", plan.run_dir) from None
            except BaseException:
                monitor.fold_end(job.fold, None)
                raise
            monitor.fold_end(job.fold, summary)
        if stop.requested and any(not fold_done(plan, j.fold) for j in todo):
            log_event(plan.run_dir, "interrupted between folds")
            raise Interrupted("cross-validation interrupted between folds; run the same command again to resume",
                              plan.run_dir)


def _refuse_if_running(plan: RunPlan) -> None:
    """--force deletes the run's results: never while another process trains one of its folds."""
    try:
        with exclusive_lock(plan.run_dir, name=RUNNING):
            return
    except FolderBusy:
        owners = sorted({o for f in plan.split.folds if (o := fold_owner(plan, f))})
        who = ", ".join(owners) or "starting"
        raise SleepstageError(f"other sleepstage processes are running folds of this run ({who}); --force "
                              "would delete their work: wait for them to finish or stop them first",
                              plan.run_dir) from None


def _run_folds(plan: RunPlan, selected: list[Fold], jobs: int, devices: list[str] | None,
               monitor: Monitor) -> list[int]:
    """Run the selected folds nobody finished or runs now; returns those finished before."""
    done = [f.index for f in selected if fold_done(plan, f)]
    elsewhere = {f.index: owner for f in selected if f.index not in done and (owner := fold_owner(plan, f))}
    monitor.run_begin(len(selected), done)
    if done:
        monitor.info(f"{len(done)} of {len(selected)} folds already finished (fold {_ranges(done)}): not run again")
    for index, owner in elsewhere.items():
        monitor.info(f"{taken(index, owner)}: not run here")
    todo_folds = [f for f in selected if f.index not in done and f.index not in elsewhere]
    slots = _slots(min(jobs, max(1, len(todo_folds))), devices, plan.opts.device)
    todo = [FoldJob(plan.run_dir, plan.dataset, plan.opts, f, plan.digest, slots[0]) for f in todo_folds]
    if len(slots) == 1:
        run_sequential(plan, todo, monitor)
    elif todo:
        run_parallel(plan, todo, slots, monitor)
    return done


@contextlib.contextmanager
def _run_lock(plan: RunPlan, monitor: Monitor):
    """Hold the run folder's lock, waiting (and saying so) while another process of the run holds it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(plan.run_dir))
        except FolderBusy as exc:
            monitor.info(f"waiting for {exc.owner}, which is writing or pooling this run (at most "
                         f"{SETUP_WAIT / 60:.0f} min)")
            stack.enter_context(exclusive_lock(plan.run_dir, wait=SETUP_WAIT))
        yield


def _pool_if_complete(plan: RunPlan, pool_only: bool, monitor: Monitor) -> CrossvalResult:
    """Pool every fold's predictions once all are finished; else the result names the missing folds."""
    missing = {f.index: fold_owner(plan, f) for f in plan.split.folds if not fold_done(plan, f)}
    if missing:
        if pool_only:
            raise SleepstageError(f"cannot pool the run yet: {missing_text(missing, len(plan.split.folds))}; "
                                  "run this again once they are done (or the command without --pool-only to train "
                                  "those not running)", plan.run_dir)
        finished = [fold_summary(plan, f) for f in plan.split.folds if f.index not in missing]
        return CrossvalResult(plan.run_dir, plan.split, finished, None, missing=missing)
    with _run_lock(plan, monitor):
        result = finish_run(plan)
    log_event(plan.run_dir, f"finished: pooled accuracy {result.evaluation.pooled['accuracy']:.4f}, "
                            f"kappa {result.evaluation.pooled['kappa']:.4f} (by {this_process()})")
    return result


def crossval(plan: RunPlan, jobs: int = 1, devices: list[str] | None = None, force: bool = False,
             split_only: bool = False, monitor: Monitor | None = None, command: str = "",
             only: list[int] | None = None, pool_only: bool = False) -> CrossvalResult | None:
    """Run (or resume) a planned cross-validation, or only its folds ``only``; pool once every fold is done.

    Any number of processes, here or on machines sharing the run folder, may work on one run at once:
    each runs its ``only`` folds (``--fold``), or without them the folds nobody has finished or is running.
    The run's description and split are written once, under the run folder's lock; a different command is
    refused; each fold runs under its own lock. Whoever finishes the last fold pools, so ``evaluation`` is
    None while folds are missing (``missing`` names them). ``pool_only`` trains nothing: it pools, or
    refuses naming the missing folds. ``split_only`` writes the split and stops.
    """
    monitor = monitor or Monitor()
    if jobs < 1:
        raise InputError("--jobs must be at least 1")
    check_selection(force, only, pool_only)
    selected = select_folds(plan, only)
    resuming = check_run_dir(plan, force)  # before the lock: a refused command leaves RUN untouched
    if pool_only and not resuming:
        raise SleepstageError("holds no cross-validation run to pool; run the command without --pool-only to "
                              "train it", plan.run_dir)
    with contextlib.ExitStack() as running:
        with _run_lock(plan, monitor):
            resuming = check_run_dir(plan, force)
            if force and not resuming:
                _refuse_if_running(plan)
            start_run(plan, resuming, force, command, only)
            if split_only:
                return None
            running.enter_context(shared_lock(plan.run_dir, RUNNING))  # --force elsewhere is refused meanwhile
        done = [] if pool_only else _run_folds(plan, selected, jobs, devices, monitor)
        result = _pool_if_complete(plan, pool_only, monitor)
    result.skipped = done
    return result


def _table(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([" ".join(map(str, v)) if isinstance(v, (list, tuple)) else ("" if v is None else v) for v in row]
                for row in rows)
    return buf.getvalue()


def finish_run(plan: RunPlan) -> CrossvalResult:
    """Collect the folds' predictions and evaluate them with ``sleepstage evaluate``'s code."""
    from sleepstage_cli.evaluation.evaluate import evaluate_paths
    from sleepstage_cli.report.evaluation_files import write_evaluation

    run_dir, pred_dir = plan.run_dir, plan.run_dir / PREDICTIONS
    summaries, fold_of = [], {}
    for fold in plan.split.folds:
        summaries.append(fold_summary(plan, fold))
        for src in sorted((plan.fold_dir(fold) / PREDICTIONS).glob("*.csv")):
            fold_of[src.name] = fold.index
            data = src.read_bytes()
            dst = pred_dir / src.name
            if not dst.exists() or dst.read_bytes() != data:
                atomic_write_text(dst, data.decode("utf-8"))
    for stale in pred_dir.glob("*.csv"):  # never let a night of another run into the pooled figures
        if stale.name not in fold_of:
            stale.unlink()
    ev = evaluate_paths(pred_dir, plan.dataset)
    nights = PreparedDataset(plan.dataset).nights
    tested = {s for f in plan.split.folds for s in f.test}
    untested = [n.id for n in nights if n.subject not in tested]
    if untested:  # a holdout split (or a split file) leaves them out on purpose: say so, not as a warning
        ev.notes = [n for n in ev.notes if "without a prediction" not in n]
        ev.notes.insert(0, f"{len(untested)} night(s) of subjects in no test set of the split are not evaluated")
    ev.title = f"Cross-validation: {len(plan.split.folds)} fold(s) on {plan.dataset.resolve().name}"
    ev.meta["crossval"] = {"run": Path(os.path.abspath(run_dir)).name, "folds": len(plan.split.folds),
                           "split": plan.split.made_by, "options": plan.identity["options"]}
    write_evaluation(run_dir / EVALUATION, ev, force=True)
    cols = ["fold", "test_subjects", "val_subjects", "train_subjects", "test_nights", "epochs", *SUMMARY_METRICS,
            "steps", "best_step", "val_accuracy", "train_seconds", "device", *CALIBRATION_COLUMNS]
    atomic_write_text(run_dir / FOLDS_CSV, _table(cols, [[s.get(c) for c in cols] for s in summaries]))
    subject = {n.id: n.subject for n in nights}
    fold_by_subject = {s: f.index for f in plan.split.folds for s in f.test}
    rows = [[n.night, subject.get(n.night, ""), fold_by_subject.get(subject.get(n.night), ""), n.counts["n"],
             *(n.metrics[k] for k in ("accuracy", "kappa", "macro_f1"))] for n in ev.nights]
    atomic_write_text(run_dir / NIGHTS_CSV, _table(["night", "subject", "fold", "epochs", "accuracy", "kappa",
                                                    "macro_f1"], rows))
    write_card(build_crossval_card(plan.identity, summaries, ev.pooled, plan.split.made_by,
                                   Path(os.path.abspath(run_dir)).name, plan.digest),
               run_dir / CARD_JSON, run_dir / CARD_MD)
    return CrossvalResult(run_dir=run_dir, split=plan.split, folds=summaries, evaluation=ev)


