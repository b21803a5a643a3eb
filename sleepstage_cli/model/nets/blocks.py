"""Layers shared by the networks: triangular filterbank, bidirectional RNN, additive attention, epoch encoder.

Shapes use B (sequences), L (epochs per sequence), C (channels), T (frames per epoch, 29),
F (frequency bins, 129), K (filters per channel, 32).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .bnlstm import BNLSTM, StepBatchNorm

RNN_KINDS = ("gru", "lstm", "bnlstm")
"""Recurrent cells the networks take as ``rnn``: ``nn.GRU``, ``nn.LSTM`` and the released code's
batch-normalised LSTM (:mod:`.bnlstm`)."""

N_FRAMES = 29
"""Frames per epoch (30 s, 2-s windows every 1 s): the epoch-level sequence length."""


def lin_tri_filter_shape(
    nfilt: int = 32, nfft: int = 256, samplerate: float = 100.0, lowfreq: float = 0.0, highfreq: float | None = None
) -> np.ndarray:
    """Fixed bank of linearly spaced triangular filters, shape ``(nfft // 2 + 1, nfilt)``.

    As the original ``lin_tri_filter_shape``: ``nfilt + 2`` points equally spaced in Hz between
    ``lowfreq`` and ``highfreq`` are mapped to FFT bins with ``floor((nfft + 1) * hz / samplerate)``;
    filter j rises linearly from point j (weight 0) to point j+1 (weight 1) and falls back to 0 at point
    j+2, the last point itself excluded.
    """
    highfreq = samplerate / 2 if highfreq is None else highfreq
    if not 0 <= lowfreq < highfreq <= samplerate / 2:
        raise ValueError(f"need 0 <= lowfreq < highfreq <= samplerate/2, got {lowfreq}, {highfreq}")
    hz = np.linspace(lowfreq, highfreq, nfilt + 2)
    edges = np.floor((nfft + 1) * hz / samplerate).astype(int)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        for i in range(lo, mid):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            bank[j, i] = (hi - i) / (hi - mid)
    return bank.T


class TriangularFilterbank(nn.Module):
    """Learnable filterbank, one bank per channel: ``(..., C, T, F) -> (..., T, C * K)``.

    The effective bank of channel c is ``sigmoid(W_c) * triangles`` (F x K): non-negative, and zero outside
    each triangle's support whatever W learns. Channel outputs are concatenated per frame, channel-major
    (eeg filters, then eog, then emg). W is initialised N(0, 1) as in the released code.

    Parameters
    ----------
    n_channels : int
        Number of channels C, each with its own learnable bank.
    n_filters : int
        Filters per channel K (32).
    n_fft, samplerate, lowfreq, highfreq
        Define the fixed triangles (256 points, 100 Hz, 0-50 Hz); F = n_fft // 2 + 1.
    """

    triangles: torch.Tensor

    def __init__(
        self,
        n_channels: int = 1,
        n_filters: int = 32,
        n_fft: int = 256,
        samplerate: float = 100.0,
        lowfreq: float = 0.0,
        highfreq: float = 50.0,
    ) -> None:
        super().__init__()
        tri = lin_tri_filter_shape(n_filters, n_fft, samplerate, lowfreq, highfreq)
        # Derived from the hyper-parameters, so not persisted in the state_dict.
        self.register_buffer("triangles", torch.as_tensor(tri, dtype=torch.float32), persistent=False)
        self.weight = nn.Parameter(torch.randn(n_channels, tri.shape[0], n_filters))
        self.n_channels = n_channels
        self.n_filters = n_filters
        self.n_bins = tri.shape[0]

    @property
    def out_features(self) -> int:
        return self.n_channels * self.n_filters

    def effective_weight(self) -> torch.Tensor:
        """The banks actually applied, shape (C, F, K)."""
        return torch.sigmoid(self.weight) * self.triangles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, f = self.weight.shape[:2]
        if x.ndim < 3 or x.shape[-3] != c or x.shape[-1] != f:
            raise ValueError(f"filterbank expects (..., {c}, frames, {f}), got {tuple(x.shape)}")
        w = self.effective_weight().to(x.dtype)
        y = torch.einsum("...ctf,cfk->...tck", x, w)
        return y.reshape(*y.shape[:-2], c * self.n_filters)


class BiRNN(nn.Module):
    """Bidirectional RNN with dropout on its inputs and on its outputs: ``(N, T, in) -> (N, T, 2*hidden)``.

    Mirrors the released ``DropoutWrapper(input_keep_prob, output_keep_prob)``; with ``num_layers > 1``
    the same dropout is also applied between layers.

    Parameters
    ----------
    rnn : {"gru", "lstm", "bnlstm"}
        The cell: ``nn.GRU``, ``nn.LSTM`` or the batch-normalised LSTM (:class:`.bnlstm.BNLSTM`).
    max_steps : int, optional
        Sequence length in training; required by "bnlstm", which keeps batch-norm statistics per time
        step up to it (ignored by the others).
    """

    def __init__(
        self,
        input_size: int,
        hidden: int = 64,
        rnn: str = "gru",
        dropout: float = 0.25,
        num_layers: int = 1,
        max_steps: int | None = None,
    ) -> None:
        super().__init__()
        if rnn not in RNN_KINDS:
            raise ValueError(f"unknown rnn {rnn!r}; choose one of {list(RNN_KINDS)}")
        self.drop_in = nn.Dropout(dropout)
        between = dropout if num_layers > 1 else 0.0
        self.rnn: nn.Module
        if rnn == "bnlstm":
            if max_steps is None:
                raise ValueError("rnn 'bnlstm' needs max_steps (the training sequence length)")
            self.rnn = BNLSTM(input_size, hidden, max_steps, num_layers=num_layers, dropout=between)
        else:
            cls = nn.GRU if rnn == "gru" else nn.LSTM
            self.rnn = cls(
                input_size, hidden, num_layers=num_layers, batch_first=True, bidirectional=True, dropout=between
            )
        self.drop_out = nn.Dropout(dropout)
        self.out_features = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.drop_in(x))
        return self.drop_out(y)


class AdditiveAttention(nn.Module):
    """Additive attention pooling over time: ``e_t = v^T tanh(W h_t + b)``, ``a = softmax_t(e)``.

    Input ``(N, T, in_features)``; returns the pooled vector ``(N, in_features)`` and the weights ``(N, T)``
    (they sum to 1 over T). Parameters are initialised N(0, 0.1) as in the released code.
    """

    def __init__(self, in_features: int = 128, size: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, size)
        self.v = nn.Parameter(torch.empty(size))
        for p in (self.proj.weight, self.proj.bias, self.v):
            nn.init.normal_(p, std=0.1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.tanh(self.proj(h)) @ self.v  # (N, T)
        alpha = torch.softmax(scores.float(), dim=-1).to(h.dtype)
        return torch.einsum("nt,ntd->nd", alpha, h), alpha


class EpochEncoder(nn.Module):
    """Epoch level of SeqSleepNet/E2E-ARNN: filterbank -> BiRNN over frames -> attention.

    Input normalised spectrograms ``(N, C, T, F)``; returns epoch vectors ``(N, 2*hidden)`` and attention
    weights ``(N, T)``. ``n_frames`` (29) is the training length T that "bnlstm" keeps statistics for.
    """

    def __init__(
        self,
        n_channels: int,
        n_filters: int = 32,
        rnn: str = "gru",
        hidden: int = 64,
        attention: int = 64,
        dropout: float = 0.25,
        n_frames: int = N_FRAMES,
    ) -> None:
        super().__init__()
        self.filterbank = TriangularFilterbank(n_channels, n_filters)
        self.rnn = BiRNN(self.filterbank.out_features, hidden, rnn, dropout, max_steps=n_frames)
        self.attention = AdditiveAttention(self.rnn.out_features, attention)
        self.out_features = self.rnn.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention(self.rnn(self.filterbank(x)))

    def encode_sequences(
        self, x: torch.Tensor, owner: str, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Epoch vectors ``(B, L, 2*hidden)`` (and attention weights ``(B, L, T)``) from ``(B, L, C, T, F)``;
        every epoch is encoded on its own. ``owner`` names the network in shape errors."""
        check_input(x, (self.filterbank.n_channels, "frames", self.filterbank.n_bins), owner)
        b, l = x.shape[:2]
        z, alpha = self(x.reshape(b * l, *x.shape[2:]))
        z, alpha = z.reshape(b, l, -1), alpha.reshape(b, l, -1)
        return (z, alpha) if return_attention else z


class PositionwiseLinear(nn.Module):
    """A separate ``Linear(in, out)`` for each of ``n_positions`` sequence positions: ``(B, P, in) -> (B, P, out)``.

    One batched weight (P, out, in) instead of P modules; each slice is initialised like ``nn.Linear``.
    """

    def __init__(self, n_positions: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_positions, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n_positions, out_features))
        bound = 1 / math.sqrt(in_features)
        for p in range(n_positions):
            nn.init.kaiming_uniform_(self.weight[p], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.weight.shape[0]
        if x.ndim != 3 or x.shape[1] != n:
            raise ValueError(
                f"per-position output layers were built for sequences of {n} epochs, got input {tuple(x.shape)}"
            )
        return torch.einsum("bpi,poi->bpo", x, self.weight) + self.bias


_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm, StepBatchNorm,
)  # fmt: skip


