"""The night simulator: dataset layouts read back with pyedflib, truth file, and signal content.

Signal checks use their own computation (scipy.signal.welch band powers, filtered RMS) on the
data as written to EDF, not the simulator's internals.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pyedflib
import pytest
import scipy.signal

from sleepstage_cli import __version__
from sleepstage_cli.errors import SleepstageError
from sleepstage_cli.simulate import simulate
from sleepstage_cli.simulate.hypnogram import make_hypnogram

EDF_STAGE = {"Sleep stage W": 0, "Sleep stage 1": 1, "Sleep stage 2": 2, "Sleep stage 3": 3,
             "Sleep stage 4": 3, "Sleep stage R": 4, "Sleep stage ?": -1, "Movement time": -1}
TABLE_STAGE = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4}


# --------------------------------------------------------------------------- helpers

def read_signals(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    with pyedflib.EdfReader(str(path)) as r:
        return {lab: (r.readSignal(i), r.getSampleFrequency(i)) for i, lab in enumerate(r.getSignalLabels())}


def read_rates(path: Path) -> tuple[dict[str, float], float]:
    with pyedflib.EdfReader(str(path)) as r:
        return dict(zip(r.getSignalLabels(), r.getSampleFrequencies())), r.file_duration


def read_annotations(path: Path) -> list[tuple[float, float, str]]:
    with pyedflib.EdfReader(str(path)) as r:
        assert r.signals_in_file == 0  # an annotations-only EDF+ file
        onsets, durations, texts = r.readAnnotations()
    return [(float(o), float(d), str(t)) for o, d, t in zip(onsets, durations, texts)]


def manifest(out: Path) -> dict:
    return json.loads((out / "simulation.json").read_text())


def expand(annotations: list[tuple[float, float, str]], epoch: float) -> tuple[list[float], list[int]]:
    """Annotations to epochs: whole epochs of each annotation; a trailing partial epoch is dropped."""
    onsets, stages = [], []
    for onset, duration, text in annotations:
        n = int(math.floor(duration / epoch + 1e-6))
        onsets += [onset + k * epoch for k in range(n)]
        stages += [EDF_STAGE[text]] * n
    return onsets, stages


def epochs(x: np.ndarray, fs: float, onsets: list[float], length: float) -> np.ndarray:
    idx = np.round(np.asarray(onsets) * fs).astype(int)
    n = int(round(length * fs))
    return np.stack([x[i:i + n] for i in idx])


def band_power(ep: np.ndarray, fs: float, lo: float, hi: float) -> np.ndarray:
    f, p = scipy.signal.welch(ep, fs=fs, nperseg=int(4 * fs), axis=-1)
    sel = (f >= lo) & (f < hi)
    return p[:, sel].sum(axis=1) * (f[1] - f[0])


def emg_rms(ep: np.ndarray, fs: float) -> np.ndarray:
    sos = scipy.signal.butter(4, [12.0, 45.0], btype="band", fs=fs, output="sos")
    return np.sqrt(np.mean(scipy.signal.sosfiltfilt(sos, ep, axis=-1) ** 2, axis=1))


BANDS = {"delta": (0.5, 2.0), "theta": (4.0, 7.0), "alpha": (8.0, 12.0), "sigma": (11.0, 15.0),
         "beta": (16.0, 30.0)}


def mass_epoch_features(out: Path, night: dict) -> dict[str, np.ndarray]:
    """Per-epoch measures of a MASS night from its written EDF: C4-A1 band powers, O1-A1 alpha,
    EOG (right - left) slow power, chin EMG RMS."""
    sig = read_signals(out / night["psg"])
    fs = sig["EEG C4-CLE"][1]
    a1 = sig["EEG A1-CLE"][0]
    on, ep = night["onsets"], night["epoch_length"]
    eeg = epochs(sig["EEG C4-CLE"][0] - a1, fs, on, ep)
    feats = {b: band_power(eeg, fs, lo, hi) for b, (lo, hi) in BANDS.items()}
    feats["alpha_o1"] = band_power(epochs(sig["EEG O1-CLE"][0] - a1, fs, on, ep), fs, 8.0, 12.0)
    eog = epochs(sig["EOG Right Horiz"][0] - sig["EOG Left Horiz"][0], fs, on, ep)
    feats["eog_slow"] = band_power(eog, fs, 0.3, 4.0)
    feats["emg"] = emg_rms(epochs(sig["EMG Chin1"][0] - sig["EMG Chin2"][0], fs, on, ep), fs)
    feats["stage"] = np.asarray(night["stages"])
    return feats


def median(feats: dict[str, np.ndarray], name: str, stage: int) -> float:
    return float(np.median(feats[name][feats["stage"] == stage]))


# --------------------------------------------------------------------------- fixtures (simulated once)

@pytest.fixture(scope="module")
def mass3(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mass3")
    simulate(out, 3, layout="mass", seed=11, hours=0.5)
    return out


@pytest.fixture(scope="module")
def mass_ss2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ss2")
    simulate(out, 2, layout="mass", subset="SS2", seed=12, hours=0.5)
    return out


@pytest.fixture(scope="module")
def sleep_edf_sc(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sc")
    simulate(out, 3, layout="sleep-edf", seed=13, hours=0.5)
    return out


@pytest.fixture(scope="module")
def sleep_edf_st(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("st")
    simulate(out, 2, layout="sleep-edf", study="ST", seed=14, hours=0.5)
    return out


@pytest.fixture(scope="module")
def generic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generic")
    simulate(out, 3, layout="generic", seed=15, hours=0.5)
    return out


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Two MASS SS3 subjects of 2 hours each, with per-epoch measures read from the EDF files."""
    out = tmp_path_factory.mktemp("signals")
    simulate(out, 2, layout="mass", seed=2, hours=2.0)
    return out, [mass_epoch_features(out, n) for n in manifest(out)["nights"]]


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_other_signals(tmp_path):
    simulate(tmp_path / "a", 2, layout="mass", seed=5, hours=0.25)
    simulate(tmp_path / "b", 2, layout="mass", seed=5, hours=0.25)
    simulate(tmp_path / "c", 2, layout="mass", seed=6, hours=0.25)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = read_signals(tmp_path / "a" / "01-03-0001 PSG.edf")
    c = read_signals(tmp_path / "c" / "01-03-0001 PSG.edf")
    assert not np.array_equal(a["EEG C4-CLE"][0][:5000], c["EEG C4-CLE"][0][:5000])
    assert manifest(tmp_path / "a")["nights"][0]["stages"] != manifest(tmp_path / "c")["nights"][0]["stages"]


