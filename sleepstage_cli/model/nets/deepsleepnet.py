"""DeepSleepNet (Supratak et al., IEEE TNSRE 2017), trained end to end on the raw signal (E2E-DeepSleepNet)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import StagingNet, check_input


def _same_padding(n: int, kernel: int, stride: int) -> tuple[int, int]:
    # TensorFlow "SAME": output ceil(n / stride), the extra sample of an odd total goes to the right.
    total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


class SameConv1d(nn.Conv1d):
    """Conv1d with TensorFlow "SAME" padding (also for strides > 1, which ``padding="same"`` refuses)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_padding(x.shape[-1], self.kernel_size[0], self.stride[0]))
        return super().forward(x)


class SameMaxPool1d(nn.Module):
    """Max pooling with TensorFlow "SAME" padding (padded samples never win)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_padding(x.shape[-1], self.size, self.size), value=float("-inf"))
        return F.max_pool1d(x, self.size, self.size)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    # No conv bias: batch normalisation follows, as in the original.
    return [SameConv1d(c_in, c_out, kernel, stride, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]


def _branch(
    n_channels: int, first: int, conv: int, k1: int, s1: int, pool1: int, k: int, pool2: int, dropout: float
) -> nn.Sequential:
    return nn.Sequential(
        *_conv_bn_relu(n_channels, first, k1, s1),
        SameMaxPool1d(pool1),
        nn.Dropout(dropout),
        *_conv_bn_relu(first, conv, k),
        *_conv_bn_relu(conv, conv, k),
        *_conv_bn_relu(conv, conv, k),
        SameMaxPool1d(pool2),
        nn.Flatten(),
    )


class DeepSleepNet(StagingNet):
    """Two-branch CNN per epoch, then a 2-layer BiLSTM over the sequence with a residual FC shortcut.

    Parameters
    ----------
    n_channels : int
        Channels C (eeg, eog, emg), fed to the first convolutions as input channels.
    fs : int
        Sampling rate in Hz (100); sets the first kernels: small branch fs/2 stride fs//16, large branch
        4*fs stride fs/2.
    n_samples : int
        Samples per epoch (3000).
    first_filters, conv_filters : int
        Filters of the first convolution (64) and of the three following ones (128) in each branch.
    lstm_hidden : int
        LSTM units per direction (512); the shortcut has ``2 * lstm_hidden`` units (1024).
    lstm_layers : int
        Stacked BiLSTM layers (2).
    dropout : float
        Dropout everywhere the original has it (0.5): after the first pooling of each branch, after the
        concatenation, on every LSTM layer's output and after the residual sum.
    n_classes : int
        Output classes (5).

    Input raw signals ``(B, L, C, n_samples)``; output logits ``(B, L, n_classes)``.
    The original's LSTM cells have peephole connections, which ``nn.LSTM`` does not offer.
    """

    input_kind = "raw"
    has_attention = False

    def __init__(
        self,
        n_channels: int = 3,
        fs: int = 100,
        n_samples: int = 3000,
        first_filters: int = 64,
        conv_filters: int = 128,
        lstm_hidden: int = 512,
        lstm_layers: int = 2,
        dropout: float = 0.5,
        n_classes: int = 5,
    ) -> None:
        super().__init__()
        self.hparams = dict(
            n_channels=n_channels, fs=fs, n_samples=n_samples, first_filters=first_filters,
            conv_filters=conv_filters, lstm_hidden=lstm_hidden, lstm_layers=lstm_layers, dropout=dropout,
            n_classes=n_classes,
        )  # fmt: skip
        self.n_channels = n_channels
        self.n_samples = n_samples
        self.small = _branch(n_channels, first_filters, conv_filters, fs // 2, fs // 16, 8, 8, 4, dropout)
        self.large = _branch(n_channels, first_filters, conv_filters, fs * 4, fs // 2, 4, 6, 2, dropout)
        small_len = math.ceil(math.ceil(math.ceil(n_samples / (fs // 16)) / 8) / 4)
        large_len = math.ceil(math.ceil(math.ceil(n_samples / (fs // 2)) / 4) / 2)
        self.out_features = conv_filters * (small_len + large_len)  # 128 * (16 + 8) = 3072 at 100 Hz
        self.feature_dropout = nn.Dropout(dropout)

        width = 2 * lstm_hidden
        self.shortcut = nn.Sequential(nn.Linear(self.out_features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
        self.lstm = nn.LSTM(
            self.out_features, lstm_hidden, num_layers=lstm_layers, batch_first=True, bidirectional=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )  # fmt: skip
        self.lstm_dropout = nn.Dropout(dropout)
        self.sum_dropout = nn.Dropout(dropout)
        self.output = nn.Linear(width, n_classes)

    def regularised_parameters(self) -> list[nn.Parameter]:
        """The first convolution of each branch: Supratak's code puts its weight decay (1e-3) there only."""
        return [self.small[0].weight, self.large[0].weight]

    def encode_epochs(self, x: torch.Tensor, return_attention: bool = False) -> torch.Tensor:
        """CNN features ``(B, L, out_features)`` (3072 at 100 Hz) from raw epochs ``(B, L, C, n_samples)``."""
        if return_attention:
            self._no_attention()
        check_input(x, (self.n_channels, self.n_samples), type(self).__name__)
        b, l = x.shape[:2]
        flat = x.reshape(b * l, self.n_channels, self.n_samples)
        z = torch.cat([self.small(flat), self.large(flat)], dim=1)
        return self.feature_dropout(z).reshape(b, l, -1)

    def classify_sequence(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, n_classes)`` from CNN features ``(B, L, out_features)``."""
        b, l, d = z.shape
        short = self.shortcut(z.reshape(b * l, d)).reshape(b, l, -1)
        seq, _ = self.lstm(z)
        return self.output(self.sum_dropout(self.lstm_dropout(seq) + short))
