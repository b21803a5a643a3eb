"""``sleepstage prepare``: EDF nights + expert hypnograms -> a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import STATE, app, command
from sleepstage_cli.errors import InputError, Interrupted, SleepstageError
from sleepstage_cli.stages import STAGES

if TYPE_CHECKING:
    from sleepstage_cli.conditioning.signals import Conditioning

_EXAMPLE = """Examples:

  sleepstage prepare mass/SS3/ -o ss3-data --jobs 2

  sleepstage prepare sleep-cassette/ -o sedf-data              (EEG Fpz-Cz + EOG horizontal)

  sleepstage prepare lab/ -o lab-data --eeg "C4-M1" --eog "E2-M1 - E1-M1" --emg "Chin1-Chin2"

  sleepstage prepare mass/SS3/ -o ss3-paper --no-standardise --filters original

  sleepstage prepare --list-channels night.edf
"""


def _alternatives(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    alts = tuple(v.strip() for v in value.split("|") if v.strip())
    if not alts:
        raise InputError(f"empty channel name {value!r}")
    return alts


def _epoch_length(value: float | None) -> float | None:
    from sleepstage_cli.io.hypnogram import SUPPORTED_EPOCHS

    if value is not None and value not in SUPPORTED_EPOCHS:
        raise typer.BadParameter(f"{value:g} is not an epoch length sleepstage reads: use "
                                 f"{' or '.join(f'{e:g}' for e in sorted(SUPPORTED_EPOCHS))} (seconds)")
    return value


def _filters(value: str) -> str:
    from sleepstage_cli.conditioning.signals import FILTERS

    if value.lower() not in FILTERS:
        raise typer.BadParameter(f"{value!r} is not a filter design sleepstage knows: use {' or '.join(FILTERS)}")
    return value.lower()


@app.command(epilog=_EXAMPLE)
@command
def prepare(
    sources: Annotated[Optional[list[Path]], typer.Argument(
        help="EDF files or folders (searched recursively) holding nights and their hypnograms.",
        show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Dataset folder to write.",
                                                   show_default=False)] = None,
    layout: Annotated[str, typer.Option(help="auto, mass, sleep-edf or generic.")] = "auto",
    channels: Annotated[Optional[str], typer.Option(
        "--channels", help="Channel kinds to use, in any order: eeg,eog,emg (default: all three for MASS, EEG and "
                           "EOG for Sleep-EDF, the kinds you name otherwise).", show_default=False)] = None,
    eeg: Annotated[Optional[str], typer.Option(help='EEG label or derivation "A-B"; alternatives separated by "|".',
                                               show_default=False)] = None,
    eog: Annotated[Optional[str], typer.Option(help='EOG label or derivation, e.g. "EOG ROC-LOC".',
                                               show_default=False)] = None,
    emg: Annotated[Optional[str], typer.Option(help="EMG label or derivation.", show_default=False)] = None,
    channel_map: Annotated[Optional[Path], typer.Option(
        help="TOML or JSON file mapping eeg/eog/emg to labels (e.g. eeg = \"C4-M1\").", show_default=False)] = None,
    trim: Annotated[Optional[bool], typer.Option(
        "--trim/--no-trim", help="Keep only --trim-minutes of wake before the first and after the last sleep "
                                 "epoch (default: on for Sleep-EDF, off otherwise).", show_default=False)] = None,
    trim_minutes: Annotated[float, typer.Option(help="Wake kept around sleep when trimming.", min=0.0)] = 30.0,
    min_hours: Annotated[Optional[float], typer.Option(
        help="Reject nights with less signal than this (default: 5 for MASS, as the original; 0 otherwise).",
        show_default=False, min=0.0)] = None,
    epoch_length: Annotated[Optional[float], typer.Option(
        help="Epoch length (s) of hypnogram tables without durations: 30 or 20 (default: inferred, else 30).",
        show_default=False, callback=_epoch_length)] = None,
    subject_pattern: Annotated[Optional[str], typer.Option(
        help="Regular expression whose first group is the subject id in a generic night's file name "
             "(default: the name without a trailing night number).", show_default=False)] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Nights prepared in parallel (default: "
                                                "cores, at most 4).", show_default=False, min=1)] = None,
    standardise: Annotated[bool, typer.Option(
        "--standardise/--no-standardise", help="Standardise each night's channels (zero mean, unit SD); "
        "--no-standardise keeps microvolts, as the published results did. Models trained on the dataset "
        "repeat the choice when scoring.")] = True,
    filters: Annotated[str, typer.Option(
        help="sleepstage (meets the stated bands) or original (the released order-100 FIRs, forwards and "
             "backwards at each channel's own rate). Models trained on the dataset repeat the choice when "
             "scoring.", callback=_filters)] = "sleepstage",
    force: Annotated[bool, typer.Option("--force", help="Rebuild an output prepared with other options, or write "
                                        "into a non-dataset folder.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with an error if any night is skipped.")] = False,
    list_channels: Annotated[bool, typer.Option("--list-channels", help="Only list the channels of the given "
                                                "EDF files and exit.")] = False,
) -> None:
    """Turn EDF nights and their expert hypnograms into a prepared dataset for training.

    Detects the layout (MASS, Sleep-EDF, or generic pairs such as night.edf + night.csv), reads only
    the channels needed, filters (EEG/EOG 0.3-40 Hz, EMG >10 Hz with 50/60 Hz notches), resamples to
    100 Hz, standardises each night (unless --no-standardise), and stores 30-s epochs with their stages.
    Re-running the same command skips nights already prepared.
    """
    if not sources:
        raise InputError("give at least one EDF file or folder (see --help)")
    if list_channels:
        _list_channels(sources)
        return
    if output is None:
        raise InputError("give the dataset folder to write with -o/--output")

    from sleepstage_cli.conditioning.signals import Conditioning

    overrides = _channel_overrides(channel_map, eeg, eog, emg)
    cond = Conditioning(standardise=standardise, filters=filters)
    nights, skips, opts = _plan(sources, layout, subject_pattern, channels, overrides, trim, trim_minutes, min_hours,
                                epoch_length, cond)
    summary = _run(nights, skips, output, opts, jobs, force)
    _report(summary, output, strict)


def _channel_overrides(channel_map: Path | None, eeg: str | None, eog: str | None,
                       emg: str | None) -> dict[str, tuple[str, ...]]:
    """Channel names the user gives, by kind: --channel-map's, replaced by --eeg, --eog, --emg."""
    from sleepstage_cli.io.channels import read_channel_map

    overrides = dict(read_channel_map(channel_map)) if channel_map else {}
    for kind, value in (("eeg", eeg), ("eog", eog), ("emg", emg)):
        alts = _alternatives(value)
        if alts:
            overrides[kind] = alts
    return overrides


