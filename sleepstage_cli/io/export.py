"""Hypnograms out: our CSV, BIDS-style events TSV, EDF+ annotations, attention weights.

Every writer is atomic (temporary file beside the target, then a rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sleepstage_cli.fsutil import atomic_path, atomic_write_text
from sleepstage_cli.stages import STAGES

CSV_COLUMNS = ["epoch", "onset_s", "stage", *[f"p_{s}" for s in STAGES], "confidence", "flag"]
EDF_STAGE_TEXT = {"W": "Sleep stage W", "N1": "Sleep stage N1", "N2": "Sleep stage N2", "N3": "Sleep stage N3",
                  "REM": "Sleep stage R", "?": "Sleep stage ?"}


def hypnogram_table(onsets: np.ndarray, stages: list[str], probabilities: np.ndarray, confidence: np.ndarray,
                    flags: list[str]) -> pd.DataFrame:
    """One row per epoch: epoch, onset_s, stage, p_W..p_REM, confidence, flag."""
    df = pd.DataFrame({"epoch": np.arange(len(stages)), "onset_s": np.round(onsets, 3), "stage": stages})
    for i, s in enumerate(STAGES):
        df[f"p_{s}"] = np.round(probabilities[:, i], 4)
    df["confidence"] = np.round(confidence, 4)
    df["flag"] = flags
    return df[CSV_COLUMNS]


def write_csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write_text(path, table.to_csv(index=False))


def write_events_tsv(path: Path, onsets: np.ndarray, epoch_length: float, stages: list[str],
                     confidence: np.ndarray) -> None:
    """BIDS-style events: onset, duration, trial_type (the stage), confidence."""
    df = pd.DataFrame({"onset": np.round(onsets, 3), "duration": epoch_length, "trial_type": stages,
                       "confidence": np.round(confidence, 4)})
    atomic_write_text(path, df.to_csv(index=False, sep="\t", na_rep="n/a"))


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
    df = pd.DataFrame(np.round(attention, 5), columns=[f"a_{i + 1:02d}s" for i in range(attention.shape[1])])
    df.insert(0, "onset_s", np.round(onsets, 3))
    df.insert(0, "epoch", np.arange(len(onsets)))
    atomic_write_text(path, df.to_csv(index=False))
