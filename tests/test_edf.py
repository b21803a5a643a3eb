"""EDF header validation, unit handling, channel selection and derivations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_edf

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.channels import (
    ChannelSpec,
    build_spec,
    match_expression,
    parse_kinds,
    read_channel_map,
    resolve_channels,
)
from sleepstage_cli.io.edf import EdfReader, read_header, unit_to_microvolts


@pytest.fixture
def psg(tmp_path: Path) -> Path:
    t = np.arange(0, 60, 1 / 256)
    return write_edf(tmp_path / "night.edf", {
        "EEG C4-CLE": (40 * np.sin(2 * np.pi * 10 * t) + 30 * np.sin(2 * np.pi * 60 * t), 256),
        "EEG A1-CLE": (30 * np.sin(2 * np.pi * 60 * t), 256),
        "EOG Right Horiz": (50 * np.sin(2 * np.pi * 0.5 * t), 256),
        "EOG Left Horiz": (-50 * np.sin(2 * np.pi * 0.5 * t), 256),
        "EMG Chin1": (np.random.default_rng(0).normal(0, 10, t.size), 256),
        "Resp": (np.zeros(60 * 8), 8),
    })


def test_header_fields(psg: Path) -> None:
    h = read_header(psg)
    assert h.kind == "EDF" and h.variant == "EDF+C"
    assert h.labels == ["EEG C4-CLE", "EEG A1-CLE", "EOG Right Horiz", "EOG Left Horiz", "EMG Chin1", "Resp"]
    assert h.duration == pytest.approx(60.0)
    assert [s.sampling_rate for s in h.signals] == [256] * 5 + [8]
    assert h.annotation_indices == (6,)


def test_derivation_is_the_difference(psg: Path) -> None:
    h = read_header(psg)
    spec = build_spec(("eeg", "eog"), "mass")
    eeg, eog = resolve_channels(h, spec, check_rate=False)
    assert eeg.expression == "EEG C4-CLE - EEG A1-CLE"
    with EdfReader(psg, h) as r:
        derived = r.read(eeg.plus) - r.read(eeg.minus)
        t = np.arange(0, 60, 1 / 256)
        # The common 60 Hz cancels; what is left is the 10 Hz, 40 µV sine (to 16-bit quantisation).
        np.testing.assert_allclose(derived, 40 * np.sin(2 * np.pi * 10 * t), atol=0.1)
        right, left = r.read(eog.plus), r.read(eog.minus)
        np.testing.assert_allclose(right - left, 100 * np.sin(2 * np.pi * 0.5 * t), atol=0.1)


@pytest.mark.parametrize("expression, plus, minus", [
    ("eeg c4-cle", "EEG C4-CLE", None),                     # case and spaces ignored
    ("EEGC4-CLE-EEGA1-CLE", "EEG C4-CLE", "EEG A1-CLE"),  # split where both sides are labels
    ("EOG Right Horiz-EOG Left Horiz", "EOG Right Horiz", "EOG Left Horiz"),
    ("  EOG  right horiz  -  eog left horiz ", "EOG Right Horiz", "EOG Left Horiz"),
])
def test_expression_matching(psg: Path, expression: str, plus: str, minus: str | None) -> None:
    bound = match_expression(read_header(psg), expression)
    assert bound is not None
    assert bound[0].label == plus
    assert (bound[1].label if bound[1] else None) == minus


def test_missing_channel_lists_labels(psg: Path) -> None:
    spec = build_spec(("eeg",), None, {"eeg": ("EEG C3-A2",)})
    with pytest.raises(InputError) as exc:
        resolve_channels(read_header(psg), spec)
    msg = str(exc.value)
    assert str(psg) in msg and "'EEG C3-A2' not found" in msg
    assert "EEG C4-CLE (256 Hz)" in msg and "Resp (8 Hz)" in msg
    assert "\n" not in msg


def test_rate_below_100_refused_with_hint(psg: Path) -> None:
    spec = build_spec(("eeg", "emg"), None, {"eeg": ("EEG C4-CLE",), "emg": ("Resp",)})
    with pytest.raises(InputError, match=r"EMG 'Resp' is sampled at 8 Hz, below the 100 Hz.*--channels eeg,eog"):
        resolve_channels(read_header(psg), spec)


def test_duplicate_label_is_refused(tmp_path: Path) -> None:
    x = np.zeros(256 * 10)
    x[::2] = 1
    # pyedflib refuses duplicate labels, so write distinct ones and patch the header bytes.
    path = write_edf(tmp_path / "dup.edf", {"EEG C3": (x, 256), "EEG C4": (x, 256)})
    raw = bytearray(path.read_bytes())
    ns = int(raw[252:256])
    start = 256 + 16  # second label
    raw[start:start + 16] = b"EEG C3".ljust(16)
    path.write_bytes(bytes(raw))
    assert ns == 3
    with pytest.raises(InputError, match="'EEG C3' appears 2 times"):
        resolve_channels(read_header(path), build_spec(("eeg",), None, {"eeg": ("EEG C3",)}))


@pytest.mark.parametrize("unit, factor", [("uV", 1), ("UV", 1), ("µV", 1), ("μV", 1), ("mV", 1e3), ("V", 1e6),
                                          ("nV", 1e-3), ("degC", None), ("", None)])
def test_unit_factors(unit: str, factor: float | None) -> None:
    assert unit_to_microvolts(unit) == factor


def test_millivolt_file_read_in_microvolts(tmp_path: Path) -> None:
    t = np.arange(0, 10, 1 / 200)
    path = write_edf(tmp_path / "mv.edf", {"EEG": (0.05 * np.sin(2 * np.pi * 3 * t), 200)}, unit="mV", prange=1.0)
    h = read_header(path)
    with EdfReader(path, h) as r:
        x = r.read(h.signals[0])
    assert x.std() == pytest.approx(50 / np.sqrt(2), rel=1e-3)  # 0.05 mV sine = 50 µV amplitude


# ---------------------------------------------------------------- broken files

def test_not_an_edf(tmp_path: Path) -> None:
    p = tmp_path / "notes.edf"
    p.write_text("this is a text file, not a recording" * 20)
    with pytest.raises(InputError, match="not an EDF/BDF file"):
        read_header(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.edf"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        read_header(p)


def test_folder_given_as_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        read_header(tmp_path)


def test_truncated_edf(psg: Path) -> None:
    data = psg.read_bytes()
    psg.write_bytes(data[: len(data) - 5000])
    with pytest.raises(InputError, match=r"truncated EDF: the header declares 60 data records"):
        read_header(psg)


def test_header_cut_inside(psg: Path) -> None:
    psg.write_bytes(psg.read_bytes()[:700])
    with pytest.raises(InputError, match="ends inside its header"):
        read_header(psg)


def test_corrupted_number_field(psg: Path) -> None:
    raw = bytearray(psg.read_bytes())
    raw[236:244] = b"lots    "
    psg.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="number of data records is 'lots'"):
        read_header(psg)


# ---------------------------------------------------------------- specs

def test_parse_kinds_orders_and_validates() -> None:
    assert parse_kinds("emg, eeg") == ("eeg", "emg")
    with pytest.raises(InputError):
        parse_kinds("eeg,ecg")
    with pytest.raises(InputError):
        parse_kinds("eeg,eeg")


def test_generic_spec_needs_names() -> None:
    with pytest.raises(InputError, match="no channels given"):
        build_spec(None, None, {})
    spec = build_spec(None, None, {"eeg": ("C4-M1",), "emg": ("Chin",)})
    assert spec.kinds == ("eeg", "emg")
    assert ChannelSpec.from_dict(spec.to_dict()) == spec


def test_channel_map_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "map.toml"
    toml.write_text('eeg = "C4-M1"\neog = ["E2-M1 - E1-M1", "ROC-LOC"]\n')
    assert read_channel_map(toml) == {"eeg": ("C4-M1",), "eog": ("E2-M1 - E1-M1", "ROC-LOC")}
    js = tmp_path / "map.json"
    js.write_text('{"EMG": "Chin1-Chin2"}')
    assert read_channel_map(js) == {"emg": ("Chin1-Chin2",)}
    bad = tmp_path / "bad.toml"
    bad.write_text('ecg = "II"\n')
    with pytest.raises(InputError, match="unknown kind 'ecg'"):
        read_channel_map(bad)
