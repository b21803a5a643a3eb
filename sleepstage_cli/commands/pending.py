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


@app.command(epilog="Example: sleepstage train data/ -o model.pt --epochs 10 --seed 1")
@command
def train(dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
          output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")] = Path("model.pt")
          ) -> None:
    """Train SeqSleepNet (or a baseline) on a prepared dataset. (not yet available)"""
    _not_yet("train")


@app.command(epilog="Example: sleepstage crossval data/ --folds 20 -o run/")
@command
def crossval(dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
             folds: Annotated[int, typer.Option(help="Number of subject-wise folds.")] = 20) -> None:
    """Subject-wise cross-validation of a model on a prepared dataset. (not yet available)"""
    _not_yet("crossval")


@app.command(epilog="Example: sleepstage score night.edf -o hypno.csv --model model.pt")
@command
def score(nights: Annotated[list[Path], typer.Argument(help="EDF files or folders to score.")],
          output: Annotated[Path, typer.Option("-o", "--output", help="Hypnogram CSV or folder.")] = Path("."),
          ) -> None:
    """Score EDF nights into hypnograms and staging reports. (not yet available)"""
    _not_yet("score")


@app.command(epilog="Example: sleepstage evaluate pred/ ref/")
@command
def evaluate(pred: Annotated[Path, typer.Argument(help="Predicted hypnogram(s).")],
             ref: Annotated[Path, typer.Argument(help="Reference hypnogram(s) or a prepared dataset.")]) -> None:
    """Compare predicted and reference hypnograms: accuracy, macro-F1, kappa, confusion. (not yet available)"""
    _not_yet("evaluate")
