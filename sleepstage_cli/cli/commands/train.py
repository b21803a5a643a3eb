"""``sleepstage train``: train SeqSleepNet (or a baseline) on a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.errors import InputError

_EXAMPLE = """Examples:

  sleepstage train data/ -o model.pt

  sleepstage train data/ -o model.pt --channels eeg,eog --epochs 10 --seed 1

  sleepstage train data/ -o arnn.pt --model e2e-arnn --val-subjects 01-03-0001,01-03-0002

  sleepstage train data/ -o model.pt --resume        (continue an interrupted run)

  torchrun --nproc_per_node 4 -m sleepstage_cli train data/ -o model.pt   (several GPUs)
"""


# The training options, declared once: `sleepstage crossval` accepts exactly these and passes them on.
ModelOpt = Annotated[str, typer.Option("--model", help="seqsleepnet, e2e-arnn, multitask-arnn or deepsleepnet.")]
ChannelsOpt = Annotated[Optional[str], typer.Option(help="Channels to use, e.g. eeg,eog (default: all the dataset "
                                                    "holds).", show_default=False)]
SeqLenOpt = Annotated[Optional[int], typer.Option(help="Epochs per sequence L (default: 20; 1 for the epoch-wise "
                                                  "ARNNs).", show_default=False)]
EpochsOpt = Annotated[int, typer.Option(help="Passes over the training windows.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Sequences per batch.")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate.")]
L2Opt = Annotated[float, typer.Option(help="L2 weight (all weights but the filterbanks).")]
EvalEveryOpt = Annotated[int, typer.Option(help="Validate (and checkpoint) every N steps.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for the split, initialisation and shuffling.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
AmpOpt = Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="Data-loading worker processes (default: 0 on CPU, up to 4 "
                                                   "on GPU).", show_default=False)]
MaxStepsOpt = Annotated[Optional[int], typer.Option(help="Stop training after this many steps (quick runs).",
                                                    show_default=False)]
RnnOpt = Annotated[Optional[str], typer.Option(help="Recurrent cell: gru (paper) or lstm (released code).",
                                               show_default=False)]
OutputLayerOpt = Annotated[Optional[str], typer.Option(help="seqsleepnet output: per-position (default) or shared.",
                                                       show_default=False)]
DropoutOpt = Annotated[Optional[float], typer.Option(help="Dropout rate (default: the network's).",
                                                     show_default=False)]


def train_options(model: str, channels: Optional[str], seq_len: Optional[int], epochs: int, batch_size: int,
                  lr: float, l2: float, eval_every: int, seed: int, device: str, amp: bool, workers: Optional[int],
                  max_steps: Optional[int], rnn: Optional[str], output_layer: Optional[str],
                  dropout: Optional[float]):
    """Build TrainOptions from command-line values (shared by train and crossval)."""
    from sleepstage_cli.io.channels import parse_kinds
    from sleepstage_cli.training.train import TrainOptions, check_values

    hparams = {}
    if rnn is not None:
        if rnn not in ("gru", "lstm"):
            raise InputError(f"--rnn takes gru or lstm, not {rnn!r}")
        if model == "deepsleepnet":
            raise InputError("--rnn does not apply to deepsleepnet (its sequence level is an LSTM)")
        hparams["rnn"] = rnn
    if output_layer is not None:
        if model != "seqsleepnet":
            raise InputError("--output-layer applies to seqsleepnet only")
        if output_layer not in ("per-position", "shared"):
            raise InputError(f"--output-layer takes per-position or shared, not {output_layer!r}")
        hparams["output"] = output_layer
    if dropout is not None:
        hparams["dropout"] = dropout
    opts = TrainOptions(net=model, channels=parse_kinds(channels) if channels else None, seq_len=seq_len,
                        epochs=epochs, batch_size=batch_size, lr=lr, l2=l2, eval_every=eval_every, seed=seed,
                        device=device, amp=amp, workers=workers, max_steps=max_steps, hparams=hparams)
    check_values(opts)  # before the dataset is read
    return opts


class ProgressCallbacks:
    """Draws training progress: a bar over the steps, and below it loss, throughput and the last validation."""

    def __init__(self, label: str = "training") -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=con.err)
        self.status = Text("", overflow="fold")
        self.live = Live(Group(self.progress, self.status), console=con.err, refresh_per_second=4)
        self.task = None
        self.label = label
        self.train_text = ""
        self.val_text = ""

    def stage(self, text: str) -> None:
        con.info(f"{self.label}: {text}")

    def start(self, total_steps: int, step: int) -> None:
        self.task = self.progress.add_task(self.label, total=total_steps, completed=step)
        self.live.start()

    def _show(self) -> None:
        self.status.plain = f"  {self.train_text}" + (f"\n  {self.val_text}" if self.val_text else "")

    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None:
        self.progress.update(self.task, completed=step)
        self.train_text = f"pass {pass_index + 1}  loss {loss:.3f}  {seq_per_s:.1f} sequences/s"
        self._show()

    def evaluated(self, step: int, metrics: dict, best: bool) -> None:
        self.val_text = (f"validation at step {step}: accuracy {100 * metrics['accuracy']:.1f} %  "
                         f"macro-F1 {100 * metrics['macro_f1']:.1f} %  kappa {metrics['kappa']:.3f}"
                         f"{'  (best so far)' if best else ''}")
        self._show()

    def stop(self) -> None:
        if self.live.is_started:
            self.live.stop()
            if not con.err.is_terminal:
                con.err.line()  # the last status line ends without one when not drawn on a terminal


@app.command(epilog=_EXAMPLE)
@command
def train(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset folder (from 'sleepstage prepare').")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")] = Path("model.pt"),
    model: ModelOpt = "seqsleepnet",
    channels: ChannelsOpt = None,
    seq_len: SeqLenOpt = None,
    epochs: EpochsOpt = 10,
    batch_size: BatchSizeOpt = 32,
    lr: LrOpt = 1e-4,
    l2: L2Opt = 1e-3,
    val_subjects: Annotated[Optional[str], typer.Option(help="Comma-separated validation subjects.",
                                                        show_default=False)] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of subjects held out for validation when "
                                                "--val-subjects is not given (0: none, keep the last weights).")] = 0.1,
    eval_every: EvalEveryOpt = 100,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    workers: WorkersOpt = None,
    max_steps: MaxStepsOpt = None,
    rnn: RnnOpt = None,
    output_layer: OutputLayerOpt = None,
    dropout: DropoutOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model file or checkpoint.")] = False,
) -> None:
    """Train SeqSleepNet (or a baseline) on a prepared dataset and save a self-contained model file.

    Validation is by subject (no subject's nights on both sides); the checkpoint with the best validation
    accuracy is kept. A training log (CSV and JSON) is written beside the model.
    """
    from sleepstage_cli.training.train import train_model

    opts = train_options(model, channels, seq_len, epochs, batch_size, lr, l2, eval_every, seed, device, amp,
                         workers, max_steps, rnn, output_layer, dropout)
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
    con.out.print(table)
    csv_path, json_path = log_paths(result.output)
    con.info(f"training log: {csv_path}, {json_path}")
