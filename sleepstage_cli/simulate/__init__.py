"""Synthetic polysomnography nights in the layout of real datasets (``sleepstage simulate``).

:func:`simulate` writes EDF recordings with hypnograms named, labelled, sampled and annotated as
MASS, Sleep-EDF or a lab's own export would be, plus ``simulation.json`` holding the truth: for
every night, each scored epoch's onset (seconds from the PSG start) and AASM stage.

Trailing partial epochs: a Sleep-EDF cassette hypnogram ends with one ``Sleep stage ?``
annotation running to the end of the recording, whose length need not be a multiple of 30 s.
``simulation.json`` lists the whole 30-s epochs that fit inside it (stage -1) and leaves out the
remainder shorter than an epoch; ``duration_s`` still covers the full recording.

The signals carry the stage signatures a scorer uses (alpha and blinks in wake, theta and slow
eye movements in N1, spindles and K-complexes in N2, high-amplitude delta in N3, rapid eye
movements, saw-tooth waves and atonia in REM) over a 1/f background with mains, drift and movement
artefacts, varied across subjects and epochs so that staging them is learnable but not trivial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sleepstage_cli import __version__
from sleepstage_cli.errors import SleepstageError
from sleepstage_cli.fsutil import atomic_write_json
from sleepstage_cli.simulate.edfwrite import write_signals
from sleepstage_cli.simulate.features import draw_features
from sleepstage_cli.simulate.hypnogram import make_hypnogram
from sleepstage_cli.simulate.layouts import GenericLayout, Layout, MassLayout, SleepEdfLayout
from sleepstage_cli.simulate.montage import render
from sleepstage_cli.simulate.signals import SITES, SourceBank
from sleepstage_cli.simulate.subject import SubjectProfile, draw_subject, night_variant

__all__ = ["LAYOUTS", "SimulatedNight", "simulate"]

LAYOUTS = ("mass", "sleep-edf", "generic")
MASS_SUBSETS = ("SS1", "SS2", "SS3", "SS4", "SS5")
STUDIES = ("SC", "ST")
MIN_HOURS, MAX_HOURS = 0.25, 16.0
MANIFEST = "simulation.json"

# Independent random streams per purpose, so that e.g. a change in signal synthesis does not
# change the hypnograms of a seed.
_SUBJECT, _NIGHT, _FEATURES, _SIGNALS, _RUN = 1, 2, 3, 4, 5


@dataclass
class SimulatedNight:
    """One simulated night and its truth.

    Attributes
    ----------
    psg, hypnogram : paths of the signal file and the hypnogram file.
    subject : subject id as the dataset reader derives it (``01-03-0001``, ``SC400``, ``subject01``).
    night : night id (``01-03-0001``, ``SC4001``, ``subject01_night1``); night_number counts from 1.
    epoch_length : seconds per scored epoch (20 or 30).
    onsets : onset of every scored epoch, seconds from the PSG start, run-length annotations expanded
        (a trailing partial epoch of a final ``?`` annotation is not listed, see the module docstring).
    stages : AASM code of every epoch: 0-4 (W, N1, N2, N3, REM), -1 for ``?`` and movement time.
    duration_s : recording length, seconds.
    channels : label -> sampling rate (Hz) of the PSG file's signals.
    """

    psg: Path
    hypnogram: Path
    subject: str
    night: str
    night_number: int
    epoch_length: float
    onsets: list[float]
    stages: list[int]
    duration_s: float
    channels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The night's entry in simulation.json (file names, not paths)."""
        return {"psg": self.psg.name, "hypnogram": self.hypnogram.name, "subject": self.subject,
                "night": self.night, "night_number": self.night_number, "epoch_length": self.epoch_length,
                "onsets": self.onsets, "stages": self.stages, "duration_s": self.duration_s,
                "channels": self.channels}


