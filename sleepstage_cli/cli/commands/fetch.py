"""``sleepstage fetch sleep-edf``: download Sleep-EDF Expanded, verified, in the layout `prepare` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.errors import InputError, SleepstageError

_EXAMPLE = """Examples:

  sleepstage fetch sleep-edf --subjects 0-19 -o sleep-edf/

  sleepstage fetch sleep-edf --subjects sleepedf-20 -o sleep-edf/

  sleepstage prepare sleep-edf/sleep-cassette -o data/

  sleepstage fetch sleep-edf --study ST --subjects 1-4 --nights 1 -o sleep-edf/
"""

_SPLITS = ("sleepedf-20", "sleepedf-78")


def _choice(study: str, subjects: Optional[str], nights: Optional[str]):
    """The study, subjects, nights and (for a reference split) night ids the options stand for."""
    from sleepstage_cli.io.sleepedf_files import STUDIES, parse_numbers

    study = study.upper()
    if study not in STUDIES:
        raise InputError(f"--study must be SC (sleep-cassette) or ST (sleep-telemetry), not {study!r}")
    night_set = parse_numbers(nights, "--nights", 1, 2) if nights else None
    if subjects in _SPLITS:
        if study != "SC":
            raise InputError(f"--subjects {subjects} is a split of the sleep-cassette study (--study SC)")
        from sleepstage_cli.training.reference_splits import reference_night_ids

        return study, None, night_set, reference_night_ids(subjects)
    subject_set = parse_numbers(subjects, "--subjects", 0, 99) if subjects else None
    return study, subject_set, night_set, None


def _summary(results: list) -> None:
    from rich.table import Table

    table = Table(title="sleep-edf fetch")
    table.add_column("status")
    table.add_column("files", justify="right")
    table.add_column("MB", justify="right")
    for status in ("downloaded", "present", "failed"):
        rows = [r for r in results if r.status == status]
        table.add_row(status if status != "present" else "already present", str(len(rows)),
                      f"{sum(r.size for r in rows) / 1e6:.1f}")
    con.out.print(table)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _run(files: list, base_url: str, output: Path, retries: int) -> list:
    from sleepstage_cli.io.fetch import Hooks, fetch_files

    with con.progress() as bar:
        task = bar.add_task("files", total=len(files))

        def advance(f, done, total):
            size = f"{_size(done)} of {_size(total)}" if total else _size(done)
            bar.update(task, description=f"{f.name} {size}")

        def retry(f, why, wait):
            con.warn(f"{f.name}: {why}; trying again in {wait:g} s")

        hooks = Hooks(start=lambda f: bar.update(task, description=f.name), advance=advance,
                      done=lambda r: bar.advance(task), retry=retry)
        return fetch_files(files, base_url, output, retries=retries, hooks=hooks)


@app.command(epilog=_EXAMPLE)
@command
def fetch(
    dataset: Annotated[str, typer.Argument(help="The dataset: sleep-edf (PhysioNet's Sleep-EDF Expanded).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to download into (made if needed); "
                                         "the files go to its sleep-cassette/ and sleep-telemetry/.")],
    subjects: Annotated[Optional[str], typer.Option(help="Subject numbers such as 0-19 or 0-4,7 (SC: 0-82, ST: "
                                                    "1-24), or the nights of a reference split: sleepedf-20 "
                                                    "or sleepedf-78. Default: all.")] = None,
    nights: Annotated[Optional[str], typer.Option(help="Nights of each subject: 1, 2 or 1,2. Default: both.")] = None,
    study: Annotated[str, typer.Option(help="SC (sleep-cassette, healthy, ~20 h each) or ST (sleep-telemetry, "
                                       "temazepam study).")] = "SC",
    base_url: Annotated[Optional[str], typer.Option(help="Where the dataset is (its folder holding SHA256SUMS.txt), "
                                                    "such as a mirror. Default: PhysioNet's sleep-edfx 1.0.0.")] = None,
    retries: Annotated[int, typer.Option(help="Tries again after a failed download this many times, waiting "
                                         "1, 2, 4 ... s.")] = 3,
) -> None:
    """Download Sleep-EDF Expanded, each file verified against the dataset's SHA256SUMS.txt.

    Files already present and verified are not downloaded again; a failed or interrupted download leaves no
    file under its name. Writes fetch.json (each file, its sha256 and status) in the output folder. Without
    network it says which URLs are needed and where to put files downloaded by hand; run it again to verify them.
    """
    from sleepstage_cli import fsutil
    from sleepstage_cli.io import fetch as core
    from sleepstage_cli.io.sleepedf_files import describe, select, unpaired

    if dataset.lower() != "sleep-edf":
        raise InputError(f"unknown dataset {dataset!r}: fetch knows sleep-edf")
    if retries < 0:
        raise InputError(f"--retries must be at least 0 (got {retries})")
    study, subject_set, night_set, night_ids = _choice(study, subjects, nights)
    base_url = base_url or core.DEFAULT_BASE_URL
    if output.exists() and not output.is_dir():
        raise SleepstageError("output exists and is a file", output)
    fsutil.check_writable_folder(output)
    listed, note = core.read_index(base_url, output, describe(study, subjects, nights), retries=min(retries, 2))
    if note:
        con.warn(note)
    files, missing = select(listed, study, subject_set, night_set, night_ids)
    if missing:
        more = f", ... ({len(missing)} in all)" if len(missing) > 8 else ""
        con.warn(f"{len(missing)} night(s) of {subjects} are not in the dataset's list: {', '.join(missing[:8])}{more}")
    if not files:
        raise InputError(f"the dataset's list has no file for this choice ({describe(study, subjects, nights)})",
                         core.url_of(base_url, core.INDEX))
    for night in unpaired(files):
        con.warn(f"night {night} is listed without its recording or its hypnogram; prepare will skip it")
    results = _run(files, base_url, output, retries)
    selection = {"study": study, "subjects": subjects, "nights": nights}
    fsutil.atomic_write_json(output / "fetch.json", core.record(results, base_url, selection, missing, note))
    needed = core.write_needed(output, base_url, results)
    _summary(results)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        first = failed[0]
        raise SleepstageError(f"{len(failed)} of {len(results)} file(s) not fetched, such as "
                              f"{core.url_of(base_url, first.file.path)} ({first.error}); their URLs are in "
                              f"{needed}: download them by hand into {output} (keeping the dataset's folders) "
                              f"and run this command again to verify them")
    con.out.print(f"{len(results)} file(s) verified in {output}; next: sleepstage prepare "
                  f"{output / ('sleep-cassette' if study == 'SC' else 'sleep-telemetry')} -o DATASET")
