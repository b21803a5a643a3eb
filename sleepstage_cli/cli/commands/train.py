"""``sleepstage train``: train SeqSleepNet (or a baseline) on a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.cli.display import ProgressCallbacks, print_choices
from sleepstage_cli.cli.options import (
    AmpOpt,
    BatchSizeOpt,
    ChannelsOpt,
    DeviceOpt,
    DropoutOpt,
    EpochsOpt,
    EvalEveryOpt,
    FreezeOpt,
    InitOpt,
    KeepNormOpt,
    L2Opt,
    LrOpt,
    MaxStepsOpt,
    ModelOpt,
    OutputLayerOpt,
    PresetOpt,
    RnnOpt,
    SeedOpt,
    SelectOpt,
    SeqLenOpt,
    WorkersOpt,
    train_options,
)

_EXAMPLE = """Examples:

  sleepstage train data/ -o model.pt

  sleepstage train data/ -o model.pt --channels eeg,eog --epochs 10 --seed 1

  sleepstage train data/ -o arnn.pt --model e2e-arnn --val-subjects 01-03-0001,01-03-0002

  sleepstage train data/ -o model.pt --resume        (continue an interrupted run)

  sleepstage train raw-data/ -o paper.pt --preset paper   (the released code's choices; see README)

  sleepstage train our-nights/ -o ours.pt --init published.pt --freeze filterbank   (fine-tune)

  torchrun --nproc_per_node 4 -m sleepstage_cli train data/ -o model.pt   (several GPUs)
"""


@app.command(epilog=_EXAMPLE)
@command
def train(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder (from 'sleepstage prepare').")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")] = Path("model.pt"),
    model: ModelOpt = "seqsleepnet",
    channels: ChannelsOpt = None,
    seq_len: SeqLenOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = 32,
    lr: LrOpt = None,
    l2: L2Opt = 1e-3,
    val_subjects: Annotated[Optional[str], typer.Option(help="Comma-separated validation subjects.",
                                                        show_default=False)] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of subjects held out for validation when "
                                                "--val-subjects is not given (0: none, keep the last weights).")] = 0.1,
    eval_every: EvalEveryOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    workers: WorkersOpt = None,
    max_steps: MaxStepsOpt = None,
    rnn: RnnOpt = None,
    output_layer: OutputLayerOpt = None,
    dropout: DropoutOpt = None,
    select: SelectOpt = None,
    preset: PresetOpt = None,
    init: InitOpt = None,
    freeze: FreezeOpt = "none",
    keep_normalisation: KeepNormOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model file or checkpoint.")] = False,
) -> None:
    """Train SeqSleepNet (or a baseline) on a prepared dataset and save a self-contained model file.

    Validation is by subject (no subject's nights on both sides); the checkpoint with the best validation
    accuracy is kept. A training log (CSV and JSON) is written beside the model.
    """
    from sleepstage_cli.data.dataset import PreparedDataset
    from sleepstage_cli.training.train import train_model

    opts = train_options(model, channels, seq_len, epochs, batch_size, lr, l2, eval_every, seed, device, amp,
                         workers, max_steps, rnn, output_layer, dropout, select, preset, init, freeze,
                         keep_normalisation)
    print_choices(opts, PreparedDataset(dataset).conditioning.describe())
    vals = [v.strip() for v in val_subjects.split(",") if v.strip()] if val_subjects else None
    cb = ProgressCallbacks()
    try:
        result = train_model(dataset, output, opts, resume=resume, force=force, callbacks=cb, val_subjects=vals,
                             val_fraction=val_fraction)
    finally:
        cb.stop()
    _print_result(result)


def _print_result(result) -> None:
    from sleepstage_cli.stages import STAGES
    from sleepstage_cli.training.train import log_paths

    table = Table(title=f"Model {result.output}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("training subjects", str(len(result.split.train)))
    table.add_row("validation subjects", str(len(result.split.val)))
    table.add_row("steps", str(result.steps))
    table.add_row("time", f"{result.seconds / 60:.1f} min")
    if result.validation:
        v = result.validation
        table.add_row("selected step", str(result.best_step))
        table.add_row("validation accuracy", f"{100 * v['accuracy']:.1f} %")
        table.add_row("validation macro-F1", f"{100 * v['macro_f1']:.1f} %")
        table.add_row("validation kappa", f"{v['kappa']:.3f}")
        for s in STAGES:
            f1 = v["per_class"][s]["f1"]
            table.add_row(f"  F1 {s}", "n/a" if f1 != f1 else f"{100 * f1:.1f} %")
    else:
        table.add_row("selection", "last step (no validation)")
    cal = result.calibration or {}
    if cal.get("ece_before") is not None:
        table.add_row("temperature (calibration)", f"{cal['temperature']:.3f}")
        table.add_row("validation ECE before / after",
                      f"{100 * cal['ece_before']:.1f} % / {100 * cal['ece_after']:.1f} %")
    elif cal:
        table.add_row("calibration", cal.get("note", "not calibrated"))
    con.out.print(table)
    csv_path, json_path = log_paths(result.output)
    con.info(f"training log: {csv_path}, {json_path}")
