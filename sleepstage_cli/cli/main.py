"""The ``sleepstage`` command line: parse, call the core, print. Heavy modules load inside commands."""

from __future__ import annotations

import logging
import os
import sys

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app

# Each module registers its command; `sleepstage --help` lists them in this order.
# isort: off
from sleepstage_cli.cli.commands import (  # noqa: F401
    fetch,
    train,
    crossval,
    evaluate,
    prepare,
    score,
    simulate,
    models,
)
# isort: on


def _exit(code: object) -> None:
    """Exit with ``code``; once torch is loaded, skip the interpreter's teardown of its modules.

    Freeing torch's thousands of objects at exit takes about a second, a fifth of scoring a night.
    Every output is written and closed by then (all writes are atomic renames); only the standard
    streams and logging still need flushing.
    """
    status = 0 if code is None else code if isinstance(code, int) else 1
    if not isinstance(code, (int, type(None))):
        print(code, file=sys.stderr)
    if "torch" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def main() -> None:
    """Console-script entry point."""
    # OpenMP threads that spin while waiting slow torch 10-60x when another process holds a core of a
    # small machine (benchmarks/RESULTS.md, "Load"); passive waiting costs nothing when the machine is
    # idle. It must be set before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except KeyboardInterrupt:  # raised outside a command (e.g. while importing)
        con.error("interrupted")
        sys.exit(130)
    except SystemExit as exc:  # how Typer ends every run
        _exit(exc.code)
    _exit(0)


__all__ = ["app", "main"]
