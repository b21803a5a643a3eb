"""`sleepstage score`'s core: one EDF night in, a scored night (stages, probabilities, flags) out.

The night goes through the very code that prepared the training data (recording.py) with the
model's own channel spec and conditioning, then through test-time aggregation (inference.py).
The first half, :func:`read_night`, needs no torch, so the command runs it in worker processes while
the model loads and while the previous nights are scored (:class:`ReadAhead`).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sleepstage_cli import __version__
from sleepstage_cli.conditioning.recording import load_conditioned
from sleepstage_cli.conditioning.signals import Conditioning
from sleepstage_cli.constants import EPOCH_SECONDS
from sleepstage_cli.data.dataset import dataset_label
from sleepstage_cli.digests import file_sha256, named
from sleepstage_cli.errors import InputError
from sleepstage_cli.io.channels import ChannelSpec, resolve_channels
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.hypnogram import keep_within_signal, read_hypnogram
from sleepstage_cli.io.lights import Lights, read_lights
from sleepstage_cli.scoring.fitcheck import OUTSIDE_FLAG, FitVerdict, NightSeen, check_fit, observe
from sleepstage_cli.stages import STAGES, UNSCORED

if TYPE_CHECKING:
    import torch

    from sleepstage_cli.model.modelfile import LoadedModel

UNSCORABLE = 0.5
"""An epoch is left unscored when, on every channel, more than this fraction of it is flat or missing."""


@dataclass
class ScoredNight:
    """Everything `score` writes about one night."""

    night_id: str
    source: Path
    start: dt.datetime | None
    onsets: np.ndarray  # (N,) s from the recording's start
    epoch_length: float
    stages: np.ndarray  # (N,) 0-4, UNSCORED where the signal could not be scored
    probabilities: np.ndarray  # (N, 5)
    confidence: np.ndarray  # (N,) probability of the chosen stage
    flags: list[str]  # per epoch, "" when nothing to say
    attention: np.ndarray | None  # (N, 29)
    channels: dict[str, str]
    notes: list[str] = field(default_factory=list)
    lights: Lights = field(default_factory=Lights)  # lights off/on from the recording's EDF+ annotations
    fit: FitVerdict | None = None  # does the night fit what the model was trained on (scoring/fitcheck.py)

    @property
    def n_epochs(self) -> int:
        return int(self.stages.size)


def spec_with_overrides(spec: ChannelSpec, overrides: dict[str, tuple[str, ...]]) -> ChannelSpec:
    """The model's channel spec with some kinds renamed for this recording (``--eeg`` etc.)."""
    extra = sorted(set(overrides) - set(spec.kinds))
    if extra:
        raise InputError(f"the model uses {', '.join(spec.kinds)} channels; it has no {', '.join(extra)} input "
                         "(leave that option out)")
    candidates = {k: overrides.get(k) or spec.candidates[k] for k in spec.kinds}
    return ChannelSpec(kinds=spec.kinds, candidates=candidates, preset=spec.preset)


def _describe_flags(kinds: tuple[str, ...], missing: np.ndarray, flat: np.ndarray) -> list[str]:
    out = []
    for m_row, f_row in zip(missing, flat):
        parts = []
        gap = [k.upper() for k, v in zip(kinds, m_row) if v > 0]
        flt = [k.upper() for k, v in zip(kinds, f_row) if v > 0]
        if gap:
            parts.append(f"missing signal ({'+'.join(gap)})")
        if flt:
            parts.append(f"flat signal ({'+'.join(flt)})")
        out.append("; ".join(parts))
    return out


@dataclass
class ReadNight:
    """A recording read and conditioned for a model, cut into the epochs to score (no torch involved)."""

    night_id: str
    source: Path
    start: dt.datetime | None
    onsets: np.ndarray  # (N,) scored epoch onsets, s
    epoch_length: float
    x: np.ndarray  # (N, C, 3000) float32 conditioned windows
    missing: np.ndarray  # (N, C) fraction of each window without signal
    flat: np.ndarray  # (N, C) fraction of each window with a flat signal
    kinds: tuple[str, ...]
    channels: dict[str, str]
    notes: list[str]
    discontinuous: bool
    lights: Lights = field(default_factory=Lights)  # lights off/on from the recording's EDF+ annotations
    fit: NightSeen | None = None  # the recording as the fit check sees it


