"""``sleepstage simulate``: synthetic PSG nights in the layout of a real dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.errors import SleepstageError

_EXAMPLE = """Examples:

  sleepstage simulate demo/ --nights 4 --layout mass --hours 2 --seed 1

  sleepstage simulate sedf/ --nights 2 --layout sleep-edf --study SC
"""


@app.command(epilog=_EXAMPLE)
@command
def simulate(
    output: Annotated[Path, typer.Argument(help="Folder to write the nights into.")],
    nights: Annotated[int, typer.Option(help="Number of nights.")] = 2,
    layout: Annotated[str, typer.Option(help="mass, sleep-edf or generic.")] = "mass",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same nights.")] = 0,
    hours: Annotated[float, typer.Option(help="Length of the sleep period of each night.")] = 8.0,
    subset: Annotated[str, typer.Option(help="MASS subset SS1-SS5 (SS2, SS4, SS5 score 20-s R&K epochs).")] = "SS3",
    study: Annotated[str, typer.Option(help="Sleep-EDF study: SC (cassette, 1-Hz EMG) or ST (telemetry).")] = "SC",
    force: Annotated[bool, typer.Option("--force", help="Replace the nights of an earlier simulate run in the "
                                        "output folder (only the files its simulation.json lists).")] = False,
) -> None:
    """Write synthetic PSG nights (EDF + hypnograms) with realistic stage signatures.

    File names, channel labels, sampling rates, annotation strings and epoch lengths follow the real
    dataset of the chosen layout, so that everything else can be tried on them. The true stages are
    also saved in simulation.json.
    """
    from sleepstage_cli.simulate import MAX_HOURS, MIN_HOURS, check_arguments, clear_previous
    from sleepstage_cli.simulate import simulate as run

    # Before the output folder is touched (--force replaces an earlier run's files).
    if nights < 1:
        raise SleepstageError(f"--nights must be at least 1 (got {nights})")
    if not MIN_HOURS <= hours <= MAX_HOURS:  # NaN too
        raise SleepstageError(f"--hours must be at least {MIN_HOURS:g} and at most {MAX_HOURS:g} (got {hours:g})")
    if seed < 0:
        raise SleepstageError(f"--seed must be at least 0 (got {seed})")
    check_arguments(layout, nights, seed, hours, subset, study)
    if output.exists():
        if not output.is_dir():
            raise SleepstageError("output exists and is a file", output)
        if any(output.iterdir()):
            if not force:
                raise SleepstageError("output folder exists and is not empty; pass --force to replace it", output)
            clear_previous(output)
    with con.progress() as bar:
        task = bar.add_task(f"simulating {layout} nights", total=nights)
        written = run(output, nights=nights, layout=layout, seed=seed, hours=hours, subset=subset.upper(),
                      study=study.upper(), progress=lambda done, total: bar.update(task, completed=done))
    con.out.print(f"wrote {len(written)} simulated night(s) ({layout} layout) to {output}")
