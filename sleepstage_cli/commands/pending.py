"""Commands whose implementation has not landed yet: they exist, document themselves, and say so."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sleepstage_cli import __version__
from sleepstage_cli.app import app, command
from sleepstage_cli.errors import SleepstageError


def _not_yet(name: str) -> None:
    raise SleepstageError(f"'sleepstage {name}' is not yet available in sleepstage {__version__}")


@app.command(epilog="Example: sleepstage crossval data/ --folds 20 -o run/")
@command
def crossval(dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
             folds: Annotated[int, typer.Option(help="Number of subject-wise folds.")] = 20) -> None:
    """Subject-wise cross-validation of a model on a prepared dataset. (not yet available)"""
    _not_yet("crossval")
