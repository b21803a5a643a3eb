"""The networks, by the names the command line and model files use.

Every net is a :class:`~sleepstage_cli.model.nets.blocks.StagingNet`: ``input_kind`` ("spectrogram" or "raw"),
``encode_epochs`` / ``classify_sequence`` / ``forward``, ``regularised_parameters()`` and ``hparams``.
"""

from __future__ import annotations

import inspect

from .arnn import E2EARNN, MultitaskARNN
from .blocks import StagingNet
from .deepsleepnet import DeepSleepNet
from .seqsleepnet import SeqSleepNet

NETS: dict[str, type[StagingNet]] = {
    "seqsleepnet": SeqSleepNet,
    "e2e-arnn": E2EARNN,
    "multitask-arnn": MultitaskARNN,
    "deepsleepnet": DeepSleepNet,
}


def get_net_class(name: str) -> type[StagingNet]:
    """The class registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return NETS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(NETS)}") from None


def build_net(name: str, **hparams: object) -> StagingNet:
    """Instantiate the network registered under ``name`` with the given hyper-parameters."""
    cls = get_net_class(name)
    accepted = net_parameters(cls)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(
            f"network {name!r} has no hyper-parameter {', '.join(unknown)}; it takes: {', '.join(accepted)}"
        )
    return cls(**hparams)  # type: ignore[arg-type]


def net_parameters(cls: type[StagingNet]) -> list[str]:
    """Names of the constructor arguments (hyper-parameters) of a network class."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


__all__ = [
    "NETS", "build_net", "get_net_class", "net_parameters",
    "StagingNet", "SeqSleepNet", "E2EARNN", "MultitaskARNN", "DeepSleepNet",
]  # fmt: skip
