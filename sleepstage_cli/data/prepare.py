"""``sleepstage prepare``: EDF nights + hypnograms -> a prepared dataset (see dataset.py).

Per night, data flows one way: header -> channels resolved -> hypnogram read, aligned, clipped to
the signal (and trimmed) -> each channel read, derived, filtered, resampled, standardised (unless the
options' Conditioning says not to) -> 30-s
windows cut at the scored onsets -> one night file, whose sha256 (of the bytes as they are written)
goes into the night's manifest entry. Nights run in worker processes with ``jobs > 1``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import json
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sleepstage_cli.conditioning.recording import load_conditioned
from sleepstage_cli.conditioning.signals import EPOCH_SECONDS, Conditioning
from sleepstage_cli.data.dataset import (
    MANIFEST,
    NIGHTS_DIR,
    Journal,
    merge_journal,
    new_manifest,
    night_dtype,
    read_journal,
    save_manifest,
    write_night,
)
from sleepstage_cli.errors import InputError, SleepstageError, WriteError
from sleepstage_cli.fsutil import check_writable_folder, read_json
from sleepstage_cli.interrupts import GracefulStop, die_with_parent
from sleepstage_cli.io.channels import ChannelSpec, resolve_channels
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.hypnogram import Hypnogram, keep_within_signal, read_hypnogram, trim_wake
from sleepstage_cli.io.layout import NightSource, Skip
from sleepstage_cli.locks import exclusive_lock, refuse_if_locked
from sleepstage_cli.stages import UNSCORED

DEFAULT_MIN_HOURS = {"mass": 5.0}
DEFAULT_TRIM_MINUTES = {"sleep-edf": 30.0}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(SleepstageError):
    """The disk (or quota) is full: an error of the run, not of the night being written."""


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides a prepared dataset's content (compared when a run is resumed)."""

    layout: str
    spec: ChannelSpec
    conditioning: Conditioning = Conditioning()
    trim_wake_minutes: float | None = None
    min_hours: float = 0.0
    epoch_length: float | None = None

    def to_dict(self) -> dict:
        return {"layout": self.layout, "trim_wake_minutes": self.trim_wake_minutes,
                "min_hours": self.min_hours, "epoch_length": self.epoch_length}


@dataclass
class NightResult:
    """Outcome of one night: ``record`` (its manifest entry) when prepared, else ``reason``.

    ``fatal`` is set when the night failed for a reason that stops the whole run (a full disk).
    """

    night_id: str
    psg: Path
    record: dict | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    internal_error: str = ""
    fatal: str = ""

    @property
    def ok(self) -> bool:
        return self.record is not None


def _align(hyp: Hypnogram, hyp_path: Path, psg_path: Path, psg_start) -> Hypnogram:
    """Express hypnogram onsets in seconds from the PSG's start when the two files start apart."""
    if hyp_path == psg_path or psg_start is None or hyp_path.suffix.lower() not in (".edf", ".bdf"):
        return hyp
    hyp_start = read_header(hyp_path).start
    if hyp_start is None or hyp_start == psg_start:
        return hyp
    delta = (hyp_start - psg_start).total_seconds()
    if abs(delta) > 86400:  # anonymised dates: the clocks are not comparable, onsets are already relative
        hyp.notes.append(f"hypnogram and PSG start dates differ by {abs(delta) / 86400:.0f} days; "
                         "onsets taken as seconds from the PSG's start")
        return hyp
    out = hyp.shifted(delta)
    out.notes.append(f"hypnogram starts {delta:+g} s from the PSG; onsets shifted to the PSG's clock")
    return out


def prepare_night(src: NightSource, opts: PrepareOptions, out_root: Path) -> NightResult:
    """Prepare one night into ``out_root/nights/<id>.npy``; never raises for bad input."""
    result = NightResult(night_id=src.night_id, psg=src.psg)
    try:
        _prepare_night(src, opts, out_root, result)
    except DiskFullError as exc:
        result.fatal = str(exc)
    except SleepstageError as exc:
        result.record = None
        result.reason = str(exc)
    except MemoryError:
        result.reason = f"{src.psg}: out of memory"
    except Exception as exc:  # a bug, not bad input: keep the traceback for --debug
        result.reason = f"{src.psg}: internal error: {exc!r}"
        result.internal_error = traceback.format_exc()
    return result


