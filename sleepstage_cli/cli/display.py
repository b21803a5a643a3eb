"""What more than one command shows: training progress (train, crossval), evaluation tables (evaluate, crossval)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sleepstage_cli.cli import console as con

if TYPE_CHECKING:
    from sleepstage_cli.evaluation.evaluate import Evaluation
    from sleepstage_cli.training.train import TrainOptions

# Shown in the terminal; metrics.json, stats_agreement.csv and report.html have every statistic.
_TERMINAL_STATS = ("TST", "SE", "WASO", "SOL", "Lat_REM", "W", "N1", "N2", "N3", "REM")
_MAX_NIGHT_ROWS = 20


class ProgressCallbacks:
    """Draws training progress: a bar over the steps, and below it loss, throughput and the last validation."""

    def __init__(self, label: str = "training") -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=con.err)
        self.status = Text("", overflow="fold")
        self.live = Live(Group(self.progress, self.status), console=con.err, refresh_per_second=4)
        self.task = None
        self.label = label
        self.train_text = ""
        self.val_text = ""

    def stage(self, text: str) -> None:
        con.info(f"{self.label}: {text}")

    def start(self, total_steps: int, step: int) -> None:
        self.task = self.progress.add_task(self.label, total=total_steps, completed=step)
        self.live.start()

    def _show(self) -> None:
        self.status.plain = f"  {self.train_text}" + (f"\n  {self.val_text}" if self.val_text else "")

    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None:
        self.progress.update(self.task, completed=step)
        self.train_text = f"pass {pass_index + 1}  loss {loss:.3f}  {seq_per_s:.1f} sequences/s"
        self._show()

    def evaluated(self, step: int, metrics: dict, best: bool) -> None:
        self.val_text = (f"validation at step {step}: accuracy {100 * metrics['accuracy']:.1f} %  "
                         f"macro-F1 {100 * metrics['macro_f1']:.1f} %  kappa {metrics['kappa']:.3f}"
                         f"{'  (best so far)' if best else ''}")
        self._show()

    def stop(self) -> None:
        if self.live.is_started:
            self.live.stop()
            if not con.err.is_terminal:
                con.err.line()  # the last status line ends without one when not drawn on a terminal


def print_choices(opts: TrainOptions, dataset: str | None = None) -> None:
    """The run's header: the training choices in effect (a preset's included), before anything is trained;
    ``dataset``: how the prepared nights were conditioned (standardisation, filters)."""
    hp = opts.hparams
    cell = "" if opts.net == "deepsleepnet" else f", cell {hp.get('rnn', 'gru')}"
    seq = f", L={opts.resolved_seq_len()}" if opts.resolved_seq_len() > 1 else ""
    preset = f"preset {opts.preset}: " if opts.preset else ""
    if opts.init is not None:
        from sleepstage_cli.training.finetune import describe

        con.info(describe(opts))
    con.info(f"{preset}{opts.net}{cell}{seq}; {opts.epochs} passes, batch {opts.batch_size}, lr {opts.lr:g}, "
             f"L2 {opts.l2:g}; validation every {opts.eval_every} steps, selection {opts.select}"
             + (f"; data {dataset}" if dataset else ""))


def _f(value: object, unit: str) -> str:
    from sleepstage_cli.report.html import format_value

    return format_value(value, unit)


def print_evaluation(ev: Evaluation) -> None:
    """Rich tables of an :class:`~sleepstage_cli.evaluation.evaluate.Evaluation` on stdout (evaluate, crossval)."""
    from sleepstage_cli.evaluation.sleepstats import FIELD_BY_NAME
    from sleepstage_cli.stages import STAGES

    p, s = ev.pooled, ev.summary
    t = Table(title=f"Agreement over {len(ev.nights)} night(s), {p['n']} epochs", title_justify="left")
    for col, just in (("metric", "left"), ("pooled", "right"), ("per night: mean ± sd", "right")):
        t.add_column(col, justify=just)
    for label, key, unit in (("accuracy (%)", "accuracy", "frac"), ("Cohen's kappa", "kappa", "coef"),
                             ("macro-F1 (%)", "macro_f1", "frac"), ("mean sensitivity (%)", "mean_sensitivity", "frac"),
                             ("mean specificity (%)", "mean_specificity", "frac")):
        t.add_row(label, _f(p[key], unit), f"{_f(s[key]['mean'], unit)} ± {_f(s[key]['sd'], unit)}")
    if "ece" in p and "ece" in s:  # predictions with probabilities (evaluation/calibration.py)
        t.add_row("calibration error, ECE (%)", _f(p["ece"], "frac"),
                  f"{_f(s['ece']['mean'], 'frac')} ± {_f(s['ece']['sd'], 'frac')}")
    con.out.print(t)

    t = Table(title="Per stage (pooled)", title_justify="left")
    for col in ("stage", "support", "sensitivity (%)", "specificity (%)", "precision (%)", "F1 (%)"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for name in STAGES:
        c = p["per_class"][name]
        t.add_row(name, _f(c["support"], "count"),
                  *(_f(c[k], "frac") for k in ("sensitivity", "specificity", "precision", "f1")))
    con.out.print(t)

    t = Table(title="Confusion matrix (rows: reference, columns: prediction)", title_justify="left")
    t.add_column("ref \\ pred")
    for name in (*STAGES, "total"):
        t.add_column(name, justify="right")
    for name, row in zip(STAGES, p["confusion"]):
        t.add_row(name, *(str(int(v)) for v in row), str(int(sum(row))))
    con.out.print(t)

    if len(ev.nights) <= _MAX_NIGHT_ROWS:
        t = Table(title="Per night", title_justify="left")
        # the night is what a reader looks for: other columns wrap first on a narrow terminal
        t.add_column("night", no_wrap=True, min_width=min(30, max((len(n.night) for n in ev.nights), default=5)))
        for col in ("epochs compared", "accuracy (%)", "kappa", "macro-F1 (%)", "ref epochs not compared"):
            t.add_column(col, justify="right")
        for n in ev.nights:
            t.add_row(n.night, str(n.counts["n"]), _f(n.metrics["accuracy"], "frac"), _f(n.metrics["kappa"], "coef"),
                      _f(n.metrics["macro_f1"], "frac"), str(n.counts["ref_scored_not_compared"]))
        con.out.print(t)

    agree = {k: v for k, v in ev.stats_agreement.items() if k in _TERMINAL_STATS}
    if agree:
        t = Table(title="Sleep statistics: prediction - reference (Bland-Altman)", title_justify="left")
        for col in ("statistic", "unit", "mean ref", "mean pred", "bias", "limits of agreement", "r"):
            t.add_column(col, justify="left" if col in ("statistic", "unit") else "right")
        for name, a in agree.items():
            unit = FIELD_BY_NAME[name].unit
            t.add_row(name, unit, _f(a["mean_ref"], unit), _f(a["mean_pred"], unit), _f(a["bias"], unit),
                      f"{_f(a['loa_low'], unit)} to {_f(a['loa_high'], unit)}", _f(a["r"], "coef"))
        con.out.print(t)
