"""The model zoo: model files shipped in the package's ``models/`` folder, with their model cards.

A wheel carries the repository's top-level ``models/`` folder as ``sleepstage_cli/models``; an
editable install finds it beside the package. ``default.pt`` there, if present, is what
``sleepstage score`` uses without ``--model``. None is shipped yet: no model trained on real
polysomnography can be made or redistributed from this project's machines, and a model trained on
simulated nights must never pass for one.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parents[1]  # the package folder


def zoo_folders() -> list[Path]:
    """Where shipped models are looked for: inside the installed package, then beside the source tree."""
    return [p for p in (_HERE / "models", _HERE.parent / "models") if p.is_dir()]


def default_model() -> Path | None:
    """The shipped default model file, or None."""
    for folder in zoo_folders():
        candidate = folder / "default.pt"
        if candidate.is_file():
            return candidate
    return None
