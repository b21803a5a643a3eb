"""Atomic file output: write beside the target under a temporary name, flush to disk, rename.

A reader (or a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from sleepstage_cli.errors import OutputExistsError, SleepstageError, WriteError


def check_writable_folder(folder: Path, what: str = "output") -> None:
    """Check that ``folder`` is, or can be made (with its missing parents), a writable folder."""
    probe = folder if str(folder) else Path(".")
    while not probe.exists() and probe != probe.parent:  # missing folders are made in the first one there
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SleepstageError(f"cannot write {what}: {probe} is not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise SleepstageError(f"cannot write {what}: folder {probe} is not writable")


def check_writable_output(path: Path, force: bool, what: str = "output") -> None:
    """Refuse to replace an existing ``path`` unless ``force``; check its folder can be written."""
    if path.is_dir():
        raise SleepstageError(f"cannot write {what} {path}: it is a folder")
    if path.exists() and not force:
        raise OutputExistsError(path, what)
    check_writable_folder(path.parent, f"{what} {path}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def replaces_input(output: Path, inputs: Iterable[Path]) -> Path | None:
    """The input that writing ``output`` would replace, if any.

    An input file is replaced when ``output`` is that file (by any path: a link, ``..``, a hard link);
    an input folder's content is replaced when ``output`` is an existing file inside it (the user's
    recordings and expert hypnograms live there). ``inputs`` that do not exist are ignored.
    """
    out = Path(os.path.abspath(output))
    resolved = out.resolve()
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            folder = given.resolve()
            if out.exists() and (resolved == folder or folder in resolved.parents):
                return given
        elif given.exists() and (resolved == given.resolve() or _same_file(out, given)):
            return given
    return None


def refuse_replacing_inputs(outputs: Iterable[Path], inputs: Iterable[Path], what: str = "output") -> None:
    """Refuse, with or without --force, any output that is or would replace one of the command's inputs."""
    inputs = [Path(p) for p in inputs]
    for output in outputs:
        hit = replaces_input(Path(output), inputs)
        if hit is not None:
            detail = "is" if not hit.is_dir() else "would replace a file in"
            raise SleepstageError(f"cannot write {what} {output}: it {detail} one of this command's inputs "
                                  f"({hit}); choose another output (--force never replaces an input)")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that insist on a file name; renamed into place on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name, not the result
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, quota, I/O error: the previous file is intact; say which
            raise _write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)


def _write_error(path: Path, exc: OSError) -> WriteError:
    err = WriteError(f"cannot write the file: {exc.strerror or exc}", path)
    err.errno = exc.errno
    return err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, turning any failure into a one-line SleepstageError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SleepstageError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SleepstageError(f"cannot read {what}: {exc}", path) from None