def _prepare_night(src: NightSource, opts: PrepareOptions, out_root: Path, result: NightResult) -> None:
    header = read_header(src.psg)
    if not header.signals:
        raise InputError("holds no signals (an annotations-only file)", src.psg)
    channels = resolve_channels(header, opts.spec)
    if src.hypnogram is None:
        raise InputError(src.missing_hypnogram, src.psg)
    hours = header.duration / 3600.0
    if hours < opts.min_hours:
        raise InputError(f"only {hours:.2f} h of signal, under the {opts.min_hours:g} h minimum "
                         "(rejected as suspicious, as the original method does; see --min-hours)", src.psg)

    hyp = read_hypnogram(src.hypnogram, epoch_length=opts.epoch_length)
    hyp = _align(hyp, src.hypnogram, src.psg, header.start)
    result.warnings.extend(f"{src.hypnogram.name}: {n}" for n in hyp.notes)
    # R&K 20-s epochs are widened to 30 s with 5 s of context each side (as the original method does).
    window_offset = -(EPOCH_SECONDS - hyp.epoch_length) / 2.0
    kept, before, after = keep_within_signal(hyp, header.duration, window_offset, EPOCH_SECONDS)
    if after:
        result.warnings.append(
            f"{src.hypnogram.name}: the hypnogram runs past the signal ({header.duration:g} s): "
            f"{after} epoch(s) after it dropped")
    if before:
        result.warnings.append(f"{src.hypnogram.name}: {before} epoch(s) without a full 30-s window at the "
                               "start of the recording dropped")
    if len(kept) == 0:
        raise InputError(f"no scored epoch of {src.hypnogram.name} lies within the signal "
                         f"({header.duration:g} s); is it this night's hypnogram?", src.psg)
    if opts.trim_wake_minutes is not None:
        trimmed = trim_wake(kept, opts.trim_wake_minutes)
        if trimmed is None:  # an excerpt of wake: nothing to trim around, and nothing to drop
            result.warnings.append(f"{src.hypnogram.name}: no sleep epoch lies within the signal, so no wake was "
                                   f"trimmed: all {len(kept)} epoch(s) there are kept")
        else:
            kept = trimmed
    if not (kept.stages >= 0).any():
        result.warnings.append(f"{src.hypnogram.name}: every kept epoch is unscored")

    with EdfReader(src.psg, header) as reader:
        signals = load_conditioned(reader, channels, opts.conditioning)
    result.warnings.extend(signals.notes)
    starts = kept.onsets + window_offset
    x = signals.epochs(starts)
    missing, flat = signals.marked_fraction(starts)
    labels = kept.stages.astype(np.int8).copy()
    marked = ((missing > 0) | (flat > 0)).any(axis=1) & (labels >= 0)
    if marked.any():
        labels[marked] = UNSCORED  # kept in place, never trained on
        result.warnings.append(f"{int(marked.sum())} scored epoch(s) overlap flat or missing signal and are "
                               "masked")
    kept = replace(kept, stages=labels)

    rel = f"{NIGHTS_DIR}/{src.night_id}.npy"
    try:
        sha256 = write_night(out_root / rel, x, kept.onsets.astype(np.float64), kept.stages)
    except WriteError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        needed = x.shape[0] * night_dtype(x.shape[1]).itemsize
        raise DiskFullError(f"{exc} (this night needs about {needed / 1e6:.1f} MB)") from None
    stat = src.psg.stat()
    result.record = {
        "id": src.night_id,
        "subject": src.subject,
        "file": rel,
        "sha256": sha256,  # of the night file: part of the dataset's identity (PreparedDataset.identity)
        "psg": str(src.psg),
        "hypnogram": str(src.hypnogram),
        "psg_size": stat.st_size,
        "psg_mtime": stat.st_mtime,
        "n_epochs": len(kept),
        "stage_counts": kept.counts(),
        "signal_hours": round(hours, 4),
        "epoch_length": kept.epoch_length,
        "window_offset": window_offset,
        "first_onset": float(kept.onsets[0]),
        # unit and amplitude (std before standardisation, uV): what a model's fit check compares recordings with
        "channels": {ch.kind: {"expression": ch.expression, "rate": ch.sampling_rate, "unit": ch.plus.unit.strip(),
                               "amplitude": round(float(amp), 4)}
                     for ch, amp in zip(channels, signals.amplitudes)},
        "warnings": list(result.warnings),
    }


