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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sleepstage_cli.dataset import NightRecord, PreparedDataset
from sleepstage_cli.features import SpectrogramFrontEnd
from sleepstage_cli.fsutil import atomic_path, atomic_write_json

CACHE_VERSION = 1
CHUNK = 256  # epochs per front-end call


def cache_key(front: SpectrogramFrontEnd, index: list[int]) -> str:
    """Identifies what is cached: front-end settings and the dataset channels used."""
    desc = {"version": CACHE_VERSION, "n_samples": front.n_samples, "win": front.win_length,
            "hop": front.hop_length, "n_fft": front.n_fft, "floor": front.mag_floor, "channels": list(index)}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:12]


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

    def ensure(self, nights: list[NightRecord], device: torch.device,
               on_night: Callable[[int, int], None] | None = None) -> None:
        """Compute the spectrograms of the nights not cached yet (on ``device``)."""
        front = self.front.to(device)
        for k, night in enumerate(nights):
            if not self._valid(night):
                rec = self.ds.open(night)
                shape = (rec.shape[0], len(self.index), front.n_frames, front.n_bins)
                with atomic_path(self.path(night)) as tmp:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                    for a in range(0, rec.shape[0], CHUNK):
                        x = torch.from_numpy(np.asarray(rec["x"][a:a + CHUNK][:, self.index], dtype=np.float32))
                        with torch.no_grad():
                            out[a:a + CHUNK] = front(x.to(device)).cpu().numpy()
                    out.flush()
                    del out
                atomic_write_json(self.path(night).with_suffix(".json"), self._stamp(night))
            if on_night:
                on_night(k + 1, len(nights))

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
