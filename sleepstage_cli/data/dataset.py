"""The prepared-dataset format: a folder with ``manifest.json`` and one ``nights/<id>.npy`` per night.

Each night file is a standard NumPy ``.npy`` holding a structured array, one record per epoch:
``x`` (channels x 3000 float32 conditioned samples at 100 Hz), ``onset`` (float64 seconds from the
start of the recording) and ``label`` (int8: 0-4 for W, N1, N2, N3, REM, -1 unscored). It opens
memory-mapped, so training touches only the epochs it reads and hundreds of nights never sit in
memory together. Files are written under a temporary name and renamed into place, so a killed run
leaves no half-written night behind. A run appends each finished night to ``manifest.journal`` (one JSON
line, on disk before the next night) and folds it into the manifest at its end: writing the manifest once
per run keeps a run linear in its nights, and a killed run loses no finished night (readers merge the
journal; the next run folds it in).

A night's manifest entry records the ``sha256`` of its night file, computed as the file is written
(an optional field: datasets prepared before it was added open as before). It feeds the dataset's
identity (:meth:`PreparedDataset.identity`): its folder name and a digest of its content, the way model
files, run folders and reports name a dataset instead of by its path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstage_cli import __version__
from sleepstage_cli.conditioning.signals import Conditioning
from sleepstage_cli.constants import EPOCH_SAMPLES
from sleepstage_cli.constants import SAMPLING_RATE as TARGET_RATE
from sleepstage_cli.digests import HashingWriter, file_sha256, is_sha256, last_name, named
from sleepstage_cli.errors import InputError, WriteError
from sleepstage_cli.fsutil import atomic_open, atomic_write_json, read_json
from sleepstage_cli.stages import STAGES

FORMAT = "sleepstage-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "manifest.journal"
NIGHTS_DIR = "nights"


def night_dtype(n_channels: int) -> np.dtype:
    """Record layout of a night file for ``n_channels`` channels."""
    return np.dtype([("x", "<f4", (n_channels, EPOCH_SAMPLES)), ("onset", "<f8"), ("label", "i1")], align=True)


def write_night(path: Path, x: np.ndarray, onsets: np.ndarray, labels: np.ndarray) -> str:
    """Write one night's epochs atomically. ``x`` is (n_epochs, channels, 3000). Returns the file's sha256.

    The digest is of the bytes as they are written (no second read). They go through Python's file
    I/O (:class:`~sleepstage_cli.digests.HashingWriter`), so a full disk raises OSError(ENOSPC), which
    prepare tells from a bad night.
    """
    n, c, s = x.shape
    if s != EPOCH_SAMPLES or onsets.shape != (n,) or labels.shape != (n,):
        raise ValueError("epochs, onsets and labels disagree in shape")
    rec = np.zeros(n, dtype=night_dtype(c))
    rec["x"] = x
    rec["onset"] = onsets
    rec["label"] = labels
    with atomic_open(path, "wb") as fh:
        out = HashingWriter(fh)
        np.save(out, rec, allow_pickle=False)
    return out.hexdigest()


def open_night(path: Path) -> np.ndarray:
    """Memory-map a night file (read-only structured array)."""
    try:
        rec = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError("night file of the prepared dataset is missing", path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"night file of the prepared dataset is unreadable: {exc}", path) from None
    if rec.dtype.names is None or not {"x", "onset", "label"} <= set(rec.dtype.names):
        raise InputError("not a sleepstage night file", path)
    return rec


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, from its header alone."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        return shape, dtype, fh.tell()


def check_night_file(path: Path, n_epochs: int, n_channels: int) -> None:
    """Check a night file against its manifest entry without reading its data."""
    try:
        shape, dtype, offset = _npy_header(path)
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError("night file of the prepared dataset is missing", path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"night file of the prepared dataset is unreadable: {exc}", path) from None
    names = set(dtype.names or ())
    if not {"x", "onset", "label"} <= names or len(dtype["x"].shape) != 2 or dtype["x"].shape[1] != EPOCH_SAMPLES:
        raise InputError("not a sleepstage night file", path)
    if dtype["x"].shape[0] != n_channels:
        raise InputError(f"night file holds {dtype['x'].shape[0]} channel(s) but the dataset has {n_channels}; "
                         "prepare the dataset again", path)
    if shape != (n_epochs,):
        raise InputError(f"night file holds {shape[0] if len(shape) == 1 else shape} epochs but the manifest "
                         f"says {n_epochs}; prepare the dataset again", path)
    if size < offset + n_epochs * dtype.itemsize:
        raise InputError(f"night file of the prepared dataset is unreadable: truncated ({size} of "
                         f"{offset + n_epochs * dtype.itemsize} bytes)", path)


def _well_formed(entry: object) -> bool:
    return (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("id", "subject", "file"))
            and isinstance(entry.get("n_epochs"), int) and not isinstance(entry["n_epochs"], bool)
            and entry["n_epochs"] >= 0)


def _check_unique_ids(entries: list[dict], root: Path) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry["id"] in seen:
            raise InputError(f"{MANIFEST} lists night {entry['id']!r} twice; prepare the dataset again", root)
        seen.add(entry["id"])


@dataclass(frozen=True)
class NightRecord:
    """A night of a prepared dataset as the manifest describes it."""

    id: str
    subject: str
    file: str
    n_epochs: int
    meta: dict

    @property
    def stage_counts(self) -> dict[str, int]:
        return self.meta.get("stage_counts", {})


class PreparedDataset:
    """Read access to a prepared dataset folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError("prepared dataset folder not found" if not self.root.exists()
                             else "is a file, not a prepared dataset folder", self.root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.exists():
            raise InputError(f"not a prepared dataset (no {MANIFEST}); make one with 'sleepstage prepare'",
                             self.root)
        self.manifest = read_json(manifest_path, "dataset manifest")
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise InputError(f"{MANIFEST} is not a sleepstage dataset manifest", self.root)
        version = self.manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(f"dataset format version {version} is newer than this sleepstage reads "
                             f"({FORMAT_VERSION}); upgrade sleepstage", self.root)
        entries = self.manifest.get("nights", [])
        if not isinstance(entries, list) or not all(map(_well_formed, entries)):
            raise InputError(f"{MANIFEST} is damaged (a malformed night entry); prepare the dataset again",
                             self.root)
        spec = self.manifest.get("channel_spec")
        kinds = spec.get("kinds") if isinstance(spec, dict) else None
        if not (isinstance(kinds, list) and kinds and all(isinstance(k, str) for k in kinds)):
            raise InputError(f"{MANIFEST} is damaged (no list of channel kinds); prepare the dataset again",
                             self.root)
        _check_unique_ids(entries, self.root)
        # A run that was killed left its finished nights in the journal; they are part of the dataset.
        self.manifest["nights"] = merge_journal(entries, read_journal(self.root))
        self.nights = [NightRecord(id=n["id"], subject=n["subject"], file=n["file"], n_epochs=n["n_epochs"],
                                   meta=n) for n in self.manifest["nights"]]
        self._validate()

    def _validate(self) -> None:
        """Check every night file before use: inside the folder, one file per night, the manifest's shape."""
        root = self.root.resolve()
        owners: dict[Path, str] = {}
        for n in self.nights:
            path = (self.root / n.file).resolve()
            if root not in path.parents:
                raise InputError(f"{MANIFEST}: night {n.id!r} names a file outside the dataset folder ({n.file}); "
                                 "prepare the dataset again", self.root)
            if path in owners:
                raise InputError(f"{MANIFEST}: nights {owners[path]!r} and {n.id!r} share one file ({n.file}); "
                                 "prepare the dataset again", self.root)
            owners[path] = n.id
            check_night_file(self.root / n.file, n.n_epochs, len(self.channels))

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.manifest["channel_spec"]["kinds"])

    @property
    def conditioning(self) -> Conditioning:
        """How the nights were conditioned: ``.standardise`` (bool) and ``.filters`` ("sleepstage" or
        "original") among the filter settings. A dataset prepared before those choices existed gets the
        defaults it was made with (standardised, sleepstage filters)."""
        try:
            return Conditioning.from_dict(self.manifest.get("conditioning"))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{MANIFEST} is damaged (its conditioning: {exc}); prepare the dataset again",
                             self.root) from None

    @property
    def subjects(self) -> list[str]:
        return sorted({n.subject for n in self.nights})

    def night(self, night_id: str) -> NightRecord:
        for n in self.nights:
            if n.id == night_id:
                return n
        raise InputError(f"no night {night_id!r} in the dataset", self.root)

    def open(self, night: NightRecord | str) -> np.ndarray:
        """Memory-mapped records of one night (fields x, onset, label)."""
        rec = night if isinstance(night, NightRecord) else self.night(night)
        return open_night(self.root / rec.file)

    def identity(self) -> dict:
        """How model files, run folders and reports name the dataset: ``{"name": ..., "sha256": ...}``.

        ``name`` is the folder's name; ``sha256`` is a digest of the content that defines the data: the
        channel spec, the conditioning and, per night, its id, subject, number of epochs and the sha256
        of its night file. Never paths or creation times: a copied or moved dataset keeps its digest, a
        night prepared differently changes it. prepare records each night file's digest as it writes
        it (that recorded digest is trusted: sleepstage never changes a night file in place); for a
        dataset prepared before it did, the night files are read here to hash them (streamed, and
        once per process while a file is unchanged).
        """
        nights = [{"id": n.id, "subject": n.subject, "n_epochs": n.n_epochs,
                   "sha256": n.meta["sha256"] if is_sha256(n.meta.get("sha256")) else file_sha256(self.root / n.file)}
                  for n in self.nights]
        content = {"format": FORMAT, "channel_spec": self.manifest.get("channel_spec"),
                   "conditioning": self.manifest.get("conditioning"), "nights": nights}
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return {"name": Path(os.path.abspath(self.root)).name, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def dataset_label(recorded: object) -> str:
    """A dataset as a model's metadata or a run folder records it, for people: ``name (sha256 abcdef123456)``.

    Files of an older sleepstage record the dataset's absolute path: only its folder name is shown.
    """
    if isinstance(recorded, dict) and isinstance(recorded.get("name"), str):
        return named(recorded["name"], recorded["sha256"]) if is_sha256(recorded.get("sha256")) else recorded["name"]
    if isinstance(recorded, str) and last_name(recorded):
        return last_name(recorded)
    return "?"


def same_dataset(recorded: object, identity: dict) -> bool:
    """Whether a recorded dataset is the one of ``identity`` (:meth:`PreparedDataset.identity`).

    One recorded by an older sleepstage (its absolute path) can only be told by its folder name.
    """
    if isinstance(recorded, str):
        return last_name(recorded) == identity["name"]
    return recorded == identity


def same_description(recorded: object, current: dict) -> bool:
    """Whether a recorded description (a checkpoint's fingerprint...) is ``current``, whose
    ``"dataset"`` is an identity: equal, or equal but for the dataset recorded as a path by an older
    sleepstage with the same folder name."""
    if not isinstance(recorded, dict):
        return False
    old = recorded.get("dataset")
    if isinstance(old, str) and same_dataset(old, current["dataset"]):
        recorded = {**recorded, "dataset": current["dataset"]}
    return recorded == current


def new_manifest(channel_spec: dict, conditioning: dict, options: dict) -> dict:
    """The manifest of an empty dataset."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"sleepstage {__version__}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sampling_rate": TARGET_RATE,
        "epoch_samples": EPOCH_SAMPLES,
        "classes": list(STAGES),
        "channel_spec": channel_spec,
        "conditioning": conditioning,
        "options": options,
        "nights": [],
        "skipped": [],
    }


def save_manifest(root: Path, manifest: dict) -> None:
    """Rewrite the manifest atomically, nights sorted by id."""
    manifest["nights"] = sorted(manifest["nights"], key=lambda n: n["id"])
    atomic_write_json(root / MANIFEST, manifest)


def read_journal(root: Path) -> list[dict]:
    """The night entries a run appended to ``root/manifest.journal`` (none when there is no journal).

    Only whole lines count: the last one of a run killed while appending is left out.
    """
    try:
        text = (root / JOURNAL).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the dataset's journal: {exc}", root / JOURNAL) from None
    entries = []
    for line in text.splitlines(keepends=True):
        try:
            entry = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            entry = None
        if _well_formed(entry):
            entries.append(entry)
    return entries


def merge_journal(nights: list[dict], journal: list[dict]) -> list[dict]:
    """The manifest's nights with the journal's folded in (a journal entry replaces one of the same id)."""
    by_id = {n["id"]: n for n in nights}
    by_id.update((n["id"], n) for n in journal)
    return sorted(by_id.values(), key=lambda n: n["id"])


class Journal:
    """Appends a run's finished nights to ``root/manifest.journal``: each on disk before the next night."""

    def __init__(self, root: Path) -> None:
        self.path = root / JOURNAL
        self._fh = None

    def append(self, entry: dict) -> None:
        try:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
                _fsync_folder(self.path.parent)  # the new file's name survives a power cut too
            self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            err = WriteError(f"cannot write the file: {exc.strerror or exc}", self.path)
            err.errno = exc.errno
            raise err from None

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """Remove the journal (once the manifest holds its nights, or they belong to a dataset rebuilt)."""
        self.close()
        self.path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the data itself is synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