@contextlib.contextmanager
def _single_threaded_children():
    """Worker processes each use one thread for BLAS: N workers on N cores, not N x cores threads that
    spin against each other (which made --jobs 2 no faster than --jobs 1)."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _worker(args: tuple[NightSource, PrepareOptions, Path]) -> NightResult:
    return prepare_night(*args)


@dataclass
class PrepareSummary:
    """What a prepare run did."""

    root: Path
    layout: str
    prepared: list[dict]
    kept: list[dict]
    skipped: list[dict]
    manifest: dict
    internal_errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    remaining: int = 0  # nights not attempted because the run was interrupted


def _source_unchanged(entry: dict, src: NightSource) -> bool:
    try:
        stat = src.psg.stat()
    except OSError:
        return False
    return (entry.get("psg") == str(src.psg) and entry.get("psg_size") == stat.st_size
            and entry.get("psg_mtime") == stat.st_mtime and entry.get("hypnogram") == str(src.hypnogram))


def open_output(root: Path, manifest: dict, force: bool, dry_run: bool = False) -> tuple[dict, bool]:
    """Decide what happens to an existing output folder.

    Returns the manifest to continue from and whether it was resumed. A dataset prepared with the
    same options is resumed; anything else there is refused unless ``force``. ``dry_run`` only
    refuses: the night files of a dataset rebuilt with ``force`` are deleted on the real call.
    """
    if root.exists() and not root.is_dir():
        raise SleepstageError("output exists and is a file, not a dataset folder", root)
    check_writable_folder(root, f"dataset {root}")
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as a manifest read back has them
    existing_manifest = root / MANIFEST
    if existing_manifest.exists():
        old = read_json(existing_manifest, "dataset manifest")
        if not isinstance(old, dict) or not isinstance(old.get("nights", []), list):
            raise SleepstageError(f"{MANIFEST} is not a sleepstage dataset manifest; pass --force to rebuild it or "
                                  "choose another folder", root)
        same = (all(old.get(k) == manifest[k] for k in ("format_version", "channel_spec", "options"))
                and _conditioning(old) == manifest["conditioning"])
        if same and not force:
            return old, True
        if not force and old.get("nights"):
            raise SleepstageError(f"output already holds a dataset prepared with other options "
                                  f"({_differences(old, manifest)}); pass --force to rebuild it or choose "
                                  "another folder", root)
        for entry in [] if dry_run else old.get("nights", []):
            own = _own_night_file(root, entry)
            if own is not None:
                own.unlink(missing_ok=True)
        return manifest, False
    # The lock and temporary files of a run starting right now do not make the folder someone else's.
    theirs = [p for p in root.iterdir() if p.name != ".lock" and not (p.name[:1] == "." and p.name.endswith(".tmp"))
              ] if root.exists() else []
    if theirs and not force:
        raise SleepstageError("output folder exists and is not a sleepstage dataset; pass --force to write "
                              "into it or choose another folder", root)
    return manifest, False


def _own_night_file(root: Path, entry: object) -> Path | None:
    """The file an old manifest entry names, when it is provably one prepare wrote, else None.

    A manifest is untrusted input: only ``nights/<id>.npy`` resolving to a file directly inside this
    dataset's own nights folder counts, never an absolute path, ``..``, a link or another name.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("file"), str):
        return None
    if entry["file"] != f"{NIGHTS_DIR}/{entry['id']}.npy":
        return None
    path = root / entry["file"]
    if path.is_symlink() or not path.is_file() or path.resolve().parent != root.resolve() / NIGHTS_DIR:
        return None
    return path


