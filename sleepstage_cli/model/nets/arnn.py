"""E2E-ARNN baselines: SeqSleepNet's epoch level alone, one epoch in, one stage (or three) out."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import EpochEncoder, StagingNet


class E2EARNN(StagingNet):
    """Attention-based RNN on one epoch: filterbank -> BiRNN over frames -> attention -> Linear.

    Every epoch of a ``(B, L, C, T, F)`` input is classified on its own (no context), so any L works and
    the result at a position does not depend on its neighbours.

    Parameters
    ----------
    n_channels, n_filters, rnn, hidden, dropout, n_classes
        As :class:`~sleepstage_cli.model.nets.seqsleepnet.SeqSleepNet` (same defaults; ``rnn`` includes
        "bnlstm").
    attention : int
        Attention size: 32, the released E2E-ARNN settings (SeqSleepNet uses 64).

    Output logits ``(B, L, n_classes)``.
    """

    input_kind = "spectrogram"
    aggregation = "epoch"
    has_attention = True
    n_outputs = 1

    def __init__(
        self,
        n_channels: int = 3,
        n_filters: int = 32,
        rnn: str = "gru",
        hidden: int = 64,
        attention: int = 32,
        dropout: float = 0.25,
        n_classes: int = 5,
    ) -> None:
        super().__init__()
        self.hparams = dict(
            n_channels=n_channels, n_filters=n_filters, rnn=rnn, hidden=hidden, attention=attention,
            dropout=dropout, n_classes=n_classes,
        )  # fmt: skip
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.encoder = EpochEncoder(n_channels, n_filters, rnn, hidden, attention, dropout)
        self.output = nn.Linear(self.encoder.out_features, self.n_outputs * n_classes)

    def encode_epochs(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Epoch vectors ``(B, L, 2*hidden)`` (and attention weights ``(B, L, T)``) from ``(B, L, C, T, F)``."""
        return self.encoder.encode_sequences(x, type(self).__name__, return_attention)

    def classify_sequence(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, n_classes)``, each position from its own epoch vector only."""
        return self.output(z)


class MultitaskARNN(E2EARNN):
    """E2E-ARNN predicting, from epoch t alone, the stages of epochs t-1, t and t+1 (one-to-many).

    Same parameters as :class:`E2EARNN`. Output logits ``(B, L, 3, n_classes)``: index 0 = previous
    epoch, 1 = current, 2 = next. At the borders of a night the missing neighbour's prediction is simply
    not used (that is the caller's job, as is summing the log-probabilities an epoch receives).
    """

    aggregation = "neighbours"
    n_outputs = 3

    def classify_sequence(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, 3, n_classes)`` (previous, current, next) from epoch vectors ``(B, L, 2*hidden)``."""
        y = self.output(z)
        return y.reshape(*y.shape[:-1], self.n_outputs, self.n_classes)
