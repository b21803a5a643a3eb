"""`sleepstage prepare` end to end on simulated nights: round trips per layout, resume, refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli, write_edf
from scipy import signal as sps

from sleepstage_cli.data.dataset import PreparedDataset, write_night
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.layout import discover
from sleepstage_cli.locks import exclusive_lock
from sleepstage_cli.simulate import simulate


@pytest.fixture(scope="module")
def sims(tmp_path_factory) -> dict[str, Path]:
    """One small simulated dataset per layout variant."""
    root = tmp_path_factory.mktemp("sims")
    variants = {
        "mass-ss3": dict(layout="mass", subset="SS3", nights=2),
        "mass-ss2": dict(layout="mass", subset="SS2", nights=2),
        "sedf-sc": dict(layout="sleep-edf", study="SC", nights=2),
        "sedf-st": dict(layout="sleep-edf", study="ST", nights=1),
        "generic": dict(layout="generic", nights=2),
    }
    out = {}
    for name, kw in variants.items():
        simulate(root / name, seed=7, hours=0.5, **kw)
        out[name] = root / name
    return out


def expected_epochs(truth: dict, trim_minutes: float | None) -> tuple[np.ndarray, np.ndarray]:
    """What prepare must keep, computed from the simulator's truth by the rules in DATASETS.md."""
    onsets = np.asarray(truth["onsets"], float)
    stages = np.asarray(truth["stages"], int)
    offset = -(30.0 - truth["epoch_length"]) / 2.0  # 20-s epochs are widened by 5 s each side
    start = onsets + offset
    keep = (start >= 0) & (start + 30.0 <= truth["duration_s"] + 1e-6)
    onsets, stages = onsets[keep], stages[keep]
    if trim_minutes is not None:
        sleep = np.nonzero((stages >= 1) & (stages <= 4))[0]
        lo, hi = onsets[sleep[0]] - 60 * trim_minutes, onsets[sleep[-1]] + 60 * trim_minutes
        keep = (onsets >= lo - 1e-6) & (onsets <= hi + 1e-6)
        onsets, stages = onsets[keep], stages[keep]
    return onsets, stages


def _truth(folder: Path) -> dict:
    return json.loads((folder / "simulation.json").read_text())


ROUND_TRIPS = [
    ("mass-ss3", ["--min-hours", "0"], None, ("eeg", "eog", "emg")),
    ("mass-ss2", ["--min-hours", "0"], None, ("eeg", "eog", "emg")),
    ("sedf-sc", [], 30.0, ("eeg", "eog")),  # the Sleep-EDF preset's default: EEG+EOG (issue 14)
    ("sedf-st", ["--no-trim", "--channels", "eeg,eog,emg"], None, ("eeg", "eog", "emg")),
    ("generic", ["--channel-map", "{folder}/channels.toml"], None, ("eeg", "eog", "emg")),
]