def _conditioning(manifest: dict) -> dict | None:
    """A manifest's conditioning as this version writes it (a dict of an older version gains the defaults
    it was made with, so its dataset resumes), or None when it is not one."""
    try:
        return json.loads(json.dumps(Conditioning.from_dict(manifest.get("conditioning")).to_dict()))
    except (TypeError, ValueError, AttributeError):
        return None


def _onoff(value: object) -> str:
    return "on" if value is True else "off" if value is False else str(value)


def _differences(old: dict, new: dict) -> str:
    """Which prepare options differ between two manifests, e.g. "channels eeg,eog,emg -> eeg,eog"."""
    changes = []
    old_spec, new_spec = old.get("channel_spec", {}), new["channel_spec"]
    if old_spec.get("kinds") != new_spec["kinds"]:
        changes.append(f"channels {','.join(old_spec.get('kinds', []))} -> {','.join(new_spec['kinds'])}")
    elif old_spec != new_spec:
        changes.append("channel labels")
    for key, value in new["options"].items():
        if old.get("options", {}).get(key) != value:
            before = old.get("options", {}).get(key)
            changes.append(f"{key} {'off' if before is None else before} -> {'off' if value is None else value}")
    old_cond, new_cond = _conditioning(old), dict(new["conditioning"])
    for key in ("standardise", "filters"):  # the choices prepare's options make, by name
        before, after = (old_cond or {}).pop(key, None), new_cond.pop(key)
        if old_cond is not None and before != after:
            changes.append(f"{key} {_onoff(before)} -> {_onoff(after)}")
    if old_cond != new_cond:
        changes.append("filter settings")
    if old.get("format_version") != new["format_version"]:
        changes.append(f"format version {old.get('format_version')} -> {new['format_version']}")
    return "; ".join(changes) or "options"


def run_prepare(nights: list[NightSource], skips: list[Skip], root: Path, opts: PrepareOptions,
                jobs: int = 1, force: bool = False,
                on_start: Callable[[int, int], None] | None = None,
                on_result: Callable[[NightResult], None] | None = None) -> PrepareSummary:
    """Prepare ``nights`` into the dataset at ``root`` (resuming a run with the same options).

    ``on_start(to_do, already_there)`` and ``on_result(result)`` report progress. The manifest is
    written at the start and the end of the run; in between each finished night goes to the journal.
    A full disk stops the run with a DiskFullError, keeping the nights finished.
    """
    fresh = new_manifest(opts.spec.to_dict(), opts.conditioning.to_dict(), opts.to_dict())
    try:
        open_output(root, fresh, force, dry_run=True)  # refuse before anything is written or locked
    except SleepstageError:
        refuse_if_locked(root)  # what looked foreign may be a run starting right now: say that instead
        raise
    with exclusive_lock(root):
        _fold_journal(root)  # the nights a killed run finished
        # Decided again under the lock: nothing is deleted while another run is writing here.
        manifest, resumed = open_output(root, fresh, force)
        journal = Journal(root)
        journal.discard()  # its nights are in the manifest now, or belonged to the dataset being rebuilt
        if resumed:
            by_id = {n.night_id: n for n in nights}
            manifest["nights"] = [e for e in manifest["nights"]
                                  if e["id"] in by_id and (root / e["file"]).exists()
                                  and _source_unchanged(e, by_id[e["id"]])]
        kept = list(manifest["nights"])
        done_ids = {e["id"] for e in kept}
        todo = [n for n in nights if n.night_id not in done_ids]
        manifest["skipped"] = [{"night": s.path.stem, "path": str(s.path), "reason": f"{s.path}: {s.reason}"}
                               for s in skips]
        save_manifest(root, manifest)
        (root / NIGHTS_DIR).mkdir(exist_ok=True)
        if on_start:
            on_start(len(todo), len(kept))

        summary = PrepareSummary(root=root, layout=opts.layout, prepared=[], kept=kept,
                                 skipped=list(manifest["skipped"]), manifest=manifest)
        rec = _Recorder(manifest, summary, journal, on_result)
        with GracefulStop("prepare") as stop:
            try:
                _run_nights(todo, opts, root, jobs, stop, rec)
            except BaseException:
                _save_run(root, manifest, journal, quiet=True)
                raise
        _save_run(root, manifest, journal, quiet=bool(rec.fatal))
        _remove_stray_temp_files(root / NIGHTS_DIR)
        if rec.fatal:
            raise DiskFullError(f"{rec.fatal}; the run stopped: free some space and run the same command again to "
                                f"continue ({len(manifest['nights'])} prepared night(s) are kept)")
        summary.interrupted = stop.requested
        summary.remaining = len(todo) - len(rec.attempted)
        summary.manifest = manifest
        return summary


