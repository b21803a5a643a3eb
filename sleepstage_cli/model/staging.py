"""StagingModel: front end + normaliser + network, the unit that is trained, saved and used for scoring.

Everything a model file must hold to score a new night lives here: the network's name and
hyper-parameters (:meth:`StagingModel.config`) and its ``state_dict``, which includes the normalisation
statistics of spectrogram networks.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from sleepstage_cli.model.nets import build_net, get_net_class, net_parameters
from sleepstage_cli.model.nets.blocks import check_input
from sleepstage_cli.spectrograms.frontend import EPOCH_SAMPLES, Normalizer, SpectrogramFrontEnd


class StagingModel(nn.Module):
    """A network with its input pipeline, taking conditioned signals ``(B, L, C, 3000)``.

    Parameters
    ----------
    net_name : str
        A key of :data:`sleepstage_cli.model.nets.NETS`.
    n_channels : int
        Channels C (1-3, order eeg, eog, emg).
    seq_len : int
        Epochs per training/scoring window L (passed to the net if it takes it, e.g. SeqSleepNet).
    norm_mean, norm_std : array-like (C, 29, 129), optional
        Normalisation statistics in dB (spectrogram nets only); can be set later with
        :meth:`set_normalisation`.
    **net_hparams
        Further constructor arguments of the network.
    """

    def __init__(
        self,
        net_name: str,
        n_channels: int,
        seq_len: int,
        norm_mean: torch.Tensor | np.ndarray | None = None,
        norm_std: torch.Tensor | np.ndarray | None = None,
        **net_hparams: Any,
    ) -> None:
        super().__init__()
        hparams = dict(net_hparams, n_channels=n_channels)
        if "seq_len" in net_parameters(get_net_class(net_name)):
            hparams["seq_len"] = seq_len
        self.net = build_net(net_name, **hparams)
        self.net_name = net_name
        self.n_channels = n_channels
        self.seq_len = seq_len
        self.frontend: SpectrogramFrontEnd | None = None
        self.normalizer: Normalizer | None = None
        if self.net.input_kind == "spectrogram":
            self.frontend = SpectrogramFrontEnd()
            self.normalizer = Normalizer(n_channels, self.frontend.n_frames, self.frontend.n_bins, norm_mean, norm_std)
        elif norm_mean is not None or norm_std is not None:
            raise ValueError(f"network {net_name!r} works on the raw signal and takes no normalisation statistics")

    @property
    def input_kind(self) -> str:
        """What the network consumes: "spectrogram" or "raw"."""
        return self.net.input_kind

    @property
    def has_attention(self) -> bool:
        return self.net.has_attention

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: normalised spectrograms ``(B, L, C, 29, 129)`` or the raw signal itself."""
        fe = self.frontend
        n_samples = fe.n_samples if fe is not None else getattr(self.net, "n_samples", EPOCH_SAMPLES)
        check_input(x, (self.n_channels, n_samples), f"{type(self).__name__}({self.net_name})")
        if self.frontend is None or self.normalizer is None:
            return x
        return self.normalizer(self.frontend(x))

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, spectrogram: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (``(B, L, 5)``; ``(B, L, 3, 5)`` for multitask-arnn) from signals ``(B, L, C, 3000)``.

        With ``spectrogram``, ``x`` is the front end's output ``(B, L, C, 29, 129)`` already (training
        reads it from a cache; see specache.py) and only the normaliser and the net run.
        With ``return_attention`` (attention nets only) also the frame weights ``(B, L, 29)``.
        """
        if spectrogram:
            if self.normalizer is None:
                raise ValueError(f"network {self.net_name!r} works on the raw signal, not on spectrograms")
            return self.net(self.normalizer(x), return_attention=return_attention)
        return self.net(self.net_input(x), return_attention=return_attention)

    def encode_epochs(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-epoch encodings ``(B, L, D)`` from signals ``(B, L, C, 3000)`` (independent across epochs)."""
        return self.net.encode_epochs(self.net_input(x), return_attention=return_attention)

    def classify_sequence(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from encodings ``(B, L, D)`` as returned by :meth:`encode_epochs`."""
        return self.net.classify_sequence(z)

    def set_normalisation(self, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray) -> None:
        """Store normalisation statistics (C, 29, 129), e.g. from :class:`~.frontend.RunningStats`."""
        if self.normalizer is None:
            raise ValueError(f"network {self.net_name!r} works on the raw signal and takes no normalisation statistics")
        self.normalizer.set(mean, std)

    def regularised_parameters(self) -> list[nn.Parameter]:
        """Parameters that take the L2 penalty (the net's choice; the front end has none)."""
        return self.net.regularised_parameters()

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description from which :meth:`from_config` rebuilds the architecture."""
        hparams = {k: v for k, v in self.net.hparams.items() if k not in ("n_channels", "seq_len")}
        return {"net": self.net_name, "n_channels": self.n_channels, "seq_len": self.seq_len, "hparams": hparams}

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> "StagingModel":
        """Rebuild a model from :meth:`config` and (strictly) load its ``state_dict``."""
        try:
            name, n_channels, seq_len = config["net"], config["n_channels"], config["seq_len"]
        except KeyError as exc:
            raise ValueError(f"model config lacks {exc.args[0]!r}; it has: {', '.join(config)}") from None
        model = cls(name, int(n_channels), int(seq_len), **dict(config.get("hparams", {})))
        if state_dict is not None:
            model.load_state_dict(state_dict)
        return model