@pytest.mark.parametrize("variant, args, trim, kinds", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_matches_simulated_truth(sims, tmp_path: Path, variant, args, trim, kinds) -> None:
    folder = sims[variant]
    out = tmp_path / "data"
    proc = run_cli("prepare", folder, "-o", out, *[a.format(folder=folder) for a in args])
    assert proc.returncode == 0, proc.stderr
    ds = PreparedDataset(out)
    truth = _truth(folder)
    assert sorted(n.id for n in ds.nights) == sorted(t["night"] for t in truth["nights"])
    assert ds.channels == kinds
    for t in truth["nights"]:
        rec = ds.open(t["night"])
        exp_onsets, exp_stages = expected_epochs(t, trim)
        assert rec.shape == exp_onsets.shape
        np.testing.assert_allclose(rec["onset"], exp_onsets, atol=1e-6)
        np.testing.assert_array_equal(rec["label"], exp_stages)
        assert rec["x"].shape[1:] == (len(kinds), 3000)
        assert ds.night(t["night"]).subject == t["subject"]
    # Manifest bookkeeping agrees with the files.
    for night in ds.nights:
        rec = ds.open(night)
        assert night.n_epochs == rec.shape[0]
        assert night.stage_counts["unscored"] == int((rec["label"] < 0).sum())


def test_epochs_are_aligned_with_the_recording(sims, tmp_path: Path) -> None:
    """Each prepared EEG epoch correlates with the raw derivation at its own onset, not a neighbour's."""
    folder = sims["mass-ss2"]  # 20-s epochs widened to 30 s: the harder case
    out = tmp_path / "data"
    assert run_cli("prepare", folder, "-o", out, "--min-hours", "0").returncode == 0
    ds = PreparedDataset(out)
    night = ds.nights[0]
    rec = ds.open(night)
    psg = Path(night.meta["psg"])
    header = read_header(psg)
    with EdfReader(psg, header) as r:
        sig = {s.label: s for s in header.signals}
        expr = night.meta["channels"]["eeg"]["expression"]
        plus, _, minus = expr.partition(" - ")
        raw = r.read(sig[plus]) - (r.read(sig[minus]) if minus else 0)
    # Independent path: scipy Butterworth band-pass and FFT resampling.
    sos = sps.butter(4, [1.0, 30.0], btype="band", fs=256, output="sos")
    ref = sps.resample(sps.sosfiltfilt(sos, raw), int(len(raw) * 100 / 256))
    for i in range(5, rec.shape[0] - 5, 17):
        start = int(round((rec["onset"][i] - 5.0) * 100))
        ours = sps.sosfiltfilt(sps.butter(4, [1.0, 30.0], btype="band", fs=100, output="sos"), rec["x"][i, 0])
        same = np.corrcoef(ours[300:-300], ref[start + 300:start + 2700])[0, 1]
        shifted = np.corrcoef(ours[300:-300], ref[start + 2300:start + 4700])[0, 1]
        assert same > 0.95 and abs(shifted) < 0.5, (i, same, shifted)


def test_resume_prepares_only_what_is_missing(sims, tmp_path: Path) -> None:
    folder, out = sims["generic"], tmp_path / "data"
    args = ["prepare", folder, "-o", out, "--channel-map", folder / "channels.toml"]
    assert run_cli(*args).returncode == 0
    ds = PreparedDataset(out)
    first, second = ds.nights[0], ds.nights[1]
    before = (out / second.file).stat().st_mtime_ns
    (out / first.file).unlink()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "already prepared" in proc.stderr
    assert (out / first.file).exists()
    assert (out / second.file).stat().st_mtime_ns == before  # untouched
    assert len(PreparedDataset(out).nights) == 2


def test_sigkill_leaves_no_half_written_night_and_rerun_completes(sims, tmp_path: Path) -> None:
    folder, out = sims["mass-ss3"], tmp_path / "data"
    cmd = [sys.executable, "-m", "sleepstage_cli", "prepare", str(folder), "-o", str(out), "--min-hours", "0",
           "-j", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "nights").glob("*.npy")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["nights"]:  # what the manifest lists is complete and readable
        assert np.load(out / entry["file"], mmap_mode="r").shape == (entry["n_epochs"],)
    for path in (out / "nights").glob("*.npy"):
        np.load(path, mmap_mode="r")  # no truncated file under a final name
    rerun = run_cli(*cmd[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert len(PreparedDataset(out).nights) == 2
    assert not list((out / "nights").glob(".*.tmp"))


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "n.npy"
    x = np.ones((2, 1, 3000), np.float32)
    write_night(path, x, np.array([0.0, 30.0]), np.array([0, 1], np.int8))
    original = path.read_bytes()

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(OSError):
        write_night(path, 2 * x, np.array([0.0, 30.0]), np.array([2, 3], np.int8))
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["n.npy"]


def test_output_refusals(sims, tmp_path: Path) -> None:
    folder = sims["generic"]
    cmap = ["--channel-map", str(folder / "channels.toml")]
    a_file = tmp_path / "taken.txt"
    a_file.write_text("mine")
    assert_clean_error(run_cli("prepare", folder, "-o", a_file, *cmap), "taken.txt", "is a file")
    assert a_file.read_text() == "mine"

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert_clean_error(run_cli("prepare", folder, "-o", busy, *cmap), "not a sleepstage dataset", "--force")

    out = tmp_path / "data"
    assert run_cli("prepare", folder, "-o", out, *cmap).returncode == 0
    proc = run_cli("prepare", folder, "-o", out, "--eeg", "C3-M2", "--eog", "E1-M2", "--emg", "Chin1-Chin2")
    assert_clean_error(proc, "other options", "--force")
    assert PreparedDataset(out).manifest["channel_spec"]["candidates"]["eeg"] == ["C4-M1"]
    proc = run_cli("prepare", folder, "-o", out, "--eeg", "C3-M2", "--eog", "E1-M2", "--emg", "Chin1-Chin2",
                   "--force")
    assert proc.returncode == 0, proc.stderr
    assert PreparedDataset(out).manifest["channel_spec"]["candidates"]["eeg"] == ["C3-M2"]


def test_second_writer_is_refused(sims, tmp_path: Path) -> None:
    folder, out = sims["generic"], tmp_path / "data"
    with exclusive_lock(out):
        proc = run_cli("prepare", folder, "-o", out, "--channel-map", folder / "channels.toml", "--force")
    assert_clean_error(proc, "another sleepstage run", "is writing to this folder")


def test_bad_nights_are_skipped_with_reasons(sims, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in sims["generic"].iterdir():
        if p.name.startswith("subject01_night1") or p.name == "channels.toml":
            (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.edf").write_text("not an EDF at all" * 30)
    (src / "broken.csv").write_text("onset,duration,stage\n0,30,W\n")
    t = np.arange(0, 600, 1 / 200)
    write_edf(src / "nochin.edf", {"C4-M1": (np.sin(t), 200), "E2-M1": (np.sin(t), 200), "E1-M2": (np.cos(t), 200)})
    (src / "nochin.csv").write_text("onset,duration,stage\n0,600,W\n")
    args = ["prepare", src, "-o", tmp_path / "out", "--channel-map", src / "channels.toml"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    ds = PreparedDataset(tmp_path / "out")
    reasons = {Path(s["path"]).name: s["reason"] for s in ds.manifest["skipped"]}
    assert "not an EDF/BDF file" in reasons["broken.edf"] and "broken.edf" in reasons["broken.edf"]
    assert "'Chin1-Chin2' not found" in reasons["nochin.edf"] and "C4-M1 (200 Hz)" in reasons["nochin.edf"]
    assert "Skipped" in proc.stdout and "nochin" in proc.stdout
    assert [n.id for n in ds.nights] == ["subject01_night1"]
    strict = run_cli(*args, "--strict")
    assert_clean_error(strict, "skipped (--strict)")


def test_empty_folder_and_missing_hypnograms(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run_cli("prepare", empty, "-o", tmp_path / "o"), "empty")
    assert_clean_error(run_cli("prepare", tmp_path / "nowhere", "-o", tmp_path / "o"), "nowhere", "not found")


def test_mass_minimum_night_length(sims, tmp_path: Path) -> None:
    proc = run_cli("prepare", sims["mass-ss3"], "-o", tmp_path / "o")
    assert proc.returncode != 0
    assert "under the 5 h minimum" in proc.stdout + proc.stderr


def test_hypnogram_longer_than_signal(tmp_path: Path) -> None:
    t = np.arange(0, 300, 1 / 100)
    rng = np.random.default_rng(0)
    write_edf(tmp_path / "n.edf", {"EEG": (20 * rng.normal(size=t.size), 100)})
    (tmp_path / "n.csv").write_text("onset,duration,stage\n0,150,W\n150,300,N2\n")
    proc = run_cli("prepare", tmp_path / "n.edf", tmp_path / "n.csv", "-o", tmp_path / "o", "--eeg", "EEG")
    assert proc.returncode == 0, proc.stderr
    assert "runs past the signal" in proc.stderr and "5 epoch(s) after it dropped" in proc.stderr
    rec = PreparedDataset(tmp_path / "o").open("n")
    assert rec["label"].tolist() == [0] * 5 + [2] * 5


def test_sleep_edf_pairing_by_first_six_characters(tmp_path: Path) -> None:
    for name in ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC4012E0-PSG.edf", "SC4012EH-Hypnogram.edf",
                 "SC4021EH-Hypnogram.edf", "SC4031E0-PSG.edf"):
        (tmp_path / name).write_bytes(b"")
    layout, nights, skips = discover([tmp_path])
    assert layout == "sleep-edf"
    pairs = {n.night_id: (n.psg.name, n.hypnogram.name, n.subject) for n in nights}
    assert pairs == {"SC4001": ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC400"),
                     "SC4012": ("SC4012E0-PSG.edf", "SC4012EH-Hypnogram.edf", "SC401")}
    reasons = {s.path.name: s.reason for s in skips}
    assert "without a matching PSG" in reasons["SC4021EH-Hypnogram.edf"]
    assert "no hypnogram" in reasons["SC4031E0-PSG.edf"]


def test_mass_annotations_subfolder(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "01-03-0001 PSG.edf").write_bytes(b"")
    (tmp_path / "annotations" / "01-03-0001 Base.edf").write_bytes(b"")
    layout, nights, _ = discover([tmp_path])
    assert layout == "mass" and nights[0].hypnogram.parent.name == "annotations"


def test_jobs_two_gives_the_same_dataset(sims, tmp_path: Path) -> None:
    folder = sims["generic"]
    cmap = ["--channel-map", str(folder / "channels.toml")]
    assert run_cli("prepare", folder, "-o", tmp_path / "a", "-j", "1", *cmap).returncode == 0
    assert run_cli("prepare", folder, "-o", tmp_path / "b", "-j", "2", *cmap).returncode == 0
    a, b = PreparedDataset(tmp_path / "a"), PreparedDataset(tmp_path / "b")
    for night in a.nights:
        np.testing.assert_array_equal(a.open(night)["x"], b.open(night.id)["x"])


def test_a_folder_another_run_is_starting_in_is_reported_as_that_run(tmp_path: Path) -> None:
    """While a run holds the lock (its manifest not yet written), a second run names that run, not a foreign folder."""
    from sleepstage_cli.errors import SleepstageError
    from sleepstage_cli.locks import exclusive_lock, refuse_if_locked

    root = tmp_path / "data"
    refuse_if_locked(root)  # no folder, no lock: nothing to say
    with exclusive_lock(root):
        (root / "nights").mkdir()  # what a starting run has written so far
        with pytest.raises(SleepstageError, match="another sleepstage run"):
            refuse_if_locked(root)
    refuse_if_locked(root)  # released
