"""Hypnograms in: EDF+ annotation files (MASS ``Base.edf``, Sleep-EDF ``*-Hypnogram.edf``, HMC
``*_sleepscoring.edf``), EDF+ signal files that carry their own stage annotations, and CSV/TSV tables
(one stage per epoch, onset/duration/stage rows, or numbered epochs: see :func:`from_table`).

Every format becomes a :class:`Hypnogram`: one row per scored epoch with its onset in seconds from
the start of the recording and an AASM code (R&K 3 and 4 -> N3; ``?``, movement time and the like
kept in place as UNSCORED). Run-length annotations are expanded into epochs; gaps between
annotations are filled with UNSCORED epochs so that time stays on one grid. Events that are not
stages (``Lights off@@EEG F4-A1``, ``RECORD START``, arousals) are ignored: the scored period is
what the stage annotations cover.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.edf import EdfHeader, read_annotations, read_header
from sleepstage_cli.stages import STAGES, UNSCORED, UnknownStageError, annotation_stage, stage_code, stage_code_from_int

SUPPORTED_EPOCHS = (30.0, 20.0)
_TOL = 1e-3  # seconds; annotation times are written with 100-ns to 10-ms resolution
MAX_SECONDS = 7 * 86400.0  # a hypnogram reaching further is corrupted (a week of 30-s epochs is 20160)

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
CLOCK_COLUMN = "clock_time"
"""The column of the clock time of each epoch's onset in ``score``'s CSV (ISO 8601; empty when unknown)."""
MAX_START_GAP = 86400.0
"""Seconds two files of one recording (a PSG, its hypnogram, a prediction) may start apart: more is another
recording."""

_ONSET_COLUMNS = ("onset", "onset_s", "onset_sec", "start", "start_s", "start_time", "time", "begin")
_DURATION_COLUMNS = ("duration", "duration_s", "dur", "length", "epoch_length")
_EPOCH_COLUMNS = ("epoch", "epoch_no", "epoch_nr", "epoch_number", "epoch_index", "epoch_idx", "epoch_id",
                  "epoch #", "epoch#", "epoch nr", "epoch number")
_DELIMITERS = ("\t", ";", ",", "|")
_STAGE_COLUMNS = ("stage", "sleep_stage", "stages", "label", "description", "value", "trial_type",
                  "hypnogram", "annotation", "event", "score")


@dataclass
class Hypnogram:
    """Scored epochs of one night.

    Attributes
    ----------
    onsets : float64 array, seconds from the start of the recording, increasing.
    stages : int8 array, 0-4 (W, N1, N2, N3, REM) or UNSCORED (-1).
    epoch_length : seconds per scored epoch (30 for AASM, 20 for some R&K scorings).
    source : the file it was read from.
    notes : warnings met while reading (gaps filled, partial epochs dropped...).
    start : the clock time of onset 0 when the file says (an EDF header; a ``clock_time`` column), else None.
    """

    onsets: np.ndarray
    stages: np.ndarray
    epoch_length: float
    source: Path | None = None
    notes: list[str] = field(default_factory=list)
    start: dt.datetime | None = None

    def __len__(self) -> int:
        return int(self.stages.shape[0])

    def select(self, mask: np.ndarray) -> "Hypnogram":
        """A copy keeping the epochs where ``mask`` is true."""
        return replace(self, onsets=self.onsets[mask], stages=self.stages[mask], notes=list(self.notes))

    def shifted(self, seconds: float) -> "Hypnogram":
        """A copy with every onset moved by ``seconds`` (the same clock times, counted from ``seconds`` earlier)."""
        start = self.start - dt.timedelta(seconds=seconds) if self.start is not None else None
        return replace(self, onsets=self.onsets + seconds, notes=list(self.notes), start=start)

    def counts(self) -> dict[str, int]:
        """Epochs per stage name, plus ``unscored``."""
        out = {name: int(np.sum(self.stages == code)) for code, name in enumerate(STAGES)}
        out["unscored"] = int(np.sum(self.stages == UNSCORED))
        return out


# --------------------------------------------------------------------------- building from intervals

def _infer_epoch_length(durations: np.ndarray, codes: np.ndarray, path: Path | None) -> float:
    scored = durations[(codes != UNSCORED) & (durations > 0)]
    pool = scored if scored.size else durations[durations > 0]
    if pool.size == 0:
        return 30.0
    centis = np.round(pool * 100).astype(np.int64)
    g = int(np.gcd.reduce(centis))
    for length in SUPPORTED_EPOCHS:
        if g % int(length * 100) == 0:
            return length
    raise InputError(f"cannot tell the epoch length: stage durations share no multiple of 30 s or 20 s "
                     f"(greatest common step {g / 100:g} s); pass --epoch-length", path)


def from_intervals(onsets: np.ndarray, durations: np.ndarray, codes: np.ndarray, source: Path | None,
                   epoch_length: float | None = None) -> Hypnogram:
    """Expand stage intervals (onset, duration, code) into epochs.

    A duration of 0 means one epoch. Intervals must not overlap; they may come in any order.
    """
    onsets = np.asarray(onsets, float)
    durations = np.asarray(durations, float)
    codes = np.asarray(codes, int)
    notes: list[str] = []
    if onsets.size == 0:
        raise InputError("hypnogram holds no sleep stage", source)
    if not (np.isfinite(onsets).all() and np.isfinite(durations).all()):
        raise InputError("hypnogram has a missing or non-numeric onset or duration", source)
    if (onsets < -_TOL).any():
        raise InputError(f"hypnogram has a negative onset ({onsets.min():g} s)", source)
    if epoch_length is None:
        epoch_length = _infer_epoch_length(durations, codes, source)
    elif epoch_length not in SUPPORTED_EPOCHS:
        raise InputError(f"epoch length {epoch_length:g} s is not supported (use 30 or 20)", source)

    order = np.argsort(onsets, kind="stable")
    onsets, durations, codes = onsets[order], durations[order], codes[order]
    ends = onsets + np.where(durations > 0, durations, epoch_length)
    overlap = np.nonzero(onsets[1:] < ends[:-1] - _TOL)[0]
    if overlap.size:
        i = int(overlap[0])
        raise InputError(f"overlapping stage annotations: one at {onsets[i]:g} s lasting to {ends[i]:g} s, "
                         f"the next at {onsets[i + 1]:g} s", source)
    if ends.max() > MAX_SECONDS:  # a corrupted onset or duration: never expand it into millions of epochs
        raise InputError(f"hypnogram runs to {ends.max():g} s ({ends.max() / 86400:.3g} days), longer than any "
                         "recording; is an onset or duration corrupted?", source)

    out_onsets: list[np.ndarray] = []
    out_codes: list[np.ndarray] = []
    partial = 0
    prev_end = None
    for onset, duration, code in zip(onsets, durations, codes):
        if prev_end is not None and onset - prev_end >= epoch_length - _TOL:
            n_gap = int(math.floor((onset - prev_end + _TOL) / epoch_length))
            out_onsets.append(prev_end + epoch_length * np.arange(n_gap))
            out_codes.append(np.full(n_gap, UNSCORED))
            notes.append(f"{n_gap} unannotated epoch(s) from {prev_end:g} s kept as unscored")
        if duration <= 0:
            n = 1
        else:
            n = int(math.floor(duration / epoch_length + _TOL / epoch_length))
            if abs(n * epoch_length - duration) > _TOL:
                partial += 1
        out_onsets.append(onset + epoch_length * np.arange(n))
        out_codes.append(np.full(n, code))
        prev_end = onset + n * epoch_length
    if partial:
        notes.append(f"{partial} annotation(s) not a whole number of {epoch_length:g}-s epochs: the partial "
                     "epoch at their end was dropped")
    return Hypnogram(onsets=np.concatenate(out_onsets), stages=np.concatenate(out_codes).astype(np.int8),
                     epoch_length=float(epoch_length), source=source, notes=notes)


# --------------------------------------------------------------------------- EDF+ annotations

def from_edf(path: str | Path, header: EdfHeader | None = None, epoch_length: float | None = None) -> Hypnogram:
    """Read the stage annotations of an EDF+ file (annotations-only or with signals)."""
    path = Path(path)
    header = header or read_header(path)
    onsets, durations, texts = read_annotations(path, header)
    rows = []
    for onset, duration, text in zip(onsets, durations, texts):
        try:
            code = annotation_stage(text)
        except UnknownStageError:
            raise InputError(f"unknown sleep stage {text.strip()!r} at {onset:g} s", path) from None
        if code is not None:
            rows.append((onset, duration, code))
    if not rows:
        found = sorted({t.strip() for t in texts})
        what = f"its annotations are {', '.join(repr(t) for t in found[:5])}" if found else "it has no annotations"
        raise InputError(f"no sleep stage annotations ({what})", path)
    arr = np.array(rows, dtype=float)
    hyp = from_intervals(arr[:, 0], arr[:, 1], arr[:, 2].astype(int), path, epoch_length)
    return replace(hyp, start=header.start)


def has_stage_annotations(path: str | Path, header: EdfHeader | None = None) -> bool:
    """Whether an EDF+ file holds at least one sleep stage annotation."""
    header = header or read_header(path)
    if not header.annotation_indices:
        return False
    _, _, texts = read_annotations(path, header)
    for text in texts:
        try:
            if annotation_stage(text) is not None:
                return True
        except UnknownStageError:
            return True
    return False


# --------------------------------------------------------------------------- tables

def _sniff_delimiter(path: Path, first_line: str) -> str | None:
    """The column separator: the candidate (tab, ``;``, ``,``, ``|``) found most often in the first line, ties
    in that order (``0,5;W``: a European file with a decimal comma is ``;``); with none there, the suffix's
    (``.tsv`` tab, ``.csv`` comma: a one-column file); else None (columns separated by white space)."""
    counts = {d: first_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=counts.__getitem__)  # the first of the most frequent
    if counts[best]:
        return best
    return {".tsv": "\t", ".csv": ","}.get(path.suffix.lower())


def _parse_stage_cell(value: str, where: str, path: Path) -> int:
    text = value.strip()
    try:
        as_int = int(text)
    except ValueError:
        as_int = None
    try:
        return stage_code_from_int(as_int) if as_int is not None else stage_code(text)
    except UnknownStageError:
        raise InputError(f"unknown sleep stage {text!r} {where}", path) from None


def _number(cell: str, decimal_comma: bool) -> float:
    """A numeric cell; ``2,5`` is 2.5 in a ``;``-separated file (European spreadsheets)."""
    return float(cell.replace(",", ".") if decimal_comma else cell)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines that hold data (not blank, not ``#`` comments), with their line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise InputError(f"cannot read hypnogram: {exc.strerror or exc}", path) from None
    return [(n, ln) for n, ln in enumerate(text.splitlines(), start=1)
            if ln.strip() and not ln.lstrip().startswith("#")]


def from_table(path: str | Path, epoch_length: float | None = None) -> Hypnogram:
    """Read a CSV/TSV/TXT hypnogram.

    With a header naming an onset and a stage column (``onset,duration,stage``; BIDS events
    ``onset,duration,trial_type``; our own ``epoch,onset_s,stage,...``), rows are intervals. With an
    epoch-number column and no onsets (``Epoch,Stage``), rows are the numbered epochs: numbers count
    from 1 (epoch 1 starts at 0 s, as scoring software exports them) unless the first is 0; missing
    numbers are unscored epochs, and numbers must increase. Without a header, the file is one stage per
    line for consecutive epochs from time 0. Columns are separated by tabs, ``;``, ``,`` or ``|``
    (detected; ``;`` files may use decimal commas) or white space. Stage cells are strings (``W``,
    ``N1``, ``Sleep stage 4``, ``R``, ``?``) or integers in YASA's coding (0 W, 1 N1, 2 N2, 3 N3,
    4 REM, -1 unscored). Errors name the file's line.
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise InputError("hypnogram file is empty", path)
    if lines[0][1].strip().lower() == "[hypnogram]":
        raise InputError("DREAMS-style [Hypnogram] files score 5-s epochs; sleepstage needs 30-s (or 20-s) "
                         "epochs", path)
    delim = _sniff_delimiter(path, lines[0][1])
    texts = [ln for _, ln in lines]
    rows = list(csv.reader(texts, delimiter=delim)) if delim else [ln.split() for ln in texts]
    rows = [[c.strip() for c in r] for r in rows]
    numbers = [n for n, _ in lines]
    head = [c.lower() for c in rows[0]]

    def find(names: tuple[str, ...]) -> int | None:
        for name in names:
            if name in head:
                return head.index(name)
        return None

    i_stage, i_onset, i_dur = find(_STAGE_COLUMNS), find(_ONSET_COLUMNS), find(_DURATION_COLUMNS)
    if i_stage is None:
        if any(len(r) != 1 for r in rows):
            raise InputError("cannot tell the columns of this hypnogram: give it a header such as "
                             "'onset,duration,stage', or one stage per line", path)
        codes = [_parse_stage_cell(r[0], f"on line {n}", path) for n, r in zip(numbers, rows)]
        length = epoch_length or 30.0
        return from_intervals(length * np.arange(len(codes)), np.full(len(codes), length), np.array(codes), path,
                              length)
    body = list(zip(numbers[1:], rows[1:]))
    if not body:
        raise InputError("hypnogram has a header but no rows", path)
    codes, onsets, durations = [], [], []
    for n, row in body:
        if len(row) != len(head):
            raise InputError(f"line {n} has {len(row)} fields, the header has {len(head)}", path)
        codes.append(_parse_stage_cell(row[i_stage], f"on line {n}", path))
        try:
            onsets.append(_number(row[i_onset], delim == ";") if i_onset is not None else math.nan)
            durations.append(_number(row[i_dur], delim == ";") if i_dur is not None else 0.0)
        except ValueError:
            raise InputError(f"line {n}: onset/duration is not a number", path) from None
    if i_onset is None:
        length = epoch_length or 30.0
        i_epoch = find(_EPOCH_COLUMNS)
        steps = (_epoch_steps([(n, row[i_epoch]) for n, row in body], delim == ";", path) if i_epoch is not None
                 else np.arange(len(codes)))
        return from_intervals(length * steps, np.full(len(codes), length), np.array(codes), path, length)
    hyp = from_intervals(np.array(onsets), np.array(durations), np.array(codes), path,
                         epoch_length or (None if i_dur is not None else _step(onsets, path)))
    return replace(hyp, start=_table_start(head, body, onsets))