def read_night(path: str | Path, spec: ChannelSpec, cond: Conditioning, night_id: str,
               epochs_from: str | Path | None = None) -> ReadNight:
    """Read a recording's channels for ``spec``, condition them as ``cond`` says, cut the epochs to score.

    Epochs are consecutive 30-s windows from the start of the recording, or the scored epochs of
    ``epochs_from`` (a hypnogram: its onsets, with 20-s epochs widened to 30 s as in training).
    """
    path = Path(path)
    header = read_header(path)
    if not header.signals:
        raise InputError("holds no signals (an annotations-only file, e.g. a hypnogram)", path)
    try:
        channels = resolve_channels(header, spec)
    except InputError as exc:
        if "not found" not in str(exc):
            raise
        raise InputError(f"{exc} (the model was trained on {', '.join(k.upper() for k in spec.kinds)}: name this "
                         f"file's channels with {' '.join('--' + k for k in spec.kinds)})") from None
    notes: list[str] = []
    with EdfReader(path, header) as reader:
        signals = load_conditioned(reader, channels, cond)
    notes.extend(signals.notes)
    if epochs_from is not None:
        hyp = read_hypnogram(epochs_from)
        offset = -(EPOCH_SECONDS - hyp.epoch_length) / 2.0
        hyp, before, after = keep_within_signal(hyp, signals.duration, offset, EPOCH_SECONDS)
        if len(hyp) == 0:
            raise InputError(f"no epoch of {Path(epochs_from).name} lies within the recording", path)
        if before or after:
            notes.append(f"{before + after} epoch(s) of {Path(epochs_from).name} fall outside the recording "
                         "and are not scored")
        onsets, epoch_length, starts = hyp.onsets, hyp.epoch_length, hyp.onsets + offset
    else:
        n = int(signals.duration // EPOCH_SECONDS)
        if n == 0:
            raise InputError(f"the recording lasts {signals.duration:g} s, less than one 30-s epoch", path)
        onsets = EPOCH_SECONDS * np.arange(n)
        epoch_length, starts = EPOCH_SECONDS, onsets
        leftover = signals.duration - n * EPOCH_SECONDS
        if leftover >= 1:
            notes.append(f"the last {leftover:.0f} s of the recording (less than an epoch) are not scored")
    missing, flat = signals.marked_fraction(starts)
    x = signals.epochs(starts)
    return ReadNight(night_id=night_id, source=path, start=header.start, onsets=np.asarray(onsets, float),
                     epoch_length=float(epoch_length), x=x, missing=missing, flat=flat,
                     kinds=spec.kinds, channels={c.kind: c.expression for c in channels}, notes=notes,
                     discontinuous=header.is_discontinuous, lights=read_lights(path, header),
                     fit=observe(signals, x, missing, flat))


def score_read_night(night: ReadNight, loaded: LoadedModel, device: torch.device | str = "cpu",
                     attention: bool = False, amp: bool = True, batch_size: int = 256) -> ScoredNight:
    """Run the network with test-time aggregation over a read night and mark what could not be scored."""
    from sleepstage_cli.scoring.inference import score_night

    notes = list(night.notes)
    # Calibrated: probabilities, confidence and all that reads them (low-confidence list, hypnodensity) use T.
    result = score_night(loaded.model, night.x, device, batch_size=batch_size, attention=attention, amp=amp,
                         temperature=loaded.temperature)
    stages = result.stages.astype(np.int64)
    unscorable = ((night.missing + night.flat) > UNSCORABLE).all(axis=1)
    stages[unscorable] = UNSCORED
    flags = _describe_flags(night.kinds, night.missing, night.flat)
    if result.padded:
        notes.append(f"the night has {len(night.onsets)} epochs, fewer than one {loaded.model.seq_len}-epoch "
                     "sequence: it was scored with a padded sequence and is less reliable")
        flags = [("; ".join(filter(None, [f, "short night"]))) for f in flags]
    n_flagged = sum(1 for f in flags if f)
    if n_flagged:
        notes.append(f"{n_flagged} epoch(s) marked for flat or missing signal"
                     + (f", {int(unscorable.sum())} of them not scored" if unscorable.any() else ""))
    if night.discontinuous:
        notes.append("the recording is discontinuous (EDF+D): gaps are marked as missing signal")
    verdict = check_fit(loaded.meta.get("fit"), night.fit)
    if verdict.outside.any():
        flags = [("; ".join(filter(None, [f, OUTSIDE_FLAG])) if out else f) for f, out in zip(flags, verdict.outside)]
        notes.append(f"{int(verdict.outside.sum())} epoch(s) marked {OUTSIDE_FLAG} (their spectra)")
    confidence = result.probabilities[np.arange(stages.size), result.stages]
    confidence = np.where(stages == UNSCORED, np.nan, confidence)
    return ScoredNight(night_id=night.night_id, source=night.source, start=night.start, onsets=night.onsets,
                       epoch_length=night.epoch_length, stages=stages, probabilities=result.probabilities,
                       confidence=confidence, flags=flags, attention=result.attention, channels=night.channels,
                       notes=notes, lights=night.lights, fit=verdict)


def score_recording(path: str | Path, loaded: LoadedModel, night_id: str,
                    overrides: dict[str, tuple[str, ...]] | None = None, device: torch.device | str = "cpu",
                    epochs_from: str | Path | None = None, attention: bool = False, amp: bool = True,
                    batch_size: int = 256) -> ScoredNight:
    """Read, condition and score one recording with a loaded model (both halves, in this process)."""
    spec = spec_with_overrides(loaded.channel_spec, overrides or {})
    night = read_night(path, spec, loaded.conditioning, night_id, epochs_from)
    return score_read_night(night, loaded, device, attention, amp, batch_size)


MAX_READERS = 4
"""At most this many worker processes read nights side by side (each holds a night while conditioning it)."""


def reader_count(nights: int) -> int:
    """Worker processes to read ``nights`` with: one per usable core, at most :data:`MAX_READERS`.

    Reading and conditioning a night takes longer than running the network on it (an 8-h night, each
    alone: 0.7 s against 0.45 s), so a folder is scored fastest with every core reading and the network
    running between them: on two cores 1.1 s a night with two readers, 1.5 s with one
    (benchmarks/RESULTS.md, "Nights in bulk").
    """
    from sleepstage_cli.interrupts import usable_cores

    return max(1, min(nights, usable_cores(), MAX_READERS))


class ReadAhead:
    """Reads nights in worker processes, ahead of the caller, and yields them in the given order.

    Created before torch is imported, the first recording is read and conditioned while the model
    loads; afterwards the next nights are read while the current one is scored. ``readers`` processes
    (default :func:`reader_count`) read side by side, up to ``depth`` nights (default ``readers + 1``) ahead.
    Iterating yields ``(path, ReadNight or SleepstageError)``. ``epochs_from`` maps a recording to the
    hypnogram whose epochs it is scored on (others get 30-s epochs from the start). Use as a context manager.
    """

    def __init__(self, paths: list[Path], spec: ChannelSpec, cond: Conditioning,
                 epochs_from: dict[Path, Path] | None = None, depth: int | None = None,
                 readers: int | None = None) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp
        from collections import deque

        from sleepstage_cli.interrupts import die_with_parent
        from sleepstage_cli.io.layout import night_key

        readers = max(1, min(len(paths), readers or reader_count(len(paths))))
        # Forked before torch is imported and before any thread starts, so the copies are clean and cheap
        # (a fork pool starts all its workers at the first submit, below); later the parent's torch
        # threads exist, but the workers were forked long before them.
        ctx = mp.get_context("fork" if "torch" not in sys.modules else "forkserver")
        # The workers end with this process however it ends (kill -9 included). Our pid is passed, not
        # looked up in the worker: a forkserver's worker has the server as its parent.
        self._pool = cf.ProcessPoolExecutor(max_workers=readers, mp_context=ctx, initializer=die_with_parent,
                                            initargs=(os.getpid(),))
        self._paths = iter(paths)
        self._queue: deque = deque()
        self._args = (spec, cond)
        self._epochs_from = epochs_from or {}
        self._key = night_key
        for _ in range(readers + 1 if depth is None else depth):
            self._submit()

    def _submit(self) -> None:
        path = next(self._paths, None)
        if path is not None:
            spec, cond = self._args
            self._queue.append((path, self._pool.submit(read_night, path, spec, cond, self._key(path),
                                                        self._epochs_from.get(path))))

    def __iter__(self):
        from concurrent.futures.process import BrokenProcessPool

        from sleepstage_cli.errors import SleepstageError

        while self._queue:
            path, future = self._queue.popleft()
            try:
                item = future.result()
            except SleepstageError as exc:
                item = exc
            except BrokenProcessPool:
                raise SleepstageError("the process reading the recording stopped (out of memory?)", path) from None
            self._submit()
            yield path, item

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        for _, future in self._queue:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _model_file(path: Path | None) -> str:
    """The model file by name and content (``model.pt (sha256 abcdef123456)``), never where it lies: paths
    carry user and patient names."""
    if path is None:
        return ""
    try:
        return named(path.name, file_sha256(path))
    except OSError:  # gone since it was loaded: its name still says which
        return path.name


def _calibration_text(meta: dict, temperature: float) -> str:
    """How the probabilities were calibrated, in one line for the report (training/calibrate.py)."""
    cal = meta.get("calibration") or {}
    if cal.get("ece_before") is None:
        return f"{cal.get('note') or 'not calibrated (a model from before calibration)'}: T = {temperature:g}"
    return (f"calibrated, temperature T = {temperature:.3f} fitted on {cal.get('nights')} validation night(s): "
            f"ECE {100 * cal['ece_before']:.1f} % before, {100 * cal['ece_after']:.1f} % after")


def provenance(loaded: LoadedModel) -> dict:
    """What the report says about the model that scored the night."""
    meta = loaded.meta
    training = meta.get("training") or {}
    validation = meta.get("validation") or {}
    arch = meta.get("architecture", {})
    return {
        "model file": _model_file(loaded.path),
        "network": arch.get("net"),
        "sequence length": arch.get("seq_len"),
        "channels": ", ".join(loaded.kinds),
        "model written by": f"sleepstage {meta.get('sleepstage_version', '?')} on {meta.get('created', '?')}",
        "trained on": f"{len(training.get('train_subjects', []))} subjects, {len(training.get('train_nights', []))} "
                      f"nights of {dataset_label(training.get('dataset'))}",
        "validation accuracy": validation.get("accuracy"),
        "validation macro-F1": validation.get("macro_f1"),
        "validation kappa": validation.get("kappa"),
        "probabilities": _calibration_text(meta, loaded.temperature),
        "scored with": f"sleepstage {__version__}",
        "scored at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _alternatives(names: tuple[str, ...] | list[str], at_most: int = 3) -> str:
    shown = " or ".join(names[:at_most]) or "?"
    return shown + (f" (or {len(names) - at_most} other names)" if len(names) > at_most else "")


def model_card(loaded: LoadedModel) -> dict[str, str]:
    """The model in a few lines for the staging report's model card: network, channels, what it was trained
    and validated on."""
    meta = loaded.meta
    training = meta.get("training") or {}
    validation = meta.get("validation") or {}
    arch = meta.get("architecture") or {}
    spec = loaded.channel_spec
    nights, subjects = len(training.get("train_nights", [])), len(training.get("train_subjects", []))
    card = {"Network": f"{arch.get('net', '?')}, sequences of {arch.get('seq_len', '?')} epochs of 30 s",
            "Channels": "; ".join(f"{k.upper()}: {_alternatives(spec.candidates.get(k, ()))}" for k in spec.kinds),
            "Trained on": f"{nights} nights of {subjects} subjects, {dataset_label(training.get('dataset'))}"}
    if validation:
        acc, kappa = validation.get("accuracy"), validation.get("kappa")
        n_val = len(training.get("val_nights", []))
        parts = [f"accuracy {100 * acc:.1f} %" if isinstance(acc, (int, float)) else "",
                 f"kappa {kappa:.3f}" if isinstance(kappa, (int, float)) else ""]
        card["Validation"] = ", ".join(p for p in parts if p) + f" on {n_val} held-out night{'s' * (n_val != 1)}"
    card["Model file"] = _model_file(loaded.path) or "?"
    from sleepstage_cli.model.card import report_rows  # licence and intended use (sleepstage models show: all)

    card.update({k: v for k, v in report_rows(meta, None).items()})
    return card


def stage_names(stages: np.ndarray) -> list[str]:
    """W/N1/N2/N3/REM, or ``?`` for an epoch left unscored."""
    return [STAGES[s] if s >= 0 else "?" for s in stages]
