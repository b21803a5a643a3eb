"""Training-time cache of the front end's spectrograms, one memory-mapped file per night.

A training window of L epochs is drawn at every stride-1 position, so each epoch passes through the
front end L times a pass; on a CPU that STFT (float64, for exact features) took more than half of a
training step. The cache computes each epoch's spectrogram once, with the very same
SpectrogramFrontEnd module on the training device, and the steps read it back. Scoring computes
spectrograms on the fly with that module, so training and scoring see identical features.

The cache lives in ``DATASET/cache/spectrograms-<key>/`` (the key covers the front end's settings and
the channels used), shared by every training run and cross-validation fold on the dataset; a night's
entry is recomputed when its night file changes. Files are written under temporary names and renamed,
so a killed run leaves nothing half-written; the folder may be deleted at any time. When the dataset
folder cannot be written, a temporary folder is used for the run.

The files are written with ordinary file I/O, not through a memory map: a full disk is then an
ENOSPC error (reported with the space the cache needs) instead of a SIGBUS that kills the process.
A temporary file is locked (flock) while it is written, so the next cache open removes exactly the
temporary files of killed runs and never one that a concurrent run (another fold) is writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch

from sleepstage_cli.data.dataset import NightRecord, PreparedDataset
from sleepstage_cli.errors import WriteError
from sleepstage_cli.spectrograms.frontend import SpectrogramFrontEnd

CACHE_VERSION = 1
CHUNK = 256  # epochs per front-end call
LOCK = ".lock"  # held (briefly) while a temporary file is made and locked, and while leftovers are cleared
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def cache_key(front: SpectrogramFrontEnd, index: list[int]) -> str:
    """Identifies what is cached: front-end settings and the dataset channels used."""
    desc = {"version": CACHE_VERSION, "n_samples": front.n_samples, "win": front.win_length,
            "hop": front.hop_length, "n_fft": front.n_fft, "floor": front.mag_floor, "channels": list(index)}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:12]


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header of a float32 array of ``shape`` (what np.save writes before the data)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def format_size(n_bytes: float) -> str:
    """A byte count for people: 1.3 MB, 4.2 GB."""
    units = ("bytes", "kB", "MB", "GB", "TB")
    i = 0
    while n_bytes >= 1000 and i < len(units) - 1:
        n_bytes /= 1000
        i += 1
    return f"{n_bytes:.0f} bytes" if i == 0 else f"{n_bytes:.1f} {units[i]}"


@contextlib.contextmanager
def _flocked(path: Path, blocking: bool = True, create: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``path``; yields False when ``blocking`` is off and another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def clear_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files of killed runs in a cache folder; returns them.

    A writer holds a flock on its temporary file until it is renamed (see ``_locked_temp``), and
    makes and locks it under the folder's lock: an unlocked temporary file seen under that lock
    has no writer left.
    """
    removed: list[Path] = []
    with contextlib.suppress(OSError), _flocked(folder / LOCK):
        for tmp in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError), _flocked(tmp, blocking=False, create=False) as free:
                if free:
                    tmp.unlink()
                    removed.append(tmp)
    return removed


