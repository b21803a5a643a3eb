"""A recording's channels, read and conditioned for the network, with what could not be trusted marked.

Shared by `prepare` (training data) and `score` (new nights), so both see identical signals. Per
channel: read in microvolts (a derivation is the difference of two signals), placed on a continuous
time line (EDF+D gaps become missing samples), flat stretches and missing samples marked, the gaps
filled so the filters can run, filtered and resampled to 100 Hz, then standardised over the samples
that were really recorded (unless the Conditioning says not to: the samples then stay in microvolts).
Marked samples are set to the night's mean afterwards (0 once standardised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sleepstage_cli.conditioning.levels import two_level_share
from sleepstage_cli.conditioning.signals import EPOCH_SAMPLES, Conditioning, condition, filter_reach
from sleepstage_cli.errors import InputError
from sleepstage_cli.io.channels import ResolvedChannel
from sleepstage_cli.io.edf import EdfReader

FLAT_SECONDS = 5.0
"""A stretch of identical samples at least this long is a flat (disconnected or saturated) signal."""


@dataclass
class Conditioned:
    """Conditioned channels of one recording at ``rate`` Hz.

    ``data`` (C, n) float32, standardised (or in microvolts, as the Conditioning says), the night's mean
    (0 once standardised) where marked; ``missing`` and ``flat`` (C, n) bool marks;
    ``notes`` what the user should hear about the recording (e.g. how an odd header was read);
    ``amplitudes`` each channel's standard deviation before standardisation, in microvolts (the signal's
    own unit when it is not a voltage), over its recorded samples: the fit check compares it with the
    training nights'; ``levels`` each channel's :func:`~sleepstage_cli.conditioning.levels.two_level_share`
    as read (a square wave: near 1).
    """

    data: np.ndarray
    missing: np.ndarray
    flat: np.ndarray
    rate: float
    channels: list[ResolvedChannel]
    notes: list[str] = field(default_factory=list)
    amplitudes: list[float] = field(default_factory=list)
    levels: list[float | None] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.data.shape[1] / self.rate

    def epochs(self, starts_s: np.ndarray) -> np.ndarray:
        """30-s windows (N, C, 3000) starting at ``starts_s`` seconds (the end is padded if needed)."""
        starts = np.round(np.asarray(starts_s) * self.rate).astype(np.int64)
        n_channels = self.data.shape[0]
        out = np.zeros((starts.size, n_channels, EPOCH_SAMPLES), np.float32)
        if starts.size == 0:
            return out
        if starts.min() < 0:
            raise ValueError("an epoch starts before the recording")
        for i, s in enumerate(starts):
            piece = self.data[:, s:s + EPOCH_SAMPLES]
            out[i, :, :piece.shape[1]] = piece
        return out

    def marked_fraction(self, starts_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per epoch and channel, the fraction of missing and of flat samples: two (N, C) arrays."""
        starts = np.round(np.asarray(starts_s) * self.rate).astype(np.int64)
        n = self.data.shape[1]
        end = np.minimum(starts + EPOCH_SAMPLES, n)
        begin = np.minimum(starts, n)

        def frac(mask: np.ndarray) -> np.ndarray:
            if not mask.any():
                return np.zeros((starts.size, mask.shape[0]))
            csum = np.zeros((mask.shape[0], n + 1), np.int32)
            np.cumsum(mask, axis=1, dtype=np.int32, out=csum[:, 1:])
            return (csum[:, end] - csum[:, begin]).T / EPOCH_SAMPLES

        beyond = np.maximum(starts + EPOCH_SAMPLES - n, 0) / EPOCH_SAMPLES  # past the end counts as missing
        return frac(self.missing) + beyond[:, None], frac(self.flat)


def _timeline(x: np.ndarray, rate: float, samples_per_record: int, onsets: np.ndarray) -> np.ndarray:
    """Place the samples of each data record at its true start time; gaps become NaN.

    ``onsets`` are the header's record onsets, the same that give its duration, so a hypnogram
    clipped to that duration and the signal share one time line.
    """
    starts = np.round(onsets * rate).astype(np.int64)
    total = int(starts[-1]) + samples_per_record
    out = np.full(total, np.nan, dtype=np.float32)
    out[(starts[:, None] + np.arange(samples_per_record)).ravel()] = x
    return out


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every run of True in a boolean array."""
    edges = np.flatnonzero(np.diff(mask.view(np.int8), prepend=np.int8(0), append=np.int8(0)))
    return edges[0::2], edges[1::2]


def _flat_intervals(x: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of the runs of >= min_len identical consecutive samples (NaN never repeats)."""
    begins, ends = _runs(x[1:] == x[:-1])  # a run of "repeats the previous" from b to e covers samples b..e
    long = (ends - begins + 1) >= min_len
    return begins[long], ends[long] + 1


