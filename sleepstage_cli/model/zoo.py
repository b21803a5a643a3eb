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


def shipped_models() -> dict[str, Path]:
    """The models shipped in ``models/``, by name (the file's stem; the first folder wins)."""
    found: dict[str, Path] = {}
    for folder in zoo_folders():
        for path in sorted(folder.glob("*.pt")):
            found.setdefault(path.stem, path)
    return found


def model_names() -> tuple[list[str], list[str]]:
    """The names of the installed and of the shipped models."""
    from sleepstage_cli.model.registry import read_index

    return sorted(read_index()), sorted(shipped_models())


def resolve_model(text: str | Path) -> Path:
    """The model file that ``--model TEXT`` means: an existing path wins; else an installed model of that
    name (its sha256 checked against the index); else a shipped one; else a one-line error listing names."""
    from sleepstage_cli.errors import InputError
    from sleepstage_cli.model.registry import read_index, verified_path

    path = Path(text)
    if path.exists():
        return path
    name = str(text)
    if name in read_index():
        return verified_path(name)
    shipped = shipped_models()
    if name in shipped:
        return shipped[name]
    installed, shipped_names = sorted(read_index()), sorted(shipped)
    known = "; ".join(f"{what}: {', '.join(names)}" for what, names in (("installed", installed),
                                                                          ("shipped", shipped_names)) if names)
    raise InputError(f"model file not found, nor a model named {name!r} ("
                     + (known if known else "no model is installed or shipped") + "; see 'sleepstage models list')")