class _Recorder:
    """Takes each night's outcome into the manifest (in memory) and the journal (on disk, at once)."""

    def __init__(self, manifest: dict, summary: PrepareSummary, journal: Journal,
                 on_result: Callable[[NightResult], None] | None) -> None:
        self.manifest, self.summary, self.journal, self.on_result = manifest, summary, journal, on_result
        self.attempted: set[str] = set()
        self.fatal = ""  # the first error of the run (a full disk): no new night starts

    def __call__(self, res: NightResult) -> None:
        self.attempted.add(res.night_id)
        if res.fatal:
            self.fatal = self.fatal or res.fatal
            return
        if res.ok:
            self.manifest["nights"].append(res.record)
            self.summary.prepared.append(res.record)
            try:
                self.journal.append(res.record)
            except WriteError as exc:  # the night is complete; it reaches the manifest at the end of the run
                if exc.errno not in _DISK_FULL:
                    raise
                self.fatal = self.fatal or str(exc)
        else:
            self.manifest["skipped"].append({"night": res.night_id, "path": str(res.psg), "reason": res.reason})
            self.summary.skipped = list(self.manifest["skipped"])
            if res.internal_error:
                self.summary.internal_errors.append(res.internal_error)
        if self.on_result:
            self.on_result(res)


def _run_nights(todo: list[NightSource], opts: PrepareOptions, root: Path, jobs: int, stop: GracefulStop,
                rec: _Recorder) -> None:
    """Prepare ``todo`` here or in ``jobs`` worker processes, until done, stopped or a fatal error."""
    if jobs <= 1 or len(todo) <= 1:
        for src in todo:
            if stop.requested or rec.fatal:
                break
            rec(prepare_night(src, opts, root))
        return
    # Workers end with this process however it ends (kill -9 included), instead of living on as orphans.
    with _single_threaded_children(), \
            cf.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_worker, (src, opts, root)) for src in todo]
        try:
            for fut in cf.as_completed(futures):
                if stop.requested or rec.fatal:  # nights in progress finish (their files are atomic); no new ones
                    for other in futures:
                        other.cancel()
                if not fut.cancelled():
                    rec(fut.result())
        finally:
            for other in futures:  # after an error too: the pool must not go on with the nights left
                other.cancel()


def _fold_journal(root: Path) -> None:
    """Fold a killed run's journal into its manifest (left alone when the manifest is not readable)."""
    entries = read_journal(root)
    if not entries or not (root / MANIFEST).exists():
        return
    try:
        manifest = read_json(root / MANIFEST, "dataset manifest")
    except SleepstageError:
        return
    nights = manifest.get("nights") if isinstance(manifest, dict) else None
    if isinstance(nights, list) and all(isinstance(n, dict) and isinstance(n.get("id"), str) for n in nights):
        manifest["nights"] = merge_journal(nights, entries)
        save_manifest(root, manifest)


def _save_run(root: Path, manifest: dict, journal: Journal, quiet: bool) -> None:
    """Write the run's manifest; the journal goes only once the manifest holds its nights.

    ``quiet``: the run is already failing; a manifest that cannot be written now (a full disk) is
    left to the journal, which the next run (and every reader) folds in.
    """
    journal.close()
    try:
        save_manifest(root, manifest)
    except OSError:
        if not quiet:
            raise
        return
    journal.discard()


def _remove_stray_temp_files(folder: Path) -> None:
    # Temporary files of a run killed with SIGKILL cannot clean themselves up.
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


def default_jobs() -> int:
    """Worker processes to use when the user does not say: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))