def _mask_at(starts: np.ndarray, ends: np.ndarray, rate_in: float, n_out: int, rate_out: float,
             widen: int) -> np.ndarray:
    """A mask at ``rate_out`` covering the intervals given at ``rate_in``, widened by ``widen`` samples."""
    mask = np.zeros(n_out, bool)
    lo = np.floor(starts * rate_out / rate_in).astype(np.int64) - widen
    hi = np.ceil(ends * rate_out / rate_in).astype(np.int64) + widen
    for a, b in zip(np.clip(lo, 0, n_out), np.clip(hi, 0, n_out)):  # few intervals: flat or missing stretches
        mask[a:b] = True
    return mask


def _unusable(x: np.ndarray, flat_lo: np.ndarray, flat_seconds: float) -> str:
    """What a channel is when none of it is usable: no recorded sample, flat (one value), or a signal
    that holds each of a few values for ``flat_seconds`` or longer (a square wave or other test signal)."""
    if not flat_lo.size:
        return "is without any recorded sample in the whole recording; the electrode was probably disconnected"
    levels = np.unique(x[flat_lo])
    if levels.size == 1:
        return "is flat (all samples equal) in the whole recording; the electrode was probably disconnected"
    uv = [f"{round(float(v), 1):g}" for v in levels]
    shown = " and ".join(uv) if len(uv) <= 3 else f"{uv[0]} to {uv[-1]}"
    return (f"holds each of only {levels.size} values ({shown} µV) for {flat_seconds:g} s or longer at a time: a "
            "square wave or other test signal, not a physiological one; nothing is left to stage once such "
            "constant stretches are masked")


def load_conditioned(reader: EdfReader, channels: list[ResolvedChannel], cond: Conditioning,
                     flat_seconds: float = FLAT_SECONDS) -> Conditioned:
    """Read, mark, filter, resample and (if ``cond.standardise``) standardise ``channels`` of an open recording."""
    header = reader.header
    rows, missing_rows, flat_rows, amplitudes, levels = [], [], [], [], []
    for ch in channels:
        label = f"{ch.kind.upper()} {ch.expression!r}"
        x = reader.read(ch.plus)
        if ch.minus is not None:
            x -= reader.read(ch.minus)
        rate = ch.sampling_rate
        if header.is_discontinuous:
            x = _timeline(x, rate, ch.plus.samples_per_record, header.onsets)
        miss_lo, miss_hi = _runs(~np.isfinite(x))
        flat_lo, flat_hi = _flat_intervals(x, max(2, int(flat_seconds * rate)))
        levels.append(two_level_share(x))  # as read: before flat stretches are filled and the edges filtered
        bad = int((miss_hi - miss_lo).sum() + (flat_hi - flat_lo).sum())
        if bad >= x.size:
            raise InputError(f"{label} {_unusable(x, flat_lo, flat_seconds)}", header.path)
        if bad:
            for a, b in zip(flat_lo, flat_hi):
                x[a:b] = np.nan
            fill = float(np.nanmean(x, dtype=np.float64))
            for a, b in zip(np.concatenate([miss_lo, flat_lo]), np.concatenate([miss_hi, flat_hi])):
                x[a:b] = fill  # so the filters can run; these samples stay marked
        y = condition(x, rate, ch.kind, cond)
        del x
        reach = int(np.ceil(filter_reach(ch.kind, rate, cond) * cond.rate))
        miss100 = _mask_at(miss_lo, miss_hi, rate, y.size, cond.rate, reach)
        flat100 = _mask_at(flat_lo, flat_hi, rate, y.size, cond.rate, reach) & ~miss100
        keep = ~(miss100 | flat100)
        if not keep.any():
            raise InputError(f"{label} has no usable stretch once flat and missing parts are removed", header.path)
        kept = y[keep] if not keep.all() else y
        mean, std = float(np.mean(kept, dtype=np.float64)), float(np.std(kept, dtype=np.float64))
        del kept
        if not std > 0:
            raise InputError(f"{label} is flat; the electrode was probably disconnected", header.path)
        if cond.standardise:
            y -= np.float32(mean)
            y *= np.float32(1.0 / std)
        y[~keep] = 0.0 if cond.standardise else np.float32(mean)
        rows.append(y)
        amplitudes.append(std)
        missing_rows.append(miss100)
        flat_rows.append(flat100)
    n = min(r.size for r in rows)  # channels of different native rates can differ by a sample
    return Conditioned(data=np.stack([r[:n] for r in rows]), missing=np.stack([m[:n] for m in missing_rows]),
                       flat=np.stack([f[:n] for f in flat_rows]), rate=cond.rate, channels=list(channels),
                       notes=list(reader.warnings), amplitudes=amplitudes, levels=levels)
