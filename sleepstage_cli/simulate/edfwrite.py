"""Writing simulated nights as EDF: signal files and EDF+ annotations-only files (pyedflib).

Files are written under a temporary name in the target folder and renamed into place once
closed, so a crash never leaves a half-written EDF under its real name. Headers carry a start
time derived from the seed, never the wall clock, so the same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyedflib

from sleepstage_cli.fsutil import atomic_path

DIGITAL_MIN, DIGITAL_MAX = -32768, 32767
_RECORDS_PER_BLOCK = 600


@dataclass(frozen=True)
class SignalOut:
    """One signal to write: 16-bit digital samples and the physical range (in ``unit``) they span."""

    label: str
    fs: int
    unit: str
    pmin: float
    pmax: float
    digital: np.ndarray
    transducer: str = ""
    prefilter: str = ""


def digitise(x: np.ndarray, pmin: float, pmax: float, inplace: bool = False) -> np.ndarray:
    """Physical values to 16-bit digital ones with EDF's linear mapping, clipping out-of-range values.

    With ``inplace`` (float32 input), ``x`` is used as the work buffer and left scrambled.
    """
    gain = (DIGITAL_MAX - DIGITAL_MIN) / (pmax - pmin)
    if inplace and x.dtype == np.float32:
        y = x
        y -= np.float32(pmin)
    else:
        y = np.asarray(x, dtype=np.float32) - np.float32(pmin)
    y *= np.float32(gain)
    y += np.float32(DIGITAL_MIN)
    np.rint(y, out=y)
    np.clip(y, DIGITAL_MIN, DIGITAL_MAX, out=y)
    return y.astype(np.int16)


def _header(writer: pyedflib.EdfWriter, start: dt.datetime, patient: str, recording: str) -> None:
    writer.setStartdatetime(start)
    writer.setPatientCode(patient)
    writer.setEquipment("sleepstage_simulate")
    writer.setRecordingAdditional(recording)


def write_signals(path: Path, signals: Sequence[SignalOut], start: dt.datetime, patient: str,
                  recording: str, edf_plus: bool) -> None:
    """Write ``signals`` (whole seconds of data each) as an EDF (or EDF+) file with 1-s data records."""
    n_records = {s.digital.shape[0] // s.fs for s in signals}
    if len(n_records) != 1 or any(s.digital.shape[0] % s.fs for s in signals):
        raise ValueError("signals must all hold the same whole number of seconds")
    n_rec = n_records.pop()
    file_type = pyedflib.FILETYPE_EDFPLUS if edf_plus else pyedflib.FILETYPE_EDF
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyedflib nags about header fields we set on purpose
        writer = pyedflib.EdfWriter(os.fspath(tmp), len(signals), file_type=file_type)
        try:
            _header(writer, start, patient, recording)
            writer.setSignalHeaders([{
                "label": s.label, "dimension": s.unit, "sample_frequency": s.fs,
                "physical_min": float(s.pmin), "physical_max": float(s.pmax),
                "digital_min": DIGITAL_MIN, "digital_max": DIGITAL_MAX,
                "transducer": s.transducer, "prefilter": s.prefilter} for s in signals])
            # Interleave channels into data records a block of records at a time (not the whole night).
            for first in range(0, n_rec, _RECORDS_PER_BLOCK):
                last = min(n_rec, first + _RECORDS_PER_BLOCK)
                block = np.concatenate([s.digital[first * s.fs:last * s.fs].reshape(last - first, s.fs)
                                        for s in signals], axis=1)
                for row in block:
                    if writer.blockWriteDigitalShortSamples(row) < 0:
                        raise OSError(f"pyedflib could not write {path.name}")
        finally:
            writer.close()


def write_annotations(path: Path, annotations: Sequence[tuple[float, float, str]], start: dt.datetime,
                      patient: str, recording: str) -> None:
    """Write an EDF+ file holding only annotations (onset s, duration s, text), like MASS ``Base.edf``."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = pyedflib.EdfWriter(os.fspath(tmp), 0, file_type=pyedflib.FILETYPE_EDFPLUS)
        try:
            _header(writer, start, patient, recording)
            for onset, duration, text in annotations:
                writer.writeAnnotation(float(onset), float(duration), text)
        finally:
            writer.close()
