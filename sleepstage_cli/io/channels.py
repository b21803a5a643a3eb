"""Which signals of a file feed the network: channel kinds, presets, derivations, label matching.

A channel is asked for by kind (eeg, eog, emg) with one or more candidate expressions, tried in
order. An expression is a label (``EEG Fpz-Cz``) or a derivation ``A-B`` computed as the difference
of two signals (``EEG C4-CLE - EEG A1-CLE``). Labels match ignoring case, spaces and how a non-ASCII
letter is composed (``Ä`` typed as one character or as ``A`` + diaeresis); a hyphenated
expression is first tried as one label (Sleep-EDF's ``EEG Fpz-Cz`` is a single signal), then split
at a hyphen where both sides are labels of the file.
"""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.edf import EdfHeader, SignalInfo

KINDS: tuple[str, ...] = ("eeg", "eog", "emg")
"""Channel kinds in the order the network sees them."""

MIN_RATE = 100.0
"""Staging needs 0-50 Hz spectrograms at 100 Hz: no signal sampled slower can be used."""

PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # As the original MASS preprocessing: C4-A1 when A1 exists, else C3-A2, else plain C4-LER; EOG right - left;
    # EMG Chin1 - Chin2 or the single chin channel there is.
    "mass": {
        "eeg": ("EEG C4-CLE - EEG A1-CLE", "EEG C4-LER - EEG A1-LER", "EEG C3-CLE - EEG A2-CLE",
                "EEG C3-LER - EEG A2-LER", "EEG C4-LER"),
        "eog": ("EOG Right Horiz - EOG Left Horiz",),
        "emg": ("EMG Chin1 - EMG Chin2", "EMG Chin1 - EMG Chin3", "EMG Chin2 - EMG Chin3",
                "EMG Chin1", "EMG Chin2", "EMG Chin3"),
    },
    "sleep-edf": {
        "eeg": ("EEG Fpz-Cz",),
        "eog": ("EOG horizontal",),
        "emg": ("EMG submental",),
    },
}

PRESET_KINDS: dict[str, tuple[str, ...]] = {"sleep-edf": ("eeg", "eog")}
"""The kinds a preset uses when none are asked for (others: all three). Sleep-EDF's cassette (SC) nights
hold their chin EMG as a 1-Hz envelope, which staging cannot use; the telemetry (ST) nights' 100-Hz EMG
is there for ``--channels eeg,eog,emg``."""


def preset_note(preset: str | None, kinds: tuple[str, ...]) -> str | None:
    """The one line saying which kinds a preset's default leaves out, and how to include them (else None)."""
    if preset != "sleep-edf" or "emg" in kinds:
        return None
    return ("Sleep-EDF: EEG + EOG; EMG submental left out (a 1-Hz envelope in the SC nights, too slow for "
            "staging); --channels eeg,eog,emg includes it")


def _norm(label: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFC", label)).casefold()


@dataclass(frozen=True)
class ChannelSpec:
    """The channels a dataset or model uses: kinds in order, each with its candidate expressions."""

    kinds: tuple[str, ...]
    candidates: dict[str, tuple[str, ...]]
    preset: str | None = None

    def to_dict(self) -> dict:
        return {"kinds": list(self.kinds), "preset": self.preset,
                "candidates": {k: list(self.candidates[k]) for k in self.kinds}}

    @classmethod
    def from_dict(cls, data: dict) -> "ChannelSpec":
        kinds = tuple(data["kinds"])
        return cls(kinds=kinds, candidates={k: tuple(data["candidates"][k]) for k in kinds},
                   preset=data.get("preset"))

    def describe(self) -> str:
        return ", ".join(f"{k.upper()}: {' | '.join(self.candidates[k])}" for k in self.kinds)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"eeg,eog"`` -> ("eeg", "eog"), in the network's order; rejects unknown or repeated kinds."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"--channels takes a comma-separated list of {', '.join(KINDS)}; got {text!r}")
    if len(set(kinds)) != len(kinds):
        raise InputError(f"--channels lists a kind twice: {text!r}")
    return tuple(k for k in KINDS if k in kinds)


def read_channel_map(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a TOML or JSON mapping such as ``eeg = "C4-M1"`` / ``eog = ["E2-M1 - E1-M1", "EOG R-EOG L"]``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read channel map: {exc.strerror or exc}", path) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"channel map is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}",
                         path) from None
    if not isinstance(data, dict):
        raise InputError("channel map must map eeg/eog/emg to labels", path)
    out: dict[str, tuple[str, ...]] = {}
    for key, value in data.items():
        kind = str(key).lower()
        if kind not in KINDS:
            raise InputError(f"channel map has unknown kind {key!r} (use {', '.join(KINDS)})", path)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise InputError(f"channel map entry {key!r} must be a label or a list of labels", path)
        out[kind] = tuple(v.strip() for v in values)
    return out