def _table_start(head: list[str], body: list[tuple[int, list[str]]], onsets: list[float]) -> dt.datetime | None:
    """The clock time of onset 0 from a ``clock_time`` column (as ``score`` writes), else None."""
    if CLOCK_COLUMN not in head:
        return None
    i = head.index(CLOCK_COLUMN)
    for (_, row), onset in zip(body, onsets):
        try:
            return dt.datetime.fromisoformat(row[i]).replace(tzinfo=None) - dt.timedelta(seconds=onset)
        except (ValueError, OverflowError):
            continue  # an empty cell (start unknown) or not a time: that column says nothing
    return None


def _epoch_steps(cells: list[tuple[int, str]], decimal_comma: bool, path: Path) -> np.ndarray:
    """Each row's epoch index from the start of the recording, from an epoch-number column: numbers count
    from 1, or from 0 when the first is 0. ``cells`` are (line number, cell); numbers must be whole and
    increasing."""
    numbers: list[int] = []
    for line, cell in cells:
        try:
            value = _number(cell, decimal_comma)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value.is_integer() and value >= 0):
            raise InputError(f"line {line}: epoch number {cell!r} is not a whole number of 0 or more", path)
        if numbers and value <= numbers[-1]:
            what = "is given twice" if value == numbers[-1] else f"is lower than the one before it ({numbers[-1]})"
            raise InputError(f"line {line}: epoch number {int(value)} {what}; epoch numbers must increase", path)
        numbers.append(int(value))
    first = 0 if numbers[0] == 0 else 1
    return np.asarray(numbers, float) - first


