"""``sleepstage evaluate``: predicted hypnograms against reference ones, pooled and per night."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command

if TYPE_CHECKING:
    from sleepstage_cli.evaluation.evaluate import Evaluation

_EXAMPLE = """Examples:

  sleepstage evaluate scored/ sleep-cassette/ -o eval-sc

  sleepstage evaluate scored/ ss3-data/          (a prepared dataset as the reference)

  sleepstage evaluate night1.csv night1-Hypnogram.edf -o eval-night1 --force
"""

# Shown in the terminal; metrics.json, stats_agreement.csv and report.html have every statistic.
_TERMINAL_STATS = ("TST", "SE", "WASO", "SOL", "Lat_REM", "W", "N1", "N2", "N3", "REM")
_MAX_NIGHT_ROWS = 20


@app.command(epilog=_EXAMPLE)
@command
def evaluate(
    pred: Annotated[Path, typer.Argument(
        help="Predicted hypnogram, or a folder of them (e.g. the output of 'sleepstage score').",
        show_default=False)],
    ref: Annotated[Path, typer.Argument(
        help="Reference hypnogram, a folder of them (EDF+ annotations, CSV/TSV), or a prepared dataset.",
        show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for metrics.json, the CSV tables and "
                                         "report.html.")] = Path("evaluation"),
    tolerance: Annotated[float, typer.Option(min=0.0, help="Seconds two epoch onsets may differ and still be "
                                             "the same epoch (below half an epoch).")] = 1.0,
    epoch_length: Annotated[Optional[float], typer.Option(
        min=20.0, max=30.0, help="Epoch length (s) of hypnogram tables without durations: 30 or 20 (default: "
                                 "inferred, else 30).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the files of an earlier evaluation in the "
                                        "output folder.")] = False,
) -> None:
    """Compare predicted hypnograms with reference ones: accuracy, kappa, macro-F1, confusion, sleep statistics.

    Nights are paired by name (extensions and suffixes such as -PSG, -Hypnogram, Base, _sleepscoring
    ignored; Sleep-EDF by the first 6 characters, MASS by the subject code) and epochs by onset time,
    so a prediction that starts later or skips epochs is still compared epoch for epoch. Unscored
    epochs in either never count. Metrics are pooled over all epochs (as the SeqSleepNet paper reports them) and
    given per night with mean and SD over nights.
    """
    from sleepstage_cli.errors import InputError, OutputExistsError
    from sleepstage_cli.evaluation.evaluate import OUTPUT_FILES, evaluate_paths, write_evaluation
    from sleepstage_cli.io.hypnogram import SUPPORTED_EPOCHS

    # Half an epoch depends on the hypnograms (read later, and checked again then); no epoch is longer than 30 s.
    if not 0 <= tolerance < 15:
        raise InputError(f"--tolerance must be at least 0 s and below half an epoch (15 s), got {tolerance:g}")
    if epoch_length is not None and epoch_length not in SUPPORTED_EPOCHS:
        raise InputError(f"--epoch-length takes 30 or 20 (seconds), not {epoch_length:g}")
    # Refuse before the (possibly long) reading, and again when writing.
    if not force and output.is_dir() and any((output / n).exists() for n in OUTPUT_FILES):
        raise OutputExistsError(output, "evaluation output")
    bar = con.progress(transient=True)
    task = bar.add_task("reading hypnograms", total=None)
    bar.start()
    try:
        ev = evaluate_paths(pred, ref, tolerance=tolerance, epoch_length=epoch_length,
                            on_night=lambda _: bar.advance(task))
    finally:
        bar.stop()
    for note in ev.notes:
        con.warn(note)
    print_evaluation(ev)
    write_evaluation(output, ev, force=force)
    con.info(f"wrote {len(OUTPUT_FILES)} files to {output} (report: {output / 'report.html'})")


def _f(value: object, unit: str) -> str:
    from sleepstage_cli.report.html import format_value

    return format_value(value, unit)


def print_evaluation(ev: Evaluation) -> None:
    """Rich tables of an :class:`~sleepstage_cli.evaluation.evaluate.Evaluation` on stdout (reused by crossval)."""
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
