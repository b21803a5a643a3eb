"""A model file's metadata (channel spec, conditioning, architecture...) read without importing torch.

``sleepstage score`` starts reading and conditioning the first recording from this while torch (a
couple of seconds to import) loads the model itself. A model file is a torch zip archive whose
``data.pkl`` holds plain dicts and lists around the tensors; unpickling it with the tensors stubbed
out gives everything but the weights. Anything unexpected gives None, and the caller then simply
loads the model first (which reports what is wrong with the file).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

MODEL_FORMAT = "sleepstage-model"


def _nothing(*args: object, **kwargs: object) -> None:
    return None


class _WithoutTensors(pickle.Unpickler):
    """Rebuilds containers and plain values; every torch object (tensors, storages) becomes None."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" or module.startswith("torch."):
            return _nothing
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: object) -> None:  # tensor storages live in other archive members
        return None


def peek_payload(path: str | Path) -> dict | None:
    """The dict a torch file of sleepstage's (model or checkpoint) holds, tensors as None; None if not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            payload = _WithoutTensors(io.BytesIO(archive.read(name))).load()
    except Exception:  # not a zip, truncated, another pickle layout: let the real loader speak
        return None
    return payload if isinstance(payload, dict) else None


def peek_metadata(path: str | Path) -> dict | None:
    """Everything in a sleepstage model file but its weights, or None if it cannot be read this way."""
    payload = peek_payload(path)
    if payload is None or payload.get("format") != MODEL_FORMAT:
        return None
    return {k: v for k, v in payload.items() if k != "state_dict"}
