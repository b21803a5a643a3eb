"""Channels of each dataset layout as recipes over the night's sources, and their rendering.

A referential channel (``EEG C4-CLE``) is its electrode's brain signal minus the reference's,
plus the common mode the reference brings (mains, drift): a derivation of two such channels
(C4-CLE minus A1-CLE) cancels the common mode and is cleaner than either. Every electrode adds
its own white noise, a small mains residue (impedance mismatch) and its own view of movements.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sleepstage_cli.simulate.edfwrite import SignalOut, digitise
from sleepstage_cli.simulate.noise import add_shifted
from sleepstage_cli.simulate.signals import BRAIN_COMPONENTS, SITES, SourceBank

Terms = tuple[tuple[str, float], ...]

# Physical ranges, µV (or the channel's unit), per channel type.
RANGES: dict[str, tuple[str, float, float]] = {
    "eeg": ("uV", -1000.0, 1000.0),
    "eog": ("uV", -2000.0, 2000.0),
    "emg": ("uV", -1000.0, 1000.0),
    "emg_env": ("uV", 0.0, 1000.0),
    "ecg": ("uV", -5000.0, 5000.0),
    "resp": ("uV", -2000.0, 2000.0),
    "temp": ("DegC", 30.0, 42.0),
    "marker": ("", -1.0, 1.0),
}


@dataclass(frozen=True)
class ChannelDef:
    """How to make one channel.

    Attributes
    ----------
    label : EDF label.
    fs : sampling rate written, Hz.
    kind : a RANGES key (physical unit and range).
    sites : brain sites with weights, e.g. (("C4", 1), ("CLE", -1)).
    terms : other sources with weights (see SourceBank), e.g. (("mains", 1), ("eye", -1)).
    noise : factor on the subject's white noise level (0 for non-electrical channels).
    local_mains : whether the electrode picks up a little mains of its own.
    move : factor on the body-movement artefact it sees.
    make_fs : rate it is synthesised at before ``reduce`` (e.g. 100 Hz EMG -> 1-Hz envelope).
    reduce : "rms" to write the per-sample RMS over each 1/fs window.
    """

    label: str
    fs: int
    kind: str
    sites: Terms = ()
    terms: Terms = ()
    noise: float = 1.0
    local_mains: bool = False
    move: float = 1.0
    make_fs: int | None = None
    reduce: str | None = None


_CM: Terms = (("mains", 1.0), ("drift", 1.0))  # what a shared scalp reference adds to every channel


def mass_channels(ler: bool, chin3: bool, f3: bool) -> list[ChannelDef]:
    """MASS channels at 256 Hz (Resp at 32 Hz): CLE (computed linked ears) or LER montage."""
    ref = "LER" if ler else "CLE"
    ref_site = "LE" if ler else "CLE"
    common: Terms = (("mains", 0.04), ("drift", 0.2)) if ler else _CM
    eeg_sites = ["C4", "C3", "O1"] if ler else ["C4", "A1", "C3", "A2", "O1"]
    if f3:
        eeg_sites.append("F3")
    chans = [ChannelDef(f"EEG {s}-{ref}", 256, "eeg", sites=((s, 1.0), (ref_site, -1.0)), terms=common,
                        local_mains=True) for s in eeg_sites]
    chans += [
        ChannelDef("EOG Right Horiz", 256, "eog", sites=(("ER", 1.0), (ref_site, -1.0)),
                   terms=(("eye", 1.0), ("blink", 0.4)) + common, local_mains=True),
        ChannelDef("EOG Left Horiz", 256, "eog", sites=(("EL", 1.0), (ref_site, -1.0)),
                   terms=(("eye", -1.0), ("blink", 0.3)) + common, local_mains=True),
    ]
    for k in (1, 2, 3) if chin3 else (1, 2):
        chans.append(ChannelDef(f"EMG Chin{k}", 256, "emg", terms=((f"emg@{k}", 1.0), ("ecg", 0.004 + 0.002 * k))
                                + _CM, local_mains=True, move=0.5))
    chans += [
        ChannelDef("ECG I", 256, "ecg", terms=(("ecg", 1.0), ("mains", 0.1)), noise=3.0, move=0.3),
        ChannelDef("Resp Belt Thor", 32, "resp", terms=(("resp", 1.0),), noise=2.0, move=0.0),
    ]
    return chans


def sleep_edf_channels(study: str) -> list[ChannelDef]:
    """Sleep-EDF channels: EEG/EOG at 100 Hz; SC has 1-Hz resp, EMG envelope, temperature, marker."""
    chans = [
        ChannelDef("EEG Fpz-Cz", 100, "eeg", sites=(("Fpz-Cz", 1.0),)),
        ChannelDef("EEG Pz-Oz", 100, "eeg", sites=(("Pz-Oz", 1.0),)),
        ChannelDef("EOG horizontal", 100, "eog", sites=(("ER", 1.0), ("EL", -1.0)),
                   terms=(("eye", 2.0), ("blink", 0.15))),
    ]
    chin: Terms = (("emg@1", 1.0), ("emg@2", -1.0), ("ecg", 0.003))
    if study == "SC":
        chans += [
            ChannelDef("Resp oro-nasal", 1, "resp", terms=(("resp", 1.0),), noise=2.0, move=0.0),
            ChannelDef("EMG submental", 1, "emg_env", terms=chin, move=0.3, make_fs=100, reduce="rms"),
            ChannelDef("Temp rectal", 1, "temp", terms=(("temp", 1.0),), noise=0.0, move=0.0),
            ChannelDef("Event marker", 1, "marker", terms=(("marker", 1.0),), noise=0.0, move=0.0),
        ]
    else:
        chans += [
            ChannelDef("EMG submental", 100, "emg", terms=chin, move=0.3),
            ChannelDef("Event marker", 1, "marker", terms=(("marker", 1.0),), noise=0.0, move=0.0),
        ]
    return chans


def generic_channels() -> list[ChannelDef]:
    """A lab's own export at 200 Hz: AASM-style derivations already computed by the lab's software."""
    return [
        ChannelDef("C4-M1", 200, "eeg", sites=(("C4", 1.0), ("M1", -1.0)), local_mains=True),
        ChannelDef("C3-M2", 200, "eeg", sites=(("C3", 1.0), ("M2", -1.0)), local_mains=True),
        ChannelDef("E1-M2", 200, "eog", sites=(("EL", 1.0), ("M2", -1.0)), terms=(("eye", -1.0), ("blink", -0.6)),
                   local_mains=True),
        ChannelDef("E2-M1", 200, "eog", sites=(("ER", 1.0), ("M1", -1.0)), terms=(("eye", 1.0), ("blink", 0.6)),
                   local_mains=True),
        ChannelDef("Chin1-Chin2", 200, "emg", terms=(("emg@1", 1.0), ("emg@2", -1.0), ("ecg", 0.004)),
                   local_mains=True, move=0.5),
        ChannelDef("ECG", 200, "ecg", terms=(("ecg", 1.0),), noise=3.0, move=0.3),
    ]


def render(bank: SourceBank, channels: list[ChannelDef], threads: int = 2) -> list[SignalOut]:
    """Synthesise and digitise every channel of a file (physical unit µV, or the channel's own).

    Sources and channels are made on ``threads`` threads (numpy and the FFT release the GIL);
    the result does not depend on the order in which they finish.
    """
    needed = sorted({(name, float(ch.make_fs or ch.fs)) for ch in channels for name in _sources(ch)})
    local = threading.local()  # one reusable float buffer per thread and length: fresh memory is slow

    def one(i: int) -> SignalOut:
        ch = channels[i]
        unit, pmin, pmax = RANGES[ch.kind]
        scratch = local.__dict__.setdefault("scratch", {})
        data = render_channel(bank, ch, i, len(channels), scratch)
        return SignalOut(label=ch.label, fs=ch.fs, unit=unit, pmin=pmin, pmax=pmax,
                         digital=digitise(data, pmin, pmax, inplace=True))

    if threads <= 1:
        for name, fs in needed:
            bank.get(name, fs)
        return [one(i) for i in range(len(channels))]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda nf: bank.get(*nf), needed))
        return list(pool.map(one, range(len(channels))))


def _sources(ch: ChannelDef) -> set[str]:
    names = {name for name, _ in ch.terms}
    if ch.sites:
        names |= set(BRAIN_COMPONENTS)
    if ch.noise:
        names.add("white")
    if ch.local_mains:
        names.add("mains")
    if ch.move:
        names.add("move")
    return names


def render_channel(bank: SourceBank, ch: ChannelDef, index: int, n_channels: int,
                   scratch: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Physical samples of channel ``ch`` (number ``index`` of ``n_channels`` in its file).

    With ``scratch``, the returned array is a buffer that the next call may overwrite.
    """
    fs = ch.make_fs or ch.fs
    n = bank.n(fs)
    if scratch is None:
        out = np.zeros(n, dtype=np.float32)
    else:
        out = scratch.setdefault(n, np.empty(n, dtype=np.float32))
        out.fill(0.0)
    # Components shared by several sites are summed with net weights (a derivation's cancellation
    # is then exact); the 1/f background is each site's own.
    net: dict[str, float] = defaultdict(float)
    for site, weight in ch.sites:
        gains = np.asarray(SITES[site]) * bank.profile.site_gain.get(site, 1.0)
        for comp, gain in zip(BRAIN_COMPONENTS, gains):
            if comp == "bg":
                add_shifted(out, bank.get("bg", fs), bank.site_shift(site, fs), weight * gain)
            else:
                net[comp] += weight * gain
    for name, weight in ch.terms:
        net[name] += weight
    for name, weight in net.items():
        if abs(weight) > 1e-12:
            add_shifted(out, bank.get(name, fs), 0, weight)
    rng = bank.rng(f"electrode:{ch.label}")
    if ch.noise:
        shift = (index + 1) * n // (n_channels + 1)
        add_shifted(out, bank.get("white", fs), shift, ch.noise * bank.profile.noise_uv)
    if ch.local_mains:
        add_shifted(out, bank.get("mains", fs), 0, float(rng.uniform(-0.06, 0.06)))
    if ch.move:
        add_shifted(out, bank.get("move", fs), 0, ch.move * float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)))
    if ch.reduce == "rms":
        k = fs // ch.fs
        out = np.sqrt(np.mean(out[: (n // k) * k].reshape(-1, k).astype(np.float64) ** 2, axis=1)).astype(np.float32)
    return out
