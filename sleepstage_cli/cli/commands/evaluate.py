"""``sleepstage evaluate``: predicted hypnograms against reference ones, pooled and per night."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.cli.display import print_evaluation

_EXAMPLE = """Examples:

  sleepstage evaluate scored/ sleep-cassette/ -o eval-sc

  sleepstage evaluate scored/ ss3-data/          (a prepared dataset as the reference)

  sleepstage evaluate night1.csv night1-Hypnogram.edf -o eval-night1 --force
"""


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
    ignore_start: Annotated[bool, typer.Option("--ignore-start", help="Compare a prediction and a reference even "
                                               "when their start times are more than a day apart.")] = False,
) -> None:
    """Compare predicted hypnograms with reference ones: accuracy, kappa, macro-F1, confusion, sleep statistics.

    Nights are paired by name (extensions and suffixes such as -PSG, -Hypnogram, Base, _sleepscoring
    ignored; Sleep-EDF by the first 6 characters, MASS by the subject code) and epochs by onset time,
    so a prediction that starts later or skips epochs is still compared epoch for epoch. Unscored
    epochs in either never count. Metrics are pooled over all epochs (as the SeqSleepNet paper reports them) and
    given per night with mean and SD over nights. A prediction and a reference that start more than a day
    apart are two recordings: refused unless --ignore-start.
    """
    from sleepstage_cli.errors import InputError, OutputExistsError
    from sleepstage_cli.evaluation.evaluate import OUTPUT_FILES, evaluate_paths
    from sleepstage_cli.io.hypnogram import SUPPORTED_EPOCHS
    from sleepstage_cli.report.evaluation_files import write_evaluation

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
                            on_night=lambda _: bar.advance(task), ignore_start=ignore_start)
    finally:
        bar.stop()
    for note in ev.notes:
        con.warn(note)
    print_evaluation(ev)
    write_evaluation(output, ev, force=force)
    con.info(f"wrote {len(OUTPUT_FILES)} files to {output} (report: {output / 'report.html'})")
