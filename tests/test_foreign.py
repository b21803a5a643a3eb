"""Real files written by other software (../shared/foreign-edf): read what users actually have.

Each test copies what it needs into a temporary folder and skips when the reference folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.io.channels import build_spec, resolve_channels
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.hypnogram import read_hypnogram
from sleepstage_cli.stages import STAGES


@pytest.fixture
def sleep_edf_pair(foreign, tmp_path: Path) -> Path:
    foreign("sleep-edf/SC4001E0-PSG.edf", "sedf/SC4001E0-PSG.edf")
    foreign("sleep-edf/SC4001EC-Hypnogram.edf", "sedf/SC4001EC-Hypnogram.edf")
    return tmp_path / "sedf"


def test_sleep_edf_asked_for_emg_refuses_the_1hz_emg(sleep_edf_pair: Path, tmp_path: Path) -> None:
    proc = run_cli("prepare", sleep_edf_pair, "-o", tmp_path / "out", "--channels", "eeg,eog,emg")
    assert_clean_error(proc, "SC4001E0-PSG.edf", "EMG submental", "1 Hz", "--channels eeg,eog")
    assert not list((tmp_path / "out").glob("nights/*.npy"))


def test_sleep_edf_eeg_eog_untrimmed_gives_ten_wake_epochs(sleep_edf_pair: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("prepare", sleep_edf_pair, "-o", out, "--channels", "eeg,eog", "--no-trim")
    assert proc.returncode == 0, proc.stderr
    assert "runs past the signal" in proc.stderr and "SC4001EC-Hypnogram.edf" in proc.stderr
    ds = PreparedDataset(out)
    assert [n.id for n in ds.nights] == ["SC4001"] and ds.nights[0].subject == "SC400"
    rec = ds.open("SC4001")
    assert rec.shape == (10,)
    assert rec["label"].tolist() == [0] * 10
    np.testing.assert_allclose(rec["onset"], 30.0 * np.arange(10))
    assert rec["x"].shape == (10, 2, 3000)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["nights"][0]["channels"]["eeg"]["expression"] == "EEG Fpz-Cz"


def test_sleep_edf_default_trimming_keeps_a_wake_excerpt_and_says_so(sleep_edf_pair: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("prepare", sleep_edf_pair, "-o", out)  # the preset's defaults: EEG+EOG, wake trimmed
    assert proc.returncode == 0, proc.stderr
    assert "no sleep epoch lies within the signal, so no wake was trimmed: all 10 epoch(s)" in proc.stderr
    rec = PreparedDataset(out).open("SC4001")
    assert rec["label"].tolist() == [0] * 10 and rec["x"].shape == (10, 2, 3000)


def test_hmc_style_aasm_hypnogram(foreign) -> None:
    path = foreign("test_edfann.edf", "SN001_sleepscoring.edf")
    hyp = read_hypnogram(path)
    assert len(hyp) == 854 and hyp.epoch_length == 30
    counts = hyp.counts()
    assert {s: counts[s] for s in STAGES} == {"W": 151, "N1": 109, "N2": 430, "N3": 23, "REM": 141}
    assert counts["unscored"] == 0
    assert np.all(np.diff(hyp.onsets) > 0)
    np.testing.assert_allclose(hyp.onsets, 30.0 * np.arange(854))


def test_dreams_units_listing_fallback_and_50hz_refusal(foreign, tmp_path: Path) -> None:
    path = foreign("dreams/excerpt3.edf")
    header = read_header(path)
    assert len(header.signals) == 20
    c3 = next(s for s in header.signals if s.label == "C3-A1")
    assert c3.unit == "UV" and c3.sampling_rate == 50
    with EdfReader(path, header) as reader:
        x = reader.read(c3)
        assert reader.backend == "direct"  # pyedflib refuses this file; its records are read directly
    assert 5 < x.std() < 200  # tens of µV, not tens of millions

    listing = run_cli("prepare", "--list-channels", path)
    assert listing.returncode == 0, listing.stderr
    for label in ("C3-A1", "EOG1-A1", "EMG1", "SAO2", "hypnogram"):
        assert label in listing.stdout
    assert "no (< 100 Hz)" in listing.stdout

    proc = run_cli("prepare", path, "-o", tmp_path / "out", "--eeg", "C3-A1", "--eog", "EOG1-A1")
    assert_clean_error(proc, "excerpt3.edf", "C3-A1", "50 Hz", "below the 100 Hz")


def test_edf_plus_test_generator(foreign, tmp_path: Path) -> None:
    path = foreign("test_generator_2.edf")
    header = read_header(path)
    assert len(header.signals) == 11 and max(s.sampling_rate for s in header.signals) == 200
    listing = run_cli("prepare", "--list-channels", path)
    assert listing.returncode == 0, listing.stderr
    assert "sine 8.5 Hz" in listing.stdout and "EDF+ annotations: 2 (no sleep stages)" in listing.stdout

    spec = build_spec(None, None, {"eeg": ("SINE 8 HZ",), "emg": ("sine 50 Hz - sine 17 Hz",)})
    eeg, emg = resolve_channels(header, spec)
    assert eeg.expression == "sine 8 Hz" and emg.expression == "sine 50 Hz - sine 17 Hz"
    with EdfReader(path, header) as reader:
        x = reader.read(eeg.plus)
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    assert np.fft.rfftfreq(x.size, 1 / 200)[np.argmax(spectrum)] == pytest.approx(8.0, abs=0.01)

    proc = run_cli("prepare", path, "-o", tmp_path / "out", "--eeg", "sine 8 Hz")
    assert_clean_error(proc, "test_generator_2.edf", "no hypnogram")
