"""The ``sleepstage`` command line: parse, call the core, print. Heavy modules load inside commands."""

from __future__ import annotations

import sys

from sleepstage_cli import console as con
from sleepstage_cli.app import app
from sleepstage_cli.commands import crossval, evaluate, prepare, score, simulate, train  # noqa: F401  (each registers its commands)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # raised outside a command (e.g. while importing)
        con.error("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
