"""Hypnograms out: our CSV, BIDS-style events TSV, EDF+ annotations, attention weights.

Every writer is atomic (temporary file beside the target, then a rename). Tables are written with the
standard csv module: these few columns do not need pandas, whose import alone cost a tenth of scoring
a night.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sleepstage_cli.fsutil import atomic_path, atomic_write_text
from sleepstage_cli.io.hypnogram import CLOCK_COLUMN
from sleepstage_cli.stages import STAGES

CSV_COLUMNS = ["epoch", "onset_s", "stage", *[f"p_{s}" for s in STAGES], "confidence", "flag", CLOCK_COLUMN]
EDF_STAGE_TEXT = {"W": "Sleep stage W", "N1": "Sleep stage N1", "N2": "Sleep stage N2", "N3": "Sleep stage N3",
                  "REM": "Sleep stage R", "?": "Sleep stage ?"}

Table = tuple[list[str], list[list[object]]]
"""Column names and rows."""


def _cell(value: object, digits: int | None = None, missing: str = "") -> object:
    if value is None:
        return missing
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return missing
        return round(float(value), digits) if digits is not None else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def table_text(columns: Sequence[str], rows: Iterable[Sequence[object]], delimiter: str = ",") -> str:
    """CSV (or TSV) text of a table, with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def write_rows(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Write dicts as a CSV table atomically (columns: the given ones, else the first row's keys)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    atomic_write_text(path, table_text(columns, ([_cell(r.get(c)) for c in columns] for r in rows)))


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV table as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def hypnogram_table(onsets: np.ndarray, stages: list[str], probabilities: np.ndarray, confidence: np.ndarray,
                    flags: list[str], start: dt.datetime | None = None) -> Table:
    """One row per epoch: epoch, onset_s, stage, p_W..p_REM, confidence, flag, clock_time (the onset's date and
    time when the recording's ``start`` is known, else empty: it tells ``evaluate`` which recording this is)."""
    rows = []
    for i, stage in enumerate(stages):
        rows.append([i, _cell(onsets[i], 3), stage, *(_cell(p, 4) for p in probabilities[i]),
                     _cell(confidence[i], 4), flags[i], _clock(start, onsets[i])])
    return list(CSV_COLUMNS), rows


def _clock(start: dt.datetime | None, onset: float) -> str:
    if start is None:
        return ""
    when = start + dt.timedelta(seconds=round(float(onset), 3))
    return when.isoformat(timespec="seconds" if not when.microsecond else "milliseconds")


def write_csv(path: Path, table: Table) -> None:
    atomic_write_text(path, table_text(*table))


def write_events_tsv(path: Path, onsets: np.ndarray, epoch_length: float, stages: list[str],
                     confidence: np.ndarray) -> None:
    """BIDS-style events: onset, duration, trial_type (the stage), confidence."""
    rows = [[_cell(o, 3), _cell(epoch_length), s, _cell(c, 4, "n/a")] for o, s, c in zip(onsets, stages, confidence)]
    atomic_write_text(path, table_text(["onset", "duration", "trial_type", "confidence"], rows, "\t"))


def write_edf_annotations(path: Path, onsets: np.ndarray, epoch_length: float, stages: list[str],
                          start=None) -> None:
    """An annotations-only EDF+ file (as Sleep-EDF/HMC hypnograms): runs of a stage as one annotation."""
    import pyedflib

    with atomic_path(path) as tmp:
        writer = pyedflib.EdfWriter(str(tmp), 0, file_type=pyedflib.FILETYPE_EDFPLUS)
        try:
            if start is not None:
                writer.setStartdatetime(start)
            i = 0
            while i < len(stages):
                j = i
                while (j + 1 < len(stages) and stages[j + 1] == stages[i]
                       and abs(onsets[j + 1] - onsets[j] - epoch_length) < 1e-3):
                    j += 1
                writer.writeAnnotation(float(onsets[i]), float(onsets[j] - onsets[i] + epoch_length),
                                       EDF_STAGE_TEXT[stages[i]])
                i = j + 1
        finally:
            writer.close()


def write_attention(path: Path, onsets: np.ndarray, attention: np.ndarray) -> None:
    """Per epoch, the epoch-level attention weight of each of its 29 two-second frames (centres 1..29 s)."""
    columns = ["epoch", "onset_s", *[f"a_{i + 1:02d}s" for i in range(attention.shape[1])]]
    rows = [[i, _cell(onsets[i], 3), *(_cell(a, 5) for a in attention[i])] for i in range(len(onsets))]
    atomic_write_text(path, table_text(columns, rows))
