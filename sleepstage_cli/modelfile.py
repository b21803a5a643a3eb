"""Model files: one ``.pt`` holding everything needed to score with it.

Contents (a plain dict, loaded with ``torch.load(weights_only=True)`` so a model file cannot run code):
format and version, the sleepstage version that wrote it, the network (name, hyper-parameters, L),
its weights (normalisation statistics included), the channel spec and conditioning of the data it was
trained on, the sampling rate and epoch length, the class names, and summaries of the training data
and of the validation it was selected on.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sleepstage_cli import __version__
from sleepstage_cli.errors import InputError
from sleepstage_cli.fsutil import atomic_open
from sleepstage_cli.io.channels import ChannelSpec
from sleepstage_cli.model import StagingModel
from sleepstage_cli.modelmeta import MODEL_FORMAT
from sleepstage_cli.signals import Conditioning
from sleepstage_cli.stages import STAGES

FORMAT = MODEL_FORMAT
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready to score, with what it was trained on."""

    model: StagingModel
    channel_spec: ChannelSpec
    conditioning: Conditioning
    meta: dict
    path: Path | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.channel_spec.kinds


def save_model(path: str | Path, model: StagingModel, channel_spec: dict, conditioning: dict,
               training: dict, validation: dict | None, state_dict: dict | None = None) -> None:
    """Write a model file atomically (``state_dict`` defaults to the model's current weights)."""
    state = {k: v.detach().cpu().clone() for k, v in (state_dict or model.state_dict()).items()}
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sleepstage_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "architecture": model.config(),
        "state_dict": state,
        "channel_spec": channel_spec,
        "conditioning": conditioning,
        "sampling_rate": conditioning.get("rate", 100.0),
        "epoch_seconds": 30.0,
        "classes": list(STAGES),
        "training": training,
        "validation": validation,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory first: torch turns a failed file write into an obscure RuntimeError
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getbuffer())


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Read a model file, refusing with one clear line what is not a usable sleepstage model."""
    path = Path(path)
    if not path.exists():
        raise InputError("model file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not a model file", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises assorted types for truncated/corrupted zip archives
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"not a readable model file (truncated or corrupted?): {detail}", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError("not a sleepstage model file", path)
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"model format version {version} is newer than this sleepstage reads ({FORMAT_VERSION}); "
                         f"it was written by sleepstage {payload.get('sleepstage_version', '?')}: upgrade sleepstage",
                         path)
    try:
        model = StagingModel.from_config(payload["architecture"], payload["state_dict"])
        spec = ChannelSpec.from_dict(payload["channel_spec"])
        cond = Conditioning.from_dict(payload["conditioning"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"model file is inconsistent: {str(exc).splitlines()[0]}", path) from None
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return LoadedModel(model=model, channel_spec=spec, conditioning=cond, meta=meta, path=path)
