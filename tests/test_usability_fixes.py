"""Issue 14, items 4 and 5: the Sleep-EDF preset in one attempt, hypnograms of another recording refused,
``-o out.txt`` a file, 80-column output, a square wave called what it is, end to end through the command line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyedflib
import pytest
from conftest import assert_clean_error, run_cli, write_edf

from sleepstage_cli.data.dataset import PreparedDataset

EMG_NOTE = "EMG submental left out"
WHEN = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(scope="module")
def sedf(tmp_path_factory) -> dict:
    """Three simulated Sleep-EDF cassette nights (1-Hz EMG), prepared with the preset's defaults, and an EEG+EOG
    model briefly trained on them."""
    from sleepstage_cli.simulate import simulate

    root = tmp_path_factory.mktemp("sedf")
    sim = root / "sim"
    simulate(sim, nights=3, layout="sleep-edf", seed=5, hours=0.5)
    prepared = run_cli("prepare", sim, "-o", root / "data")
    model = root / "model.pt"
    if prepared.returncode == 0:
        trained = run_cli("train", root / "data", "-o", model, "--epochs", "1", "--max-steps", "6", "--seq-len", "10",
                          "--batch-size", "8", "--lr", "1e-3", "--val-subjects", "SC401", "--seed", "1")
        assert trained.returncode == 0, trained.stderr
    return {"root": root, "sim": sim, "data": root / "data", "prepared": prepared, "model": model,
            "psg": sim / "SC4001E0-PSG.edf", "hypnogram": next(sim.glob("SC4001E?-Hypnogram.edf"))}


def _model(sedf: dict) -> Path:
    assert sedf["prepared"].returncode == 0, sedf["prepared"].stderr
    return sedf["model"]


# --------------------------------------------------------------------------- item 4: the Sleep-EDF preset

def test_sleep_edf_prepares_in_one_attempt_with_eeg_eog_and_a_one_line_note(sedf: dict) -> None:
    proc = sedf["prepared"]
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if EMG_NOTE in ln]
    assert len(notes) == 1, proc.stderr
    assert "1-Hz" in notes[0] and "--channels eeg,eog,emg" in notes[0]
    ds = PreparedDataset(sedf["data"])
    assert ds.channels == ("eeg", "eog")
    assert sorted(n.id for n in ds.nights) == ["SC4001", "SC4002", "SC4011"]
    manifest = json.loads((sedf["data"] / "manifest.json").read_text())
    assert manifest["nights"][0]["channels"]["eeg"]["expression"] == "EEG Fpz-Cz"
    assert manifest["nights"][0]["channels"]["eog"]["expression"] == "EOG horizontal"


def test_sleep_edf_emg_asked_for_is_refused_as_clearly_as_before(sedf: dict, tmp_path: Path) -> None:
    proc = run_cli("prepare", sedf["psg"], sedf["hypnogram"], "-o", tmp_path / "out", "--channels", "eeg,eog,emg")
    assert_clean_error(proc, "SC4001E0-PSG.edf",
                       "EMG 'EMG submental' is sampled at 1 Hz, below the 100 Hz staging needs", "--channels eeg,eog")
    assert EMG_NOTE not in proc.stderr  # the kinds were asked for: nothing was left out


def test_explicit_channels_print_no_note(sedf: dict, tmp_path: Path) -> None:
    proc = run_cli("prepare", sedf["sim"], "-o", tmp_path / "out", "--channels", "eeg,eog")
    assert proc.returncode == 0, proc.stderr
    assert EMG_NOTE not in proc.stderr


def _sleep_edf_excerpt(folder: Path) -> Path:
    """A Sleep-EDF-layout pair like the real 5-min excerpt: 300 s of signal (EMG at 1 Hz), and a hypnogram of
    the whole night whose first sleep epoch comes an hour after the signal ends."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(300 * 100) / 100.0
    write_edf(folder / "SC4091E0-PSG.edf", {
        "EEG Fpz-Cz": (20 * np.sin(2 * np.pi * 10 * t) + rng.normal(0, 10, t.size), 100),
        "EOG horizontal": (rng.normal(0, 20, t.size), 100),
        "EMG submental": (rng.normal(0, 5, 300), 1)})
    write_edf(folder / "SC4091EC-Hypnogram.edf", {}, [(0, 3900, "Sleep stage W"), (3900, 1800, "Sleep stage 2"),
                                                       (5700, 600, "Sleep stage W")])
    return folder


