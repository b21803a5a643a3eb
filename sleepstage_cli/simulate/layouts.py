"""Dataset layouts: file names, montages, epoch grids, onsets and hypnogram files of each dataset.

- ``mass``: ``01-0S-00NN PSG.edf`` + ``01-0S-00NN Base.edf`` (one annotation per epoch, first
  onset at a non-integer offset, 20-s R&K epochs in SS2/SS4/SS5).
- ``sleep-edf``: ``SC4ssNE0-PSG.edf`` + ``SC4ssNX-Hypnogram.edf`` (run-length annotations from 0,
  daytime wake around the night, a final ``Sleep stage ?`` to the end of the recording in SC), or
  ``ST7ssNJ0-PSG.edf`` + ``ST7ssNJP-Hypnogram.edf``.
- ``generic``: ``subjectNN_nightK.edf`` + ``.csv`` (odd K) or ``.tsv`` (even K), and ``channels.toml``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sleepstage_cli.fsutil import atomic_write_text
from sleepstage_cli.simulate.edfwrite import write_annotations
from sleepstage_cli.simulate.features import Timeline, build_timeline
from sleepstage_cli.simulate.hypnogram import N1, N2, N3, REM, RK_DEEP_DEPTH, Hypnogram, W
from sleepstage_cli.simulate.montage import ChannelDef, generic_channels, mass_channels, sleep_edf_channels
from sleepstage_cli.stages import UNSCORED

UNSCORED_TEXT = "Sleep stage ?"
MOVEMENT_TEXT = "Movement time"
_RK_TEXT = {W: "Sleep stage W", N1: "Sleep stage 1", N2: "Sleep stage 2", N3: "Sleep stage 3", REM: "Sleep stage R"}
_TABLE_TEXT = {W: "W", N1: "N1", N2: "N2", N3: "N3", REM: "R"}
GENERIC_CHANNEL_MAP = {"eeg": "C4-M1", "eog": "E2-M1 - E1-M2", "emg": "Chin1-Chin2"}


@dataclass
class NightPlan:
    """Everything about one night except its signals.

    ``labels`` are the annotation texts per scored epoch, ``codes`` their AASM codes (-1 for
    ``?`` and movement time), ``onsets`` seconds from the PSG start. ``annotations`` are what the
    hypnogram file holds (onset, duration, text); for tables ``table`` is its text.
    """

    psg: str
    hypnogram: str
    subject: str
    night: str
    night_number: int
    epoch_length: float
    onsets: np.ndarray
    codes: np.ndarray
    timeline: Timeline
    duration: int
    channels: list[ChannelDef]
    start: dt.datetime
    edf_plus: bool
    annotations: list[tuple[float, float, str]] = field(default_factory=list)
    table: str | None = None

    def write_hypnogram(self, out_dir: Path) -> None:
        """Write the hypnogram file (EDF+ annotations or a text table) into ``out_dir``."""
        path = out_dir / self.hypnogram
        if self.table is not None:
            atomic_write_text(path, self.table)
        else:
            write_annotations(path, self.annotations, self.start, _patient(self.subject), "hypnogram")


def _patient(subject: str) -> str:
    return subject.replace(" ", "_")


def _start_time(rng: np.random.Generator, year: int, hour: int) -> dt.datetime:
    day = dt.datetime(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    return day.replace(hour=hour, minute=int(rng.integers(0, 60)), second=int(rng.integers(0, 60)))


class Layout:
    """Base of the three layouts: how nights map to subjects, and how each night is laid out."""

    name = ""
    epoch_length = 30.0
    nights_per_subject = 1
    mains_hz = 60.0

    def subject_night(self, i: int) -> tuple[int, int]:
        """(subject index, night number from 1) of the ``i``-th night simulated."""
        return i // self.nights_per_subject, i % self.nights_per_subject + 1

    def max_nights(self) -> int:
        return 9999

    def plan(self, i: int, hyp: Hypnogram, rng: np.random.Generator) -> NightPlan:
        raise NotImplementedError

    def meta(self) -> dict:
        """Layout-specific keys of simulation.json."""
        return {}

    def extra_files(self, out_dir: Path) -> None:
        """Files beside the nights (channel maps...)."""


class MassLayout(Layout):
    """MASS cohort 1, subset SS1-SS5."""

    name = "mass"

    def __init__(self, subset: str) -> None:
        self.subset = subset
        self.digit = int(subset[2])
        self.rk = self.digit in (2, 4, 5)
        self.epoch_length = 20.0 if self.rk else 30.0

    def meta(self) -> dict:
        return {"subset": self.subset}

    def plan(self, i: int, hyp: Hypnogram, rng: np.random.Generator) -> NightPlan:
        code = f"01-0{self.digit}-{i + 1:04d}"
        ep = self.epoch_length
        labels = np.array([_RK_TEXT[s] for s in hyp.stage], dtype=object)
        if self.rk:
            labels[hyp.rk_deep] = "Sleep stage 4"
        # Some nights start with unscored epochs, others have them around movement artefacts.
        if i % 2 == 0:
            labels[: int(rng.integers(1, 5))] = UNSCORED_TEXT
        else:
            moved = np.nonzero(hyp.movement)[0]
            around = np.concatenate([moved, moved[rng.random(moved.size) < 0.5] + 1])
            labels[around[around < len(hyp)]] = UNSCORED_TEXT
        codes = _codes(labels)
        # The first stage annotation starts after the recording does, at a non-integer time on the
        # 1/100-s grid (exact at 100 Hz); epochs are contiguous from there.
        offset_cs = int(rng.integers(300, 18000))
        if offset_cs % 100 == 0:
            offset_cs += 37
        onset_cs = offset_cs + np.arange(len(hyp)) * int(ep * 100)
        onsets = onset_cs / 100.0
        end = onsets[-1] + ep
        duration = int(np.ceil(end + rng.uniform(5.0, 90.0)))
        timeline = build_timeline(onsets[0], ep, hyp.stage, hyp.depth, hyp.movement,
                                  np.zeros(len(hyp), bool), duration)
        channels = mass_channels(ler=i % 3 == 2, chin3=i % 2 == 1, f3=i % 2 == 0)
        annotations = [(float(o), ep, str(t)) for o, t in zip(onsets, labels)]
        return NightPlan(psg=f"{code} PSG.edf", hypnogram=f"{code} Base.edf", subject=code, night=code,
                         night_number=1, epoch_length=ep, onsets=onsets, codes=codes, timeline=timeline,
                         duration=duration, channels=channels, start=_start_time(rng, 2008, 22),
                         edf_plus=False, annotations=annotations)


class SleepEdfLayout(Layout):
    """Sleep-EDF Expanded, sleep-cassette (SC) or sleep-telemetry (ST)."""

    name = "sleep-edf"
    nights_per_subject = 2
    mains_hz = 50.0
    _SCORERS = "CHJMPUVW"

    def __init__(self, study: str, hours: float) -> None:
        self.study = study
        self.hours = hours

    def max_nights(self) -> int:
        return 200 if self.study == "SC" else 198

    def meta(self) -> dict:
        return {"study": self.study}

    def subject_night(self, i: int) -> tuple[int, int]:
        s, n = super().subject_night(i)
        return (s if self.study == "SC" else s + 1), n  # ST subjects are numbered from 01

    def plan(self, i: int, hyp: Hypnogram, rng: np.random.Generator) -> NightPlan:
        subj, night = self.subject_night(i)
        if self.study == "SC":
            stem = f"SC4{subj:02d}{night}"
            psg, hyp_name = f"{stem}E0-PSG.edf", f"{stem}E{rng.choice(list(self._SCORERS))}-Hypnogram.edf"
            # Cassette recordings run ~20 h: hours of daytime wake before and after the night.
            wake_epochs = int(round(max(1.0, self.hours) * 120))
            pre = int(round(wake_epochs * rng.uniform(0.35, 0.6)))
            post = wake_epochs - pre
            start = _start_time(rng, 1989, 16)
        else:
            stem = f"ST7{subj:02d}{night}"
            psg, hyp_name = f"{stem}J0-PSG.edf", f"{stem}JP-Hypnogram.edf"
            pre = int(rng.integers(10, 21))
            post = 30 - pre
            start = _start_time(rng, 1994, 22)
        n_total = pre + len(hyp) + post
        stage = np.concatenate([np.full(pre, W), hyp.stage, np.full(post, W)]).astype(np.int8)
        depth = np.concatenate([np.zeros(pre), hyp.depth, np.zeros(post)])
        movement = np.concatenate([np.zeros(pre, bool), hyp.movement, np.zeros(post, bool)])
        day = np.concatenate([np.ones(pre, bool), np.zeros(len(hyp), bool), np.ones(post, bool)])
        labels = np.array([_RK_TEXT[s] for s in stage], dtype=object)
        labels[(stage == N3) & (depth >= RK_DEEP_DEPTH)] = "Sleep stage 4"
        labels[movement] = MOVEMENT_TEXT
        scored_end = 30.0 * n_total
        annotations = _runs(labels, 30.0)
        if self.study == "SC":
            # The scorer stopped before the recorder did: one last '?' to the end, any length.
            tail = int(rng.integers(300, 2400))
            tail += 7 if tail % 30 == 0 else 0
            annotations.append((scored_end, float(tail), UNSCORED_TEXT))
            labels = np.concatenate([labels, np.full(tail // 30, UNSCORED_TEXT, dtype=object)])
        else:
            tail = int(rng.integers(5, 60))
        duration = int(scored_end) + tail
        codes = _codes(labels)
        onsets = 30.0 * np.arange(len(labels))
        timeline = build_timeline(0.0, 30.0, stage, depth, movement, day, float(duration), pad_day=(True, True))
        return NightPlan(psg=psg, hypnogram=hyp_name, subject=stem[:5], night=stem, night_number=night,
                         epoch_length=30.0, onsets=onsets, codes=codes, timeline=timeline, duration=duration,
                         channels=sleep_edf_channels(self.study), start=start, edf_plus=False,
                         annotations=annotations)


class GenericLayout(Layout):
    """A lab's own export: EDF+ at 200 Hz with a CSV or TSV hypnogram beside it."""

    name = "generic"
    nights_per_subject = 2

    def __init__(self, mains_hz: float) -> None:
        self.mains_hz = mains_hz

    def subject_night(self, i: int) -> tuple[int, int]:
        s, n = super().subject_night(i)
        return s + 1, n

    def plan(self, i: int, hyp: Hypnogram, rng: np.random.Generator) -> NightPlan:
        subj, night = self.subject_night(i)
        stem = f"subject{subj:02d}_night{night}"
        labels = [_TABLE_TEXT[int(s)] for s in hyp.stage]
        onsets = 30.0 * np.arange(len(hyp))
        if night % 2 == 1:
            hyp_name = f"{stem}.csv"
            table = "onset,duration,stage\n" + "".join(f"{int(o)},30,{t}\n" for o, t in zip(onsets, labels))
        else:
            hyp_name = f"{stem}.tsv"
            table = "".join(f"{t}\n" for t in labels)
        duration = int(30 * len(hyp) + rng.integers(0, 60))
        timeline = build_timeline(0.0, 30.0, hyp.stage, hyp.depth, hyp.movement, np.zeros(len(hyp), bool),
                                  float(duration))
        return NightPlan(psg=f"{stem}.edf", hypnogram=hyp_name, subject=f"subject{subj:02d}", night=stem,
                         night_number=night, epoch_length=30.0, onsets=onsets,
                         codes=hyp.stage.astype(int), timeline=timeline, duration=duration,
                         channels=generic_channels(), start=_start_time(rng, 2021, 22), edf_plus=True,
                         table=table)

    def extra_files(self, out_dir: Path) -> None:
        lines = ["# Channels of the simulated 'generic' layout (sleepstage simulate).",
                 "# A derivation is written 'A - B'."]
        lines += [f'{kind} = "{label}"' for kind, label in GENERIC_CHANNEL_MAP.items()]
        atomic_write_text(out_dir / "channels.toml", "\n".join(lines) + "\n")


def _codes(labels: np.ndarray) -> np.ndarray:
    """AASM code of each annotation text (R&K 3 and 4 -> N3; ``?`` and movement -> UNSCORED)."""
    table = {"Sleep stage W": W, "Sleep stage 1": N1, "Sleep stage 2": N2, "Sleep stage 3": N3,
             "Sleep stage 4": N3, "Sleep stage R": REM, UNSCORED_TEXT: UNSCORED, MOVEMENT_TEXT: UNSCORED}
    return np.array([table[str(t)] for t in labels], dtype=int)


def _runs(labels: np.ndarray, epoch_length: float) -> list[tuple[float, float, str]]:
    """Run-length annotations: each run of identical epochs becomes one (onset, duration, text)."""
    out: list[tuple[float, float, str]] = []
    start = 0
    for k in range(1, len(labels) + 1):
        if k == len(labels) or labels[k] != labels[start]:
            out.append((start * epoch_length, (k - start) * epoch_length, str(labels[start])))
            start = k
    return out
