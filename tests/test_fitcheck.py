"""The fit check (issue 14, item 1): the model file records what it was trained on; ``score`` gives every
night a verdict with reasons, writes it to summary.csv and the report, marks epochs outside the training
distribution, and ``--strict`` refuses nights that do not fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_clean_error, run_cli, write_edf

from sleepstage_cli.conditioning.levels import two_level_share
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.model.modelmeta import peek_metadata
from sleepstage_cli.scoring.fitcheck import OUTSIDE_FLAG, check_fit
from sleepstage_cli.scoring.pipeline import read_night, spec_with_overrides
from sleepstage_cli.spectrograms import fitsummary
from sleepstage_cli.spectrograms.fitsummary import derivation, fit_spectra

SEDF = ("--eeg", "EEG Fpz-Cz", "--eog", "EOG horizontal")
EOG = ("EOG Right Horiz", "EOG Left Horiz")


@pytest.fixture(scope="module")
def fit_model(trained, tmp_path_factory):
    """An EEG+EOG model trained briefly on the MASS-layout nights (C4-A1), and a simulated Sleep-EDF night."""
    root = tmp_path_factory.mktemp("fit")
    model = root / "eeg-eog.pt"
    proc = run_cli("train", trained["data"], "-o", model, "--channels", "eeg,eog", "--epochs", "1", "--max-steps",
                   "4", "--seq-len", "10", "--batch-size", "16", "--val-subjects", "01-03-0005", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("simulate", root / "sedf", "--layout", "sleep-edf", "--nights", "1", "--hours", "0.5",
                   "--seed", "21")
    assert proc.returncode == 0, proc.stderr
    return {"model": model, "sedf": next((root / "sedf").glob("*PSG.edf")), "meta": peek_metadata(model)}


def _copy(trained, path: Path, edit=None, unit: str = "uV") -> Path:
    """The held-out MASS night's EEG (``EEG C4-LER``, one of the training derivations) and EOG signals (in uV),
    optionally edited, written with ``unit``."""
    src = trained["held_out"]
    header = read_header(src)
    with EdfReader(src, header) as r:
        sig = {s.label: r.read(s).astype(float) for s in header.signals if s.label in ("EEG C4-LER", *EOG)}
    assert len(sig) == 3
    if edit is not None:
        edit(sig)
    return write_edf(path, {k: (v, 256) for k, v in sig.items()}, unit=unit)


def _verdict(fit_model, path: Path, overrides: dict | None = None):
    from sleepstage_cli.conditioning.signals import Conditioning
    from sleepstage_cli.io.channels import ChannelSpec

    meta = fit_model["meta"]
    spec = spec_with_overrides(ChannelSpec.from_dict(meta["channel_spec"]), overrides or {})
    night = read_night(path, spec, Conditioning.from_dict(meta["conditioning"]), Path(path).stem)
    return check_fit(meta["fit"], night.fit)


def test_strict_refuses_a_sleep_edf_night_and_accepts_an_unseen_night_of_the_training_layout(
        trained, fit_model, tmp_path: Path) -> None:
    model, sedf = fit_model["model"], fit_model["sedf"]
    refused = run_cli("score", sedf, "-o", tmp_path / "sedf.csv", "--model", model, *SEDF, "--strict")
    assert_clean_error(refused, sedf.name, "refused (--strict)", "nothing written", "EEG is Fpz-Cz",
                       "trained on C4-A1")
    assert not list(tmp_path.iterdir())  # nothing written for it

    accepted = run_cli("score", trained["held_out"], "-o", tmp_path / "mass.csv", "--model", model, "--strict")
    assert accepted.returncode == 0, accepted.stderr
    assert "fits the model" in accepted.stderr
    assert (tmp_path / "mass.csv").exists() and (tmp_path / "mass.report.html").exists()


def test_verdict_in_summary_report_and_terminal_and_strict_refuses_only_the_night_that_does_not_fit(
        trained, fit_model, tmp_path: Path) -> None:
    nights = tmp_path / "nights"
    nights.mkdir()
    for p in (fit_model["sedf"], trained["held_out"]):
        (nights / p.name).symlink_to(p)
    either = ("--eeg", "EEG Fpz-Cz|EEG C4-LER", "--eog", "EOG horizontal|EOG Right Horiz - EOG Left Horiz")
    proc = run_cli("score", nights, "-o", tmp_path / "all", "--model", fit_model["model"], *either)
    assert proc.returncode == 0, proc.stderr  # without --strict every night is scored, with its verdict
    rows = pd.read_csv(tmp_path / "all" / "summary.csv", keep_default_na=False).set_index("night")
    sedf_id = fit_model["sedf"].name[:6]
    assert rows.loc[sedf_id, "fit"] == "no" and rows.loc["01-03-0006", "fit"] == "yes"
    assert "EEG is Fpz-Cz" in rows.loc[sedf_id, "fit_reasons"] and rows.loc["01-03-0006", "fit_reasons"] == ""
    assert f"{sedf_id}: does not fit the model" in proc.stderr and "  - EEG is Fpz-Cz" in proc.stderr
    report = (tmp_path / "all" / f"{sedf_id}.report.html").read_text()
    banner = report[report.index('id="fit-verdict"'):]
    assert report.index('id="fit-verdict"') < report.index('id="hypnogram"')  # at the top
    assert 'class="verdict-slot bad"' in report and "EEG is Fpz-Cz" in banner[:2000]
    good = (tmp_path / "all" / "01-03-0006.report.html").read_text()
    assert "Yes: the recording fits" in good and "verdict-slot bad" not in good

    strict = run_cli("score", nights, "-o", tmp_path / "strict", "--model", fit_model["model"], *either, "--strict")
    assert_clean_error(strict, "1 of 2 nights could not be scored")
    assert f"not scored: {nights / fit_model['sedf'].name}: refused (--strict)" in strict.stderr
    written = sorted(p.name for p in (tmp_path / "strict").iterdir())
    assert written == ["01-03-0006.csv", "01-03-0006.report.html", "summary.csv"]
    assert list(pd.read_csv(tmp_path / "strict" / "summary.csv")["night"]) == ["01-03-0006"]


def test_amplitude_off_by_1000_is_named(trained, fit_model, tmp_path: Path) -> None:
    same = _verdict(fit_model, _copy(trained, tmp_path / "uv.edf"))
    assert same.fits, same.reasons
    # The same numbers written as millivolts: read as 1000 x the training nights' amplitude.
    verdict = _verdict(fit_model, _copy(trained, tmp_path / "mv.edf", unit="mV"))
    assert verdict.fits is False
    amp = [r for r in verdict.reasons if "amplitude" in r]
    assert len(amp) == 2 and amp[0].startswith("EEG amplitude") and "read as microvolts" in amp[0], amp
    ratio = float(re.search(r"is ([0-9.e+]+) times the training nights'", amp[0]).group(1))
    assert 500 < ratio < 2000  # 1000, give or take the night's own amplitude against the training nights' median

    def quieter(sig):
        for v in sig.values():
            v *= 0.05

    quiet = _verdict(fit_model, _copy(trained, tmp_path / "small.edf", quieter))
    assert any(r.startswith("EEG amplitude") and "is 1/" in r for r in quiet.reasons), quiet.reasons


@pytest.mark.parametrize("kind", ["sine", "square", "flat"])
def test_non_physiological_signals_are_named(trained, fit_model, tmp_path: Path, kind: str) -> None:
    def edit(sig):
        n = sig["EEG C4-LER"].size
        t = np.arange(n) / 256
        if kind == "sine":
            sig["EEG C4-LER"] = 40 * np.sin(2 * np.pi * 10.3 * t)
        elif kind == "square":
            sig["EEG C4-LER"] = 100 * np.sign(np.sin(2 * np.pi * 1.0 * t + 0.1))
        else:
            sig["EEG C4-LER"][: int(0.7 * n)] = 0.0

    verdict = _verdict(fit_model, _copy(trained, tmp_path / f"{kind}.edf", edit))
    assert verdict.fits is False
    expected = {"sine": "EEG is not physiological: a sine wave (10.3 Hz", "square": "EEG is not physiological: a "
                "square wave (two values hold 100 %", "flat": "EEG is flat for 70 % of the recording"}[kind]
    assert any(r.startswith(expected) for r in verdict.reasons), verdict.reasons
    assert not any("EOG" in r for r in verdict.reasons)  # the EOG is the night's own


def test_sine_and_noise_test_signal_is_refused_under_strict(trained, fit_model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def edit(sig):
        t = np.arange(sig["EEG C4-LER"].size) / 256
        sig["EEG C4-LER"] = 30 * np.sin(2 * np.pi * 3.3 * t) + 20 * rng.standard_normal(t.size)

    edf = _copy(trained, tmp_path / "generator.edf", edit)
    proc = run_cli("score", edf, "-o", tmp_path / "g.csv", "--model", fit_model["model"], "--strict")
    assert_clean_error(proc, "generator.edf", "refused (--strict)", "a sine wave (3.3 Hz")
    assert not (tmp_path / "g.csv").exists()


def test_epochs_outside_the_distribution_are_flagged(trained, fit_model, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)

    def edit(sig):  # 5 minutes of white noise at the EEG's own amplitude: a spectrum no sleep has
        a, b = 900 * 256, 1200 * 256
        sig["EEG C4-LER"][a:b] = np.std(sig["EEG C4-LER"]) * rng.standard_normal(b - a)

    edf = _copy(trained, tmp_path / "noisy.edf", edit)
    proc = run_cli("score", edf, "-o", tmp_path / "noisy.csv", "--model", fit_model["model"])
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "noisy.csv", keep_default_na=False)
    outside = df.flag.str.contains(OUTSIDE_FLAG, regex=False)
    noise = (df.onset_s >= 900) & (df.onset_s + 30 <= 1200)
    assert outside[noise].all(), df[noise].flag.tolist()
    assert outside[~((df.onset_s > 870) & (df.onset_s < 1200))].sum() <= 1  # elsewhere: about 1 in 1000
    assert f"marked {OUTSIDE_FLAG}" in proc.stderr


def test_an_old_model_without_fit_record_scores_with_fit_unknown(trained, tmp_path: Path) -> None:
    payload = torch.load(trained["model"], weights_only=True)
    payload.pop("fit")
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    proc = run_cli("score", trained["held_out"], "-o", tmp_path / "out", "--model", old, "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "fit unknown (model has no fit record)" in proc.stderr
    row = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False).iloc[0]
    assert row["fit"] == "unknown" and row["fit_reasons"] == "model has no fit record"
    assert_clean_error(run_cli("score", trained["held_out"], "-o", tmp_path / "s.csv", "--model", old, "--strict"),
                       "refused (--strict)", "no fit record", "train it again")
    assert not (tmp_path / "s.csv").exists()


def test_model_file_and_dataset_record_what_the_model_was_trained_on(trained, fit_model) -> None:
    manifest = json.loads((trained["data"] / "manifest.json").read_text())
    for night in manifest["nights"]:
        for kind in ("eeg", "eog", "emg"):
            entry = night["channels"][kind]
            assert entry["unit"] == "uV" and entry["rate"] == 256.0 and 1 < entry["amplitude"] < 200
    fit = fit_model["meta"]["fit"]
    eeg = fit["channels"]["eeg"]
    train_ids = set(fit_model["meta"]["training"]["train_nights"])
    amps = [n["channels"]["eeg"]["amplitude"] for n in manifest["nights"] if n["id"] in train_ids]
    assert eeg["amplitude"]["median"] == pytest.approx(np.median(amps)) and eeg["amplitude"]["nights"] == len(amps)
    assert "C4-A1" in eeg["derivations"] and eeg["rates"] == [256.0] and eeg["units"] == ["uV"]
    assert set(fit["channels"]) == {"eeg", "eog"} and len(fit["spectra"]["validation_distances"]) == 1
    assert fit["spectra"]["night_rule"].startswith("1.2 x the largest of 5 training/validation nights")
    distances = fit["spectra"]["validation_distances"] + fit["spectra"]["training_distances"]
    assert fit["spectra"]["night_threshold"] == pytest.approx(1.2 * max(distances), rel=1e-3)


def _independent_distances(train, feats):
    """Nearest-stage Mahalanobis distances, computed here from the definition (shrunk tied covariance)."""
    x = np.concatenate([f for f, _ in train])
    y = np.concatenate([lab for _, lab in train])
    means = {s: x[y == s].mean(axis=0) for s in np.unique(y)}
    resid = np.stack([row - means[s] for row, s in zip(x, y)])
    cov = resid.T @ resid / (len(resid) - 1)
    cov = 0.9 * cov + 0.1 * np.diag(np.diag(cov))
    inv = np.linalg.inv(cov)
    return np.array([min(np.sqrt((f - m) @ inv @ (f - m)) for m in means.values()) for f in feats])


def test_night_threshold_is_the_99th_percentile_of_the_validation_nights() -> None:
    rng = np.random.default_rng(5)

    def night(n=80, shift=0.0):
        labels = rng.integers(0, 5, n)
        feats = rng.normal(size=(n, 6)) + labels[:, None] * np.linspace(0.5, 2, 6) + shift
        return feats, labels

    train = [night() for _ in range(6)]
    validation = [night(shift=rng.normal(scale=0.3)) for _ in range(30)]
    spectra = fit_spectra(train, validation)
    per_night = [np.median(_independent_distances(train, f)) for f, _ in validation]
    assert spectra["night_threshold"] == pytest.approx(np.percentile(per_night, 99), rel=1e-9)
    assert spectra["night_rule"] == "the 99th percentile of 30 validation nights"
    # about 1 % of the validation nights lie above it: here none of 30 (0.3 expected)
    assert sum(d > spectra["night_threshold"] for d in per_night) <= 1
    epochs = np.concatenate([_independent_distances(train, f) for f, _ in validation])
    assert epochs.size >= 1000
    assert spectra["epoch_threshold"] == pytest.approx(np.percentile(epochs, 99.9), rel=1e-9)

    few = fit_spectra(train, validation[:3])  # too few validation nights: the documented fallback
    pool = [np.median(_independent_distances(train, f)) for f, _ in train + validation[:3]]
    assert few["night_threshold"] == pytest.approx(fitsummary.FALLBACK_MARGIN * max(pool), rel=1e-9)
    assert "too few validation nights" in few["night_rule"]


def test_derivations_and_levels() -> None:
    assert derivation("EEG C4-CLE - EEG A1-CLE") == "C4-A1" == derivation("C4-M1") == derivation("EEG C3-A2")
    assert derivation("EEG Fpz-Cz") == "Fpz-Cz" and derivation("EEG Pz-Oz") == "Pz-Oz"
    assert derivation("EEG C4-LER") == "C4"
    assert derivation("EOG  Horizontal") == "eog horizontal"
    t = np.arange(100_000) / 256
    assert two_level_share(np.sign(np.sin(2 * np.pi * t))) == 1.0
    eeg = np.round(np.random.default_rng(0).normal(scale=30, size=t.size), 1)
    assert two_level_share(eeg) < 0.05
    assert two_level_share(np.zeros(1000)) is None  # flat: no changes to judge