def l2_parameters(net: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters that take L2 regularisation: weights only.

    The paper exempts the filterbanks. We also exempt biases (names starting with ``bias``, including the RNNs'
    ``bias_ih``/``bias_hh``) and normalisation layers' affine parameters: penalising them does not limit
    model capacity and only pulls activations towards zero/unit scale. (The released code penalised biases
    too; with lambda = 1e-3 the difference is small.)
    """
    for module in net.modules():
        if isinstance(module, (TriangularFilterbank, *_NORM_TYPES)):
            continue
        for name, p in module.named_parameters(recurse=False):
            if not name.startswith("bias"):
                yield p


def check_input(x: torch.Tensor, tail: tuple[int | str, ...], what: str) -> None:
    """Raise a ValueError naming the expected layout unless ``x`` is ``(B, L, *tail)``.

    Integers in ``tail`` must match exactly; strings name dimensions of any size.
    """
    ok = x.ndim == 2 + len(tail) and all(isinstance(t, str) or s == t for s, t in zip(x.shape[2:], tail))
    if not ok:
        layout = ", ".join(["B", "L", *map(str, tail)])
        raise ValueError(f"{what} expects input of shape ({layout}), got {tuple(x.shape)}")


class StagingNet(nn.Module):
    """Common interface of the networks: ``encode_epochs`` then ``classify_sequence``.

    Subclasses set ``input_kind`` ("spectrogram" or "raw"), ``has_attention`` and ``hparams`` (their
    constructor arguments, JSON-serialisable), and implement the two halves. Splitting them lets scoring
    encode every epoch of a night once and run only the (cheap) sequence level per window.
    """

    input_kind: str = "spectrogram"
    has_attention: bool = False
    aggregation: str = "sequence"
    """How scoring combines outputs (the paper's test-time aggregation): "sequence" sums the log-probabilities
    of every L-epoch window covering an epoch, "epoch" takes each epoch's own output, "neighbours" sums
    the three predictions an epoch receives (from itself and its two neighbours)."""
    hparams: dict

    def encode_epochs(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def classify_sequence(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits from inputs; with ``return_attention`` also the frame attention weights ``(B, L, T)``."""
        if return_attention:
            z, alpha = self.encode_epochs(x, return_attention=True)
            return self.classify_sequence(z), alpha
        return self.classify_sequence(self.encode_epochs(x))

    def regularised_parameters(self) -> list[nn.Parameter]:
        """Parameters for the L2 penalty (see :func:`l2_parameters`)."""
        return list(l2_parameters(self))

    def _no_attention(self) -> None:
        raise ValueError(f"{type(self).__name__} has no attention weights to return")