def _step(onsets: list[float], path: Path) -> float | None:
    """Epoch length of a table with onsets but no durations: the smallest step between rows."""
    if len(onsets) < 2:
        return None
    steps = np.diff(np.sort(np.asarray(onsets, float)))
    steps = steps[steps > _TOL]
    if steps.size == 0:
        raise InputError("hypnogram rows all have the same onset", path)
    smallest = float(np.round(steps.min(), 3))
    if smallest not in SUPPORTED_EPOCHS:
        raise InputError(f"hypnogram rows are {smallest:g} s apart; sleepstage handles 30-s and 20-s epochs "
                         "(pass --epoch-length if a duration column is missing)", path)
    return smallest


# --------------------------------------------------------------------------- dispatch and editing

def read_hypnogram(path: str | Path, epoch_length: float | None = None) -> Hypnogram:
    """Read a hypnogram in any supported format (decided by content: EDF magic, else a text table)."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not a hypnogram file", path)
    if not path.exists():
        raise InputError("hypnogram file not found", path)
    if _is_edf(path):
        return from_edf(path, epoch_length=epoch_length)
    return from_table(path, epoch_length)


def _is_edf(path: Path) -> bool:
    """Whether a file is EDF/BDF (by its magic bytes or its suffix) rather than a text table."""
    with open(path, "rb") as fh:
        magic = fh.read(8)
    return magic in (b"0       ", b"\xffBIOSEMI") or path.suffix.lower() in (".edf", ".bdf")


def keep_within_signal(hyp: Hypnogram, signal_seconds: float, window_offset: float = 0.0,
                       window_seconds: float = 30.0) -> tuple[Hypnogram, int, int]:
    """Keep the epochs whose analysis window [onset + offset, +window) lies inside the signal.

    Returns the kept hypnogram and the number of epochs dropped before the start and after the end.
    """
    start = hyp.onsets + window_offset
    before = start < -_TOL
    after = start + window_seconds > signal_seconds + _TOL
    kept = hyp.select(~before & ~after)
    return kept, int(before.sum()), int((after & ~before).sum())


def trim_wake(hyp: Hypnogram, minutes: float = 30.0) -> Hypnogram | None:
    """Keep ``minutes`` of epochs before the first and after the last sleep epoch (Sleep-EDF practice).

    Returns None when the hypnogram holds no sleep epoch at all.
    """
    sleep = np.nonzero((hyp.stages >= 1) & (hyp.stages <= 4))[0]
    if sleep.size == 0:
        return None
    first, last = hyp.onsets[sleep[0]], hyp.onsets[sleep[-1]]
    margin = minutes * 60.0
    mask = (hyp.onsets >= first - margin - _TOL) & (hyp.onsets <= last + margin + _TOL)
    return hyp.select(mask)


def _when(start: dt.datetime) -> str:
    return start.isoformat(sep=" ", timespec="seconds")


def refuse_other_recording(first: Path, first_start: dt.datetime | None, second: Path,
                           second_start: dt.datetime | None, option: str = "--ignore-start") -> None:
    """Refuse two files of what should be one recording whose start times differ by more than a day.

    Nothing is compared when either start is unknown. The error names both files and both start times.
    """
    if first_start is None or second_start is None:
        return
    gap = abs((first_start.replace(tzinfo=None) - second_start.replace(tzinfo=None)).total_seconds())
    if gap <= MAX_START_GAP:
        return
    days = f"{gap / 86400.0:.0f}" if gap >= 2 * 86400.0 else f"{gap / 86400.0:.1f}"
    raise InputError(f"{first} starts {_when(first_start)} but {second} starts {_when(second_start)}, "
                     f"{days} days apart: they are not one recording (a hypnogram of another night?); "
                     f"{option} pairs them anyway, on onsets in seconds from each file's start")


def file_start(path: str | Path) -> dt.datetime | None:
    """When a recording or hypnogram file starts: an EDF/BDF header's start, a ``clock_time`` table's, else None."""
    path = Path(path)
    return read_header(path).start if _is_edf(path) else from_table(path).start
