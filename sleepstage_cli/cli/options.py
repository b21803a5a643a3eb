"""Option declarations more than one command shares, declared once so that their help reads the same.

The training options: ``sleepstage crossval`` accepts exactly ``sleepstage train``'s and passes them on
through :func:`train_options`. ``--device`` is also ``sleepstage score``'s.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sleepstage_cli.errors import InputError

ModelOpt = Annotated[str, typer.Option("--model", help="seqsleepnet, e2e-arnn, multitask-arnn or deepsleepnet.")]
ChannelsOpt = Annotated[Optional[str], typer.Option(help="Channels to use, e.g. eeg,eog (default: all the dataset "
                                                    "holds).", show_default=False)]
SeqLenOpt = Annotated[Optional[int], typer.Option(help="Epochs per sequence L (default: 20; 1 for the epoch-wise "
                                                  "ARNNs).", show_default=False)]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Passes over the training windows (default: 10; 20 for the "
                                                  "epoch-wise ARNNs, as released).", show_default=False)]
BatchSizeOpt = Annotated[int, typer.Option(help="Sequences per batch.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate (default: 1e-4; 1e-5 with "
                                                "--init).", show_default=False)]
InitOpt = Annotated[Optional[str], typer.Option("--init", help="Fine-tune: start from this model's weights (a file, or "
                                                "an installed model's name; same network and channel kinds; its "
                                                "L, channels and cell are the defaults). Normalisation "
                                                "statistics are re-estimated on the new nights unless "
                                                "--keep-normalisation.", show_default=False)]
FreezeOpt = Annotated[str, typer.Option("--freeze", help="With --init, keep the parent's weights of: filterbank, "
                                        "epoch-encoder (filterbank, epoch-level RNN and attention) or none.")]
KeepNormOpt = Annotated[bool, typer.Option("--keep-normalisation", help="With --init, keep the parent's "
                                           "normalisation statistics instead of re-estimating them.")]
L2Opt = Annotated[float, typer.Option(help="L2 weight (all weights but the filterbanks).")]
EvalEveryOpt = Annotated[Optional[int], typer.Option(help="Validate (and checkpoint) every N steps (default: 100; "
                                                     "500 for the epoch-wise ARNNs, as released).",
                                                     show_default=False)]
SeedOpt = Annotated[int, typer.Option(help="Seed for the split, initialisation and shuffling.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
AmpOpt = Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="Data-loading worker processes (default: 0 on CPU, up to 4 "
                                                   "on GPU).", show_default=False)]
MaxStepsOpt = Annotated[Optional[int], typer.Option(help="Stop training after this many steps (quick runs).",
                                                    show_default=False)]
RnnOpt = Annotated[Optional[str], typer.Option(help="Recurrent cell: gru (default), lstm, or bnlstm (the "
                                               "released code's batch-normalised LSTM).", show_default=False)]
SelectOpt = Annotated[Optional[str], typer.Option(help="Model selection on the validation nights: aggregated "
                                                  "(default: accuracy after test-time aggregation) or per-position "
                                                  "(released code: mean per-position accuracy, ties to the later "
                                                  "checkpoint).", show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option(help="paper: every released-code choice at once (BN-LSTM for "
                                                  "seqsleepnet, --select per-position; needs a dataset prepared "
                                                  "with --no-standardise). Options given explicitly win.",
                                                  show_default=False)]
OutputLayerOpt = Annotated[Optional[str], typer.Option(help="seqsleepnet output: per-position (default) or shared.",
                                                       show_default=False)]
DropoutOpt = Annotated[Optional[float], typer.Option(help="Dropout rate (default: the network's).",
                                                     show_default=False)]


def train_options(model: str, channels: Optional[str], seq_len: Optional[int], epochs: Optional[int],
                  batch_size: int, lr: float, l2: float, eval_every: Optional[int], seed: int, device: str, amp: bool,
                  workers: Optional[int], max_steps: Optional[int], rnn: Optional[str], output_layer: Optional[str],
                  dropout: Optional[float], select: Optional[str] = None, preset: Optional[str] = None,
                  init: Optional[str] = None, freeze: str = "none", keep_normalisation: bool = False):
    """Build TrainOptions from command-line values (shared by train and crossval).

    ``lr`` None: the default, lower with ``init``; with ``init`` the parent model fixes L, channels and cell
    (training/finetune.py), so the options shown and recorded are the ones trained with.
    """
    from sleepstage_cli.io.channels import parse_kinds
    from sleepstage_cli.training.finetune import default_lr, load_parent
    from sleepstage_cli.training.train import TrainOptions, check_values, preset_choices

    if preset is not None:
        chosen = preset_choices(preset, model)
        rnn = rnn if rnn is not None else chosen.get("rnn")
        select = select if select is not None else chosen.get("select")
    hparams = {}
    if rnn is not None:
        if rnn not in ("gru", "lstm", "bnlstm"):
            raise InputError(f"--rnn takes gru, lstm or bnlstm, not {rnn!r}")
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
                        epochs=epochs, batch_size=batch_size, lr=default_lr(init) if lr is None else lr, l2=l2,
                        eval_every=eval_every, seed=seed,
                        device=device, amp=amp, workers=workers, max_steps=max_steps, hparams=hparams,
                        select=select or "aggregated", preset=preset, init=init, freeze=freeze,
                        keep_normalisation=keep_normalisation)
    check_values(opts)  # before the dataset is read
    if init is not None:
        opts = load_parent(init).adapt(opts)
    return opts
