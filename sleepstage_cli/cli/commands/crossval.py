"""``sleepstage crossval``: subject-wise cross-validation with train's options, pooled as the paper reports it."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.cli.display import ProgressCallbacks, print_choices, print_evaluation
from sleepstage_cli.cli.options import (
    AmpOpt,
    BatchSizeOpt,
    ChannelsOpt,
    DeviceOpt,
    DropoutOpt,
    EpochsOpt,
    EvalEveryOpt,
    FreezeOpt,
    InitOpt,
    KeepNormOpt,
    L2Opt,
    LrOpt,
    MaxStepsOpt,
    ModelOpt,
    OutputLayerOpt,
    PresetOpt,
    RnnOpt,
    SeedOpt,
    SelectOpt,
    SeqLenOpt,
    WorkersOpt,
    train_options,
)
from sleepstage_cli.errors import InputError

if TYPE_CHECKING:
    from sleepstage_cli.training.crossval import CrossvalResult
    from sleepstage_cli.training.split import CVSplit, Fold

_EXAMPLE = """Examples:

  sleepstage crossval ss3-data/ --folds 20 -o run/          (20 folds of the dataset's subjects)

  sleepstage crossval ss3-data/ --folds 20 -o run/          (again after a crash or Ctrl-C: resumes)

  sleepstage crossval data/ --folds 10 -o run/ --jobs 2 --epochs 5

  sleepstage crossval data/ -o run/ --devices 0,1,2,3        (folds spread over 4 GPUs)

  sleepstage crossval data/ --folds 20 -o run/ --fold 3       (only fold 3: one task of a SLURM array;
                                                              the last task to finish pools all folds)

  sleepstage crossval data/ --folds 20 -o run/ --pool-only    (pool the finished folds, or name those missing)

  sleepstage crossval data/ -o run2/ --split run/split.json --seed 1    (the same folds, another seed)

  sleepstage crossval sedf-data/ --split sleepedf-20 -o run/    (the authors' Sleep-EDF-20 folds)

  sleepstage crossval mass-raw/ --split mass-paper --preset paper -o paper/   (the paper, as released)

  sleepstage crossval data/ -o quick/ --folds 1 --test-fraction 0.2 --max-steps 200

  sleepstage evaluate run/predictions ss3-data/             (reproduces the pooled metrics)
"""


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Eta:
    """Folds done and time left, from this session's fold times (or the running folds' progress)."""

    def __init__(self, total: int, done: int, jobs: int) -> None:
        self.total, self.done, self.jobs = total, done, max(1, jobs)
        self.durations: list[float] = []
        self.running: dict[int, list[float]] = {}  # fold -> [start, fraction done]

    def begin(self, fold: int) -> None:
        self.running[fold] = [time.monotonic(), 0.0]

    def progress(self, fold: int, fraction: float) -> None:
        if fold in self.running:
            self.running[fold][1] = min(max(fraction, 0.0), 1.0)

    def end(self, fold: int, finished: bool) -> None:
        start, _ = self.running.pop(fold, (time.monotonic(), 0.0))
        if finished:
            self.done += 1
            self.durations.append(time.monotonic() - start)

    def text(self) -> str:
        head = f"{self.done} of {self.total} folds done"
        per_fold = sum(self.durations) / len(self.durations) if self.durations else None
        if per_fold is None:
            guesses = [(time.monotonic() - s) / f for s, f in self.running.values() if f >= 0.05]
            per_fold = sum(guesses) / len(guesses) if guesses else None
        if per_fold is None:
            return head
        left = self.total - self.done - len(self.running) + sum(1 - f for _, f in self.running.values())
        return f"{head}, about {_duration(max(0.0, left) * per_fold / self.jobs)} left"


def _fold_line(fold: Fold, summary: dict) -> str:
    return (f"fold {fold.index} done: accuracy {100 * summary['accuracy']:.1f} %, kappa {summary['kappa']:.3f}, "
            f"macro-F1 {100 * summary['macro_f1']:.1f} % on {summary['epochs']} epochs of "
            f"{len(summary['test_nights'])} night(s)")


class _FoldProgress(ProgressCallbacks):
    """train's progress display for one fold, with a line for the whole run under it."""

    def __init__(self, label: str, eta: Eta, index: int) -> None:
        super().__init__(label)
        self.eta, self.index, self.total = eta, index, 0

    def start(self, total_steps: int, step: int) -> None:
        self.total = total_steps
        super().start(total_steps, step)

    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None:
        self.eta.progress(self.index, step / max(self.total, 1))
        super().step(step, loss, seq_per_s, pass_index)

    def _show(self) -> None:
        super()._show()
        self.status.plain += f"\n  {self.eta.text()}"

    def stage(self, text: str) -> None:
        # A stage after training (scoring) ends the bar first: a line printed under a live display that
        # is not on a terminal would run into its last frame.
        self.stop()
        super().stage(text)


class SequentialMonitor:
    """One fold at a time, in this process: train's own progress display per fold."""

    def __init__(self, eta: Eta, numbered: bool = True) -> None:
        self.eta = eta
        self.numbered = numbered  # folds 1..N: "fold k/N"; else (a reference split's skipped folds) "fold k"
        self.current: _FoldProgress | None = None

    def info(self, text: str) -> None:
        con.info(text)

    def run_begin(self, total: int, done: list[int]) -> None:
        self.eta.total, self.eta.done = total, len(done)

    def fold_begin(self, fold: Fold, device: str):
        self.eta.begin(fold.index)
        label = f"fold {fold.index}/{self.eta.total}" if self.numbered else f"fold {fold.index}"
        con.info(f"{label}: testing {', '.join(fold.test)}; validation "
                 f"{', '.join(fold.val) or 'none'}; {len(fold.train)} training subject(s) ({self.eta.text()})")
        self.current = _FoldProgress(label, self.eta, fold.index)
        return self.current

    def fold_end(self, fold: Fold, summary: dict | None) -> None:
        if self.current is not None:
            self.current.stop()
        self.eta.end(fold.index, summary is not None)
        if summary is not None:
            con.info(_fold_line(fold, summary))


class _TaskCallbacks:
    """A running fold's line in the parallel display (fed from its worker's messages)."""

    def __init__(self, monitor: ParallelMonitor, task, index: int) -> None:
        self.m, self.task, self.index = monitor, task, index

    def stage(self, text: str) -> None:
        self.m.progress.update(self.task, status=text)
        self.m.refresh()

    def start(self, total_steps: int, step: int) -> None:
        self.m.progress.update(self.task, total=total_steps, completed=step, status="training")
        self.m.refresh()

    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None:
        total = self.m.progress.tasks[self._pos()].total or 1
        self.m.eta.progress(self.index, step / total)
        self.m.progress.update(self.task, completed=step, status=f"loss {loss:.3f}")
        self.m.refresh()

    def evaluated(self, step: int, metrics: dict, best: bool) -> None:
        self.m.progress.update(self.task, status=f"validation accuracy {100 * metrics['accuracy']:.1f} %"
                                                 f"{' (best)' if best else ''}")

    def _pos(self) -> int:
        return next(i for i, t in enumerate(self.m.progress.tasks) if t.id == self.task)


class ParallelMonitor:
    """Several folds at once: a bar for the folds and one line per running fold."""

    def __init__(self, eta: Eta) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.eta = eta
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}", markup=False),
                                 console=con.err)
        self.overall = self.progress.add_task("folds", total=eta.total, completed=eta.done, status=eta.text())
        self.tasks: dict[int, object] = {}

    def refresh(self) -> None:
        self.progress.update(self.overall, status=self.eta.text())

    def run_begin(self, total: int, done: list[int]) -> None:
        self.eta.total, self.eta.done = total, len(done)
        self.progress.update(self.overall, total=total, completed=len(done))
        self.refresh()

    def info(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def fold_begin(self, fold: Fold, device: str):
        if not self.progress.live.is_started:
            self.progress.start()
        self.eta.begin(fold.index)
        self.tasks[fold.index] = self.progress.add_task(escape(f"  fold {fold.index} [{device}]"), total=None,
                                                        status="starting")
        self.refresh()
        return _TaskCallbacks(self, self.tasks[fold.index], fold.index)

    def fold_end(self, fold: Fold, summary: dict | None) -> None:
        self.progress.remove_task(self.tasks.pop(fold.index))
        self.eta.end(fold.index, summary is not None)
        if summary is not None:
            self.progress.advance(self.overall)
            self.info(_fold_line(fold, summary))
        self.refresh()

    def stop(self) -> None:
        self.progress.stop()


def _print_split(split: CVSplit, dataset: Path) -> None:
    from sleepstage_cli.data.dataset import PreparedDataset
    from sleepstage_cli.training.train import nights_of

    ds = PreparedDataset(dataset)
    t = Table(title=f"{len(split.folds)} fold(s) by subject", title_justify="left")
    for col in ("fold", "test subjects", "test nights", "validation subjects", "training subjects"):
        t.add_column(col, justify="right" if col in ("fold", "test nights", "training subjects") else "left")
    for f in split.folds:
        t.add_row(str(f.index), ", ".join(f.test), str(len(nights_of(ds, list(f.test)))), ", ".join(f.val) or "none",
                  str(len(f.train)))
    con.out.print(t)
    if split.reference is not None:
        _print_reference(split.reference)
    for note in split.notes:
        con.warn(note)


def _print_reference(ref: dict) -> None:
    """The nights whose epoch count differs from the reference split's, and a one-line summary."""
    from sleepstage_cli.training.reference_splits import epoch_summary

    differ = [r for r in ref["epoch_counts"] if r["difference"] != 0]
    if differ:
        t = Table(title=f"Epoch counts: {len(differ)} night(s) differ",
                  title_justify="left")
        for col in ("night", "dataset id", "split's", "ours", "difference"):
            t.add_column(col, justify="left" if col in ("night", "dataset id") else "right")
        for r in differ:
            t.add_row(r["night"], r["id"], f"{r['split']:,}", f"{r['ours']:,}", f"{r['difference']:+,}")
        con.out.print(t)
    con.info(epoch_summary(ref))


def _print_folds(result: CrossvalResult) -> None:
    import numpy as np

    t = Table(title="Per fold (its test nights pooled; selected: the step kept by validation)", title_justify="left")
    for col in ("fold", "test subjects", "nights", "epochs", "acc. (%)", "kappa", "MF1 (%)", "selected",
                "val. acc. (%)", "val. ECE (%) before→after"):
        t.add_column(col, justify="left" if col == "test subjects" else "right")

    def pct(v) -> str:
        return "—" if v is None or v != v else f"{100 * v:.1f}"

    for s in result.folds:
        test = ", ".join(s["test_subjects"])
        t.add_row(str(s["fold"]), test if len(test) <= 30 else test[:27] + "...", str(len(s["test_nights"])),
                  str(s["epochs"]), pct(s["accuracy"]), "—" if s["kappa"] is None else f"{s['kappa']:.3f}",
                  pct(s["macro_f1"]), "last" if s["best_step"] is None else str(s["best_step"]),
                  pct(s["val_accuracy"]), f"{pct(s.get('val_ece_before'))}→{pct(s.get('val_ece_after'))}")
    if len(result.folds) > 1:
        def mean_sd(key: str, scale: float, digits: int) -> str:
            v = np.array([s[key] for s in result.folds if s[key] is not None], dtype=float)
            return f"{scale * np.nanmean(v):.{digits}f} ± {scale * np.nanstd(v, ddof=1):.{digits}f}"

        t.add_row("mean ± sd", "", "", "", mean_sd("accuracy", 100, 1), mean_sd("kappa", 1, 3),
                  mean_sd("macro_f1", 100, 1), "", "", "")
    con.out.print(t)


@app.command(epilog=_EXAMPLE)
@command
def crossval(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder (from 'sleepstage prepare').")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder: split, per-fold models and "
                                         "predictions, pooled evaluation.")] = Path("crossval"),
    folds: Annotated[int, typer.Option(help="Number of subject-wise folds (every subject is tested once).")] = 20,
    val_subjects_per_fold: Annotated[Optional[int], typer.Option(
        help="Validation subjects per fold, drawn from the fold's non-test subjects, for model selection "
             "(default: 4 as in the original MASS setup, or a tenth of the non-test subjects when that is fewer, "
             "at least 1; 0: no validation, keep the last weights).", show_default=False)] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="With --folds 1: share of subjects tested in a "
                                                           "single holdout split (quick checks).",
                                                           show_default=False)] = None,
    split: Annotated[Optional[Path], typer.Option("--split", help="Use the folds of this split file (e.g. an "
                                                  "earlier run's split.json, or its run folder) instead of making "
                                                  "them; or the authors' published split by name: mass-paper (MASS, "
                                                  "200 subjects, 20 folds), sleepedf-20 or sleepedf-78 (a name is "
                                                  "used only when no file or folder of that name exists).",
                                                  show_default=False)] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="With a reference split: run without the "
                                                "split's nights the dataset lacks (each fold says how many; a fold "
                                                "left without test or training nights is skipped).")] = False,
    split_only: Annotated[bool, typer.Option("--split-only", help="Write RUN/split.json, show the folds and stop "
                                             "(nothing is trained).")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Folds trained side by side, each in its own "
                                                "process (default: 1, or one per --devices entry).",
                                                show_default=False)] = None,
    devices: Annotated[Optional[str], typer.Option(help="GPUs to spread the folds over, e.g. 0,1 (cuda:0, "
                                                   "cuda:1); overrides --device.", show_default=False)] = None,
    fold: Annotated[Optional[str], typer.Option("--fold", help="Run only these folds, e.g. 3, 3,7,12 or 1-5 (a "
                                                "scheduler's task, e.g. --fold $SLURM_ARRAY_TASK_ID). Processes on "
                                                "any machines sharing the run folder may run its folds at once; the "
                                                "one finishing the last fold pools them.", show_default=False)] = None,
    pool_only: Annotated[bool, typer.Option("--pool-only", help="Train nothing: pool the folds' results once all "
                                            "are finished, else name the missing folds (exit 1).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over: delete an earlier run's results in the run "
                                        "folder.")] = False,
    model: ModelOpt = "seqsleepnet",
    channels: ChannelsOpt = None,
    seq_len: SeqLenOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = 32,
    lr: LrOpt = None,
    l2: L2Opt = 1e-3,
    eval_every: EvalEveryOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    workers: WorkersOpt = None,
    max_steps: MaxStepsOpt = None,
    rnn: RnnOpt = None,
    output_layer: OutputLayerOpt = None,
    dropout: DropoutOpt = None,
    select: SelectOpt = None,
    preset: PresetOpt = None,
    init: InitOpt = None,
    freeze: FreezeOpt = "none",
    keep_normalisation: KeepNormOpt = False,
) -> None:
    """Subject-wise cross-validation: train a model per fold, score its test subjects, pool the metrics.

    Each fold trains exactly as 'sleepstage train' with the options given (validation subjects of the fold
    select the checkpoint) and scores its test nights with test-time aggregation. The pooled metrics,
    per-night tables, confusion matrix and report come from the code of 'sleepstage evaluate'. Run the
    same command again after a crash or Ctrl-C: finished folds are kept, the interrupted one resumes
    from its checkpoint; a different command on the same run folder is refused.
    """
    from sleepstage_cli.data.dataset import PreparedDataset
    from sleepstage_cli.digests import without_folders
    from sleepstage_cli.training.crossval import check_run_dir, check_selection, parse_fold_list, plan_run, select_folds
    from sleepstage_cli.training.crossval import crossval as run_crossval

    opts = train_options(model, channels, seq_len, epochs, batch_size, lr, l2, eval_every, seed, device, amp,
                         workers, max_steps, rnn, output_layer, dropout, select, preset, init, freeze,
                         keep_normalisation)
    only = parse_fold_list(fold) if fold is not None else None
    check_selection(force, only, pool_only)
    device_list = _devices(devices)
    n_jobs = jobs if jobs is not None else max(1, len(device_list))
    if n_jobs < 1:
        raise InputError(f"--jobs must be at least 1 (got {n_jobs})")
    plan = plan_run(dataset, output, opts, folds, val_subjects_per_fold, test_fraction, split, device_list,
                    allow_missing=allow_missing)
    n_folds = len(select_folds(plan, only))  # a fold the split lacks is refused before anything is shown
    check_run_dir(plan, force)  # a refused command says so before anything else
    if not pool_only:
        _print_split(plan.split, dataset)
        print_choices(opts, PreparedDataset(dataset).conditioning.describe())
    eta = Eta(n_folds, 0, min(n_jobs, n_folds))
    numbered = only is None and [f.index for f in plan.split.folds] == list(range(1, n_folds + 1))
    monitor = SequentialMonitor(eta, numbered) if n_jobs == 1 else ParallelMonitor(eta)
    try:
        result = run_crossval(plan, n_jobs, device_list, force=force, split_only=split_only, monitor=monitor,
                              command=shlex.join(["sleepstage", *without_folders(sys.argv[1:])]), only=only,
                              pool_only=pool_only)
    finally:
        if isinstance(monitor, ParallelMonitor):
            monitor.stop()
    if result is None:
        con.info(f"split written to {output / 'split.json'}; run the command without --split-only to train")
    elif result.evaluation is None:
        _report_unpooled(result)
    else:
        _report(result, dataset)


