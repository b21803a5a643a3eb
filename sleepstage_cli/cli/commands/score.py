"""``sleepstage score``: EDF nights in, hypnograms (CSV and more) and staging reports out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import STATE, app, command
from sleepstage_cli.cli.options import DeviceOpt
from sleepstage_cli.errors import InputError, Interrupted, SleepstageError

_EXAMPLE = """Examples:

  sleepstage score night.edf -o hypno.csv --model model.pt

  sleepstage score nights/ -o scored/ --model model.pt --format csv,tsv,edf --attention

  sleepstage score "01-03-0001 PSG.edf" -o 0001.csv --model model.pt --epochs-from "01-03-0001 Base.edf"

  sleepstage score mass/SS3/ -o scored/ --model model.pt --epochs-from mass/SS3/annotations/   (each night on
  its expert hypnogram's epochs, ready for 'sleepstage evaluate scored/ mass/SS3/')

  sleepstage score lab.edf -o lab.csv --model model.pt --eeg "C4-M1" --eog "E2-M1 - E1-M2"
"""

FORMATS = ("csv", "tsv", "edf")
_FILE_SUFFIXES = (".csv", ".txt")
"""``-o`` ending so, for one night, is its hypnogram CSV, written to that very name."""
_OTHER_FILE_SUFFIXES = (".tsv", ".edf", ".bdf", ".html", ".htm", ".json", ".xlsx", ".pdf")
"""Files, never folders: ``-o`` ending so is refused when several nights are scored."""
FORMAT_ALIASES = {"bids": "tsv", "events": "tsv", "edf+": "edf", "annotations": "edf"}


@dataclass
class Targets:
    """The files written for one night."""

    csv: Path
    tsv: Path | None
    edf: Path | None
    report: Path | None
    attention: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.csv, self.tsv, self.edf, self.report, self.attention) if p is not None]


def _targets(base: Path, formats: set[str], report: bool, attention: bool) -> Targets:
    def with_suffix(suffix: str) -> Path:
        return base.with_name(base.name + suffix)

    return Targets(csv=with_suffix(".csv"), tsv=with_suffix(".events.tsv") if "tsv" in formats else None,
                   edf=with_suffix(".annotations.edf") if "edf" in formats else None,
                   report=with_suffix(".report.html") if report else None,
                   attention=with_suffix(".attention.csv") if attention else None)


def _inputs(paths: list[Path]) -> list[Path]:
    from sleepstage_cli.io.layout import folder_files

    files: list[Path] = []
    for p in paths:
        if not p.exists():
            raise InputError("not found", p)
        if p.is_dir():
            # Hypnogram files (annotations only) in the folder are not nights to score; an unreadable EDF
            # is, so that scoring reports what is wrong with it. Hidden files (macOS's ._*.edf) are not
            # nights, as for prepare.
            found = [q for q in folder_files(p) if _is_recording(q, unreadable=True)]
            if not found:
                raise InputError("holds no EDF recording to score", p)
            files.extend(found)
        else:
            files.append(p)
    return list(dict.fromkeys(files))


def _is_recording(path: Path, unreadable: bool) -> bool:
    """Whether ``path`` is an EDF/BDF holding signals (not an annotations-only hypnogram); ``unreadable``
    is the answer for an EDF whose header cannot be read."""
    from sleepstage_cli.io.edf import read_header

    if path.suffix.lower() not in (".edf", ".bdf"):
        return False
    try:
        return bool(read_header(path).signals)
    except InputError:
        return unreadable


def _default_model() -> Path:
    from sleepstage_cli.model.zoo import default_model

    found = default_model()
    if found is None:
        raise SleepstageError("no --model given and no model is shipped with this sleepstage: train one with "
                              "'sleepstage train DATASET -o model.pt' (see the README) and pass --model model.pt")
    return found


def _model_path(model: Path) -> Path:
    """--model: a model file, else an installed model's name (hash-checked) or a shipped one's."""
    from sleepstage_cli.model.zoo import resolve_model

    return resolve_model(model)


@app.command(epilog=_EXAMPLE)
@command
def score(
    nights: Annotated[list[Path], typer.Argument(help="EDF files, or folders of them, to score.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="One night's hypnogram CSV (NAME.csv or NAME.txt; "
                                         "its other files are named after it), or a folder.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model file, or the name of an installed "
                                                  "or shipped model ('sleepstage models list'; default: the "
                                                  "model shipped with sleepstage, if any).",
                                                  show_default=False)] = None,
    eeg: Annotated[Optional[str], typer.Option(help="EEG label or derivation in these files, if the model's own "
                                               "names do not match.", show_default=False)] = None,
    eog: Annotated[Optional[str], typer.Option(help="EOG label or derivation.", show_default=False)] = None,
    emg: Annotated[Optional[str], typer.Option(help="EMG label or derivation.", show_default=False)] = None,
    formats: Annotated[str, typer.Option("--format", help="Hypnogram formats: csv, tsv (BIDS-style events; "
                                         "'bids' also accepted), edf (EDF+ annotations), comma-separated.")] = "csv",
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write a self-contained HTML staging "
                                         "report per night.")] = True,
    attention: Annotated[bool, typer.Option("--attention", help="Save each epoch's attention weights (which "
                                            "seconds mattered).")] = False,
    epochs_from: Annotated[Optional[Path], typer.Option(help="Score the epochs of this hypnogram (its onsets and "
                                                        "epoch length) instead of 30-s epochs from the start; "
                                                        "with several nights, a folder of hypnograms, each "
                                                        "paired with its night as 'prepare' pairs them.",
                                                        show_default=False)] = None,
    ignore_start: Annotated[bool, typer.Option("--ignore-start", help="Use an --epochs-from hypnogram even when "
                                               "its start time is more than a day from the recording's (another "
                                               "recording's, or dates anonymised differently).")] = False,
    low_confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help="Epochs whose stage probability is "
                                                  "below this are flagged for review.")] = 0.6,
    lights_off: Annotated[Optional[str], typer.Option("--lights-off", metavar="HH:MM", help="Clock time of lights "
                                                      "off (default: a 'Lights off' annotation in the EDF+, if "
                                                      "any): time in bed and latencies count from it.",
                                                      show_default=False)] = None,
    lights_on: Annotated[Optional[str], typer.Option("--lights-on", metavar="HH:MM", help="Clock time of lights on "
                                                     "(earlier than --lights-off: the next day).",
                                                     show_default=False)] = None,
    sleep_period: Annotated[Optional[str], typer.Option("--sleep-period", metavar="auto|all", help="Without lights "
                                                        "off/on, the statistics cover: auto, the main sleep period; "
                                                        "all, the whole recording [default: all up to 18 h, auto "
                                                        "beyond].", show_default=False)] = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Epochs encoded per batch [default: 256 on "
                                                      "CPU; on a GPU, as many as a quarter of its free memory "
                                                      "holds, 256 to 4096].", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing outputs.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse every night that does not fit what the model "
                                         "was trained on (other channels, amplitudes or spectra, a test signal): "
                                         "nothing is written for it and the command fails.")] = False,
) -> None:
    """Score EDF nights: a hypnogram per night (stages, probabilities, confidence) and a staging report.

    Uses the channels, filters and normalisation the model was trained with and SeqSleepNet's test-time
    aggregation over all overlapping sequences. Flat or missing stretches are marked, never silently scored.
    """
    _one_blas_thread()
    fmt = {FORMAT_ALIASES.get(f, f) for f in (f.strip().lower() for f in formats.split(",")) if f}
    if not fmt or fmt - set(FORMATS):
        raise InputError(f"--format takes {', '.join(FORMATS)} (comma-separated; bids = tsv), not {formats!r}")
    fmt.add("csv")
    if not 0 <= low_confidence <= 1:  # NaN gets past the option's range
        raise InputError("--low-confidence must be between 0 and 1")
    period = _period_options(lights_off, lights_on, sleep_period)
    overrides = {k: tuple(v.strip() for v in val.split("|") if v.strip())
                 for k, val in (("eeg", eeg), ("eog", eog), ("emg", emg)) if val}
    files = _inputs(nights)
    grids = _epoch_grids(files, epochs_from, ignore_start)
    plan, summary_path = _plan(files, output, fmt, report, attention)
    model_path = _model_path(model) if model is not None else _default_model()
    inputs = [*nights, *files, *grids.values(), *([epochs_from] if epochs_from else []), model_path]
    kept, unfinished, ours = (_finished(summary_path, plan, model_path, grids, inputs, force) if summary_path
                              else ([], {}, set()))
    _check_outputs(plan, summary_path, inputs, ours, force)
    if kept:
        con.info(f"{len(kept)} night(s) already scored in {output} with this model are kept")

    spec, cond, loaded = _model_inputs(model_path, overrides)
    if summary_path is not None:
        output.mkdir(parents=True, exist_ok=True)
    summary = _Summary(summary_path, plan, kept, unfinished)
    failures, stopped = _score_nights(plan, grids, summary, spec, cond, model_path, loaded, device,
                                      _Scoring(attention, low_confidence, batch_size, *period, strict=strict))
    summary.save(final=True)
    if summary.rows:
        _print_summary(summary.rows)
        if summary_path is not None:
            con.info(f"summary: {summary_path}")
    _raise_unscored(plan, kept, summary.rows, failures, stopped, output)


def _one_blas_thread() -> None:
    """numpy's BLAS on one thread in this command and the processes it forks (unless the user chose).

    Reading a night resamples it with many small matrix products, between which OpenBLAS's idle threads
    keep spinning on cores that other work needs. Measured on two cores (benchmarks/RESULTS.md, "Nights
    in bulk"): a folder of 8-h nights 1.1 s a night with one thread against 1.5 s with two, one 8-h night
    2.3 s against 2.6 s; a lone 24-h recording, read while a core idles, 7.6 s against 7.2 s. Torch has
    its own threads (MKL, OpenMP), left alone. Only numpy loaded later sees it (commands load numpy).
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _plan(files: list[Path], output: Path, fmt: set[str], report: bool,
          attention: bool) -> tuple[dict[Path, Targets], Path | None]:
    """The files each night is written to, and the summary.csv (None when one night goes to ``output``)."""
    from sleepstage_cli.io.layout import night_key

    if _names_a_file(files, output):
        targets = _targets(output.with_suffix(""), fmt, report, attention)
        targets.csv = output  # the name given, .txt included; the other files are named after its stem
        return {files[0]: targets}, None
    if output.exists() and not output.is_dir():
        raise SleepstageError("output exists and is not a folder (give a folder to score several nights)", output)
    keys = [night_key(f) for f in files]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f"several input files are night {dup[0]!r}; score them into separate folders")
    return {f: _targets(output / k, fmt, report, attention) for f, k in zip(files, keys)}, output / "summary.csv"


def _names_a_file(files: list[Path], output: Path) -> bool:
    """Whether ``-o`` names one night's hypnogram file (it ends in .csv or .txt) rather than a folder.

    Refused: a file name when several nights are scored, and for one night a suffix that is a file type
    score does not write (a folder whose name has a dot is used once it exists). A .csv or .txt name for one
    night is the file even when a folder has that name (writing it is then refused as writing over a folder).
    """
    suffix = output.suffix.lower()
    if len(files) == 1 and suffix in _FILE_SUFFIXES:
        return True
    if output.is_dir() or not re.fullmatch(r"\.[a-z][a-z0-9]{0,4}", suffix):
        return False  # no suffix, or not a file type's ('scored.2024'): a folder
    if len(files) > 1:
        if suffix in _FILE_SUFFIXES + _OTHER_FILE_SUFFIXES:
            raise InputError(f"names a {suffix} file but {len(files)} nights are scored: give a folder for them",
                             output)
        return False
    raise InputError(f"score cannot write a {suffix} file: a night's hypnogram is a CSV (-o NAME.csv or NAME.txt; "
                     "--format tsv,edf adds those formats beside it), or give a folder (create it first to use "
                     "a name with a dot)", output)


def _model_inputs(model_path: Path, overrides: dict[str, tuple[str, ...]]):
    """The model's channel spec (with the command line's channel names) and conditioning, and the loaded
    model when it had to be loaded to learn them (else None).

    They are read without torch when possible: the first night is then read and conditioned in a worker
    process while torch loads the model here.
    """
    from sleepstage_cli.conditioning.signals import Conditioning
    from sleepstage_cli.io.channels import ChannelSpec
    from sleepstage_cli.model.modelmeta import peek_metadata
    from sleepstage_cli.scoring.pipeline import spec_with_overrides

    loaded = None
    meta = peek_metadata(model_path)
    try:
        spec, cond = ChannelSpec.from_dict(meta["channel_spec"]), Conditioning.from_dict(meta["conditioning"])
    except (TypeError, KeyError, ValueError):
        from sleepstage_cli.model.modelfile import load_model

        loaded = load_model(model_path)  # it says what is wrong with the file
        spec, cond = loaded.channel_spec, loaded.conditioning
    return spec_with_overrides(spec, overrides), cond, loaded


@dataclass(frozen=True)
class _Scoring:
    """How each night is scored and written."""

    attention: bool
    low_confidence: float
    batch_size: int | None  # None: the device's default (scoring/inference.py)
    lights_off: dt.time | None = None
    lights_on: dt.time | None = None
    sleep_period: str | None = None
    strict: bool = False  # --strict: a night that does not fit the model is refused, nothing written for it


def _period_options(lights_off: str | None, lights_on: str | None,
                    sleep_period: str | None) -> tuple[dt.time | None, dt.time | None, str | None]:
    """--lights-off, --lights-on and --sleep-period checked before any work."""
    from sleepstage_cli.evaluation.period import PERIOD_MODES
    from sleepstage_cli.io.lights import parse_clock

    mode = sleep_period.strip().lower() if sleep_period is not None else None
    if mode is not None and mode not in PERIOD_MODES:
        raise InputError(f"--sleep-period takes {' or '.join(PERIOD_MODES)}, not {sleep_period!r}")
    return (parse_clock(lights_off, "--lights-off") if lights_off is not None else None,
            parse_clock(lights_on, "--lights-on") if lights_on is not None else None, mode)


def _analyse(night, how: _Scoring):
    """The night's sleep period (lights off/on from the command line, else from its annotations) and statistics."""
    from sleepstage_cli.evaluation.period import analyse_night
    from sleepstage_cli.io.lights import clock_lights, merge_lights

    given = clock_lights(night.start, how.lights_off, how.lights_on)
    analysis = analyse_night(night.onsets, night.stages, night.epoch_length, merge_lights(given, night.lights),
                             how.sleep_period, night.start)
    night.notes.extend(analysis.period.notes)
    return analysis


def _score_nights(plan: dict[Path, Targets], grids: dict[Path, Path], summary: _Summary, spec, cond,
                  model_path: Path, loaded, device: str,
                  how: _Scoring) -> tuple[list[tuple[Path, SleepstageError]], bool]:
    """Score the nights of ``plan`` as they are read (ahead, in worker processes, one per core); returns the
    nights that failed, with why, and whether a Ctrl-C stopped the run."""
    from sleepstage_cli.interrupts import GracefulStop
    from sleepstage_cli.scoring.pipeline import ReadAhead

    failures: list[tuple[Path, SleepstageError]] = []
    with ReadAhead(list(plan), spec, cond, grids) as nights_read:
        from sleepstage_cli.model.modelfile import load_model
        from sleepstage_cli.scoring.inference import default_batch_size
        from sleepstage_cli.training.train import resolve_device

        dev = resolve_device(device)
        if loaded is None:
            loaded = load_model(model_path, dev)
        else:
            loaded.model.to(dev)
        if how.batch_size is None:
            how = dataclasses.replace(how, batch_size=default_batch_size(dev, len(loaded.kinds)))
        con.info(f"model {model_path}: {loaded.meta['architecture']['net']}, channels {', '.join(loaded.kinds)}; "
                 f"device {dev}" + (f", {how.batch_size} epochs per batch" if dev.type != "cpu" else ""))
        with con.progress() as bar, GracefulStop("scoring") as stop:
            task = bar.add_task("scoring nights", total=len(plan))
            for path, night in nights_read:
                if stop.requested:
                    break
                try:
                    if isinstance(night, SleepstageError):
                        raise night
                    row = _score_one(night, plan[path], loaded, dev, how.attention, how.low_confidence,
                                     how.batch_size, grids.get(path), functools.partial(summary.commit, path), how)
                    summary.done(path, row)
                except SleepstageError as exc:
                    if STATE.debug:
                        raise
                    failures.append((path, exc))
                    if len(plan) > 1:  # one night's error is the command's error, said once at the end
                        con.warn(f"not scored: {exc}")
                bar.advance(task)
    return failures, stop.requested


def _raise_unscored(plan: dict[Path, Targets], kept: list[dict], rows: list[dict],
                    failures: list[tuple[Path, SleepstageError]], stopped: bool, output: Path) -> None:
    """The command's error when a night of ``plan`` is not scored (interrupted, or it failed)."""
    if stopped and len(rows) + len(failures) < len(plan):
        raise Interrupted(f"interrupted after {len(kept) + len(rows)} of {len(plan)} nights; the finished ones are "
                          "written: run the same command again to score the others", output)
    if failures:
        if len(plan) == 1:
            raise failures[0][1]
        names = ", ".join(str(path) for path, _ in failures[:3]) + (", ..." if len(failures) > 3 else "")
        raise SleepstageError(f"{len(failures)} of {len(plan)} nights could not be scored ({names}); the reasons "
                              "are above")


def _finished(summary_path: Path, plan: dict[Path, Targets], model_path: Path, grids: dict[Path, Path],
              inputs: list[Path], force: bool) -> tuple[list[dict], dict[Path, dict], set[Path]]:
    """What an earlier run of this command wrote: the nights in its summary.csv with the same recording,
    model and epochs.

    Those with every output there are taken out of ``plan`` (unless --force asks to score them again
    and their files are not in an input folder, where nothing may be replaced); their summary rows are
    returned, to be kept as they are. Also returned: the rows of the others (a night being written when
    that run was killed) and every path of those nights and the summary: this run may replace them
    without --force.
    """
    from sleepstage_cli.fsutil import replaces_input
    from sleepstage_cli.io.export import read_rows

    try:
        done = {(r.get("source"), r.get("model"), r.get("epochs_from") or ""): r for r in read_rows(summary_path)}
    except (OSError, ValueError, UnicodeDecodeError):  # no summary, or not ours: nothing counts as finished
        return [], {}, set()
    kept: list[dict] = []
    unfinished: dict[Path, dict] = {}
    ours: set[Path] = set()
    for path, targets in list(plan.items()):
        row = done.get((str(path), str(model_path), str(grids.get(path) or "")))
        if row is None:
            continue
        ours.update(targets.all())
        in_input = any(replaces_input(p, inputs) for p in targets.all())
        if all(p.exists() for p in targets.all()) and (not force or in_input):
            kept.append(row)
            del plan[path]
        else:
            unfinished[path] = row
    if ours:
        ours.add(summary_path)
    return kept, unfinished, ours


class _Summary:
    """A folder score's summary.csv, rewritten as each night is written, so that a kill loses nothing.

    It lists the nights kept from an earlier run, those scored now, and a journal: the nights whose
    files are being written (or were, when an earlier run was killed). From it, the same command knows
    those files as its own: it keeps a complete night and replaces an incomplete one's files without
    --force. A journal night stays listed while any of its files exists.
    """

    def __init__(self, path: Path | None, plan: dict[Path, Targets], kept: list[dict],
                 unfinished: dict[Path, dict]) -> None:
        self.path, self.plan, self.kept = path, plan, kept
        self.journal = dict(unfinished)
        self.rows: list[dict] = []
        self.written = False

    def commit(self, source: Path, row: dict) -> None:
        """Before the first file of night ``source`` is written."""
        self.journal[source] = row
        self.save()
        self.written = True

    def done(self, source: Path, row: dict) -> None:
        self.journal.pop(source, None)
        self.rows.append(row)

    def save(self, final: bool = False) -> None:
        from sleepstage_cli.io.export import write_rows

        if final and not self.written:  # nothing scored: the summary stays as it was
            return
        pending = [row for src, row in self.journal.items()
                   if not final or any(p.exists() for p in self.plan[src].all())]
        listed = self.kept + self.rows + pending
        if self.path is not None and listed:
            write_rows(self.path, listed, columns=list(listed[-1]))


def _check_outputs(plan: dict[Path, Targets], summary_path: Path | None, inputs: list[Path], ours: set[Path],
                   force: bool) -> None:
    """Before any work: refuse an output that is or would replace an input (--force or not), and one that
    exists, unless --force or an earlier run of this command wrote it."""
    from sleepstage_cli.fsutil import check_writable_output, refuse_replacing_inputs

    outputs = [p for targets in plan.values() for p in targets.all()]
    if summary_path is not None:
        outputs.append(summary_path)
    refuse_replacing_inputs([p for p in outputs if p not in ours], inputs)
    for path in outputs:
        check_writable_output(path, force or path in ours)


def _epoch_grids(files: list[Path], epochs_from: Path | None, ignore_start: bool = False) -> dict[Path, Path]:
    """The hypnogram whose epochs each recording is scored on (``--epochs-from``); recordings left out
    get 30-s epochs from their start. A folder is paired night by night exactly as ``prepare`` pairs.
    A pair whose start times are more than a day apart is refused (unless ``ignore_start``)."""
    grids = _paired_grids(files, epochs_from)
    if not ignore_start:
        from sleepstage_cli.io.hypnogram import file_start, refuse_other_recording

        for psg, hyp in grids.items():
            refuse_other_recording(hyp, file_start(hyp), psg, file_start(psg))
    return grids


def _paired_grids(files: list[Path], epochs_from: Path | None) -> dict[Path, Path]:
    if epochs_from is None:
        return {}
    if not epochs_from.exists():
        raise InputError("not found (--epochs-from)", epochs_from)
    if not epochs_from.is_dir():
        if len(files) > 1:
            raise InputError("--epochs-from names one hypnogram but several nights are scored; give the "
                             "folder of their hypnograms instead", epochs_from)
        return {files[0]: epochs_from}
    from sleepstage_cli.io.layout import discover, folder_files

    # Only hypnograms from the folder take part: a recording there (a copy of a night being scored, say)
    # or a hypnogram beside a scored night must not be paired instead of the folder's own. An unreadable
    # EDF stays a candidate, so that reading it as a hypnogram says what is wrong with it.
    candidates = [p for p in folder_files(epochs_from) if not _is_recording(p, unreadable=False)]
    if not candidates:
        raise InputError("holds no hypnogram files (--epochs-from)", epochs_from)
    _, nights, skips = discover([*files, *candidates])
    # discover names files as the user sees them (links unresolved), absolute: the same file is its real path
    paired = {n.psg.resolve(): n.hypnogram for n in nights if n.hypnogram is not None}
    grids = {}
    for f in files:
        hyp = paired.get(f.resolve())
        if hyp is None:
            why = next((s.reason for s in skips if s.path.resolve() == f.resolve()), "no hypnogram found for it")
            raise InputError(f"--epochs-from {epochs_from}: {why}", f)
        grids[f] = hyp
    return grids


def _score_one(read, targets: Targets, loaded, device, attention, low_conf, batch_size,
               epochs_from: Path | None, commit: Callable[[dict], None], how: _Scoring | None = None) -> dict:
    """Score a read night and write its files; ``commit`` gets the night's summary row before the first one."""
    import numpy as np

    from sleepstage_cli.scoring.pipeline import score_read_night

    _refuse_unfit(read, loaded, how)  # --strict: before the network runs or anything is written
    night = score_read_night(read, loaded, device, attention, batch_size=batch_size)
    analysis = _analyse(night, how or _Scoring(attention, low_conf, batch_size))
    stats = analysis.statistics  # over lights off to on, the main sleep period or the whole recording
    low = np.nan_to_num(night.confidence, nan=1.0) < low_conf
    counts = {s: int((night.stages == i).sum()) for i, s in enumerate(("W", "N1", "N2", "N3", "REM"))}
    row = {"night": night.night_id, "source": str(read.source), "epochs": night.n_epochs,
           **{f"epochs_{k}": v for k, v in counts.items()},
           "unscored": int((night.stages < 0).sum()), "TST_min": stats.get("TST"), "SE_pct": stats.get("SE"),
           "SOL_min": stats.get("SOL"), "WASO_min": stats.get("WASO"), "REM_latency_min": stats.get("Lat_REM"),
           "stats_period": analysis.period.kind, **_lights_columns(night.start, analysis.times),
           "low_confidence_epochs": int(low.sum()), "flagged_epochs": sum(1 for f in night.flags if f),
           "mean_confidence": float(np.nanmean(night.confidence)) if np.isfinite(night.confidence).any() else None,
           "fit": night.fit.label, "fit_reasons": night.fit.why,
           "hypnogram": str(targets.csv), "report": str(targets.report) if targets.report else "",
           "model": str(loaded.path), "epochs_from": str(epochs_from or "")}
    commit(row)
    _write_night(night, targets, loaded, stats, low_conf, analysis)
    _say_fit(night.night_id, night.fit)
    for note in night.notes:
        con.warn(f"{night.night_id}: {note}")
    return row


def _lights_columns(start: dt.datetime | None, times: dict) -> dict:
    """summary.csv's lights_off / lights_on: ISO date-times (seconds from the start without one), blank if unknown."""
    out = {}
    for key in ("lights_off", "lights_on"):
        t = times.get(key)
        if t is None or t != t:
            out[key] = ""
        else:
            out[key] = (start + dt.timedelta(seconds=t)).isoformat(timespec="seconds") if start else round(t, 1)
    return out


def _write_night(night, targets: Targets, loaded, stats: dict, low_conf: float, analysis=None) -> None:
    from sleepstage_cli.io import export
    from sleepstage_cli.report.html import night_report_html, write_report
    from sleepstage_cli.scoring.pipeline import model_card, provenance, stage_names

    names = stage_names(night.stages)
    export.write_csv(targets.csv, export.hypnogram_table(night.onsets, names, night.probabilities,
                                                         night.confidence, night.flags, night.start))
    if targets.tsv:
        export.write_events_tsv(targets.tsv, night.onsets, night.epoch_length, names, night.confidence)
    if targets.edf:
        export.write_edf_annotations(targets.edf, night.onsets, night.epoch_length, names, night.start)
    if targets.attention:
        if night.attention is None:
            con.warn(f"{night.source}: this model has no attention weights; {targets.attention.name} not written")
        else:
            export.write_attention(targets.attention, night.onsets, night.attention)
    if targets.report:
        model_info = provenance(loaded)
        model_info["scored_at"] = model_info.pop("scored at")
        html = night_report_html({
            # The recording by file name: its folders may carry the user's and the patient's names.
            "night_id": night.night_id, "source": Path(night.source).name, "onsets": night.onsets,
            "stages": night.stages,
            "probabilities": night.probabilities, "confidence": night.confidence,
            "flags": [[p for p in f.split("; ") if p] for f in night.flags], "low_confidence_threshold": low_conf,
            "model": model_info, "statistics": stats, "notes": night.notes,
            "start": night.start, "epoch_length": night.epoch_length, "model_card": model_card(loaded),
            "channels": night.channels, "verdict": night.fit.report_verdict() if night.fit else None,
            **(analysis.report_fields(night.onsets, night.epoch_length, night.start) if analysis else {})})
        write_report(targets.report, html)


def _refuse_unfit(read, loaded, how: _Scoring | None) -> None:
    """With --strict, a night that does not fit the model (or a model that cannot tell) is refused."""
    from sleepstage_cli.scoring.fitcheck import check_fit

    if how is None or not how.strict:
        return
    verdict = check_fit(loaded.meta.get("fit"), read.fit)
    if verdict.fits is None:
        raise InputError(f"refused (--strict): the model file {loaded.path.name if loaded.path else ''} has no fit "
                         "record (it was written before sleepstage recorded what a model was trained on), so "
                         "no night can be checked; train it again, or score without --strict", read.source)
    if not verdict.fits:
        raise InputError(f"refused (--strict), nothing written for it: {verdict.summary()}", read.source)


def _say_fit(night_id: str, verdict) -> None:
    """The night's fit verdict: one line when it fits, else a warning and its reasons one per line."""
    if verdict is None:
        return
    if verdict.fits is False:
        con.warn(f"{night_id}: does not fit the model (--strict refuses such nights):")
        for reason in verdict.reasons:
            con.info(f"  - {reason}")
    else:
        con.info(f"{night_id}: {verdict.summary()}")
    for note in verdict.notes if verdict.fits is not None else []:
        con.info(f"  note: {note}")


def _fmt(value, digits: int = 1) -> str:
    if value is None or value != value:
        return "—"
    return f"{value:.{digits}f}"


def _print_summary(rows: list[dict]) -> None:
    # 80 columns hold night names of up to 11 characters: no vertical rules, two-line headers, figures never
    # wrapped; only a longer night name (one word) is folded.
    table = Table(title="Scored nights", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True,
                  show_edge=False)
    for col in ("night", "epochs", "TST\n(h)", "SE\n(%)", "SOL\n(min)", "WASO\n(min)", "W/N1/N2/N3/REM\n(%)",
                "low\nconf.", "flagged"):
        if col == "night":  # what a reader looks for: the widest column that can give way
            table.add_column(col, overflow="fold", min_width=min(30, max(len(r["night"]) for r in rows)))
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        scored = sum(r[f"epochs_{s}"] for s in ("W", "N1", "N2", "N3", "REM")) or 1
        pct = "/".join(f"{100 * r[f'epochs_{s}'] / scored:.0f}" for s in ("W", "N1", "N2", "N3", "REM"))
        tst = r["TST_min"] / 60 if r["TST_min"] is not None else None
        table.add_row(r["night"], str(r["epochs"]), _fmt(tst, 2), _fmt(r["SE_pct"]), _fmt(r["SOL_min"]),
                      _fmt(r["WASO_min"]), pct, str(r["low_confidence_epochs"]), str(r["flagged_epochs"]))
    con.out.print(table)
    for r in rows:
        con.info(f"{r['night']}: {r['hypnogram']}" + (f", {r['report']}" if r["report"] else ""))