def build_spec(kinds: tuple[str, ...] | None, preset: str | None,
               overrides: dict[str, tuple[str, ...]] | None = None) -> ChannelSpec:
    """Combine a preset with user overrides (command line or mapping file) into a ChannelSpec.

    Without ``kinds``, a preset gives its kinds (:data:`PRESET_KINDS`, else all three) and those the
    overrides name; overrides alone give the kinds they name.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v}
    base = PRESETS.get(preset, {}) if preset else {}
    if preset and preset not in PRESETS:
        raise InputError(f"unknown channel preset {preset!r} (known: {', '.join(PRESETS)})")
    if kinds is None:
        default = PRESET_KINDS.get(preset, KINDS) if base else ()
        kinds = tuple(k for k in KINDS if k in default or k in overrides)
    if not kinds:
        raise InputError("no channels given: name them with --eeg/--eog/--emg or --channel-map "
                         "(or use a dataset layout with a preset)")
    candidates: dict[str, tuple[str, ...]] = {}
    for kind in kinds:
        if kind in overrides:
            candidates[kind] = overrides[kind]
        elif kind in base:
            candidates[kind] = base[kind]
        else:
            raise InputError(f"no {kind.upper()} channel given: name it with --{kind} "
                             f"(e.g. --{kind} \"LABEL\" or a derivation \"A-B\") or leave it out of --channels")
    return ChannelSpec(kinds=tuple(kinds), candidates=candidates, preset=preset)


@dataclass(frozen=True)
class ResolvedChannel:
    """A channel kind bound to the signal(s) of one file: ``plus`` minus ``minus`` when a derivation."""

    kind: str
    plus: SignalInfo
    minus: SignalInfo | None

    @property
    def sampling_rate(self) -> float:
        return self.plus.sampling_rate

    @property
    def expression(self) -> str:
        return self.plus.label if self.minus is None else f"{self.plus.label} - {self.minus.label}"


def _lookup(header: EdfHeader, label_key: str) -> list[SignalInfo]:
    return [s for s in header.signals if _norm(s.label) == label_key]


def _unique(header: EdfHeader, found: list[SignalInfo]) -> SignalInfo:
    if len(found) > 1:
        where = ", ".join(str(s.index + 1) for s in found)
        raise InputError(f"channel label {found[0].label!r} appears {len(found)} times (signals {where}); "
                         "cannot tell which to use", header.path)
    return found[0]


def match_expression(header: EdfHeader, expression: str) -> tuple[SignalInfo, SignalInfo | None] | None:
    """Bind one expression to the file's signals, or None if its labels are not all there."""
    key = _norm(expression)
    whole = _lookup(header, key)
    if whole:
        return _unique(header, whole), None
    splits = []
    for pos in (m.start() for m in re.finditer("-", key)):
        left, right = _lookup(header, key[:pos]), _lookup(header, key[pos + 1:])
        if left and right:
            splits.append((left, right))
    if not splits:
        return None
    if len(splits) > 1:
        options = "; ".join(f"{a[0].label} - {b[0].label}" for a, b in splits)
        raise InputError(f"channel expression {expression!r} can be read several ways ({options}); "
                         "name a single label or write the derivation with spaces around its hyphen", header.path)
    left, right = splits[0]
    return _unique(header, left), _unique(header, right)


def available_labels(header: EdfHeader) -> str:
    """The file's signal labels with their rates, for error messages."""
    return ", ".join(f"{s.label} ({s.sampling_rate:g} Hz)" for s in header.signals) or "no signals"


def resolve_channels(header: EdfHeader, spec: ChannelSpec, check_rate: bool = True) -> list[ResolvedChannel]:
    """Bind every kind of ``spec`` to the file, checking derivations and sampling rates.

    Raises InputError naming the file and listing its labels when a channel is missing, and
    refusing a signal sampled below 100 Hz (suggesting an EEG+EOG spec for a slow EMG).
    """
    resolved = []
    for kind in spec.kinds:
        bound = None
        for expression in spec.candidates[kind]:
            bound = match_expression(header, expression)
            if bound is not None:
                break
        if bound is None:
            tried = " | ".join(repr(c) for c in spec.candidates[kind])
            raise InputError(f"{kind.upper()} channel {tried} not found; the file has: {available_labels(header)}",
                             header.path)
        plus, minus = bound
        if minus is not None and minus.sampling_rate != plus.sampling_rate:
            raise InputError(f"cannot derive {plus.label} - {minus.label}: they are sampled at "
                             f"{plus.sampling_rate:g} and {minus.sampling_rate:g} Hz", header.path)
        channel = ResolvedChannel(kind=kind, plus=plus, minus=minus)
        if check_rate and channel.sampling_rate < MIN_RATE:
            hint = ("use an EEG+EOG spec (--channels eeg,eog) and an EEG+EOG model" if kind == "emg"
                    else "this recording cannot be staged by a method whose spectrograms span 0-50 Hz")
            raise InputError(f"{kind.upper()} {channel.expression!r} is sampled at {channel.sampling_rate:g} Hz, "
                             f"below the {MIN_RATE:g} Hz staging needs; {hint}", header.path)
        resolved.append(channel)
    return resolved
