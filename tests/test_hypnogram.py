"""Hypnogram formats: EDF+ annotations (MASS, Sleep-EDF run-length, HMC), CSV/TSV tables, edits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_hypnogram_edf

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.hypnogram import keep_within_signal, read_hypnogram, trim_wake
from sleepstage_cli.stages import UNSCORED, annotation_stage, stage_code

W, N1, N2, N3, R, U = 0, 1, 2, 3, 4, UNSCORED


@pytest.mark.parametrize("text, code", [
    ("Sleep stage W", W), ("Sleep stage 1", N1), ("Sleep stage 2", N2), ("Sleep stage 3", N3),
    ("Sleep stage 4", N3), ("Sleep stage R", R), ("Sleep stage ?", U), ("Movement time", U),
    ("Sleep stage N1", N1), ("Sleep stage N2", N2), ("Sleep stage N3", N3), ("sleep stage r", R),
    ("Lights off@@EEG F4-A1", None), ("RECORD START", None), ("Arousal", None),
])
def test_annotation_strings(text: str, code: int | None) -> None:
    assert annotation_stage(text) == code


@pytest.mark.parametrize("text, code", [("W", W), ("wake", W), ("N1", N1), ("S4", N3), ("stage 4", N3),
                                        ("REM", R), ("r", R), ("?", U), ("MT", U)])
def test_stage_words(text: str, code: int) -> None:
    assert stage_code(text) == code


def test_mass_style_annotations_with_offset_and_unknown(tmp_path: Path) -> None:
    texts = ["Sleep stage ?", "Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage R"]
    ann = [(12.34 + 30 * i, 30, t) for i, t in enumerate(texts)]
    ann.insert(2, (50.0, 0, "Lights off@@EEG F4-A1"))
    hyp = read_hypnogram(write_hypnogram_edf(tmp_path / "01-03-0001 Base.edf", ann))
    assert hyp.epoch_length == 30
    np.testing.assert_allclose(hyp.onsets, 12.34 + 30 * np.arange(6), atol=1e-6)
    assert hyp.stages.tolist() == [U, W, N1, N2, N3, R]


def test_rk_20s_epochs_with_stage_4(tmp_path: Path) -> None:
    texts = ["Sleep stage W", "Sleep stage 2", "Sleep stage 3", "Sleep stage 4", "Sleep stage 4", "Sleep stage R"]
    ann = [(7.5 + 20 * i, 20, t) for i, t in enumerate(texts)]
    hyp = read_hypnogram(write_hypnogram_edf(tmp_path / "01-02-0001 Base.edf", ann))
    assert hyp.epoch_length == 20
    assert hyp.stages.tolist() == [W, N2, N3, N3, N3, R]
    # widening to 30 s: windows start 5 s earlier; the first (7.5 - 5 >= 0) fits, the last does not
    kept, before, after = keep_within_signal(hyp, signal_seconds=7.5 + 20 * 6 + 2, window_offset=-5.0)
    assert (before, after) == (0, 1)
    assert len(kept) == 5
    kept, before, after = keep_within_signal(hyp.shifted(-5), signal_seconds=200, window_offset=-5.0)
    assert before == 1 and after == 0


def test_sleep_edf_run_length_and_trailing_partial(tmp_path: Path) -> None:
    ann = [(0, 90, "Sleep stage W"), (90, 60, "Sleep stage 1"), (150, 30, "Movement time"),
           (180, 120, "Sleep stage 2"), (300, 30, "Sleep stage R"), (330, 1000.5, "Sleep stage ?")]
    hyp = read_hypnogram(write_hypnogram_edf(tmp_path / "SC4001EC-Hypnogram.edf", ann))
    assert hyp.epoch_length == 30
    expected = [W] * 3 + [N1] * 2 + [U] + [N2] * 4 + [R] + [U] * 33
    assert hyp.stages.tolist() == expected
    np.testing.assert_allclose(hyp.onsets, 30 * np.arange(len(expected)))
    assert any("partial" in n for n in hyp.notes)


def test_gaps_filled_as_unscored(tmp_path: Path) -> None:
    ann = [(0, 30, "Sleep stage W"), (90, 30, "Sleep stage 2")]
    hyp = read_hypnogram(write_hypnogram_edf(tmp_path / "h.edf", ann))
    assert hyp.stages.tolist() == [W, U, U, N2]
    np.testing.assert_allclose(hyp.onsets, [0, 30, 60, 90])


def test_unordered_annotations_are_sorted(tmp_path: Path) -> None:
    ann = [(60, 30, "Sleep stage 2"), (0, 30, "Sleep stage W"), (30, 30, "Sleep stage 1")]
    hyp = read_hypnogram(write_hypnogram_edf(tmp_path / "h.edf", ann))
    assert hyp.stages.tolist() == [W, N1, N2]


def test_overlapping_annotations_refused(tmp_path: Path) -> None:
    ann = [(0, 60, "Sleep stage W"), (30, 30, "Sleep stage 1")]
    with pytest.raises(InputError, match="overlapping stage annotations"):
        read_hypnogram(write_hypnogram_edf(tmp_path / "h.edf", ann))


def test_unknown_stage_string_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown sleep stage 'Sleep stage 9'"):
        read_hypnogram(write_hypnogram_edf(tmp_path / "h.edf", [(0, 30, "Sleep stage 9")]))


def test_no_stage_annotations(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no sleep stage annotations \(its annotations are 'REC STOP'"):
        read_hypnogram(write_hypnogram_edf(tmp_path / "h.edf", [(0, 0, "RECORD START"), (5, 0, "REC STOP")]))


def test_csv_onset_duration_stage(tmp_path: Path) -> None:
    p = tmp_path / "night.csv"
    p.write_text("onset,duration,stage\n0,60,W\n60,30,N1\n90,30,N2\n120,30,N3\n150,30,R\n180,30,?\n")
    hyp = read_hypnogram(p)
    assert hyp.stages.tolist() == [W, W, N1, N2, N3, R, U]
    np.testing.assert_allclose(hyp.onsets, 30 * np.arange(7))


def test_bids_events_tsv(tmp_path: Path) -> None:
    p = tmp_path / "sub-01_events.tsv"
    p.write_text("onset\tduration\ttrial_type\n30\t30\tSleep stage W\n60\t30\tSleep stage 4\n")
    hyp = read_hypnogram(p)
    assert hyp.stages.tolist() == [W, N3]
    np.testing.assert_allclose(hyp.onsets, [30, 60])


def test_one_stage_per_line(tmp_path: Path) -> None:
    p = tmp_path / "night.tsv"
    p.write_text("W\nW\nN1\nN2\nN3\nREM\n?\n")
    hyp = read_hypnogram(p)
    assert hyp.stages.tolist() == [W, W, N1, N2, N3, R, U]
    np.testing.assert_allclose(hyp.onsets, 30 * np.arange(7))
    hyp20 = read_hypnogram(p, epoch_length=20)
    np.testing.assert_allclose(hyp20.onsets, 20 * np.arange(7))


def test_integer_codes_follow_yasa(tmp_path: Path) -> None:
    p = tmp_path / "night.txt"
    p.write_text("0\n1\n2\n3\n4\n-1\n")
    assert read_hypnogram(p).stages.tolist() == [W, N1, N2, N3, R, U]


def test_our_own_output_csv_reads_back(tmp_path: Path) -> None:
    p = tmp_path / "hypno.csv"
    p.write_text("epoch,onset_s,stage,confidence\n0,10.0,W,0.9\n1,40.0,N2,0.8\n2,70.0,REM,0.7\n")
    hyp = read_hypnogram(p)
    assert hyp.epoch_length == 30
    assert hyp.stages.tolist() == [W, N2, R]
    np.testing.assert_allclose(hyp.onsets, [10, 40, 70])


@pytest.mark.parametrize("content, message", [
    ("onset,duration,stage\n0,30,W\n30,30,deep\n", "unknown sleep stage 'deep' on line 3"),
    ("W\nN2\n7\n", "unknown sleep stage '7' on line 3"),
    ("", "empty"),
    ("onset,duration,stage\n0,30\n", "line 2 has 2 fields"),
    ("[Hypnogram]\n5\n5\n", "5-s epochs"),
    ("0 30\n30 30\n", "cannot tell the columns"),
])
def test_table_errors(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as exc:
        read_hypnogram(p)
    assert str(p) in str(exc.value)


def test_trim_wake_keeps_30_minutes_around_sleep() -> None:
    from sleepstage_cli.io.hypnogram import Hypnogram

    stages = np.array([W] * 200 + [N1, N2, N2, R] + [W] * 200, dtype=np.int8)
    hyp = Hypnogram(onsets=30.0 * np.arange(stages.size), stages=stages, epoch_length=30)
    trimmed = trim_wake(hyp, 30)
    assert len(trimmed) == 60 + 4 + 60
    assert trimmed.onsets[0] == 30 * 140 and trimmed.onsets[-1] == 30 * 263
    assert trim_wake(hyp.select(hyp.stages == W)) is None