def clear_previous(out_dir: Path) -> int:
    """Delete the files an earlier ``simulate`` wrote into ``out_dir``, and nothing else; how many.

    Only names listed in its ``simulation.json`` count, and only as plain files directly inside
    ``out_dir`` (no links, no paths): the manifest is input, and may have been edited. A folder with
    other files but no ``simulation.json`` was not written by simulate and is refused.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        raise SleepstageError(f"output folder is not empty and holds no {MANIFEST}, so it was not written by "
                              "'sleepstage simulate'; --force replaces only simulated nights: choose an empty "
                              "or new folder", out_dir)
    names = {"channels.toml"}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        for night in data.get("nights", []):
            names.update(str(night.get(k, "")) for k in ("psg", "hypnogram"))
    except (OSError, ValueError, AttributeError, TypeError):
        raise SleepstageError(f"{MANIFEST} is damaged; remove the folder's simulated files by hand or choose "
                              "another folder", out_dir) from None
    root = out_dir.resolve()
    removed = 0
    for name in sorted(names):
        p = out_dir / name
        if (name and Path(name).name == name and p.is_file() and not p.is_symlink()
                and p.resolve().parent == root):
            p.unlink()
            removed += 1
    manifest.unlink()
    return removed + 1


def check_arguments(layout: str, nights: int, seed: int, hours: float, subset: str,
                    study: str) -> tuple[str, str, str]:
    if not isinstance(layout, str) or layout.strip().lower() not in LAYOUTS:
        raise SleepstageError(f"unknown layout {layout!r} (use {', '.join(LAYOUTS)})")
    if isinstance(nights, bool) or not isinstance(nights, (int, np.integer)) or nights < 1:
        raise SleepstageError(f"nights must be a whole number of at least 1, got {nights!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SleepstageError(f"seed must be a non-negative whole number, got {seed!r}")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
        raise SleepstageError(f"hours must be a positive number, got {hours!r}")
    if not MIN_HOURS <= hours <= MAX_HOURS:
        raise SleepstageError(f"hours must be between {MIN_HOURS:g} and {MAX_HOURS:g} "
                              f"(the sleep period, lights off to lights on), got {hours:g}")
    layout = layout.strip().lower()
    # subset and study only mean something for their own layout; elsewhere they are ignored.
    subset_n = str(subset).strip().upper()
    if layout == "mass" and subset_n not in MASS_SUBSETS:
        raise SleepstageError(f"unknown MASS subset {subset!r} (use {', '.join(MASS_SUBSETS)})")
    study_n = str(study).strip().upper()
    if layout == "sleep-edf" and study_n not in STUDIES:
        raise SleepstageError(f"unknown Sleep-EDF study {study!r} (use SC or ST)")
    return layout, subset_n, study_n


def _make_layout(layout: str, subset: str, study: str, hours: float, seed: int) -> Layout:
    if layout == "mass":
        return MassLayout(subset)
    if layout == "sleep-edf":
        return SleepEdfLayout(study, hours)
    mains = float(np.random.default_rng([seed, _RUN]).choice([50.0, 60.0]))
    return GenericLayout(mains)


def simulate(out_dir: Path, nights: int, layout: str = "mass", seed: int = 0, hours: float = 8.0,
             subset: str = "SS3", study: str = "SC", progress: Callable[[int, int], None] | None = None
             ) -> list[SimulatedNight]:
    """Write ``nights`` synthetic PSG nights with hypnograms into ``out_dir`` in a dataset's layout.

    Parameters
    ----------
    out_dir : folder to write into (created if missing; existing files of the same names are replaced).
    nights : number of nights (MASS: one per subject; Sleep-EDF and generic: two per subject).
    layout : "mass", "sleep-edf" or "generic".
    seed : random seed; the same seed gives the same files, byte for byte.
    hours : sleep period (lights off to lights on), hours, 0.25-16.
    subset : MASS subset SS1-SS5 (SS1/SS3: 30-s AASM epochs; SS2/SS4/SS5: 20-s R&K epochs);
        used by the mass layout only.
    study : Sleep-EDF study, "SC" (cassette, with daytime wake) or "ST" (telemetry); used by
        the sleep-edf layout only.
    progress : called as ``progress(done, total)`` after each night.

    Returns
    -------
    The nights written, in order; ``out_dir / "simulation.json"`` holds the same information.

    Raises
    ------
    SleepstageError for a bad argument or an output folder that cannot be written.
    """
    layout, subset, study = check_arguments(layout, nights, seed, hours, subset, study)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SleepstageError("output is not a folder", out_dir)
    lay = _make_layout(layout, subset, study, float(hours), int(seed))
    if nights > lay.max_nights():
        raise SleepstageError(f"the {layout} layout names at most {lay.max_nights()} nights, got {nights}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SleepstageError(f"cannot create output folder: {exc.strerror or exc}", out_dir) from None

    profiles: dict[int, SubjectProfile] = {}
    done: list[SimulatedNight] = []
    for i in range(int(nights)):
        subj, _ = lay.subject_night(i)
        if subj not in profiles:
            profiles[subj] = draw_subject(np.random.default_rng([seed, _SUBJECT, subj]), tuple(SITES))
        night_rng = np.random.default_rng([seed, _NIGHT, i])
        profile = night_variant(profiles[subj], night_rng)
        hyp = make_hypnogram(night_rng, float(hours), lay.epoch_length, profile.sws_factor)
        plan = lay.plan(i, hyp, night_rng)
        features = draw_features(np.random.default_rng([seed, _FEATURES, i]), plan.timeline, profile)
        bank = SourceBank(plan.timeline, features, profile, (seed, _SIGNALS, i), lay.mains_hz)
        try:
            signals = render(bank, plan.channels)
        finally:
            bank.release()
        try:
            write_signals(out_dir / plan.psg, signals, plan.start, plan.subject.replace(" ", "_"),
                          f"seed{seed}", plan.edf_plus)
            del signals
            plan.write_hypnogram(out_dir)
        except OSError as exc:
            raise SleepstageError(f"cannot write {plan.psg}: {exc.strerror or exc}", out_dir) from None
        done.append(SimulatedNight(
            psg=out_dir / plan.psg, hypnogram=out_dir / plan.hypnogram, subject=plan.subject, night=plan.night,
            night_number=plan.night_number, epoch_length=float(plan.epoch_length),
            onsets=[round(float(o), 2) for o in plan.onsets], stages=[int(c) for c in plan.codes],
            duration_s=float(plan.duration), channels={c.label: c.fs for c in plan.channels}))
        if progress is not None:
            progress(i + 1, int(nights))

    lay.extra_files(out_dir)
    manifest = {"generator": "sleepstage simulate", "version": __version__, "layout": layout, "seed": int(seed),
                "hours": float(hours), **lay.meta(), "nights": [n.to_json() for n in done]}
    atomic_write_json(out_dir / MANIFEST, manifest)
    return done
