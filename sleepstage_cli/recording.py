"""A recording's channels, read and conditioned for the network, with what could not be trusted marked.

Shared by `prepare` (training data) and `score` (new nights), so both see identical signals. Per
channel: read in microvolts (a derivation is the difference of two signals), placed on a continuous
time line (EDF+D gaps become missing samples), flat stretches and missing samples marked, the gaps
filled so the filters can run, filtered and resampled to 100 Hz, then standardised over the samples
that were really recorded. Marked samples are set to 0 (the night's mean) afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.channels import ResolvedChannel
from sleepstage_cli.io.edf import EdfHeader, EdfReader, record_onsets
from sleepstage_cli.signals import EPOCH_SAMPLES, Conditioning, condition, design_filter

FLAT_SECONDS = 5.0
"""A stretch of identical samples at least this long is a flat (disconnected or saturated) signal."""


@dataclass
class Conditioned:
    """Conditioned channels of one recording at ``rate`` Hz.

    ``data`` (C, n) float32, standardised, 0 where marked; ``missing`` and ``flat`` (C, n) bool marks.
    """

    data: np.ndarray
    missing: np.ndarray
    flat: np.ndarray
    rate: float
    channels: list[ResolvedChannel]

    @property
    def duration(self) -> float:
        return self.data.shape[1] / self.rate

    def epochs(self, starts_s: np.ndarray) -> np.ndarray:
        """30-s windows (N, C, 3000) starting at ``starts_s`` seconds (the end is padded if needed)."""
        starts = np.round(np.asarray(starts_s) * self.rate).astype(np.int64)
        if starts.size == 0:
            return np.zeros((0, self.data.shape[0], EPOCH_SAMPLES), np.float32)
        if starts.min() < 0:
            raise ValueError("an epoch starts before the recording")
        need = int(starts.max()) + EPOCH_SAMPLES - self.data.shape[1]
        data = np.pad(self.data, ((0, 0), (0, need))) if need > 0 else self.data
        idx = starts[:, None] + np.arange(EPOCH_SAMPLES)
        return np.ascontiguousarray(data[:, idx].transpose(1, 0, 2))

    def marked_fraction(self, starts_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per epoch and channel, the fraction of missing and of flat samples: two (N, C) arrays."""
        starts = np.round(np.asarray(starts_s) * self.rate).astype(np.int64)

        def frac(mask: np.ndarray) -> np.ndarray:
            csum = np.concatenate([np.zeros((mask.shape[0], 1)), np.cumsum(mask, axis=1)], axis=1)
            end = np.minimum(starts + EPOCH_SAMPLES, mask.shape[1])
            begin = np.minimum(starts, mask.shape[1])
            inside = (csum[:, end] - csum[:, begin]).T
            beyond = np.maximum(starts + EPOCH_SAMPLES - mask.shape[1], 0)  # past the end counts as missing
            return inside, beyond

        miss, beyond = frac(self.missing)
        flat, _ = frac(self.flat)
        return (miss + beyond[:, None]) / EPOCH_SAMPLES, flat / EPOCH_SAMPLES


def _timeline(x: np.ndarray, header: EdfHeader, samples_per_record: int, onsets: np.ndarray) -> np.ndarray:
    """Place the samples of each data record at its true start time; gaps become NaN."""
    rate = samples_per_record / header.record_duration
    starts = np.round(onsets * rate).astype(np.int64)
    total = int(starts[-1]) + samples_per_record
    out = np.full(total, np.nan)
    out[(starts[:, None] + np.arange(samples_per_record)).ravel()] = x
    return out


def _flat_runs(x: np.ndarray, min_len: int) -> np.ndarray:
    """Mask of samples inside runs of >= min_len identical consecutive values."""
    same = x[1:] == x[:-1]  # same[i]: sample i+1 repeats sample i
    mask = np.zeros(x.shape, bool)
    if not same.any():
        return mask
    edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
    begins, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]  # samples begins..ends are equal
    long = (ends - begins + 1) >= min_len
    if long.any():
        marks = np.zeros(x.size + 1, np.int64)
        np.add.at(marks, begins[long], 1)
        np.add.at(marks, ends[long] + 1, -1)
        mask = np.cumsum(marks[:-1]) > 0
    return mask


def _dilate(mask: np.ndarray, half: int) -> np.ndarray:
    if half <= 0 or not mask.any():
        return mask
    kernel = np.ones(2 * half + 1)
    return np.convolve(mask.astype(float), kernel, mode="same") > 0


def _to_rate(mask: np.ndarray, rate_in: float, n_out: int, rate_out: float) -> np.ndarray:
    idx = np.minimum((np.arange(n_out) * rate_in / rate_out).astype(np.int64), mask.size - 1)
    return mask[idx]


def load_conditioned(reader: EdfReader, channels: list[ResolvedChannel], cond: Conditioning,
                     flat_seconds: float = FLAT_SECONDS) -> Conditioned:
    """Read, mark, filter, resample and standardise ``channels`` of an open recording."""
    header = reader.header
    onsets = record_onsets(header)
    rows, missing_rows, flat_rows = [], [], []
    for ch in channels:
        label = f"{ch.kind.upper()} {ch.expression!r}"
        x = reader.read(ch.plus)
        if ch.minus is not None:
            x -= reader.read(ch.minus)
        if header.is_discontinuous:
            x = _timeline(x, header, ch.plus.samples_per_record, onsets)
        rate = ch.sampling_rate
        missing = ~np.isfinite(x)
        flat = _flat_runs(np.where(missing, np.inf, x), max(2, int(flat_seconds * rate))) & ~missing
        good = ~(missing | flat)
        if not good.any():
            what = "flat (all samples equal)" if flat.any() else "without any recorded sample"
            raise InputError(f"{label} is {what} in the whole recording; the electrode was probably disconnected",
                             header.path)
        if not good.all():
            x = x.copy()
            x[~good] = float(np.mean(x[good]))  # fill so the filters can run; these samples stay marked
        y = condition(x, rate, ch.kind, cond)
        del x
        half = (len(design_filter(ch.kind, rate, cond)) // 2) * cond.rate / rate  # filter reach at 100 Hz
        miss100 = _dilate(_to_rate(missing, rate, y.size, cond.rate), int(np.ceil(half)))
        flat100 = _dilate(_to_rate(flat, rate, y.size, cond.rate), int(np.ceil(half))) & ~miss100
        keep = ~(miss100 | flat100)
        if not keep.any():
            raise InputError(f"{label} has no usable stretch once flat and missing parts are removed", header.path)
        mean, std = float(np.mean(y[keep])), float(np.std(y[keep]))
        if not std > 0:
            raise InputError(f"{label} is flat; the electrode was probably disconnected", header.path)
        z = ((y - mean) / std).astype(np.float32)
        z[~keep] = 0.0
        rows.append(z)
        missing_rows.append(miss100)
        flat_rows.append(flat100)
    n = min(r.size for r in rows)  # channels of different native rates can differ by a sample
    return Conditioned(data=np.stack([r[:n] for r in rows]), missing=np.stack([m[:n] for m in missing_rows]),
                       flat=np.stack([f[:n] for f in flat_rows]), rate=cond.rate, channels=list(channels))