@contextlib.contextmanager
def _locked_temp(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a locked temporary file beside it, renamed into place on success.

    On any error the temporary file is removed and ``path`` is left as it was; OSErrors (a full
    disk...) become a WriteError naming ``path``.
    """
    tmp = None
    try:
        with _flocked(path.parent / LOCK):  # no clear_leftovers() between making the file and locking it
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name, not the result
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # still locked: the lock goes with the file's last descriptor
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            err = WriteError(f"cannot write the file: {exc.strerror or exc}", path)
            err.errno = exc.errno
            raise err from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class SpectrogramCache:
    """Spectrograms (N, C, 29, 129) float32 of a dataset's nights for a set of channels."""

    def __init__(self, ds: PreparedDataset, index: list[int], front: SpectrogramFrontEnd | None = None) -> None:
        self.ds = ds
        self.index = list(index)
        self.front = front or SpectrogramFrontEnd()
        self.folder = ds.root / "cache" / f"spectrograms-{cache_key(self.front, self.index)}"
        self._temporary = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.folder, prefix=".probe.", delete=True)
            probe.close()
        except OSError:  # read-only dataset: cache for this run only
            self.folder = Path(tempfile.mkdtemp(prefix="sleepstage-spectrograms-"))
            self._temporary = True
        else:
            for folder in self.folder.parent.glob("spectrograms-*"):  # a killed run's, whatever its channels
                clear_leftovers(folder)

    def path(self, night: NightRecord) -> Path:
        return self.folder / f"{night.id}.npy"

    def _stamp(self, night: NightRecord) -> dict:
        st = (self.ds.root / night.file).stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "n_epochs": night.n_epochs}

    def _valid(self, night: NightRecord) -> bool:
        meta = self.path(night).with_suffix(".json")
        try:
            return self.path(night).exists() and json.loads(meta.read_text()) == self._stamp(night)
        except (OSError, ValueError):
            return False

    def _shape(self, night: NightRecord) -> tuple[int, int, int, int]:
        return (self.ds.open(night).shape[0], len(self.index), self.front.n_frames, self.front.n_bins)

    def file_size(self, night: NightRecord) -> int:
        """Bytes of a night's cache file."""
        shape = self._shape(night)
        return len(npy_header(shape)) + 4 * int(np.prod(shape))

    def ensure(self, nights: list[NightRecord], device: torch.device,
               on_night: Callable[[int, int], None] | None = None) -> None:
        """Compute the spectrograms of the nights not cached yet (on ``device``).

        Refuses up front, and stops cleanly on ENOSPC, when the disk cannot hold them.
        """
        front = self.front.to(device)
        todo = [not self._valid(night) for night in nights]
        sizes = [self.file_size(night) if missing else 0 for night, missing in zip(nights, todo)]
        free = shutil.disk_usage(self.folder).free
        if sum(sizes) > free:
            raise self._no_space(sum(sizes), sum(todo), free)
        for k, night in enumerate(nights):
            if todo[k]:
                try:
                    self._compute(night, front, device)
                except WriteError as exc:
                    if exc.errno not in _NO_SPACE:
                        raise
                    raise self._no_space(sum(sizes[k:]), sum(todo[k:]), shutil.disk_usage(self.folder).free) \
                        from None
            if on_night:
                on_night(k + 1, len(nights))

    def _compute(self, night: NightRecord, front: SpectrogramFrontEnd, device: torch.device) -> None:
        rec = self.ds.open(night)
        with _locked_temp(self.path(night)) as fh:
            fh.write(npy_header(self._shape(night)))
            for a in range(0, rec.shape[0], CHUNK):
                x = torch.from_numpy(np.asarray(rec["x"][a:a + CHUNK][:, self.index], dtype=np.float32))
                with torch.no_grad():
                    spec = np.ascontiguousarray(front(x.to(device)).cpu().numpy(), dtype=np.float32)
                fh.write(memoryview(spec).cast("B"))
        with _locked_temp(self.path(night).with_suffix(".json")) as fh:
            fh.write(json.dumps(self._stamp(night)).encode())

    def _no_space(self, needed: int, n_nights: int, free: int) -> WriteError:
        err = WriteError(f"no space left on device for the spectrogram cache: it needs {format_size(needed)} for "
                         f"{n_nights} night(s) and {format_size(free)} is free; free some space (the cache folder "
                         "may be deleted at any time)", self.folder)
        err.errno = errno.ENOSPC
        return err

    def open(self, night: NightRecord) -> np.ndarray:
        """Memory-mapped spectrograms of one night."""
        return np.load(self.path(night), mmap_mode="r")

    def files(self, nights: list[NightRecord]) -> list[Path]:
        return [self.path(n) for n in nights]

    def close(self) -> None:
        """Remove a temporary cache (a cache in the dataset folder is kept for later runs)."""
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SpectrogramCache({os.fspath(self.folder)!r})"
