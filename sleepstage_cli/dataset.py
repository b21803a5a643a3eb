"""The prepared-dataset format: a folder with ``manifest.json`` and one ``nights/<id>.npy`` per night.

Each night file is a standard NumPy ``.npy`` holding a structured array, one record per epoch:
``x`` (channels x 3000 float32 conditioned samples at 100 Hz), ``onset`` (float64 seconds from the
start of the recording) and ``label`` (int8: 0-4 for W, N1, N2, N3, REM, -1 unscored). It opens
memory-mapped, so training touches only the epochs it reads and hundreds of nights never sit in
memory together. Files are written under a temporary name and renamed into place; the manifest is
rewritten atomically after each night, so a killed run leaves no half-written night behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sleepstage_cli import __version__
from sleepstage_cli.constants import EPOCH_SAMPLES
from sleepstage_cli.constants import SAMPLING_RATE as TARGET_RATE
from sleepstage_cli.errors import InputError, SleepstageError
from sleepstage_cli.fsutil import atomic_open, atomic_write_json, read_json
from sleepstage_cli.stages import STAGES

FORMAT = "sleepstage-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NIGHTS_DIR = "nights"


def night_dtype(n_channels: int) -> np.dtype:
    """Record layout of a night file for ``n_channels`` channels."""
    return np.dtype([("x", "<f4", (n_channels, EPOCH_SAMPLES)), ("onset", "<f8"), ("label", "i1")], align=True)


def write_night(path: Path, x: np.ndarray, onsets: np.ndarray, labels: np.ndarray) -> None:
    """Write one night's epochs atomically. ``x`` is (n_epochs, channels, 3000)."""
    n, c, s = x.shape
    if s != EPOCH_SAMPLES or onsets.shape != (n,) or labels.shape != (n,):
        raise ValueError("epochs, onsets and labels disagree in shape")
    rec = np.zeros(n, dtype=night_dtype(c))
    rec["x"] = x
    rec["onset"] = onsets
    rec["label"] = labels
    with atomic_open(path, "wb") as fh:
        np.save(fh, rec, allow_pickle=False)


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
        try:
            self.nights = [NightRecord(id=n["id"], subject=n["subject"], file=n["file"], n_epochs=n["n_epochs"],
                                       meta=n) for n in self.manifest.get("nights", [])]
        except (KeyError, TypeError):
            raise InputError(f"{MANIFEST} is damaged (a malformed night entry); prepare the dataset again",
                             self.root) from None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.manifest["channel_spec"]["kinds"])

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


@contextlib.contextmanager
def exclusive_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for the whole run; a second writer is refused at once."""
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                raise SleepstageError(f"another sleepstage run (pid {owner}) is writing to this folder; "
                                      "wait for it to finish or choose another output", root) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
