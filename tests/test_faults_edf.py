"""Reading EDF signals right (issue 11, items 6, 8, 9, 12): EDF+D gaps, odd scaling fields, UTF-8 labels,
sampling rates that are not a ratio of small integers to 100 Hz.

Every input is built here: written with pyedflib, then header or record bytes patched where pyedflib cannot
write what real files hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli, write_edf

from sleepstage_cli.conditioning.signals import Conditioning, resample, standardise
from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.errors import InputError
from sleepstage_cli.io.channels import build_spec, resolve_channels
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.scoring.pipeline import read_night

STAGES = ("W", "N1", "N2", "N3", "REM")


def set_field(path: Path, offset: int, width: int, value: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + width] = value.ljust(width)
    path.write_bytes(bytes(raw))
    return path


def set_signal_field(path: Path, column: int, width: int, index: int, value: bytes) -> Path:
    """Rewrite one per-signal header field (``column``: 0 label, 104 pmin, 112 pmax, 120 dmin, 128 dmax)."""
    ns = int(path.read_bytes()[252:256])
    return set_field(path, 256 + column * ns + index * width, width, value)


def write_table(path: Path, n_epochs: int) -> Path:
    rows = "".join(f"{30 * i},30,{STAGES[(i // 3) % 5]}\n" for i in range(n_epochs))
    path.write_text("onset,duration,stage\n" + rows, encoding="utf-8")
    return path


def sine(freq: float, amplitude: float, seconds: float, rate: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return amplitude * np.sin(2 * np.pi * freq * t) + noise


def dominant_frequency(x: np.ndarray, rate: float = 100.0) -> float:
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spectrum)])


def digital_samples(path: Path, signal_index: int) -> np.ndarray:
    """The raw 16-bit samples of one signal, decoded here independently of the reader under test."""
    header = read_header(path)
    record = sum(header.record_samples)
    data = np.frombuffer(path.read_bytes()[header.header_bytes:], dtype="<i2").reshape(header.n_records, record)
    start = sum(header.record_samples[:signal_index])
    return data[:, start:start + header.record_samples[signal_index]].ravel().astype(np.float64)


# --------------------------------------------------------------------------- item 6: EDF+D

SEGMENT = 300.0  # seconds of signal on each side of the gap
GAP = 600.0  # seconds without any data record


def write_edf_d(path: Path) -> Path:
    """A 100-Hz EDF+D night: 300 s of a 5-Hz sine, a 600-s gap, 300 s of a 3x larger 11-Hz sine.

    pyedflib cannot write EDF+D: the file is written as EDF+C with 1-s records, then marked EDF+D and
    the time-keeping annotation ("+onset\\x14\\x14\\x00") of every record after the gap moved on by GAP.
    """
    eeg = np.concatenate([sine(5.0, 20.0, SEGMENT, 100), sine(11.0, 60.0, SEGMENT, 100, seed=1)])
    write_edf(path, {"EEG": (eeg, 100.0)})
    header = read_header(path)
    assert header.record_duration == 1.0 and header.annotation_indices == (1,)
    raw = bytearray(path.read_bytes())
    raw[192:197] = b"EDF+D"
    record_bytes = sum(header.record_samples) * 2
    tal_start = header.header_bytes + header.record_samples[0] * 2
    tal_length = header.record_samples[1] * 2
    for r in range(int(SEGMENT), header.n_records):
        pos = tal_start + r * record_bytes
        raw[pos:pos + tal_length] = f"+{r + GAP:g}\x14\x14\x00".encode().ljust(tal_length, b"\x00")
    path.write_bytes(bytes(raw))
    return path


def test_edf_d_prepare_keeps_the_epochs_after_a_gap_on_the_time_line_score_uses(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    edf = write_edf_d(src / "night.edf")
    n_epochs = int((2 * SEGMENT + GAP) // 30)  # 40: the hypnogram spans both segments and the gap
    write_table(src / "night.csv", n_epochs)
    header = read_header(edf)
    assert header.is_discontinuous and header.n_records == 2 * SEGMENT
    assert header.duration == 2 * SEGMENT + GAP  # to the end of the last record, not records x duration

    out = tmp_path / "data"
    proc = run_cli("prepare", src, "-o", out, "--eeg", "EEG", "--min-hours", "0", "-j", "1")
    assert proc.returncode == 0, proc.stderr
    assert "runs past the signal" not in proc.stderr
    rec = PreparedDataset(out).open("night")
    np.testing.assert_array_equal(rec["onset"], 30.0 * np.arange(n_epochs))
    labels = rec["label"]
    first_after = int((SEGMENT + GAP) // 30)  # epoch 30 starts where the second segment does
    # Scored on both sides; the gap, and the epoch each side its filter reaches into, are kept unscored.
    assert (labels[:first_after - 21] >= 0).all() and (labels[first_after + 1:] >= 0).all()
    assert (labels[first_after - 21:first_after + 1] == -1).all()
    before, after = rec["x"][5, 0], rec["x"][35, 0]
    assert dominant_frequency(before) == pytest.approx(5.0, abs=0.1)
    assert dominant_frequency(after) == pytest.approx(11.0, abs=0.1)
    assert after.std() / before.std() == pytest.approx(3.0, rel=0.1)
    assert np.abs(rec["x"][15, 0]).max() == 0  # inside the gap: no signal

    night = read_night(edf, build_spec(None, None, {"eeg": ("EEG",)}), Conditioning(), "night")
    np.testing.assert_array_equal(night.onsets, rec["onset"])
    np.testing.assert_allclose(night.x[first_after:], rec["x"][first_after:], atol=1e-6)
    assert (night.missing[first_after - 19:first_after - 1] == 1).all()  # epochs wholly inside the gap


def test_edf_d_first_record_must_start_at_or_after_the_file_start(tmp_path: Path) -> None:
    edf = write_edf_d(tmp_path / "night.edf")
    header = read_header(edf)
    pos = header.header_bytes + header.record_samples[0] * 2
    set_field(edf, pos, 12, b"-5\x14\x14\x00")
    with pytest.raises(InputError, match="data record 1 starts -5 s") as err:
        _ = read_header(edf).duration
    assert str(edf) in str(err.value)


# --------------------------------------------------------------------------- item 8: scaling fields

def scaled_night(folder: Path, name: str = "n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    signals = {"EEG": (sine(7.0, 80.0, 120, 100), 100.0), "EOG": (sine(2.0, 40.0, 120, 100, seed=2), 100.0)}
    write_table(folder / f"{name}.csv", 4)
    return write_edf(folder / f"{name}.edf", signals, plus=False)


def test_digital_minimum_above_maximum_is_not_inverted_and_warned_once(tmp_path: Path) -> None:
    edf = scaled_night(tmp_path / "in")
    set_signal_field(edf, 120, 8, 0, b"32767")
    set_signal_field(edf, 128, 8, 0, b"-32768")
    expected = -1000.0 + (digital_samples(edf, 0) + 32768) * 2000.0 / 65535  # the swapped fields, un-swapped
    original = sine(7.0, 80.0, 120, 100)
    header = read_header(edf)
    with EdfReader(edf, header) as reader:
        x = reader.read(header.signals[0])
        again = reader.read(header.signals[0])
        warnings = list(reader.warnings)
    np.testing.assert_allclose(x, expected, atol=1e-3)
    np.testing.assert_array_equal(x, again)
    assert np.corrcoef(x, original)[0, 1] > 0.99  # the signal, not its negative
    assert len(warnings) == 1 and "n.edf" in warnings[0] and "'EEG'" in warnings[0]

    # Through the command: read twice (as EEG and inside the EOG derivation), warned once.
    proc = run_cli("prepare", tmp_path / "in", "-o", tmp_path / "data", "--eeg", "EEG", "--eog", "EOG - EEG",
                   "--min-hours", "0", "-j", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "digital minimum" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "n.edf" in lines[0] and "'EEG'" in lines[0]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert sum("digital minimum" in w for w in manifest["nights"][0]["warnings"]) == 1


def test_both_pairs_reversed_read_as_the_positive_scale_they_describe(tmp_path: Path) -> None:
    edf = scaled_night(tmp_path)
    header = read_header(edf)
    with EdfReader(edf, header) as reader:
        plain = reader.read(header.signals[0])
    set_signal_field(edf, 104, 8, 0, b"1000")
    set_signal_field(edf, 112, 8, 0, b"-1000")
    set_signal_field(edf, 120, 8, 0, b"32767")
    set_signal_field(edf, 128, 8, 0, b"-32768")
    header = read_header(edf)
    with EdfReader(edf, header) as reader:
        x = reader.read(header.signals[0])
        warnings = list(reader.warnings)
    np.testing.assert_allclose(x, plain, atol=1e-3)
    assert len(warnings) == 1 and "n.edf" in warnings[0] and "'EEG'" in warnings[0]


def test_physical_minimum_equal_to_maximum_is_refused_naming_file_and_channel(tmp_path: Path) -> None:
    edf = scaled_night(tmp_path / "in")
    set_signal_field(edf, 104, 8, 0, b"1000")
    set_signal_field(edf, 112, 8, 0, b"1000")
    header = read_header(edf)
    with EdfReader(edf, header) as reader, pytest.raises(InputError, match="equal physical minimum and maximum"):
        reader.read(header.signals[0])
    with EdfReader(edf, header) as reader:
        assert reader.read(header.signals[1]).std() > 10  # the other channel is unaffected

    proc = run_cli("prepare", tmp_path / "in", "-o", tmp_path / "data", "--eeg", "EEG", "--min-hours", "0")
    assert_clean_error(proc, "n.edf", "'EEG'", "equal physical minimum and maximum")
    assert not list((tmp_path / "data").glob("nights/*.npy"))


# --------------------------------------------------------------------------- item 9: UTF-8 labels

@pytest.mark.parametrize("raw_label", ["EEG C4-Ä".encode("utf-8"), "EEG C4-Ä".encode("latin-1")],
                         ids=["utf-8", "latin-1"])
def test_non_ascii_label_is_decoded_listed_and_matched(tmp_path: Path, raw_label: bytes) -> None:
    edf = scaled_night(tmp_path / "in")
    set_signal_field(edf, 0, 16, 0, raw_label)
    assert read_header(edf).labels == ["EEG C4-Ä", "EOG"]

    listing = run_cli("prepare", "--list-channels", edf)
    assert listing.returncode == 0, listing.stderr
    assert "EEG C4-Ä" in listing.stdout and "Ã" not in listing.stdout

    # Typed composed, decomposed (A + combining diaeresis) or in another case, the label matches.
    for typed in ("EEG C4-Ä", "eeg c4-a\u0308"):
        spec = build_spec(None, None, {"eeg": (typed,)})
        assert resolve_channels(read_header(edf), spec)[0].expression == "EEG C4-Ä"
    out = tmp_path / "data"
    proc = run_cli("prepare", tmp_path / "in", "-o", out, "--eeg", "EEG C4-Ä", "--eog", "EOG - EEG C4-Ä",
                   "--min-hours", "0")
    assert proc.returncode == 0, proc.stderr
    channels = json.loads((out / "manifest.json").read_text())["nights"][0]["channels"]
    assert channels["eeg"]["expression"] == "EEG C4-Ä" and channels["eog"]["expression"] == "EOG - EEG C4-Ä"
    assert PreparedDataset(out).open("n")["x"].shape == (4, 2, 3000)


def test_preset_still_matches_beside_a_utf8_label(tmp_path: Path) -> None:
    edf = write_edf(tmp_path / "p.edf", {"EEG Fpz-Cz": (sine(7.0, 50, 60, 100), 100.0),
                                         "EOG horizontal": (sine(2.0, 50, 60, 100), 100.0),
                                         "Temp": (sine(0.1, 50, 60, 100), 100.0)})
    set_signal_field(edf, 96, 8, 2, "°C".encode("utf-8"))
    set_signal_field(edf, 0, 16, 2, "Temp rectal °".encode("utf-8"))
    header = read_header(edf)
    assert header.signals[2].label == "Temp rectal °" and header.signals[2].unit == "°C"
    eeg, eog = resolve_channels(header, build_spec(("eeg", "eog"), "sleep-edf"))
    assert (eeg.expression, eog.expression) == ("EEG Fpz-Cz", "EOG horizontal")


# --------------------------------------------------------------------------- item 12: drifting clocks

@pytest.mark.parametrize("rate", [199.99, 255.5, 200 / 1.00005])
def test_resampling_any_rate_matches_the_analytic_sine_and_scipy(rate: float) -> None:
    from fractions import Fraction

    import scipy.signal as sps

    t = np.arange(int(300 * rate)) / rate
    x = np.sin(2 * np.pi * 7.3 * t + 0.4) + 0.5 * np.sin(2 * np.pi * 31.0 * t)
    y = resample(x, rate)
    assert y.size == int(np.ceil(x.size * 100 / rate - 1e-9))
    tt = np.arange(y.size) / 100.0
    expected = np.sin(2 * np.pi * 7.3 * tt + 0.4) + 0.5 * np.sin(2 * np.pi * 31.0 * tt)
    inner = slice(200, -200)  # away from the padded ends
    np.testing.assert_allclose(y[inner], expected[inner], atol=3e-3)
    ratio = Fraction(100 / rate).limit_denominator(100000)
    ref = sps.resample_poly(x, ratio.numerator, ratio.denominator)
    np.testing.assert_allclose(y[inner], ref[:y.size][inner], atol=2e-3)
    assert resample(x.astype(np.float32), rate).dtype == np.float32


def drifting_night(folder: Path, rate_name: str) -> Path:
    """A 4-epoch night sampled at 199.99 Hz (200 samples per 1.00005-s record) or 255.5 Hz (511 per 2 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    if rate_name == "199.99":
        rate, written, duration = 200 / 1.00005, 200.0, b"1.00005"
    else:
        rate, written, duration = 255.5, 255.5, b"2"
    signals = {"EEG": (sine(7.0, 60.0, 120, rate), written), "EMG": (sine(25.0, 20.0, 120, rate, seed=3), written)}
    edf = write_edf(folder / "n.edf", signals, plus=False)
    set_field(edf, 244, 8, duration)
    write_table(folder / "n.csv", 4)
    assert read_header(edf).signals[0].sampling_rate == pytest.approx(rate, rel=1e-12)
    return edf


@pytest.mark.parametrize("rate_name", ["199.99", "255.5"])
def test_prepare_and_score_read_a_drifting_clock_rate(tmp_path: Path, rate_name: str) -> None:
    edf = drifting_night(tmp_path / "in", rate_name)
    out = tmp_path / "data"
    proc = run_cli("prepare", tmp_path / "in", "-o", out, "--eeg", "EEG", "--emg", "EMG", "--min-hours", "0")
    assert proc.returncode == 0, proc.stderr
    rec = PreparedDataset(out).open("n")
    assert rec["x"].shape == (4, 2, 3000) and (rec["label"] >= 0).all()
    assert dominant_frequency(rec["x"][1, 0]) == pytest.approx(7.0, abs=0.1)
    assert dominant_frequency(rec["x"][1, 1]) == pytest.approx(25.0, abs=0.1)

    night = read_night(edf, build_spec(None, None, {"eeg": ("EEG",), "emg": ("EMG",)}), Conditioning(), "n")
    np.testing.assert_array_equal(night.onsets, rec["onset"])
    np.testing.assert_allclose(night.x, rec["x"], atol=1e-6)


def test_signal_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="night.edf: EEG is flat"):
        standardise(np.zeros(100), "EEG", tmp_path / "night.edf")
