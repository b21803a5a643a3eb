"""Training samples from a prepared dataset: every window of L consecutive epochs of one night.

Windows never cross nights (as in the paper), are read from the memory-mapped night files on demand, and come
with the labels of one extra epoch on each side (UNSCORED at a night's borders), which the multitask
network trains on. The window order of each pass is a permutation fixed by (seed, pass), so a resumed
run continues exactly where it stopped and every rank of a distributed run agrees on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sleepstage_cli.data.dataset import NightRecord, open_night
from sleepstage_cli.stages import UNSCORED


class WindowDataset(Dataset):
    """All stride-1 windows of ``seq_len`` epochs within the given nights.

    Windows whose epochs are all unscored are left out; with ``skip_borders`` also those that hold a
    night's first or last epoch (the multitask net learns an epoch's neighbours, which those lack, and
    the released code does not train on them). Items are ``(x, y)``: ``x`` float32
    (L, C, 3000) with the selected channels (or (L, C, 29, 129) spectrograms when ``feature_files``
    are given), ``y`` int64 (L + 2,) labels including one neighbour each side.
    """

    def __init__(self, root: str | Path, nights: Sequence[NightRecord], seq_len: int,
                 channel_index: Sequence[int], feature_files: Sequence[Path] | None = None,
                 skip_borders: bool = False) -> None:
        self.root = Path(root)
        self.files = [self.root / n.file for n in nights]
        # Cached spectrograms (N, C, 29, 129) per night, channels already selected (specache.py).
        self.feature_files = list(feature_files) if feature_files is not None else None
        self.seq_len = int(seq_len)
        self.channel_index = list(channel_index)
        self._all_channels = None
        self.labels: list[np.ndarray] = []
        night_ids, starts = [], []
        for k, path in enumerate(self.files):
            rec = open_night(path)
            labels = np.asarray(rec["label"], dtype=np.int64)
            if self._all_channels is None:
                self._all_channels = rec.dtype["x"].shape[0]
            self.labels.append(np.pad(labels, 1, constant_values=UNSCORED))
            n_windows = len(labels) - self.seq_len + 1
            if n_windows <= 0:
                continue
            scored = np.convolve((labels >= 0).astype(np.int64), np.ones(self.seq_len, np.int64), mode="valid")
            keep = np.nonzero(scored > 0)[0]
            if skip_borders:
                keep = keep[(keep >= 1) & (keep + self.seq_len <= len(labels) - 1)]
            night_ids.append(np.full(keep.size, k, dtype=np.int64))
            starts.append(keep)
        self.night_of = np.concatenate(night_ids) if night_ids else np.zeros(0, np.int64)
        self.start_of = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.night_of.size)

    def _night(self, k: int) -> np.ndarray:
        rec = self._open.get(k)
        if rec is None:  # opened lazily, once per worker process
            if self.feature_files is not None:
                rec = self._open[k] = np.load(self.feature_files[k], mmap_mode="r")
            else:
                rec = self._open[k] = open_night(self.files[k])["x"]
        return rec

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, s = int(self.night_of[i]), int(self.start_of[i])
        block = self._night(k)[s:s + self.seq_len]
        if self.feature_files is None and self.channel_index != list(range(self._all_channels)):
            block = block[:, self.channel_index]
        x = torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: the memory map is read-only
        y = torch.from_numpy(self.labels[k][s:s + self.seq_len + 2].copy())
        return x, y

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}  # memory maps are reopened in each worker
        return state


def pass_order(n: int, seed: int, pass_index: int) -> np.ndarray:
    """The shuffled window order of one pass, the same wherever and whenever it is computed."""
    return np.random.default_rng([seed, pass_index]).permutation(n)


class PassBatches(Sampler[list[int]]):
    """Batches of one pass, from batch ``first_batch`` on; with ``world > 1`` this rank's share.

    Each global batch holds ``batch_size * world`` windows and rank r takes its r-th slice, as
    DistributedSampler would; a short last batch is kept when it gives every rank at least one window.
    """

    def __init__(self, n: int, batch_size: int, seed: int, pass_index: int, first_batch: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.order = pass_order(n, seed, pass_index)
        self.batch_size, self.first_batch, self.rank, self.world = batch_size, first_batch, rank, world

    def n_batches(self) -> int:
        per = self.batch_size * self.world
        full, rest = divmod(len(self.order), per)
        return full + (1 if rest >= self.world else 0)

    def __len__(self) -> int:
        return max(0, self.n_batches() - self.first_batch)

    def __iter__(self) -> Iterator[list[int]]:
        per = self.batch_size * self.world
        for b in range(self.first_batch, self.n_batches()):
            chunk = self.order[b * per:(b + 1) * per]
            share = np.array_split(chunk, self.world)[self.rank]
            yield share.tolist()