def test_a_short_wake_excerpt_is_kept_not_trimmed_away(tmp_path: Path) -> None:
    src = _sleep_edf_excerpt(tmp_path / "sedf")
    out = tmp_path / "data"
    proc = run_cli("prepare", src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "no sleep epoch lies within the signal, so no wake was trimmed: all 10 epoch(s) there are kept" in \
        proc.stderr
    assert sum(EMG_NOTE in ln for ln in proc.stderr.splitlines()) == 1
    rec = PreparedDataset(out).open("SC4091")
    assert rec["label"].tolist() == [0] * 10
    np.testing.assert_allclose(rec["onset"], 30.0 * np.arange(10))
    assert rec["x"].shape == (10, 2, 3000)


def test_the_real_sleep_edf_excerpt_prepares_and_scores_in_one_attempt(foreign, sedf: dict, tmp_path: Path) -> None:
    psg = foreign("sleep-edf/SC4001E0-PSG.edf", "real/SC4001E0-PSG.edf")
    hyp = foreign("sleep-edf/SC4001EC-Hypnogram.edf", "real/SC4001EC-Hypnogram.edf")
    proc = run_cli("prepare", psg.parent, "-o", tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert sum(EMG_NOTE in ln for ln in proc.stderr.splitlines()) == 1
    assert "no wake was trimmed: all 10 epoch(s)" in proc.stderr
    rec = PreparedDataset(tmp_path / "data").open("SC4001")
    assert rec["label"].tolist() == [0] * 10 and rec["x"].shape == (10, 2, 3000)

    out = tmp_path / "SC4001.csv"
    proc = run_cli("score", psg, "-o", out, "--model", _model(sedf), "--epochs-from", hyp)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out, keep_default_na=False)
    np.testing.assert_allclose(df["onset_s"], 30.0 * np.arange(10))
    assert df["clock_time"].iloc[0] == "1989-04-24T16:13:00"


# --------------------------------------------------------------------------- item 5: another recording's hypnogram

def _moved(hypnogram: Path, out: Path, later: dt.timedelta) -> tuple[Path, dt.datetime]:
    """The same stage annotations in an annotations-only EDF+ file that starts ``later``."""
    reader = pyedflib.EdfReader(str(hypnogram))
    try:
        onsets, durations, texts = reader.readAnnotations()
        moved = reader.getStartdatetime() + later
    finally:
        reader.close()
    writer = pyedflib.EdfWriter(str(out), 0, file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        writer.setStartdatetime(moved)
        for onset, duration, text in zip(onsets, durations, texts):
            writer.writeAnnotation(float(onset), float(duration), text)
    finally:
        writer.close()
    return out, moved


def test_a_hypnogram_of_another_recording_is_refused_by_score_and_evaluate(sedf: dict, tmp_path: Path) -> None:
    model, psg, own = _model(sedf), sedf["psg"], sedf["hypnogram"]
    reader = pyedflib.EdfReader(str(psg))
    started = reader.getStartdatetime()
    reader.close()
    other, other_start = _moved(own, tmp_path / "SC4001EX-Hypnogram.edf", dt.timedelta(days=9 * 365 + 2))

    refused = run_cli("score", psg, "-o", tmp_path / "refused.csv", "--model", model, "--epochs-from", other)
    assert_clean_error(refused, str(other), str(psg), other_start.strftime(WHEN), started.strftime(WHEN),
                       "--ignore-start")
    assert not (tmp_path / "refused.csv").exists()

    forced = tmp_path / "forced.csv"
    proc = run_cli("score", psg, "-o", forced, "--model", model, "--epochs-from", other, "--ignore-start")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(forced, keep_default_na=False)
    # The CSV says when the recording (not the hypnogram) started: evaluate can tell the two apart.
    assert df["clock_time"].iloc[0] == (started + dt.timedelta(seconds=float(df["onset_s"].iloc[0]))).isoformat()

    refused = run_cli("evaluate", forced, other, "-o", tmp_path / "ev-refused")
    assert_clean_error(refused, str(forced), str(other), started.strftime(WHEN), other_start.strftime(WHEN),
                       "--ignore-start")
    assert not (tmp_path / "ev-refused" / "metrics.json").exists()

    proc = run_cli("evaluate", forced, other, "-o", tmp_path / "ev-forced", "--ignore-start")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "ev-forced" / "metrics.json").read_text())["n_nights"] == 1

    # The night's own hypnogram (same start) needs no option, for either command.
    own_csv = tmp_path / "own.csv"
    assert run_cli("score", psg, "-o", own_csv, "--model", model, "--epochs-from", own).returncode == 0
    proc = run_cli("evaluate", own_csv, own, "-o", tmp_path / "ev-own")
    assert proc.returncode == 0, proc.stderr


def test_starts_less_than_a_day_apart_are_one_recording(sedf: dict, tmp_path: Path) -> None:
    psg, own = sedf["psg"], sedf["hypnogram"]
    # A hypnogram whose header says 20 h after the recording (a clock set wrong): one recording, not refused.
    late, _ = _moved(own, tmp_path / "SC4001EZ-Hypnogram.edf", dt.timedelta(hours=20))
    proc = run_cli("score", psg, "-o", tmp_path / "late.csv", "--model", _model(sedf), "--epochs-from", late)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- item 5: -o out.txt

