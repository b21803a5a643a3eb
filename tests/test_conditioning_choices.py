"""prepare's --standardise/--no-standardise and --filters sleepstage|original (issue 13): the released
filters against scipy.signal, the facts of their response, the manifest, the resume rule, and a model
carrying both choices to `score`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from conftest import assert_clean_error, run_cli
from scipy import signal as sps

from sleepstage_cli.conditioning.signals import (
    ORIGINAL_NUMTAPS,
    Conditioning,
    condition,
    design_filter,
    filter_reach,
    forward_backward,
)
from sleepstage_cli.data.dataset import PreparedDataset

ORIGINAL = Conditioning(filters="original")
RATE = 256.0
EDGES = {"eeg": [0.3, 40.0], "eog": [0.3, 40.0], "emg": [10.0, 49.0, 51.0, 59.0, 61.0]}
# MASS preset derivations of the simulated nights (DATASETS.md): label minus label.
DERIVATIONS = {"eeg": ("EEG C4-CLE", "EEG A1-CLE"), "eog": ("EOG Right Horiz", "EOG Left Horiz"),
               "emg": ("EMG Chin1", "EMG Chin2")}


def _db(gain: float) -> float:
    return 20.0 * np.log10(gain)


def _gain(taps: np.ndarray, f: float, rate: float = RATE) -> float:
    return float(np.abs(sps.freqz(taps, worN=[f], fs=rate)[1][0]))


def _released(kind: str, x: np.ndarray, rate: float = RATE) -> np.ndarray:
    """The released chain computed with scipy alone: fir1(100) at the native rate, filtfilt, then 100 Hz."""
    taps = sps.firwin(101, EDGES[kind], pass_zero=False, fs=rate)
    up, down = 25, 64  # 256 Hz -> 100 Hz
    return sps.resample_poly(sps.filtfilt(taps, 1.0, x), up, down)


# ---------------------------------------------------------------- the released filters


@pytest.mark.parametrize("kind", ["eeg", "eog", "emg"])
def test_original_taps_are_fir1_order_100(kind: str) -> None:
    taps = design_filter(kind, RATE, ORIGINAL)
    assert len(taps) == ORIGINAL_NUMTAPS == 101
    np.testing.assert_allclose(taps, sps.firwin(101, EDGES[kind], pass_zero=False, fs=RATE), atol=1e-15)
    # Our own design is another filter altogether (far longer).
    assert len(design_filter(kind, RATE)) > 500


def test_original_emg_at_100_hz_leaves_the_notches_to_the_resampler() -> None:
    np.testing.assert_allclose(design_filter("emg", 100.0, ORIGINAL),
                               sps.firwin(101, 10.0, pass_zero=False, fs=100.0), atol=1e-15)


@pytest.mark.parametrize("kind", ["eeg", "eog", "emg"])
def test_original_chain_matches_firwin_filtfilt_resample(kind: str) -> None:
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.normal(size=int(120 * RATE))) * 0.2 + rng.normal(scale=20.0, size=int(120 * RATE))
    ours = condition(x, RATE, kind, ORIGINAL)
    ref = _released(kind, x)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (12000,)
    core = slice(200, -200)  # the ends differ only by how each pads the signal
    np.testing.assert_allclose(ours[core], ref[core], atol=1e-4 * float(np.std(ref)))
    # The default filters give something else on the same signal.
    assert np.abs(condition(x, RATE, kind)[core] - ref[core]).max() > 0.05 * float(np.std(ref))


def test_original_response_facts_at_256_hz() -> None:
    """SPEC.md: 76 % passes at DC (forwards and backwards); the EMG notches are shallow."""
    band = design_filter("eeg", RATE, ORIGINAL)
    assert _gain(band, 0.0) ** 2 == pytest.approx(0.76, abs=0.01)  # filtfilt squares the response
    assert _gain(band, 0.3) ** 2 > 0.75  # the 0.3 Hz edge is not where the band starts
    assert _gain(band, 10.0) ** 2 == pytest.approx(1.0, abs=0.01)
    assert _gain(band, 40.0) ** 2 == pytest.approx(0.25, abs=0.01)  # -6 dB per pass at the edge
    emg = design_filter("emg", RATE, ORIGINAL)
    for f in (50.0, 60.0):
        assert _db(_gain(emg, f)) == pytest.approx(-4.5, abs=0.2)  # per pass
        assert _db(_gain(emg, f) ** 2) == pytest.approx(-9.0, abs=0.4)  # forwards and backwards
    assert _gain(emg, 10.0) ** 2 == pytest.approx(0.25, abs=0.01)
    assert _gain(emg, 30.0) ** 2 == pytest.approx(1.0, abs=0.01)
    # Our own filters: DC removed, notches deep.
    assert _gain(design_filter("eeg", RATE), 0.0) < 0.01
    assert _db(_gain(design_filter("emg", RATE), 50.0)) < -30


def test_original_response_measured_on_signals() -> None:
    t = np.arange(0, 60, 1 / RATE)
    mid = slice(len(t) // 4, 3 * len(t) // 4)
    hum = 100.0 * np.sin(2 * np.pi * 50.0 * t)
    y = forward_backward(hum, design_filter("emg", RATE, ORIGINAL))
    assert _db(float(np.abs(y[mid]).max()) / 100.0) == pytest.approx(-9.0, abs=0.4)
    # A 200 µV offset under alpha keeps 76 % of itself through the whole chain (filtered, resampled).
    x = 200.0 + 30.0 * np.sin(2 * np.pi * 10.0 * t)
    out = condition(x, RATE, "eeg", ORIGINAL)[500:-500]
    assert float(out.mean()) == pytest.approx(0.76 * 200.0, abs=2.0)
    assert abs(float(condition(x, RATE, "eeg")[1000:-1000].mean())) < 1.0


@pytest.mark.parametrize("kind", ["eeg", "emg"])
def test_original_filter_reach(kind: str) -> None:
    """filter_reach spans what one sample moves: filtfilt doubles the FIR's half length, plus the resampler."""
    reach = filter_reach(kind, RATE, ORIGINAL)
    assert reach == pytest.approx(100 / RATE + 10 / 100.0)
    x = np.zeros(int(60 * RATE))
    x[len(x) // 2] = 1e4
    y = condition(x, RATE, kind, ORIGINAL)
    touched = np.flatnonzero(np.abs(y) > 1e-6 * np.abs(y).max())
    centre = len(x) // 2 * 100.0 / RATE
    extent = max(centre - touched[0], touched[-1] - centre) / 100.0
    assert 0.6 * reach < extent <= reach  # the far tails are products of small window tails


# ---------------------------------------------------------------- older settings


def test_old_style_conditioning_dict_loads_as_before() -> None:
    old = {"band": [0.3, 40.0], "band_transition": 0.3, "emg_highpass": 10.0, "notches": [50.0, 60.0],
           "notch_width": 2.0, "emg_transition": 1.0, "rate": 100.0}  # as sleepstage wrote it before issue 13
    cond = Conditioning.from_dict(old)
    assert cond == Conditioning()
    assert cond.standardise is True and cond.filters == "sleepstage"
    assert Conditioning.from_dict(json.loads(json.dumps(ORIGINAL.to_dict()))) == ORIGINAL
    with pytest.raises(ValueError, match="filters"):
        Conditioning.from_dict({**old, "filters": "matlab"})


# ---------------------------------------------------------------- prepare, train, score


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Two simulated half-hour MASS nights, prepared three ways."""
    root = tmp_path_factory.mktemp("choices")
    sim = root / "sim"
    proc = run_cli("simulate", sim, "--nights", "2", "--hours", "0.5", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    out = {"sim": sim}
    for name, extra in (("default", ()), ("raw", ("--no-standardise",)),
                        ("paper", ("--no-standardise", "--filters", "original"))):
        out[name] = root / name
        proc = run_cli("prepare", sim, "-o", out[name], "--min-hours", "0", "-j", "1", *extra)
        assert proc.returncode == 0, proc.stderr
    return out


def _derived(psg: Path) -> dict[str, np.ndarray]:
    """The simulated night's derivations in the EDF's own physical units (µV), read by pyedflib."""
    with pyedflib.EdfReader(str(psg)) as f:
        labels = f.getSignalLabels()
        assert all(f.getPhysicalDimension(i) == "uV" for i in range(len(labels)))
        read = {lab: f.readSignal(i) for i, lab in enumerate(labels)}
    return {kind: read[a] - read[b] for kind, (a, b) in DERIVATIONS.items()}


def test_manifest_records_both_choices(prepared) -> None:
    for name, standardise, filters in (("default", True, "sleepstage"), ("raw", False, "sleepstage"),
                                       ("paper", False, "original")):
        manifest = json.loads((prepared[name] / "manifest.json").read_text())
        assert manifest["conditioning"]["standardise"] is standardise
        assert manifest["conditioning"]["filters"] == filters
        cond = PreparedDataset(prepared[name]).conditioning  # what the trainer reads
        assert (cond.standardise, cond.filters) == (standardise, filters)


def test_default_gives_unit_variance_no_standardise_microvolts(prepared) -> None:
    default, raw = PreparedDataset(prepared["default"]), PreparedDataset(prepared["raw"])
    for night in default.nights:
        z = np.asarray(default.open(night)["x"], dtype=np.float64)
        u = np.asarray(raw.open(night.id)["x"], dtype=np.float64)
        assert z.shape == u.shape
        derived = _derived(prepared["sim"] / f"{night.id} PSG.edf")
        for c, kind in enumerate(default.channels):
            assert float(z[:, c].std()) == pytest.approx(1.0, abs=0.1)
            assert abs(float(z[:, c].mean())) < 0.05
            # The same conditioning but for the scale: an affine map per night and channel...
            scale, shift = np.polyfit(z[:, c].ravel(), u[:, c].ravel(), 1)
            np.testing.assert_allclose(u[:, c], scale * z[:, c] + shift, atol=1e-4 * scale)
            # ... whose scale is the channel's amplitude in the EDF's units (band-passed by scipy alone).
            band = [10.0, 45.0] if kind == "emg" else [0.3, 40.0]  # EMG: above 10 Hz, below the hum and 50 Hz
            sos = sps.butter(4, band, "bandpass", fs=RATE, output="sos")
            amplitude = float(np.std(sps.sosfiltfilt(sos, derived[kind])))
            assert scale == pytest.approx(amplitude, rel=0.15), kind
            assert scale > 3.0  # microvolts, not unit variance


def test_no_standardise_original_filters_match_the_edf_through_scipy(prepared) -> None:
    ds = PreparedDataset(prepared["paper"])
    for night in ds.nights:
        rec = ds.open(night)
        derived = _derived(prepared["sim"] / f"{night.id} PSG.edf")
        scored = np.flatnonzero(np.asarray(rec["label"]) >= 0)  # masked epochs hold filled samples
        starts = np.round(np.asarray(rec["onset"])[scored] * 100).astype(int)
        for c, kind in enumerate(ds.channels):
            ref = _released(kind, derived[kind])
            got = np.asarray(rec["x"][scored, c], dtype=np.float64)
            want = np.stack([ref[s:s + 3000] for s in starts])
            np.testing.assert_allclose(got, want, atol=1e-3 * float(np.std(want)), err_msg=kind)


def test_resume_refuses_a_changed_choice(prepared, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(prepared["paper"], data)
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--min-hours", "0", "--no-standardise")
    assert_clean_error(proc, "other options", "filters original -> sleepstage", "--force")
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--min-hours", "0", "--filters", "original")
    assert_clean_error(proc, "other options", "standardise off -> on")
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--min-hours", "0", "--no-standardise", "--filters",
                   "ORIGINAL")
    assert proc.returncode == 0 and "2 night(s) already prepared" in proc.stderr + proc.stdout, proc.stderr
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--min-hours", "0", "--force")
    assert proc.returncode == 0, proc.stderr
    assert PreparedDataset(data).conditioning == Conditioning()
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--filters", "matlab")
    assert proc.returncode == 2 and "--filters" in proc.stderr and "sleepstage or original" in proc.stderr


def test_dataset_of_an_older_version_resumes_and_reads_as_standardised(prepared, tmp_path: Path) -> None:
    data = tmp_path / "old"
    shutil.copytree(prepared["default"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    for key in ("standardise", "filters"):
        del manifest["conditioning"][key]
    (data / "manifest.json").write_text(json.dumps(manifest))
    identity = PreparedDataset(data).identity()
    assert PreparedDataset(data).conditioning == Conditioning()
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--min-hours", "0")
    assert proc.returncode == 0 and "2 night(s) already prepared" in proc.stderr + proc.stdout, proc.stderr
    assert PreparedDataset(data).identity() == identity  # resumed as it was, not rewritten
    proc = run_cli("prepare", prepared["sim"], "-o", data, "--min-hours", "0", "--no-standardise")
    assert_clean_error(proc, "other options", "standardise on -> off")


def test_model_carries_the_choices_and_score_repeats_them(prepared, tmp_path: Path) -> None:
    import torch

    from sleepstage_cli.cli.commands.score import _model_inputs
    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.model.modelmeta import peek_metadata
    from sleepstage_cli.scoring.pipeline import read_night

    model = tmp_path / "m.pt"
    proc = run_cli("train", prepared["paper"], "-o", model, "--epochs", "1", "--max-steps", "2", "--seq-len", "5",
                   "--batch-size", "8", "--val-fraction", "0")
    assert proc.returncode == 0, proc.stderr
    recorded = peek_metadata(model)["conditioning"]
    assert (recorded["standardise"], recorded["filters"]) == (False, "original")
    assert load_model(model).conditioning == PreparedDataset(prepared["paper"]).conditioning

    ds = PreparedDataset(prepared["paper"])
    night = ds.nights[0]
    psg = prepared["sim"] / f"{night.id} PSG.edf"
    spec, cond, _ = _model_inputs(model, {})  # what `score` conditions a recording with
    read = read_night(psg, spec, cond, night.id, epochs_from=prepared["sim"] / f"{night.id} Base.edf")
    rec = ds.open(night)
    np.testing.assert_allclose(read.onsets, rec["onset"])
    np.testing.assert_allclose(read.x, rec["x"], atol=1e-4)  # microvolts, original filters: as prepared
    assert float(np.std(read.x[:, 0])) > 3.0  # not standardised
    proc = run_cli("score", psg, "-o", tmp_path / "scored.csv", "--model", model)
    assert proc.returncode == 0, proc.stderr

    # A model file written before the choices existed scores as it always did: standardised.
    payload = torch.load(model, weights_only=True)
    payload["conditioning"] = {k: v for k, v in payload["conditioning"].items()
                               if k not in ("standardise", "filters")}
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    _, cond, _ = _model_inputs(old, {})
    assert cond == Conditioning()
    x = read_night(psg, spec, cond, night.id).x
    assert float(np.std(x[:, 0])) == pytest.approx(1.0, abs=0.1)
