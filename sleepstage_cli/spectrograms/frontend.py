"""Torch front end: 30-s epochs -> log-magnitude spectrograms (29 frames x 129 bins), and their z-scoring.

The spectrogram follows the paper and the original MATLAB ``spectrogram(x, hamming(200), 100, 256)``:
frames of 200 samples (2 s at 100 Hz) every 100 samples, symmetric Hamming window, each windowed frame
zero-padded to 256 points, one-sided FFT (129 bins, 0-50 Hz), magnitude in dB. Frames never cross the
border of an epoch. Normalisation statistics are accumulated with :class:`RunningStats` and applied by
:class:`Normalizer`, whose buffers live in the model's ``state_dict`` so they travel with the model file.

Normalisation (released ``train_seqsleepnet.py``): z-score per channel and per frequency bin, the mean and
std taken over all frames of all training epochs (the 29 frames pooled). The normaliser's buffers keep the
shape (C, 29, 129) and hold these per-bin values repeated over the frames; model files written before this
change hold one statistic per (channel, frame, bin) cell, and still load and score with their own values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sleepstage_cli.constants import EPOCH_SAMPLES

WIN_LENGTH = 200
HOP_LENGTH = 100
N_FFT = 256
N_FRAMES = (EPOCH_SAMPLES - WIN_LENGTH) // HOP_LENGTH + 1  # 29
N_BINS = N_FFT // 2 + 1  # 129

MAG_FLOOR = 1e-6
"""Smallest magnitude before the log (-120 dB), so that an all-zero (flat) epoch stays finite. It is below
anything a unit-variance epoch stored in float32 can resolve (input rounding alone puts ~1e-6 of noise on
|X|), so it never clips real signal."""

_NO_FLOAT64 = ("mps",)


class SpectrogramFrontEnd(nn.Module):
    """Per-epoch STFT log-magnitude, ``(..., n_samples) -> (..., n_frames, n_bins)`` in dB.

    Parameters
    ----------
    n_samples : int
        Samples per epoch (3000 = 30 s at 100 Hz).
    win_length, hop_length, n_fft : int
        Frame length, hop and FFT length in samples (200, 100, 256 as in the paper).
    mag_floor : float
        Magnitude floor applied before ``20*log10`` (see :data:`MAG_FLOOR`).

    Notes
    -----
    ``torch.stft(win_length=200, n_fft=256)`` would take 256-sample frames and centre the window in them,
    which is not what MATLAB does; hence ``unfold`` + window + ``rfft(n=256)``.
    The transform runs in float64 with autocast disabled (float32 only on devices without float64, such
    as MPS), and the result is returned in float32 (float64 for float64 input). Float32 arithmetic leaves
    an absolute error of ~1e-6 on |X| for a unit-variance epoch, which is 0.001 dB at |X| = 0.003 and
    tenths of a dB in the weak high-frequency bins of low-pass filtered EEG; float64 makes the features
    exact to the stored float32 precision and identical across devices. The cost is negligible next to
    the network (29 FFTs of 256 points per epoch and channel).
    """

    def __init__(
        self,
        n_samples: int = EPOCH_SAMPLES,
        win_length: int = WIN_LENGTH,
        hop_length: int = HOP_LENGTH,
        n_fft: int = N_FFT,
        mag_floor: float = MAG_FLOOR,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        if n_samples < win_length:
            raise ValueError(f"an epoch of {n_samples} samples is shorter than one frame ({win_length})")
        self.n_samples = n_samples
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.mag_floor = mag_floor
        self.n_frames = (n_samples - win_length) // hop_length + 1
        self.n_bins = n_fft // 2 + 1

    def window(self, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
        """Symmetric Hamming window as MATLAB ``hamming(N)``: 0.54 - 0.46 cos(2 pi n / (N - 1))."""
        # Built on the fly rather than kept as a buffer so that model.half() cannot degrade it.
        return torch.hamming_window(self.win_length, periodic=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-magnitude spectrogram.

        Parameters
        ----------
        x : Tensor, shape (..., n_samples)
            Conditioned signal epochs (100 Hz; standardised per night unless prepared with --no-standardise).

        Returns
        -------
        Tensor, shape (..., n_frames, n_bins)
            ``20*log10(max(|X|, mag_floor))`` in dB; float64 for float64 input, float32 otherwise.
        """
        if x.shape[-1] != self.n_samples:
            raise ValueError(
                f"expected epochs of {self.n_samples} samples in the last dimension, got shape {tuple(x.shape)}"
            )
        out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        work = torch.float32 if x.device.type in _NO_FLOAT64 else torch.float64
        with torch.autocast(device_type=x.device.type, enabled=False):
            frames = x.unfold(-1, self.win_length, self.hop_length)  # (..., n_frames, win), a view
            # Window straight into a zero-padded buffer: rfft of n_fft points needs no padding copy then.
            buf = torch.zeros(*frames.shape[:-1], self.n_fft, dtype=work, device=x.device)
            torch.mul(frames, self.window(work, x.device), out=buf[..., :self.win_length])
            spec = torch.fft.rfft(buf, dim=-1)
            # 10 log10 |X|^2 = 20 log10 |X|, without the square root (and hypot) of abs(). The power is
            # exact in `work`; its logarithm in float32 is within 1e-5 dB, so float32 output loses nothing.
            power = spec.real.square().add_(spec.imag.square()).clamp_min_(self.mag_floor ** 2)
            return power.to(out_dtype).log10_().mul_(10.0)

    def extra_repr(self) -> str:
        return (
            f"n_samples={self.n_samples}, win_length={self.win_length}, hop_length={self.hop_length}, "
            f"n_fft={self.n_fft} -> ({self.n_frames}, {self.n_bins})"
        )