def test_a_night_does_not_depend_on_how_many_are_simulated(tmp_path):
    simulate(tmp_path / "one", 1, layout="generic", seed=9, hours=0.25)
    simulate(tmp_path / "two", 2, layout="generic", seed=9, hours=0.25)
    for name in ("subject01_night1.edf", "subject01_night1.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


# --------------------------------------------------------------------------- MASS layout

def test_mass_files_channels_and_rates(mass3):
    m = manifest(mass3)
    assert m["generator"] == "sleepstage simulate" and m["version"] == __version__
    assert (m["layout"], m["seed"], m["hours"], m["subset"]) == ("mass", 11, 0.5, "SS3")
    assert "study" not in m
    codes = [f"01-03-000{k}" for k in (1, 2, 3)]
    assert sorted(p.name for p in mass3.iterdir()) == sorted(
        [f"{c} PSG.edf" for c in codes] + [f"{c} Base.edf" for c in codes] + ["simulation.json"])
    labels = []
    for code, night in zip(codes, m["nights"]):
        assert (night["psg"], night["hypnogram"], night["subject"]) == (f"{code} PSG.edf", f"{code} Base.edf", code)
        rates, duration = read_rates(mass3 / night["psg"])
        assert duration == night["duration_s"]
        for label, fs in rates.items():
            assert fs == (32.0 if label == "Resp Belt Thor" else 256.0), label
        assert {"EOG Right Horiz", "EOG Left Horiz", "EMG Chin1", "EMG Chin2", "ECG I"} <= set(rates)
        labels.append(set(rates))
    # Montages vary across nights as in real MASS: CLE with A1/A2, a third chin electrode, LER.
    assert {"EEG C4-CLE", "EEG A1-CLE", "EEG C3-CLE", "EEG A2-CLE", "EEG O1-CLE"} <= labels[0]
    assert "EMG Chin3" in labels[1] and "EMG Chin3" not in labels[0]
    assert "EEG C4-LER" in labels[2] and not any(re.search(r"A[12]-", lab) for lab in labels[2])


def test_mass_annotations_match_manifest(mass3):
    saw_unscored = []
    for night in manifest(mass3)["nights"]:
        ann = read_annotations(mass3 / night["hypnogram"])
        assert all(d == 30.0 for _, d, _ in ann)  # one annotation per 30-s epoch
        assert {t for _, _, t in ann} <= set(EDF_STAGE) - {"Sleep stage 4", "Movement time"}
        onsets, stages = expand(ann, 30.0)
        assert np.allclose(onsets, night["onsets"], atol=1e-6) and stages == night["stages"]
        first = onsets[0]
        assert 3.0 <= first <= 181.0 and first != int(first)
        assert abs(first * 100 - round(first * 100)) < 1e-6  # on the 1/100-s grid
        assert np.allclose(np.diff(onsets), 30.0)
        assert len(onsets) == 60  # hours=0.5
        assert onsets[-1] + 30.0 < night["duration_s"] < onsets[-1] + 30.0 + 120.0
        saw_unscored.append(-1 in stages)
    assert any(saw_unscored)


def test_mass_rk_subset_has_20s_epochs_and_stage_4(mass_ss2):
    m = manifest(mass_ss2)
    assert m["subset"] == "SS2"
    texts = set()
    for k, night in enumerate(m["nights"], start=1):
        assert night["psg"] == f"01-02-000{k} PSG.edf" and night["epoch_length"] == 20.0
        ann = read_annotations(mass_ss2 / night["hypnogram"])
        assert all(d == 20.0 for _, d, _ in ann)
        onsets, stages = expand(ann, 20.0)
        assert np.allclose(onsets, night["onsets"], atol=1e-6) and stages == night["stages"]
        assert onsets[0] != int(onsets[0]) and len(onsets) == 90
        texts |= {t for _, _, t in ann}
    assert {"Sleep stage 3", "Sleep stage 4"} <= texts


# --------------------------------------------------------------------------- Sleep-EDF layout

def test_sleep_edf_cassette_files_and_channels(sleep_edf_sc):
    m = manifest(sleep_edf_sc)
    assert m["study"] == "SC" and "subset" not in m
    psgs = [n["psg"] for n in m["nights"]]
    assert psgs == ["SC4001E0-PSG.edf", "SC4002E0-PSG.edf", "SC4011E0-PSG.edf"]
    assert [n["subject"] for n in m["nights"]] == ["SC400", "SC400", "SC401"]
    for night in m["nights"]:
        hyp = night["hypnogram"]
        # SC4ssNE + the scorer's letter: pairs share their first 7 characters, then differ.
        assert re.fullmatch(r"SC4\d{3}E[A-Z]-Hypnogram\.edf", hyp) and hyp[7] != "E"
        assert hyp[:7] == night["psg"][:7] and hyp[7] != night["psg"][7]
        rates, duration = read_rates(sleep_edf_sc / night["psg"])
        assert rates == {"EEG Fpz-Cz": 100.0, "EEG Pz-Oz": 100.0, "EOG horizontal": 100.0, "Resp oro-nasal": 1.0,
                         "EMG submental": 1.0, "Temp rectal": 1.0, "Event marker": 1.0}
        assert duration == night["duration_s"]
        # Daytime wake around the night: at least max(1 h, hours) of wake besides the sleep period.
        assert duration >= 3600 + 1800


def test_sleep_edf_runs_and_final_unscored_match_manifest(sleep_edf_sc):
    texts = set()
    for night in manifest(sleep_edf_sc)["nights"]:
        ann = read_annotations(sleep_edf_sc / night["hypnogram"])
        assert ann[0][0] == 0.0
        for (o1, d1, t1), (o2, _, t2) in zip(ann, ann[1:]):
            assert o2 == pytest.approx(o1 + d1) and t1 != t2  # contiguous runs of different stages
        *runs, last = ann
        assert all(d % 30 == 0 and d > 0 for _, d, _ in runs)
        assert any(d > 30 for _, d, _ in runs)  # run-length, not one annotation per epoch
        assert last[2] == "Sleep stage ?" and last[1] % 30 != 0
        assert last[0] + last[1] == pytest.approx(night["duration_s"])  # '?' runs to the end
        onsets, stages = expand(ann, 30.0)
        assert np.allclose(onsets, night["onsets"]) and stages == night["stages"]
        assert stages[-1] == -1 and onsets[-1] + 30 <= night["duration_s"]
        texts |= {t for _, _, t in ann}
    assert {"Movement time", "Sleep stage 3", "Sleep stage 4", "Sleep stage R"} <= texts


def test_sleep_edf_telemetry(sleep_edf_st):
    m = manifest(sleep_edf_st)
    assert m["study"] == "ST"
    assert [(n["psg"], n["hypnogram"]) for n in m["nights"]] == [
        ("ST7011J0-PSG.edf", "ST7011JP-Hypnogram.edf"), ("ST7012J0-PSG.edf", "ST7012JP-Hypnogram.edf")]
    for night in m["nights"]:
        rates, duration = read_rates(sleep_edf_st / night["psg"])
        assert rates["EMG submental"] == 100.0 and rates["EEG Fpz-Cz"] == 100.0
        ann = read_annotations(sleep_edf_st / night["hypnogram"])
        onsets, stages = expand(ann, 30.0)
        assert np.allclose(onsets, night["onsets"]) and stages == night["stages"]
        assert onsets[-1] + 30 <= duration


# --------------------------------------------------------------------------- generic layout

def test_generic_files_tables_and_channel_map(generic):
    m = manifest(generic)
    assert [(n["psg"], n["hypnogram"]) for n in m["nights"]] == [
        ("subject01_night1.edf", "subject01_night1.csv"), ("subject01_night2.edf", "subject01_night2.tsv"),
        ("subject02_night1.edf", "subject02_night1.csv")]
    for night in m["nights"]:
        path = generic / night["hypnogram"]
        if path.suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            assert list(rows[0]) == ["onset", "duration", "stage"]
            onsets = [float(r["onset"]) for r in rows]
            assert all(float(r["duration"]) == 30.0 for r in rows)
            stages = [TABLE_STAGE[r["stage"]] for r in rows]
        else:
            lines = path.read_text().splitlines()
            stages = [TABLE_STAGE[s] for s in lines]  # no header: every line is a stage
            onsets = [30.0 * k for k in range(len(lines))]
        assert onsets == night["onsets"] and stages == night["stages"]
        rates, _ = read_rates(generic / night["psg"])
        assert rates == dict.fromkeys(["C4-M1", "C3-M2", "E1-M2", "E2-M1", "Chin1-Chin2", "ECG"], 200.0)
    mapping = tomllib.loads((generic / "channels.toml").read_text())
    assert mapping["eeg"] == "C4-M1" and mapping["emg"] == "Chin1-Chin2"
    left, right = (s.strip() for s in mapping["eog"].split(" - "))
    assert {left, right} <= set(rates)


# --------------------------------------------------------------------------- hypnogram realism

def test_stage_proportions_and_cycles_of_8h_nights():
    fractions, n3_early, rem_late, first_last_rem = [], [], [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        st = make_hypnogram(rng, 8.0, 30.0).stage
        fractions.append(np.bincount(st, minlength=5) / st.size)
        half = st.size // 2
        n3_early.append((st[:half] == 3).sum() / (st == 3).sum())
        rem_late.append((st[half:] == 4).sum() / (st == 4).sum())
        runs = [len(r) for r in np.split(st, np.nonzero(np.diff(st))[0] + 1) if r[0] == 4 and len(r) >= 4]
        first_last_rem.append(runs[-1] > runs[0])
        assert st[0] == 0 and st[-1] == 0  # lights off and lights on awake
    mean = np.mean(fractions, axis=0)
    lo, hi = np.array([0.08, 0.04, 0.40, 0.09, 0.15]), np.array([0.22, 0.11, 0.58, 0.22, 0.27])
    assert (mean >= lo).all() and (mean <= hi).all(), mean
    assert np.mean(n3_early) > 0.85 and min(n3_early) > 0.6
    assert np.mean(rem_late) > 0.6
    assert np.mean(first_last_rem) >= 0.75  # REM periods lengthen towards morning


def test_short_nights_hold_every_stage(two_subjects):
    out, _ = two_subjects
    for night in manifest(out)["nights"]:
        counts = np.bincount(np.array(night["stages"])[np.array(night["stages"]) >= 0], minlength=5)
        assert (counts >= 3).all(), counts


# --------------------------------------------------------------------------- signal content

def test_stage_signatures_in_written_signals(two_subjects):
    _, nights = two_subjects
    for f in nights:
        others = lambda s: [k for k in range(5) if k != s]  # noqa: E731
        assert all(median(f, "delta", 3) > 3 * median(f, "delta", s) for s in others(3))
        assert all(median(f, "alpha_o1", 0) > 1.5 * median(f, "alpha_o1", s) for s in others(0))
        assert median(f, "sigma", 2) > 1.2 * max(median(f, "sigma", 1), median(f, "sigma", 4))
        assert median(f, "emg", 0) > 1.5 * median(f, "emg", 2)
        assert median(f, "emg", 2) > 1.1 * median(f, "emg", 4)  # REM atonia: the lowest tone
        assert median(f, "eog_slow", 1) > median(f, "eog_slow", 3)  # slow eye movements of drowsiness


def test_derivations_cancel_the_common_mode(two_subjects):
    out, _ = two_subjects
    night = manifest(out)["nights"][0]
    sig = read_signals(out / night["psg"])
    fs = sig["EEG C4-CLE"][1]

    def at60(x: np.ndarray) -> float:  # power density at 60 Hz over the first 10 minutes
        f, p = scipy.signal.welch(x[: int(600 * fs)], fs=fs, nperseg=1024)
        return float(p[np.argmin(np.abs(f - 60.0))])

    c4, a1 = sig["EEG C4-CLE"][0], sig["EEG A1-CLE"][0]
    assert at60(c4 - a1) < at60(c4) / 100 and at60(c4 - a1) < at60(a1) / 100
    right, left = sig["EOG Right Horiz"][0], sig["EOG Left Horiz"][0]
    assert at60(right - left) < at60(right) / 100
    # Horizontal eye movements: opposite polarity on the two leads (slow eye movements of N1).
    n1 = np.array(night["onsets"])[np.array(night["stages"]) == 1]
    sos = scipy.signal.butter(2, [0.15, 1.0], btype="band", fs=fs, output="sos")
    r = scipy.signal.sosfiltfilt(sos, epochs(right, fs, n1, 30.0), axis=-1)
    l = scipy.signal.sosfiltfilt(sos, epochs(left, fs, n1, 30.0), axis=-1)
    assert np.corrcoef(r.ravel(), l.ravel())[0, 1] < -0.3


def test_staging_is_learnable_but_not_trivial(two_subjects):
    """Nearest centroid on log band powers, trained on one subject and tested on the other."""
    _, nights = two_subjects
    names = ("delta", "theta", "alpha", "sigma", "beta", "eog_slow", "emg")

    def xy(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        keep = f["stage"] >= 0
        return np.column_stack([np.log(f[n]) for n in names])[keep], f["stage"][keep]

    accuracies = []
    for train, test in ((0, 1), (1, 0)):
        x_tr, y_tr = xy(nights[train])
        x_te, y_te = xy(nights[test])
        mu, sd = x_tr.mean(0), x_tr.std(0)
        centroids = np.stack([((x_tr - mu) / sd)[y_tr == k].mean(0) for k in range(5)])
        dist = (((x_te - mu) / sd)[:, None, :] - centroids[None]) ** 2
        accuracies.append(float((dist.sum(-1).argmin(1) == y_te).mean()))
    # Seeds 0-15 give 0.65-0.88 (chance is ~0.2, the majority class ~0.45).
    print("nearest-centroid accuracy across subjects:", accuracies)
    assert all(0.55 < a < 0.95 for a in accuracies), accuracies


# --------------------------------------------------------------------------- arguments and output

@pytest.mark.parametrize("kwargs", [
    {"layout": "edf"}, {"layout": ""}, {"nights": 0}, {"nights": -1}, {"nights": 1.5}, {"nights": True},
    {"hours": 0}, {"hours": -2.0}, {"hours": float("nan")}, {"hours": float("inf")}, {"hours": 0.1},
    {"hours": 30}, {"subset": "SS9"}, {"layout": "sleep-edf", "study": "XX"}, {"seed": -1}, {"seed": 1.5},
])
def test_bad_arguments_raise_one_line_errors(tmp_path, kwargs):
    args = {"nights": 1, "layout": "mass", "hours": 0.25} | kwargs
    with pytest.raises(SleepstageError) as info:
        simulate(tmp_path / "out", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SleepstageError):
        simulate(target, 1, hours=0.25)


def test_progress_return_value_and_clean_folder(tmp_path):
    calls = []
    out = tmp_path / "new" / "folder"
    nights = simulate(out, 2, layout="sleep-edf", study="ST", seed=1, hours=0.25,
                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert [n.psg.name for n in nights] == ["ST7011J0-PSG.edf", "ST7012J0-PSG.edf"]
    assert [n.to_json() for n in nights] == manifest(out)["nights"]
    assert all(n.psg.exists() and n.hypnogram.exists() for n in nights)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
