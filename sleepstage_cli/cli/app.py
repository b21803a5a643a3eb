"""The Typer application, global options and the error policy every command shares."""

from __future__ import annotations

import errno
import functools
import os
from typing import Annotated, Optional

import typer

from sleepstage_cli import __version__, interrupts
from sleepstage_cli.cli import console as con
from sleepstage_cli.errors import SleepstageError

app = typer.Typer(
    name="sleepstage",
    help="Sleep staging from EDF polysomnography with SeqSleepNet.\n\n"
         "Typical use: **sleepstage prepare** EDF nights into a dataset, **train** a model on it, "
         "**score** new nights, **evaluate** against expert hypnograms.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _State:
    debug = False


STATE = _State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sleepstage {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    STATE.debug = debug or os.environ.get("SLEEPSTAGE_DEBUG", "") not in ("", "0")
    interrupts.set_notifier(con.warn)  # "stopping ... at the next safe point" in the console's style


_ENVIRONMENT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                                 errno.EDQUOT, errno.EIO, errno.ENAMETOOLONG})


def command(fn):
    """Turn our errors into one red line and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SleepstageError as exc:
            if STATE.debug:
                raise
            con.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if STATE.debug:
                raise
            con.error("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug: say so in one line, the traceback is one flag away
            if STATE.debug:
                raise
            if isinstance(exc, OSError) and exc.filename is not None and exc.errno in _ENVIRONMENT_ERRNOS:
                # ... unless it is the user's environment (a path through a file, no permission, a full disk)
                con.error(f"{exc.filename}: {exc.strerror}")
                raise typer.Exit(1) from None
            con.error(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)")
            raise typer.Exit(3) from None

    return wrapper