def _plan(sources: list[Path], layout: str, subject_pattern: str | None, channels: str | None,
          overrides: dict[str, tuple[str, ...]], trim: bool | None, trim_minutes: float, min_hours: float | None,
          epoch_length: float | None, cond: Conditioning):
    """The nights found (and the files left out) and the PrepareOptions of the layout found; says what was found."""
    from sleepstage_cli.data.prepare import DEFAULT_MIN_HOURS, DEFAULT_TRIM_MINUTES, PrepareOptions
    from sleepstage_cli.io.channels import build_spec, parse_kinds, preset_note
    from sleepstage_cli.io.layout import DEFAULT_SUBJECT_PATTERN, discover

    layout_name, nights, skips = discover(list(sources), layout.lower(), subject_pattern or DEFAULT_SUBJECT_PATTERN)
    preset = layout_name if layout_name in ("mass", "sleep-edf") else None
    spec = build_spec(parse_kinds(channels) if channels else None, preset, overrides)
    trim_on = trim if trim is not None else layout_name in DEFAULT_TRIM_MINUTES
    opts = PrepareOptions(
        layout=layout_name, spec=spec, conditioning=cond,
        trim_wake_minutes=(trim_minutes if trim_on else None),
        min_hours=min_hours if min_hours is not None else DEFAULT_MIN_HOURS.get(layout_name, 0.0),
        epoch_length=epoch_length,
    )
    described = (f"{', '.join(spec.kinds)} ({layout_name} preset)" if preset and not overrides
                 else spec.describe())
    con.info(f"{layout_name} layout: {len(nights)} night(s) found, {len(skips)} file(s) left out; "
             f"channels {described}; {cond.describe()}")
    note = preset_note(preset, spec.kinds) if channels is None else None
    if note:
        con.info(note)
    return nights, skips, opts


def _run(nights, skips, output: Path, opts, jobs: int | None, force: bool):
    """Prepare the nights into ``output`` with a progress bar; returns run_prepare's summary."""
    from sleepstage_cli.data.prepare import default_jobs, run_prepare

    bar = con.progress()
    task = bar.add_task("preparing nights", total=None)

    def on_start(todo: int, there: int) -> None:
        if there:
            con.info(f"{there} night(s) already prepared in {output} are kept")
        bar.update(task, total=todo)
        if todo:
            bar.start()  # only once the output folder has been accepted

    def on_result(res) -> None:
        for w in res.warnings:
            con.warn(f"{res.night_id}: {w}")
        bar.advance(task)

    try:
        return run_prepare(nights, skips, output, opts, jobs=jobs or default_jobs(), force=force,
                           on_start=on_start, on_result=on_result)
    finally:
        if bar.live.is_started:
            bar.stop()


