"""Model files: one ``.pt`` holding everything needed to score with it.

Contents (a plain dict, loaded with ``torch.load(weights_only=True)`` so a model file cannot run code):
format and version, the sleepstage version that wrote it, the network (name, hyper-parameters, L),
its weights (normalisation statistics included), the channel spec and conditioning of the data it was
trained on, the sampling rate and epoch length, the class names, and summaries of the training data
and of the validation it was selected on; ``temperature`` (a plain float, the calibration T that scoring
divides the mean log-probabilities by; files without it load with T = 1) and ``calibration`` (how T was
fitted: ECE and NLL before and after, on which nights); ``fit`` (what it was trained on: labels, rates,
units, amplitudes and a spectral summary, for the fit check; plain lists and numbers).
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sleepstage_cli import __version__
from sleepstage_cli.conditioning.signals import Conditioning
from sleepstage_cli.errors import InputError
from sleepstage_cli.fsutil import atomic_open
from sleepstage_cli.io.channels import ChannelSpec
from sleepstage_cli.model.modelmeta import MODEL_FORMAT
from sleepstage_cli.model.staging import StagingModel
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
    temperature: float = 1.0  # calibration T: probabilities are softmax(mean log-probability / T)

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.channel_spec.kinds


def save_model(path: str | Path, model: StagingModel, channel_spec: dict, conditioning: dict,
               training: dict, validation: dict | None, state_dict: dict | None = None,
               calibration: dict | None = None, fit: dict | None = None) -> None:
    """Write a model file atomically (``state_dict`` defaults to the model's current weights).

    ``calibration``: the temperature fit (its ``temperature`` is stored as the model's T; none: T = 1).
    ``fit``: what the model was trained on, for the fit check (``spectrograms/fitsummary.py``; none: the
    check says "unknown").
    """
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
        "temperature": float((calibration or {}).get("temperature") or 1.0),
        "calibration": calibration,
        "fit": fit,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory first: torch turns a failed file write into an obscure RuntimeError
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getbuffer())


# What a file that is not a torch archive holds, by its first bytes (torch files are zip archives).
_MAGIC = ((b"\x93NUMPY", "a NumPy array file"), (b"\x80", "a Python pickle"), (b"0       ", "an EDF recording"),
          (b"\xffBIOSEMI", "a BDF recording"), (b"\x89HDF", "an HDF5 file"), (b"\x1f\x8b", "a gzip file"),
          (b"%PDF", "a PDF document"))


def _not_torch(head: bytes) -> str:
    """What a file that is no torch archive holds, from its first bytes, in a few words."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    text = head.decode("utf-8", errors="replace")  # a character cut at the end of ``head`` is one replacement
    if b"\x00" not in head and text.count("\ufffd") <= 1 and all(c.isprintable() or c in "\t\r\n\ufffd"
                                                                 for c in text):
        return "text"
    return "unknown binary data"


def _kind_of(path: Path, exc: Exception | None = None) -> str | None:
    """What ``path`` holds when it is clearly no torch model archive (None: a damaged one, or unknown).

    ``exc`` is torch.load's error: a torch archive that needs code to load says which class it holds.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head and not head.startswith(b"PK\x03\x04"):
        return f"{_not_torch(head)}, not a torch file"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in archive.namelist()):
                return "a zip archive, not a torch file"
    except (zipfile.BadZipFile, OSError):
        return None  # a cut-off or damaged archive
    found = re.search(r"GLOBAL ([\w.]+)", str(exc or ""))
    if found:  # torch would run code to rebuild it (a whole pickled module, NumPy objects...): never done
        return f"a torch file of other objects: {found.group(1)}"
    return None


def read_torch_file(path: str | Path, what: str = "model file") -> object:
    """``torch.load(weights_only=True)`` of ``path``, its failures said in one line naming the file.

    A file that is no torch archive is refused without asking torch (whose advice to set
    ``weights_only=False`` would run code from the file); a damaged archive is called so.
    """
    path = Path(path)
    try:
        kind = _kind_of(path) if path.stat().st_size else None
    except OSError as exc:
        raise InputError(f"cannot read the {what}: {exc.strerror or exc}", path) from None
    if kind is not None:
        raise InputError(f"not a sleepstage {what} ({kind})", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises assorted types for truncated/corrupted zip archives
        kind = _kind_of(path, exc)
        if kind is not None:
            raise InputError(f"not a sleepstage {what} ({kind})", path) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = first if first and "weights_only" not in first else type(exc).__name__
        if not path.stat().st_size:  # torch says "EOFError"
            detail = "the file is empty"
        raise InputError(f"not a readable {what} (truncated or corrupted?): {detail}", path) from None


def _payload_kind(payload: object) -> str:
    """What a torch file that is not a model file holds, in a few words."""
    if not isinstance(payload, dict):
        return f"a torch file holding a {type(payload).__name__}"
    if {"fingerprint", "optimizer", "step"} <= set(payload):
        return "a training checkpoint; finish the training with 'sleepstage train ... --resume' to get the model"
    keys = [str(k) for k in list(payload)[:6]]
    more = ", ..." if len(payload) > 6 else ""
    return f"a torch file holding a dict of {', '.join(keys)}{more}" if keys else "a torch file holding an empty dict"


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Read a model file, refusing with one clear line what is not a usable sleepstage model."""
    path = Path(path)
    if not path.exists():
        raise InputError("model file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not a model file", path)
    payload = read_torch_file(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"not a sleepstage model file ({_payload_kind(payload)})", path)
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
    return LoadedModel(model=model, channel_spec=spec, conditioning=cond, meta=meta, path=path,
                       temperature=_temperature(payload, path))


def _temperature(payload: dict, path: Path) -> float:
    """The model's calibration T (1 for files written before calibration); refused unless a number above 0."""
    value = payload.get("temperature", 1.0)
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"model file is inconsistent: temperature {value!r} is not a number above 0", path)
    return float(value)
