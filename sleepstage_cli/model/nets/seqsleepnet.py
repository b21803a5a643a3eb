"""SeqSleepNet (Phan et al., IEEE TNSRE 2019): hierarchical RNN, sequence of L epochs in, L stages out."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import BiRNN, EpochEncoder, PositionwiseLinear, StagingNet

OUTPUTS = ("per-position", "shared")


class SeqSleepNet(StagingNet):
    """SeqSleepNet on normalised spectrograms.

    Per-channel learnable triangular filterbank -> frames concatenated (T x K*C) -> epoch-level BiRNN over
    the T frames -> additive attention -> one 2*hidden epoch vector; sequence-level BiRNN over the L epoch
    vectors -> an output layer per position.

    Parameters
    ----------
    n_channels : int
        Channels C (1-3, order eeg, eog, emg).
    seq_len : int
        Epochs per sequence L (20 in the headline model). Binding only with ``output="per-position"``.
    n_filters : int
        Triangular filters per channel (32).
    rnn : {"gru", "lstm", "bnlstm"}
        Recurrent cell of both levels: GRU (this project's reading of the paper), a plain LSTM, or the
        released code's batch-normalised LSTM (:mod:`.bnlstm`; batch-norm statistics per time step up to
        29 frames at the epoch level and ``seq_len`` epochs at the sequence level).
    hidden : int
        Units per direction in both BiRNNs (64).
    attention : int
        Attention size (64).
    dropout : float
        Dropout on the recurrent layers' inputs and outputs (0.25, i.e. keep 0.75).
    n_classes : int
        Output classes (5: W, N1, N2, N3, REM).
    output : {"per-position", "shared"}
        A separate ``Linear(2*hidden, n_classes)`` for each of the L positions (released code; needs
        exactly ``seq_len`` epochs per sequence) or one layer shared by all positions (any L).

    Input ``(B, L, C, 29, 129)``; output logits ``(B, L, n_classes)``.
    """

    input_kind = "spectrogram"
    has_attention = True

    def __init__(
        self,
        n_channels: int = 3,
        seq_len: int = 20,
        n_filters: int = 32,
        rnn: str = "gru",
        hidden: int = 64,
        attention: int = 64,
        dropout: float = 0.25,
        n_classes: int = 5,
        output: str = "per-position",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of {list(OUTPUTS)}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.hparams = dict(
            n_channels=n_channels, seq_len=seq_len, n_filters=n_filters, rnn=rnn, hidden=hidden,
            attention=attention, dropout=dropout, n_classes=n_classes, output=output,
        )  # fmt: skip
        self.n_channels = n_channels
        self.seq_len = seq_len
        self.encoder = EpochEncoder(n_channels, n_filters, rnn, hidden, attention, dropout)
        self.seq_rnn = BiRNN(self.encoder.out_features, hidden, rnn, dropout, max_steps=seq_len)
        d = self.seq_rnn.out_features
        self.output: nn.Module = (
            PositionwiseLinear(seq_len, d, n_classes) if output == "per-position" else nn.Linear(d, n_classes)
        )

    def encode_epochs(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Epoch vectors ``(B, L, 2*hidden)`` (and attention weights ``(B, L, T)``) from ``(B, L, C, T, F)``."""
        return self.encoder.encode_sequences(x, type(self).__name__, return_attention)

    def classify_sequence(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, n_classes)`` from epoch vectors ``(B, L, 2*hidden)``."""
        if isinstance(self.output, PositionwiseLinear) and (z.ndim != 3 or z.shape[1] != self.seq_len):
            raise ValueError(
                f"this SeqSleepNet has one output layer per position and needs sequences of exactly "
                f"{self.seq_len} epochs, got {z.shape[1] if z.ndim == 3 else tuple(z.shape)}"
            )
        return self.output(self.seq_rnn(z))