def _report(summary, output: Path, strict: bool) -> None:
    """nights.csv and the tables of what was prepared; the command's error when nothing (or, --strict, not all) was."""
    if STATE.debug and summary.internal_errors:
        for tb in summary.internal_errors:
            con.err.print(tb, markup=False)
    _write_nights_table(summary)
    n_nights = len(summary.manifest["nights"])
    if n_nights or len(summary.skipped) > 1:
        _print_summary(summary)
    if summary.interrupted and summary.remaining:
        raise Interrupted(f"interrupted with {summary.remaining} night(s) still to prepare; run the same command "
                          "again to continue (prepared nights are kept)", output)
    if n_nights == 0:
        reasons = [s["reason"] for s in summary.skipped]
        raise SleepstageError(reasons[0] if len(reasons) == 1 else
                              f"no night could be prepared into {output} ({len(reasons)} skipped; see above)")
    if strict and summary.skipped:
        raise SleepstageError(f"{len(summary.skipped)} night(s) or file(s) skipped (--strict); first: "
                              f"{summary.skipped[0]['reason']}")


def _write_nights_table(summary) -> None:
    import pandas as pd

    from sleepstage_cli.fsutil import atomic_write_text

    rows = []
    for n in summary.manifest["nights"]:
        row = {"night": n["id"], "subject": n["subject"], "epochs": n["n_epochs"], "signal_hours": n["signal_hours"]}
        row.update(n["stage_counts"])
        rows.append(row)
    columns = ["night", "subject", "epochs", "signal_hours", *STAGES, "unscored"]
    atomic_write_text(summary.root / "nights.csv", pd.DataFrame(rows, columns=columns).to_csv(index=False))


def _print_summary(summary) -> None:
    nights = summary.manifest["nights"]
    totals = {k: sum(n["stage_counts"].get(k, 0) for n in nights) for k in (*STAGES, "unscored")}
    scored = sum(totals[s] for s in STAGES)
    table = Table(title=f"Prepared dataset {summary.root}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("layout", summary.layout)
    table.add_row("nights in dataset", str(len(nights)))
    table.add_row("  prepared now", str(len(summary.prepared)))
    table.add_row("  already there", str(len(summary.kept)))
    table.add_row("subjects", str(len({n["subject"] for n in nights})))
    table.add_row("signal hours", f"{sum(n['signal_hours'] for n in nights):.1f}")
    table.add_row("epochs", str(sum(n["n_epochs"] for n in nights)))
    for s in STAGES:
        pct = 100.0 * totals[s] / scored if scored else 0.0
        table.add_row(f"  {s}", f"{totals[s]} ({pct:.1f} %)")
    table.add_row("  unscored (masked)", str(totals["unscored"]))
    table.add_row("skipped", str(len(summary.skipped)))
    con.out.print(table)
    if summary.skipped:
        skipped = Table(title="Skipped", title_justify="left")
        skipped.add_column("night / file")
        skipped.add_column("reason")
        for s in summary.skipped:
            skipped.add_row(s["night"], s["reason"])
        con.out.print(skipped)


def _list_channels(paths: list[Path]) -> None:
    from sleepstage_cli.io.edf import read_annotations, read_header
    from sleepstage_cli.io.hypnogram import has_stage_annotations

    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in (".edf", ".bdf")) if p.is_dir() else [p])
    if not files:
        raise InputError(f"no EDF files in {', '.join(map(str, paths))}")
    for path in files:
        header = read_header(path)
        start = header.start.isoformat(sep=" ") if header.start else "unknown start"
        table = Table(title=f"{path}  ({header.kind}{' ' + header.variant if header.variant else ''}, "
                            f"{header.duration:g} s, {start})", title_justify="left")
        for col, just in (("#", "right"), ("label", "left"), ("rate (Hz)", "right"), ("unit", "left"),
                          ("physical range", "right"), ("usable", "left")):
            table.add_column(col, justify=just)
        for s in header.signals:
            usable = "yes" if s.sampling_rate >= 100 else "no (< 100 Hz)"
            table.add_row(str(s.index + 1), s.label, f"{s.sampling_rate:g}", s.unit,
                          f"{s.physical_min:g} .. {s.physical_max:g}", usable)
        con.out.print(table)
        if header.annotation_indices:
            _, _, texts = read_annotations(path, header)
            stages = "with sleep stages" if has_stage_annotations(path, header) else "no sleep stages"
            con.out.print(f"  EDF+ annotations: {len(texts)} ({stages})")
        if not header.signals:
            con.out.print("  no signals (an annotations-only file)")