def test_one_night_to_a_txt_name_writes_that_file(sedf: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    proc = run_cli("score", sedf["psg"], "-o", out, "--model", _model(sedf))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()  # not a folder out.txt/
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns[:3]) == ["epoch", "onset_s", "stage"] and len(df) > 10
    assert set(df["stage"]) <= {"W", "N1", "N2", "N3", "REM", "?"}
    assert (tmp_path / "out.report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.report.html", "out.txt"]


@pytest.mark.parametrize("name", ["out.tsv", "night.json"])
def test_one_night_to_a_suffix_score_cannot_write_is_refused(sedf: dict, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    proc = run_cli("score", sedf["psg"], "-o", out, "--model", _model(sedf))
    assert_clean_error(proc, name, "cannot write a", ".csv")
    assert list(tmp_path.iterdir()) == []


def test_several_nights_to_a_file_name_are_refused(sedf: dict, tmp_path: Path) -> None:
    proc = run_cli("score", sedf["sim"], "-o", tmp_path / "nights.csv", "--model", _model(sedf))
    assert_clean_error(proc, "nights.csv", "3 nights", "folder")
    assert not (tmp_path / "nights.csv").exists()


# --------------------------------------------------------------------------- item 5: 80 columns

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_in(cwd: Path, env: dict, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "sleepstage_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NO_COLOR": "1", **env})
    assert proc.returncode == 0, proc.stderr
    text = _ANSI.sub("", proc.stdout + "\n" + proc.stderr).replace("\r", "\n")
    return [ln for ln in text.splitlines() if "━" not in ln]  # the progress bar's own line is drawn to fit


def test_score_summary_and_warnings_fit_80_columns_without_splitting_words(sedf: dict, tmp_path: Path) -> None:
    model = _model(sedf)
    (tmp_path / "model.pt").symlink_to(model)
    (tmp_path / "nights").mkdir()
    for psg in sorted(sedf["sim"].glob("*-PSG.edf")):
        (tmp_path / "nights" / psg.name).symlink_to(psg)
    args = ("score", "../nights", "-o", "scored", "--model", "../model.pt")
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    narrow.mkdir()
    wide.mkdir()
    # As on an 80-column terminal; and the same run with room for every message on one line.
    lines = _run_in(narrow, {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "FORCE_COLOR": "1", "TTY_INTERACTIVE": "0"},
                    *args)
    unwrapped = _run_in(wide, {"COLUMNS": "1000", "TTY_COMPATIBLE": "0"}, *args)
    warnings = [ln for ln in unwrapped if ln.startswith("warning:")]
    assert any(len(w) > 80 for w in warnings), unwrapped  # there is something to wrap
    assert any("W/N1/N2/N3/REM" in ln for ln in lines)
    too_long = [ln for ln in lines if len(ln.rstrip()) > 80]
    assert not too_long, "\n".join(too_long)
    # Every word printed at 80 columns is a word of the unwrapped output: nothing cut or broken mid-word.
    words = {w for ln in unwrapped for w in ln.split()}
    split = sorted({w for ln in lines for w in ln.split() if w not in words and set(w) - set("─")})
    assert not split, split  # a word cut short ("epoc…") or broken across lines ("recor" / "ding")
    # Each long warning is there whole, wrapped at spaces.
    flat = " ".join(" ".join(ln.split()) for ln in lines)
    for warning in warnings:
        assert " ".join(warning.split()) in flat, warning


# --------------------------------------------------------------------------- item 5: a square wave is not flat

def test_a_square_wave_is_called_a_square_wave_not_flat(sedf: dict, tmp_path: Path) -> None:
    t = np.arange(600 * 100) / 100.0
    square = np.where(np.sin(2 * np.pi * t / 20.0) >= 0, 1000.0, -1000.0)  # +-1000 uV, 10 s per level
    noise = np.random.default_rng(1).normal(0, 30, t.size)
    edf = write_edf(tmp_path / "square.edf", {"SQUARE": (square, 100), "FLAT": (np.zeros(t.size), 100),
                                              "NOISE": (noise, 100)})
    proc = run_cli("score", edf, "-o", tmp_path / "square.csv", "--model", _model(sedf), "--eeg", "SQUARE",
                   "--eog", "NOISE")
    assert_clean_error(proc, "square.edf", "EEG 'SQUARE'", "2 values (-1000 and 1000 µV)", "square wave")
    assert "flat" not in proc.stderr.replace("constant stretches", "")
    assert "all samples equal" not in proc.stderr

    proc = run_cli("score", edf, "-o", tmp_path / "flat.csv", "--model", _model(sedf), "--eeg", "FLAT",
                   "--eog", "NOISE")
    assert_clean_error(proc, "square.edf", "EEG 'FLAT'", "flat (all samples equal)")