class Normalizer(nn.Module):
    """Z-scoring with stored training statistics, ``(x - mean) / std`` cell by cell.

    Parameters
    ----------
    n_channels : int
        Number of channels C.
    mean, std : array-like of shape (C, n_frames, n_bins), optional
        Statistics in dB; identity (0, 1) until set.

    Buffers ``mean`` and ``std`` are saved in the ``state_dict``. Input ``(..., C, n_frames, n_bins)``.
    The normaliser applies whatever the buffers hold: per-bin statistics repeated over the frames (what
    :class:`RunningStats` gives now, as the released code) or, in model files written before, one value
    per (channel, frame, bin) cell.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        n_channels: int,
        n_frames: int = N_FRAMES,
        n_bins: int = N_BINS,
        mean: torch.Tensor | np.ndarray | None = None,
        std: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        shape = (n_channels, n_frames, n_bins)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            self.set(mean, std)

    def set(self, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray) -> None:
        """Copy statistics into the buffers (shape checked, std must be positive)."""
        mean_t, std_t = torch.as_tensor(mean), torch.as_tensor(std)
        for name, t in (("mean", mean_t), ("std", std_t)):
            if tuple(t.shape) != tuple(self.mean.shape):
                raise ValueError(f"normalisation {name} has shape {tuple(t.shape)}, expected {tuple(self.mean.shape)}")
        if not torch.isfinite(mean_t).all() or not torch.isfinite(std_t).all() or (std_t <= 0).any():
            raise ValueError("normalisation statistics must be finite with std > 0")
        with torch.no_grad():
            self.mean.copy_(mean_t.to(self.mean))
            self.std.copy_(std_t.to(self.std))

    @property
    def is_identity(self) -> bool:
        """True while no statistics have been set (mean 0, std 1 everywhere)."""
        return bool((self.mean == 0).all() and (self.std == 1).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` over the last three dimensions ``(C, n_frames, n_bins)``."""
        if tuple(x.shape[-3:]) != tuple(self.mean.shape):
            raise ValueError(f"expected (..., {', '.join(map(str, self.mean.shape))}), got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class RunningStats:
    """Streaming mean and standard deviation per channel and frequency bin, in float64.

    By default the frames are pooled, as in the released code: the statistics of bin f of channel c are
    taken over all frames of all epochs seen (29 values per epoch). :meth:`finalize` returns them
    repeated over the frames, in the cell shape ``(C, n_frames, n_bins)`` that :class:`Normalizer` stores.
    With ``pool_frames=False`` every (channel, frame, bin) cell keeps its own statistics (this project's
    earlier behaviour).

    Each batch is reduced exactly (two-pass) and combined with the running totals by Chan et al.'s
    pairwise update, which stays accurate over millions of epochs where a sum of squares would not.

    Parameters
    ----------
    min_std : float
        Floor of the returned std in dB, so that a constant bin cannot cause a division by zero
        (real bins vary by several dB across a night).
    pool_frames : bool
        Pool the frames (per-bin statistics; default) or keep one statistic per cell.

    Attributes
    ----------
    count : int
        Number of epochs seen. ``mean`` and ``m2`` (sum of squared deviations) are float64 tensors of shape
        ``(C, 1, n_bins)`` (``(C, n_frames, n_bins)`` without pooling), or None before the first update;
        with ``count`` and ``cell_shape`` they are the full state (see :meth:`merge`).

    Notes
    -----
    The std is the population std (ddof=0), as ``numpy.std`` in the original data generator.
    """

    CELL_DIMS = 3

    def __init__(self, min_std: float = 1e-3, pool_frames: bool = True) -> None:
        self.min_std = float(min_std)
        self.pool_frames = bool(pool_frames)
        self.count = 0
        self.cell_shape: tuple[int, ...] | None = None
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def _values_per_epoch(self) -> int:
        """Samples each epoch adds to every statistic: its frames when pooled, else 1."""
        return self.cell_shape[-2] if self.pool_frames and self.cell_shape is not None else 1

    def _combine(self, count: int, cell_shape: tuple[int, ...], mean: torch.Tensor, m2: torch.Tensor) -> None:
        if count == 0:
            return
        if self.cell_shape is not None and cell_shape != self.cell_shape:
            raise ValueError(f"cell shape {cell_shape} does not match {self.cell_shape}")
        if self.mean is None or self.m2 is None or self.count == 0:
            self.count, self.cell_shape, self.mean, self.m2 = count, cell_shape, mean.clone(), m2.clone()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        # Chan et al. in samples (epochs x values per epoch): n_a n_b / n = k count_a count_b / total.
        k = self._values_per_epoch()
        self.m2 = self.m2 + m2 + delta.square() * (k * self.count * count / total)
        self.count = total

    def update(self, batch: torch.Tensor | np.ndarray) -> "RunningStats":
        """Add a batch of spectrograms of shape ``(N, C, n_frames, n_bins)`` (any leading dims)."""
        t = batch.detach() if torch.is_tensor(batch) else torch.from_numpy(np.asarray(batch))
        if t.ndim < self.CELL_DIMS:
            raise ValueError(f"expected (N, C, frames, bins), got shape {tuple(t.shape)}")
        cell_shape = tuple(t.shape[-self.CELL_DIMS:])
        t = t.to("cpu", torch.float64).reshape(-1, *cell_shape)
        n = t.shape[0]
        if n == 0:
            return self
        dims = (0, 2) if self.pool_frames else (0,)
        mean = t.mean(dim=dims, keepdim=True)
        m2 = (t - mean).square().sum(dim=dims, keepdim=True)
        self._combine(n, cell_shape, mean[0], m2[0])
        return self

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold another accumulator (e.g. another worker's) into this one, in place; returns self."""
        if other.pool_frames != self.pool_frames:
            raise ValueError("cannot merge statistics pooled over frames with per-cell statistics")
        if other.count and other.cell_shape is not None and other.mean is not None and other.m2 is not None:
            self._combine(other.count, other.cell_shape, other.mean, other.m2)
        return self

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std, float64 tensors of the cell shape ``(C, n_frames, n_bins)``, std floored at
        ``min_std``; with pooled frames every frame holds its bin's values."""
        if self.count == 0 or self.cell_shape is None or self.mean is None or self.m2 is None:
            raise ValueError("no epochs were accumulated; cannot compute normalisation statistics")
        std = (self.m2 / (self.count * self._values_per_epoch())).sqrt().clamp_min(self.min_std)
        return self.mean.expand(self.cell_shape).clone(), std.expand(self.cell_shape).clone()
