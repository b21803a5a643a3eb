"""Installed models: model files copied into the user's data folder, each named and verified by its sha256.

The folder is ``platformdirs.user_data_dir("sleepstage")/models`` (``$SLEEPSTAGE_DATA_DIR/models`` when
that variable is set). It holds ``NAME.pt``, its card (``NAME.card.json``, ``NAME.card.md``) and
``index.json``: per name the file, its sha256, where it came from (a URL, or only a file's name: never a
path of this machine) and when. Every use checks the file's sha256 against the index, so a file changed
after it was installed is refused. Only files listed in the index are ever removed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sleepstage_cli.digests import SHORT, file_sha256, is_sha256
from sleepstage_cli.errors import InputError, OutputExistsError, SleepstageError
from sleepstage_cli.fsutil import atomic_path, atomic_write_json, read_json

ENV_DATA_DIR = "SLEEPSTAGE_DATA_DIR"
INDEX = "index.json"
INDEX_FORMAT = "sleepstage-installed-models"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def data_dir() -> Path:
    """sleepstage's folder of user data (``$SLEEPSTAGE_DATA_DIR`` overrides the platform's)."""
    override = os.environ.get(ENV_DATA_DIR, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("sleepstage", appauthor=False))


def models_dir() -> Path:
    return data_dir() / "models"


def check_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".pt", ".json", ".md")):
        raise InputError(f"model name {name!r} is not allowed: use letters, digits, '.', '_' and '-' (up to 64, "
                         "starting with a letter or digit, without a .pt ending)")
    return name


def read_index() -> dict[str, dict]:
    """The installed models by name (empty when none was ever installed)."""
    path = models_dir() / INDEX
    if not path.exists():
        return {}
    index = read_json(path, "index of installed models")
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("models"),
                                                                                           dict):
        raise SleepstageError("is not sleepstage's index of installed models; move it away to start afresh", path)
    return index["models"]


def _write_index(models: dict[str, dict]) -> None:
    atomic_write_json(models_dir() / INDEX, {"format": INDEX_FORMAT, "format_version": 1,
                                             "models": dict(sorted(models.items()))})


def _own_file(entry: dict) -> Path:
    """The file an index entry names, only when it is ``NAME.pt`` directly in the models folder (the index
    is a file on disk: a path elsewhere is never read or deleted through it)."""
    file = str(entry.get("file", ""))
    if Path(file).name != file or not file.endswith(".pt") or file.startswith("."):
        raise SleepstageError(f"names {file!r}, not a model file of its own folder; move it away to start afresh",
                              models_dir() / INDEX)
    return models_dir() / file


def verified_path(name: str) -> Path:
    """The installed model file ``name``, after checking its sha256 against the index."""
    entry = read_index().get(name)
    if entry is None:
        raise InputError(f"no installed model is named {name!r}")
    path = _own_file(entry)
    if not path.is_file():
        raise InputError(f"installed model {name!r} is missing its file; install it again with "
                         f"'sleepstage models install ... --name {name} --force'", path)
    digest = file_sha256(path)
    if digest != entry.get("sha256"):
        raise InputError(f"installed model {name!r} was changed after it was installed (sha256 {digest[:SHORT]}, "
                         f"installed as {str(entry.get('sha256'))[:SHORT]}): refused; install it again with "
                         f"'sleepstage models install ... --name {name} --force'", path)
    return path


def _is_url(source: str) -> bool:
    return re.match(r"^(https?|ftp)://", source, re.IGNORECASE) is not None


def _download(url: str, folder: Path, progress: bool) -> Path:
    """Download ``url`` into ``folder`` with pooch; failures in one line naming the URL."""
    import pooch

    name = Path(url.split("?", 1)[0].rstrip("/")).name or "model.pt"
    try:
        return Path(pooch.retrieve(url, known_hash=None, fname=name, path=folder, progressbar=progress))
    except Exception as exc:  # requests' and pooch's assorted errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot download the model: {first}", url) from None


def _validate(path: Path, shown: str) -> dict:
    """The model's metadata; anything that is no usable sleepstage model is refused naming ``shown``."""
    from sleepstage_cli.model.modelfile import load_model

    try:
        return load_model(path).meta
    except SleepstageError as exc:
        message = str(exc).replace(str(path), shown)
        raise InputError(message if shown in message else f"{shown}: {message}") from None


def install(source: str, name: str | None = None, sha256: str | None = None, force: bool = False,
            crossval: dict | None = None, progress: bool = False,
            on_download: Callable[[str], None] | None = None) -> dict:
    """Install a model file (a path or a URL) under ``name``; returns its index entry (with ``name``).

    ``sha256``: the file must have it (else nothing is installed). ``crossval``: a crossval card's
    ``cross_validation`` section, written into the installed model's card.
    """
    from sleepstage_cli.model.card import card_of_model_file, card_paths, write_card

    if sha256 is not None:
        sha256 = sha256.strip().lower().removeprefix("sha256:")
        if not is_sha256(sha256):
            raise InputError(f"--sha256 takes 64 hexadecimal digits, not {sha256!r}")
    url = _is_url(source)
    stem = Path(source.split("?", 1)[0].rstrip("/")).stem
    name = check_name(name if name is not None else stem)
    models = read_index()
    if name in models and not force:
        raise OutputExistsError(name, "installed model")
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".install-") as tmp:
        if url:
            if on_download:
                on_download(source)
            path = _download(source, Path(tmp), progress)
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError("model file not found" if not path.exists() else "is not a model file", path)
        digest = file_sha256(path)
        if sha256 is not None and digest != sha256:
            raise InputError(f"sha256 {digest} differs from --sha256 {sha256}: not installed", source)
        _validate(path, source)
        target = folder / f"{name}.pt"
        with atomic_path(target) as tmp_target:
            shutil.copyfile(path, tmp_target)
    if file_sha256(target) != digest:
        raise SleepstageError("the copy differs from what was downloaded or read; not installed", target)
    card = card_of_model_file(target, name=name, crossval=crossval)
    write_card(card, *card_paths(target))
    entry = {"file": target.name, "sha256": digest, "source": source if url else Path(source).name,
             "installed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    _write_index({**read_index(), name: entry})
    return {"name": name, **entry}


def remove(name: str) -> dict:
    """Remove an installed model (its file, card and index entry); only what ``install`` wrote."""
    models = read_index()
    if name not in models:
        raise InputError(f"no installed model is named {name!r} (shipped models cannot be removed)")
    entry = models.pop(name)
    target = _own_file(entry)
    _write_index(models)
    for path in (target, *card_paths_of(target)):
        path.unlink(missing_ok=True)
    return {"name": name, **entry}


def card_paths_of(target: Path) -> tuple[Path, Path]:
    from sleepstage_cli.model.card import card_paths

    return card_paths(target)


__all__ = ["ENV_DATA_DIR", "INDEX", "check_name", "data_dir", "install", "models_dir", "read_index", "remove",
           "verified_path"]
