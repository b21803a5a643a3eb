"""Fine-tuning: ``sleepstage train DATA --init MODEL`` starts from a trained model's weights.

How a lab with a few scored nights adapts a published model to its montage. The parent must be the
same network (name and the hyper-parameters that shape its weights, the sequence length L included)
reading the same channel kinds; what the command line leaves out (``--seq-len``, ``--channels``,
``--rnn``, ``--output-layer``) is taken from the parent, what it gives must agree with it.

Normalisation statistics (spectrogram networks) are re-estimated on the new training nights by
default: a new montage shifts every bin's level, which is what they absorb. ``--keep-normalisation``
keeps the parent's. ``--freeze`` fixes the parent's weights of part of the network: ``filterbank`` (the
triangular filterbanks), ``epoch-encoder`` (filterbank, epoch-level RNN and attention) or ``none``;
frozen weights are left out of the optimiser (batch-norm running statistics inside them, with
``--rnn bnlstm``, still follow the new nights). Without ``--lr`` the learning rate is
:data:`FINETUNE_LR`, ten times below training from scratch.

The model file records the parent by file name and sha256 (``training.init``, never a path), the frozen
part (``training.freeze``) and what became of the normalisation (``training.normalisation``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sleepstage_cli.digests import file_sha256
from sleepstage_cli.errors import InputError
from sleepstage_cli.model.modelfile import LoadedModel, load_model
from sleepstage_cli.model.staging import StagingModel

FREEZE_CHOICES = ("none", "filterbank", "epoch-encoder")
FINETUNE_LR = 1e-5  # the default --lr with --init (from scratch: 1e-4)
SCRATCH_LR = 1e-4
# Hyper-parameters that may differ from the parent's: they shape no weight.
_FREE_HPARAMS = ("dropout",)


def default_lr(init: object) -> float:
    """The learning rate when --lr is not given: lower when fine-tuning."""
    return FINETUNE_LR if init else SCRATCH_LR


def check_freeze(freeze: str, init: object) -> None:
    """Refuse an unknown --freeze, or a freeze without --init (there is nothing trained to keep)."""
    if freeze not in FREEZE_CHOICES:
        raise InputError(f"--freeze takes {', '.join(FREEZE_CHOICES)}, not {freeze!r}")
    if freeze != "none" and not init:
        raise InputError(f"--freeze {freeze} needs --init MODEL (a trained model whose weights are kept)")


def resolve_parent(text: str | Path) -> Path:
    """The parent's model file: a path, else an installed or shipped model's name (the zoo's resolver)."""
    from sleepstage_cli.model.zoo import resolve_model

    try:
        return Path(resolve_model(text))
    except InputError as exc:
        raise InputError(f"--init: {exc}") from None


def init_record(path: str | Path) -> dict:
    """How the model file names its parent: file name and sha256, never a path."""
    path = Path(path)
    return {"name": path.name, "sha256": file_sha256(path)}


@dataclass
class Parent:
    """The model fine-tuning starts from."""

    path: Path
    loaded: LoadedModel

    @property
    def config(self) -> dict:
        return self.loaded.model.config()

    def adapt(self, opts):
        """``opts`` (TrainOptions) with the architecture and channels the parent fixes filled in; a conflict is
        refused naming the option."""
        cfg, where = self.config, self.path
        if opts.net != cfg["net"]:
            raise InputError(f"--init model is a {cfg['net']} and this run trains a {opts.net}; pass --model "
                             f"{cfg['net']} (fine-tuning keeps the network)", where)
        if opts.seq_len is not None and opts.seq_len != cfg["seq_len"]:
            raise InputError(f"--init model was trained on sequences of L={cfg['seq_len']} epochs, not "
                             f"--seq-len {opts.seq_len}; leave --seq-len out", where)
        hparams = dict(cfg["hparams"])
        for key, value in opts.hparams.items():
            if key not in _FREE_HPARAMS and hparams.get(key) != value:
                raise InputError(f"--init model has {key} {hparams.get(key)!r}, not {value!r}; fine-tuning keeps "
                                 "the network's shape", where)
            hparams[key] = value
        kinds = self.loaded.kinds
        if opts.channels is not None and tuple(opts.channels) != tuple(kinds):
            raise InputError(f"--init model reads {','.join(kinds)}, not --channels {','.join(opts.channels)}; "
                             "fine-tuning keeps the channels", where)
        frozen_modules(self.loaded.model, opts.freeze)  # refuses a part the network lacks, before training
        return replace(opts, seq_len=cfg["seq_len"], hparams=hparams, channels=tuple(kinds),
                       init=str(self.path.resolve()))  # a zoo name resolved once; crossval's workers get the file

    def check_dataset(self, dataset_channels: tuple[str, ...], dataset_root: Path) -> None:
        """Refuse a dataset that lacks a channel kind the parent reads."""
        missing = [k for k in self.loaded.kinds if k not in dataset_channels]
        if missing:
            raise InputError(f"the --init model reads {','.join(self.loaded.kinds)} but the dataset holds "
                             f"{','.join(dataset_channels)} (no {','.join(missing)})", dataset_root)
        if tuple(k for k in dataset_channels if k in self.loaded.kinds) != tuple(self.loaded.kinds):
            raise InputError(f"the --init model reads {','.join(self.loaded.kinds)} in that order but the dataset "
                             f"holds {','.join(dataset_channels)}", dataset_root)

    def copy_into(self, model: StagingModel) -> None:
        """Give ``model`` (built from the adapted options) the parent's weights and normalisation statistics."""
        model.load_state_dict(self.loaded.model.state_dict())


def describe(opts) -> str:
    """One line for the run's header: the parent (name and short hash), the frozen part, the normalisation."""
    from sleepstage_cli.digests import named
    from sleepstage_cli.model.nets import NETS

    record = init_record(opts.init)
    raw = NETS[opts.net].input_kind != "spectrogram"
    normalisation = "none" if raw else "kept" if opts.keep_normalisation else "re-estimated"
    return f"fine-tuning {named(record['name'], record['sha256'])}: freeze {opts.freeze}, normalisation {normalisation}"


def load_parent(text: str | Path) -> Parent:
    """Read the --init model (refused in one line if it is no usable model file)."""
    path = resolve_parent(text)
    return Parent(path=path, loaded=load_model(path))


def frozen_modules(model: StagingModel, freeze: str) -> list:
    """The modules whose weights --freeze keeps (none for ``none``); refused if the network has no such part."""
    if freeze == "none":
        return []
    encoder = getattr(model.net, "encoder", None)
    if encoder is None or not hasattr(encoder, "filterbank"):
        raise InputError(f"--freeze {freeze}: {model.net_name} has no filterbank or epoch encoder to freeze; use "
                         "--freeze none")
    return [encoder.filterbank] if freeze == "filterbank" else [encoder]


def freeze(model: StagingModel, what: str) -> int:
    """Stop the gradients of the frozen part; returns how many weights are frozen."""
    count = 0
    for module in frozen_modules(model, what):
        for p in module.parameters():
            p.requires_grad_(False)
            count += p.numel()
    return count


def trainable_parameters(model: StagingModel) -> list:
    """What the optimiser updates: every parameter not frozen."""
    return [p for p in model.parameters() if p.requires_grad]


def training_record(opts, parent: Parent | None) -> dict:
    """What the model file's ``training`` gains when fine-tuned: parent, frozen part, normalisation."""
    if parent is None:
        return {}
    if parent.loaded.model.input_kind != "spectrogram":
        normalisation = "none"  # a raw-signal network has no normalisation statistics
    else:
        normalisation = "kept" if opts.keep_normalisation else "re-estimated"
    return {"init": init_record(parent.path), "freeze": opts.freeze, "normalisation": normalisation}