def _devices(text: Optional[str]) -> list[str]:
    if not text:
        return []
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        out.append(f"cuda:{item}" if item.isdigit() else item)
    return out


def _report_unpooled(result: CrossvalResult) -> None:
    """This process's folds are done, others are not: what is finished, what is missing, how it gets pooled."""
    from sleepstage_cli.training.crossval import missing_text

    if result.folds:
        _print_folds(result)
    total = len(result.split.folds)
    con.info(f"not pooled yet: {missing_text(result.missing, total)}")
    if any(result.missing.values()):
        con.info("the process that finishes the last fold pools the run (or run this command again with "
                 "--pool-only once they are done)")
    else:
        con.info("run those folds (the same command with --fold, or without it to run them all here), then "
                 "--pool-only pools the run")


def _report(result: CrossvalResult, dataset: Path) -> None:
    ev = result.evaluation
    for note in ev.notes:
        (con.info if "in no test set" in note else con.warn)(note)
    _print_folds(result)
    print_evaluation(ev)
    run = result.run_dir
    con.info(f"predictions: {run / 'predictions'} (one hypnogram CSV per test night)")
    con.info(f"evaluation: {run / 'evaluation'} (metrics.json, per_night.csv, confusion.csv, report.html ...)")
    con.info(f"per fold: {run / 'folds.csv'}; per night: {run / 'nights.csv'}; folds: {run / 'split.json'}")
    con.info(f"the same figures: sleepstage evaluate {run / 'predictions'} {dataset}")
