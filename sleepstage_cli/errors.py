"""The one exception type the command line turns into a clean one-line error."""

from __future__ import annotations

from pathlib import Path


class SleepstageError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    The message is one line and names the file it is about (when there is one).
    """

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        text = " ".join(str(message).split())  # one line, whatever the caller built
        if path is not None and str(path) not in text:
            text = f"{path}: {text}"
        super().__init__(text)


class InputError(SleepstageError):
    """A file or value the user gave cannot be used."""


class OutputExistsError(SleepstageError):
    """An output is already there and --force was not given."""

    def __init__(self, path: str | Path, what: str = "output") -> None:
        super().__init__(f"{what} {path} already exists; pass --force to replace it", None)
        self.path = Path(path)


class WriteError(SleepstageError, OSError):
    """A file could not be written (disk full, quota, I/O error): one clean line, and still an OSError."""


class Interrupted(SleepstageError):
    """The user stopped the work (Ctrl-C or SIGTERM); what was finished is kept."""

    exit_code = 130
