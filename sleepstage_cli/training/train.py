"""Training as in the paper: Adam, cross-entropy summed over the batch and averaged over the L positions,
L2 on every weight but the filterbanks, stride-1 windows shuffled each pass, validation on held-out
subjects every N steps keeping the best checkpoint; resumable; data-parallel under torchrun.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sleepstage_cli import __version__
from sleepstage_cli.data.dataset import MANIFEST, NightRecord, PreparedDataset, same_description
from sleepstage_cli.data.loader import PassBatches, WindowDataset
from sleepstage_cli.errors import InputError, Interrupted, OutputExistsError, SleepstageError
from sleepstage_cli.evaluation.metrics import confusion_matrix, scores
from sleepstage_cli.fsutil import (
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    check_writable_output,
    refuse_replacing_inputs,
)
from sleepstage_cli.interrupts import GracefulStop
from sleepstage_cli.model.card import write_model_card
from sleepstage_cli.model.modelfile import read_torch_file, save_model
from sleepstage_cli.model.nets import NETS
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.scoring.inference import autocast_for, score_night
from sleepstage_cli.spectrograms.cache import SpectrogramCache
from sleepstage_cli.spectrograms.frontend import RunningStats
from sleepstage_cli.stages import STAGES
from sleepstage_cli.training import finetune
from sleepstage_cli.training.finetune import check_freeze, init_record

DEFAULT_SEQ_LEN = {"seqsleepnet": 20, "deepsleepnet": 20, "e2e-arnn": 1, "multitask-arnn": 1}
# The released code trains the epoch-wise baselines longer and validates them less often (SPEC.md).
DEFAULT_EPOCHS = {"seqsleepnet": 10, "deepsleepnet": 10, "e2e-arnn": 20, "multitask-arnn": 20}
DEFAULT_EVAL_EVERY = {"seqsleepnet": 100, "deepsleepnet": 100, "e2e-arnn": 500, "multitask-arnn": 500}
SELECTIONS = ("aggregated", "per-position")
PRESETS = ("paper",)
CHECKPOINT_VERSION = 1


class TrainingInterrupted(Interrupted):
    """Training stopped on request; the checkpoint allows --resume."""


@dataclass
class TrainOptions:
    """What `sleepstage train` accepts (crossval passes the same through)."""

    net: str = "seqsleepnet"
    channels: tuple[str, ...] | None = None
    seq_len: int | None = None
    epochs: int | None = None  # None: the network's default (DEFAULT_EPOCHS)
    batch_size: int = 32
    lr: float = 1e-4
    l2: float = 1e-3
    eval_every: int | None = None  # None: the network's default (DEFAULT_EVAL_EVERY)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int | None = None
    max_steps: int | None = None
    hparams: dict = field(default_factory=dict)
    select: str = "aggregated"  # model selection: see evaluate / evaluate_per_position
    preset: str | None = None  # recorded only: the preset's choices are already in the other fields
    init: str | None = None  # fine-tuning: the parent model file (training/finetune.py)
    freeze: str = "none"  # fine-tuning: filterbank, epoch-encoder or none
    keep_normalisation: bool = False  # fine-tuning: keep the parent's normalisation statistics

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS.get(self.net, 10)
        if self.eval_every is None:
            self.eval_every = DEFAULT_EVAL_EVERY.get(self.net, 100)

    def resolved_seq_len(self) -> int:
        return int(self.seq_len or DEFAULT_SEQ_LEN.get(self.net, 20))

    def fingerprint(self) -> dict:
        """The options a resumed run must share with the interrupted one (device and workers may change).

        ``select``, ``preset`` and the fine-tuning options appear only when not the default, so runs of earlier
        versions still resume; the parent model appears as its file name and sha256 (never a path).
        """
        d = asdict(self)
        for k in ("device", "workers", "amp"):
            d.pop(k)
        if d["select"] == "aggregated":
            d.pop("select")
        if d["preset"] is None:
            d.pop("preset")
        for key, default in (("init", None), ("freeze", "none"), ("keep_normalisation", False)):
            if d[key] == default:
                d.pop(key)
        if self.init is not None:
            d["init"] = init_record(self.init)
        d["seq_len"] = self.resolved_seq_len()
        d["channels"] = list(d["channels"]) if d["channels"] else None
        return d


@dataclass
class Split:
    """Subjects used for training and for validation (model selection)."""

    train: list[str]
    val: list[str]


def subject_split(ds: PreparedDataset, val_subjects: list[str] | None = None, val_fraction: float = 0.1,
                  seed: int = 0, exclude: list[str] | tuple[str, ...] = ()) -> Split:
    """Split the dataset's subjects (minus ``exclude``) into train and validation, never splitting a subject."""
    subjects = [s for s in ds.subjects if s not in set(exclude)]
    if val_subjects:
        unknown = sorted(set(val_subjects) - set(subjects))
        if unknown:
            raise InputError(f"--val-subjects names subjects not in the dataset: {', '.join(unknown)} "
                             f"(it has: {', '.join(subjects[:20])}{' ...' if len(subjects) > 20 else ''})", ds.root)
        val = sorted(set(val_subjects))
    elif val_fraction > 0:
        if not 0 < val_fraction < 1:
            raise InputError(f"--val-fraction must be between 0 and 1, got {val_fraction:g}")
        if len(subjects) < 2:
            raise InputError(f"validation needs at least 2 subjects and the dataset has {len(subjects)}; "
                             "pass --val-fraction 0 to train without validation (the last weights are kept)",
                             ds.root)
        n_val = min(len(subjects) - 1, max(1, round(val_fraction * len(subjects))))
        order = np.random.default_rng(seed).permutation(len(subjects))
        val = sorted(subjects[i] for i in order[:n_val])
    else:
        val = []
    train = [s for s in subjects if s not in set(val)]
    if not train:
        raise InputError("no subject is left for training", ds.root)
    return Split(train=train, val=val)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA if present, then Apple MPS, else CPU; explicit names are checked."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank}")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for but no CUDA GPU is available (try --device cpu)")
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device(f"cuda:{index}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' asked for but Apple MPS is not available")
    return device


class Callbacks:
    """Progress hooks; the CLI overrides them to draw the progress display."""

    def stage(self, text: str) -> None: ...
    def start(self, total_steps: int, step: int) -> None: ...
    def step(self, step: int, loss: float, seq_per_s: float, pass_index: int) -> None: ...
    def evaluated(self, step: int, metrics: dict, best: bool) -> None: ...


@dataclass
class TrainResult:
    output: Path
    steps: int
    best_step: int | None
    validation: dict | None
    log: list[dict]
    split: Split
    seconds: float
    last_state: dict | None = None  # weights after the last step (the file holds the selected ones)
    calibration: dict | None = None  # the temperature fit on the validation nights (training/calibrate.py)


def loss_fn(logits: torch.Tensor, y_ctx: torch.Tensor, aggregation: str) -> tuple[torch.Tensor, int]:
    """Cross-entropy summed over the batch and averaged over the L positions; unscored epochs ignored.

    ``y_ctx`` holds L + 2 labels (one neighbour each side); the multitask net learns all three, its
    loss the sum over its three heads (as released).
    Returns the loss and the number of labels it covers.
    """
    L = y_ctx.shape[1] - 2
    if aggregation == "neighbours":
        target = torch.stack([y_ctx[:, :-2], y_ctx[:, 1:-1], y_ctx[:, 2:]], dim=2)
    else:
        target = y_ctx[:, 1:-1]
    target = target.reshape(-1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target, ignore_index=-1, reduction="sum")
    return ce / L, int((target >= 0).sum())


def l2_penalty(model: StagingModel) -> torch.Tensor:
    """lambda-free half squared norm of the regularised weights (TensorFlow's l2_loss, as the original)."""
    return sum((p.float() ** 2).sum() for p in model.regularised_parameters()) / 2.0


MAX_SEED = 2**32 - 1  # numpy's legacy seeding (DataLoader workers) takes no more


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_range(option: str, value: float | None, low: float, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Refuse a numeric option outside its range (``None``: not given), naming the option and the range."""
    if value is None:
        return
    above = value > low if low_open else value >= low
    below = high is None or (value < high if high_open else value <= high)
    if not (above and below and math.isfinite(value)):
        bounds = [f"{'greater than' if low_open else 'at least'} {_number(low)}"]
        if high is not None:
            bounds.append(f"{'below' if high_open else 'at most'} {_number(high)}")
        finite = "a finite number " if math.isinf(value) else ""
        raise InputError(f"{option} must be {finite}{' and '.join(bounds)} (got {_number(value)})")


def preset_choices(preset: str, net: str) -> dict:
    """The options a preset sets (``paper``: the released code's), for a network.

    The dataset-side choices of the released code (no standardisation, optionally its filters) are
    ``prepare``'s; :func:`check_preset_dataset` refuses a dataset that does not have them.
    """
    if preset not in PRESETS:
        raise InputError(f"--preset takes {' or '.join(PRESETS)}, not {preset!r}")
    choices = {"select": "per-position"}
    if net == "seqsleepnet":
        choices["rnn"] = "bnlstm"  # the released baselines keep their GRU (SPEC.md)
    return choices


def check_preset_dataset(ds: PreparedDataset, opts: TrainOptions) -> None:
    """Refuse ``--preset paper`` on a dataset prepared with per-night standardisation (the paper had none)."""
    if opts.preset == "paper" and ds.conditioning.standardise:
        raise InputError("--preset paper needs a dataset prepared without per-night standardisation, as the "
                         "published numbers were; prepare it again with --no-standardise", ds.root)


def check_values(opts: TrainOptions) -> None:
    """Refuse a training option outside its range (what needs no dataset), naming the option and the range."""
    if opts.net not in NETS:
        raise InputError(f"unknown model {opts.net!r}; choose one of {', '.join(NETS)}")
    for option, value in (("--epochs", opts.epochs), ("--batch-size", opts.batch_size),
                          ("--eval-every", opts.eval_every), ("--seq-len", opts.seq_len),
                          ("--max-steps", opts.max_steps)):
        check_range(option, value, 1)
    check_range("--lr", opts.lr, 0, low_open=True)
    check_range("--l2", opts.l2, 0)
    check_range("--seed", opts.seed, 0, MAX_SEED)
    check_range("--workers", opts.workers, 0)
    check_range("--dropout", opts.hparams.get("dropout"), 0, 1, high_open=True)
    if opts.select not in SELECTIONS:
        raise InputError(f"--select takes {' or '.join(SELECTIONS)}, not {opts.select!r}")
    if opts.preset is not None and opts.preset not in PRESETS:
        raise InputError(f"--preset takes {' or '.join(PRESETS)}, not {opts.preset!r}")
    check_freeze(opts.freeze, opts.init)


def check_options(ds: PreparedDataset, opts: TrainOptions) -> tuple[tuple[str, ...], list[int]]:
    """Refuse bad training options (before anything is written); returns the channels used and their index."""
    check_values(opts)
    check_preset_dataset(ds, opts)
    return channel_index(ds, opts.channels)


def channel_index(ds: PreparedDataset, kinds: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[int]]:
    """Which of the dataset's channels a model uses (all of them by default)."""
    have = ds.channels
    if not kinds:
        return have, list(range(len(have)))
    missing = [k for k in kinds if k not in have]
    if missing:
        raise InputError(f"--channels asks for {', '.join(missing)} but the dataset holds {', '.join(have)}", ds.root)
    ordered = tuple(k for k in have if k in kinds)
    return ordered, [have.index(k) for k in ordered]


def nights_of(ds: PreparedDataset, subjects: list[str]) -> list[NightRecord]:
    wanted = set(subjects)
    return [n for n in ds.nights if n.subject in wanted]


def normalisation_stats(ds: PreparedDataset, nights: list[NightRecord], cache: SpectrogramCache,
                        chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(channel, bin) mean and std over all frames of the training epochs' spectrograms, streamed night by night."""
    stats = RunningStats()
    for night in nights:
        scored = np.nonzero(np.asarray(ds.open(night)["label"]) >= 0)[0]
        spectrograms = cache.open(night)
        for s in range(0, scored.size, chunk):
            stats.update(torch.from_numpy(np.asarray(spectrograms[scored[s:s + chunk]])))
    if stats.count == 0:
        raise InputError("the training nights hold no scored epoch", ds.root)
    return stats.finalize()


def evaluate(model: StagingModel, ds: PreparedDataset, nights: list[NightRecord], index: list[int],
             device: torch.device, amp: bool) -> dict:
    """Pooled agreement over the validation nights with test-time aggregation (as scoring does)."""
    cm = np.zeros((5, 5), dtype=np.int64)
    for night in nights:
        rec = ds.open(night)
        x = np.asarray(rec["x"][:, index], dtype=np.float32)
        result = score_night(model, x, device, amp=amp)
        cm += confusion_matrix(np.asarray(rec["label"]), result.stages)
    out = scores(cm)
    out["confusion"] = cm.tolist()
    return out


def evaluate_per_position(model: StagingModel, ds: PreparedDataset, nights: list[NightRecord], index: list[int],
                          device: torch.device, amp: bool) -> dict:
    """The released code's selection figure, beside :func:`evaluate`'s pooled metrics.

    ``position_accuracy``: every window's own prediction at each of its output positions, without
    test-time aggregation, scored against the epoch's label; the mean over positions of each position's
    accuracy (unscored epochs and positions outside the night left out).
    """
    cm = np.zeros((5, 5), dtype=np.int64)
    correct, counted = None, None
    for night in nights:
        rec = ds.open(night)
        labels = np.asarray(rec["label"])
        result = score_night(model, np.asarray(rec["x"][:, index], dtype=np.float32), device, amp=amp,
                             positions=True)
        cm += confusion_matrix(labels, result.stages)
        target = np.where(result.window_epochs >= 0, labels[np.maximum(result.window_epochs, 0)], -1)
        scored = target >= 0
        hits = ((result.window_stages == target) & scored).sum(axis=0)
        correct = hits if correct is None else correct + hits
        counted = scored.sum(axis=0) if counted is None else counted + scored.sum(axis=0)
    out = scores(cm)
    out["confusion"] = cm.tolist()
    per_position = [c / k for c, k in zip(correct, counted) if k > 0]
    out["position_accuracy"] = float(np.mean(per_position)) if per_position else float("nan")
    return out


def refuse_overwriting_dataset(ds: PreparedDataset, output: Path) -> None:
    """Refuse, --force or not, a model file, checkpoint or log that is or would replace a file of the dataset.

    The manifest and night files are never replaced; another file inside the dataset folder only when
    its content shows it is what this training writes (a model, checkpoint or log of an earlier run).
    """
    files = [ds.root / MANIFEST, *(ds.root / n.file for n in ds.nights)]
    csv_path, json_path = log_paths(output)
    for path, what in ((output, "model file"), (checkpoint_path(output), "checkpoint"), (csv_path, "training log"),
                       (json_path, "training log")):
        if not path.exists():  # replaces nothing (and a dataset of thousands of nights is not walked for it)
            continue
        refuse_replacing_inputs([path], files, what)
        if not _written_by_training(path):
            refuse_replacing_inputs([path], [ds.root], what)


def _written_by_training(path: Path) -> bool:
    """Whether an existing ``path`` is a model file, checkpoint or training log (by its content)."""
    from sleepstage_cli.model.modelmeta import MODEL_FORMAT, peek_payload

    if not path.is_file():
        return False
    if path.suffix in (".csv", ".json"):
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError:
            return False
        return head.startswith("step,pass,train_loss,") or ('"training":' in head and '"sleepstage_version":' in head)
    payload = peek_payload(path) or {}
    return payload.get("format") == MODEL_FORMAT or ("fingerprint" in payload and "optimizer" in payload)


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".ckpt")


def log_paths(output: Path) -> tuple[Path, Path]:
    stem = output.with_suffix("")
    return stem.with_name(stem.name + ".train.csv"), stem.with_name(stem.name + ".train.json")


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def train_model(dataset: str | Path, output: str | Path, opts: TrainOptions, split: Split | None = None,
                resume: bool = False, force: bool = False, callbacks: Callbacks | None = None,
                val_subjects: list[str] | None = None, val_fraction: float = 0.1,
                exclude_subjects: tuple[str, ...] = ()) -> TrainResult:
    """Train a model on a prepared dataset and write the model file (and its training log) to ``output``."""
    cb = callbacks or Callbacks()
    t_start = time.time()
    output = Path(output)
    parent, opts = _parent_model(opts)
    data = _select_data(dataset, output, opts, split, val_subjects, val_fraction, exclude_subjects, parent)
    devices = _set_up_devices(opts)
    fingerprint, ckpt = _checkpoint_to_resume(output, opts, data, resume, force)
    model = _seeded_model(opts, data, devices.device, parent)
    cache, train_set, total_steps = _training_windows(opts, data, model, devices, cb)
    run = _Run(opts, data, devices, output, fingerprint, cb, model, cache, train_set, total_steps,
               optimizer=torch.optim.Adam(finetune.trainable_parameters(model), lr=opts.lr),
               scaler=torch.amp.GradScaler("cuda", enabled=devices.amp), parent=parent)
    if ckpt is not None:
        run.resume(ckpt)
    elif model.input_kind == "spectrogram" and not (parent is not None and opts.keep_normalisation):
        _set_normalisation(run)
    run.train_module = _wrap_for_ddp(model, devices)
    _train_loop(run)
    _calibrate(run)
    result_val = _write_model(run, t_start)
    _barrier(devices.distributed)
    if cache is not None:
        cache.close()
    return TrainResult(output=output, steps=run.step, best_step=run.best["step"], validation=result_val,
                       calibration=run.calibration,
                       log=run.log, split=data.split, seconds=time.time() - t_start,
                       last_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


# The steps of train_model, in the order it takes them. The order is part of the behaviour: seeded runs
# (and resumed ones) draw their random numbers in it, and options are refused before anything is written.

@dataclass
class _Data:
    """The dataset, the channels the model reads, and the subjects it trains and validates on."""

    ds: PreparedDataset
    kinds: tuple[str, ...]
    index: list[int]
    seq_len: int
    split: Split
    train_nights: list[NightRecord]
    val_nights: list[NightRecord]


def _parent_model(opts: TrainOptions) -> tuple[finetune.Parent | None, TrainOptions]:
    """With --init, the parent model and the options with the architecture and channels it fixes."""
    check_values(opts)
    if opts.init is None:
        return None, opts
    parent = finetune.load_parent(opts.init)
    return parent, parent.adapt(opts)


def _select_data(dataset: str | Path, output: Path, opts: TrainOptions, split: Split | None,
                 val_subjects: list[str] | None, val_fraction: float, exclude_subjects: tuple[str, ...],
                 parent: finetune.Parent | None = None) -> _Data:
    """Check the options against the dataset and split its subjects; nothing is written yet."""
    check_range("--val-fraction", val_fraction, 0, 1, high_open=True)
    ds = PreparedDataset(dataset)
    if parent is not None:
        parent.check_dataset(ds.channels, ds.root)
    kinds, index = check_options(ds, opts)
    refuse_overwriting_dataset(ds, output)
    seq_len = opts.resolved_seq_len()
    if split is None:
        split = subject_split(ds, val_subjects, val_fraction, opts.seed, exclude_subjects)
    return _Data(ds, kinds, index, seq_len, split, nights_of(ds, split.train), nights_of(ds, split.val))


@dataclass
class _Devices:
    """This process's device and its place among torchrun's processes (one process: world 1, rank 0)."""

    device: torch.device
    world: int
    rank: int
    amp: bool
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone validates and writes files."""
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        """The first process of its machine (torchrun's LOCAL_RANK 0): it fills the machine's spectrogram cache."""
        return self.local_rank == 0


def _set_up_devices(opts: TrainOptions) -> _Devices:
    """Resolve the device; under torchrun, join the process group (NCCL between GPUs, else Gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(opts.device, local_rank)
    if device.type == "cuda":
        # Also with one process: what is not placed explicitly (the DataLoader's pinned memory and its
        # pin thread) goes to the current device, which would otherwise stay cuda:0 for --device cuda:1.
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # Ranks wait at barriers while the spectrogram cache is built and rank 0 validates and writes
            # the model, which on a large dataset takes longer than NCCL's default 10-minute timeout.
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    timeout=dt.timedelta(hours=2))
    return _Devices(device, world, rank, amp=opts.amp and device.type == "cuda", local_rank=local_rank)


def _checkpoint_to_resume(output: Path, opts: TrainOptions, data: _Data, resume: bool,
                          force: bool) -> tuple[dict, dict | None]:
    """The run's fingerprint and, with ``resume``, the interrupted run's checkpoint (refused if another run's).

    Without ``force``, an earlier run's checkpoint or model is refused here, before anything is trained.
    """
    ds, split, train_nights, val_nights = data.ds, data.split, data.train_nights, data.val_nights
    ckpt_path = checkpoint_path(output)
    check_writable_output(output, force=True, what="model file")  # not a folder, in one we can write: before training
    fingerprint = json.loads(json.dumps({
        "options": opts.fingerprint(), "split": asdict(split), "dataset": ds.identity(),
        "nights": [n.id for n in train_nights + val_nights], "checkpoint_version": CHECKPOINT_VERSION}))
    ckpt = None
    if resume and ckpt_path.exists():
        try:
            ckpt = read_torch_file(ckpt_path, "checkpoint")
        except InputError as exc:
            raise InputError(f"{exc}; start over with --force", ckpt_path) from None
        if not isinstance(ckpt, dict) or not same_description(ckpt.get("fingerprint"), fingerprint):
            raise InputError("checkpoint belongs to a run with other options, data or split; run the same command "
                             "as before with --resume, or start over with --force", ckpt_path)
    elif not resume or not ckpt_path.exists():
        if ckpt_path.exists() and not force:
            raise SleepstageError(f"a checkpoint of an interrupted run is there ({ckpt_path}); pass --resume to "
                                  "continue it or --force to start over", output)
        if output.exists() and not force and not resume:
            raise OutputExistsError(output, "model file")
        if output.exists() and resume and not force:
            raise SleepstageError("the model is already trained (no checkpoint to resume); pass --force to "
                                  "train it again", output)
    return fingerprint, ckpt


def _seeded_model(opts: TrainOptions, data: _Data, device: torch.device,
                  parent: finetune.Parent | None = None) -> StagingModel:
    """The untrained network, its initial weights (and every later draw) fixed by ``--seed``.

    With --init the parent's weights replace the drawn ones (the draw still happens: later draws stay the
    same) and the --freeze part stops learning.
    """
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    model = StagingModel(opts.net, len(data.kinds), data.seq_len, **opts.hparams)
    if parent is not None:
        parent.copy_into(model)
        finetune.freeze(model, opts.freeze)
    model.to(device)
    if not data.train_nights:
        raise InputError("no training night", data.ds.root)
    return model


def _training_windows(opts: TrainOptions, data: _Data, model: StagingModel, devices: _Devices,
                      cb: Callbacks) -> tuple[SpectrogramCache | None, WindowDataset, int]:
    """The spectrogram cache (for nets that take spectrograms), the training windows and the number of steps."""
    ds, train_nights, seq_len, index = data.ds, data.train_nights, data.seq_len, data.index
    cache = None
    if model.input_kind == "spectrogram":
        cache = SpectrogramCache(ds, index)
        cb.stage(f"spectrograms of the training nights (cached in {cache.folder})")
        # One process per machine fills the cache, the others wait, then read it: across machines the dataset
        # may be a copy on each node's disk. On a shared file system two nodes may compute a night at once;
        # the cache's atomic, locked writes keep one whole copy.
        if devices.is_node_main:
            cache.ensure(train_nights, devices.device)
        _barrier(devices.distributed)
    train_set = WindowDataset(ds.root, train_nights, seq_len, index,
                              feature_files=cache.files(train_nights) if cache else None,
                              skip_borders=model.net.aggregation == "neighbours")
    if len(train_set) == 0:
        raise InputError(f"the training nights hold no window of {seq_len} epochs with a scored one", ds.root)
    steps_per_pass = PassBatches(len(train_set), opts.batch_size, opts.seed, 0, 0, devices.rank,
                                 devices.world).n_batches()
    total_steps = steps_per_pass * opts.epochs
    if opts.max_steps:
        total_steps = min(total_steps, opts.max_steps)
    return cache, train_set, total_steps


def _set_normalisation(run: _Run) -> None:
    """Give the model the training nights' spectrogram statistics (rank 0 computes them, the others receive them)."""
    data, devices, model = run.data, run.devices, run.model
    run.cb.stage("computing normalisation statistics on the training nights")
    if devices.is_main:
        mean, std = normalisation_stats(data.ds, data.train_nights, run.cache)
    else:
        mean = torch.zeros(len(data.kinds), 29, 129, dtype=torch.float64)
        std = torch.ones(len(data.kinds), 29, 129, dtype=torch.float64)
    if devices.distributed:
        import torch.distributed as dist

        mean, std = mean.to(devices.device), std.to(devices.device)
        dist.broadcast(mean, 0)
        dist.broadcast(std, 0)
    model.set_normalisation(mean.cpu(), std.cpu())
    model.to(devices.device)


def _wrap_for_ddp(model: StagingModel, devices: _Devices) -> torch.nn.Module:
    """What the training steps run: the model, or under torchrun its DistributedDataParallel wrapper."""
    if not devices.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[devices.device.index] if devices.device.type == "cuda" else None)


def _loader_workers(opts: TrainOptions, device: torch.device) -> int:
    """DataLoader worker processes: as asked, else a few to keep a GPU fed and none on the CPU."""
    if opts.workers is not None:
        return opts.workers
    return min(4, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0


@dataclass
class _Run:
    """A training run: what its steps share, and the progress a checkpoint saves (weights to RNG state)."""

    opts: TrainOptions
    data: _Data
    devices: _Devices
    output: Path
    fingerprint: dict
    cb: Callbacks
    model: StagingModel
    cache: SpectrogramCache | None
    train_set: WindowDataset
    total_steps: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_module: torch.nn.Module | None = None  # the model, or its DDP wrapper under torchrun
    step: int = 0
    pass_index: int = 0
    batch_in_pass: int = 0
    best: dict = field(default_factory=lambda: {"accuracy": -1.0, "step": None, "state": None, "metrics": None})
    log: list[dict] = field(default_factory=list)
    calibration: dict | None = None  # set by _calibrate, written into the model file and the JSON log
    parent: finetune.Parent | None = None  # --init: the model fine-tuning started from

    def resume(self, ckpt: dict) -> None:
        """Continue where the checkpoint stopped, random number generators included (same weights as unstopped)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:  # empty when AMP was off (CPU, --no-amp): a resume with AMP starts a fresh scale
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.pass_index, self.batch_in_pass = ckpt["step"], ckpt["pass"], ckpt["batch_in_pass"]
        self.best = ckpt["best"]
        self.log = ckpt["log"]
        _set_rng_state(ckpt["rng"], self.devices.device)
        self.cb.stage(f"resuming from step {self.step}")

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One optimiser step on a batch; returns its loss (without the L2 term) and the labels it covers."""
        device, amp = self.devices.device, self.devices.amp
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = self.train_module(x, spectrogram=self.cache is not None)
        loss, n_labels = loss_fn(logits, y, self.model.net.aggregation)
        total = loss + self.opts.l2 * l2_penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.batch_in_pass += 1
        return loss, n_labels

    def validate(self, train_loss: float, seq_per_s: float) -> None:
        """Log a row; on rank 0, score the validation nights and keep a copy of the best weights so far."""
        row = {"step": self.step, "pass": self.pass_index + 1, "train_loss": train_loss, "sequences_per_s": seq_per_s,
               "val_accuracy": None, "val_macro_f1": None, "val_kappa": None, "best": False}
        data, devices = self.data, self.devices
        if devices.is_main and data.val_nights:
            improved, figure, metrics = self._select()
            if improved:
                self.best = {"accuracy": figure, "step": self.step,
                             "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                             "metrics": metrics}
            row.update(val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"],
                       val_kappa=metrics["kappa"], best=improved)
            self.cb.evaluated(self.step, metrics, improved)
        self.log.append(row)

    def _select(self) -> tuple[bool, float, dict]:
        """Score the validation nights: (better than the best so far, the selection figure, the metrics).

        ``aggregated``: pooled accuracy with test-time aggregation, the earlier checkpoint kept on a tie;
        ``per-position`` (released code): mean per-position accuracy, ties going to the later checkpoint.
        """
        data, devices = self.data, self.devices
        if self.opts.select == "per-position":
            metrics = evaluate_per_position(self.model, data.ds, data.val_nights, data.index, devices.device,
                                            devices.amp)
            figure = metrics["position_accuracy"]
            return figure >= self.best["accuracy"], figure, metrics
        metrics = evaluate(self.model, data.ds, data.val_nights, data.index, devices.device, devices.amp)
        return metrics["accuracy"] > self.best["accuracy"], metrics["accuracy"], metrics

    def save_checkpoint(self) -> None:
        """Write the checkpoint and the CSV log so far (rank 0 only)."""
        if not self.devices.is_main:
            return
        payload = {"fingerprint": self.fingerprint, "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                   "pass": self.pass_index, "batch_in_pass": self.batch_in_pass, "best": self.best, "log": self.log,
                   "rng": _rng_state(self.devices.device)}
        buf = io.BytesIO()
        torch.save(payload, buf)  # in memory first: torch turns a failed file write into an obscure RuntimeError
        with atomic_open(checkpoint_path(self.output), "wb") as fh:
            fh.write(buf.getbuffer())
        _write_log_csv(log_paths(self.output)[0], self.log)


class _Window:
    """Training loss and throughput since the last validation: shown at every step, logged at validation."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.label_sum, self.seqs, self.started = 0.0, 0, 0, time.time()

    def add(self, seqs: int, loss_sum: float, labels: int) -> None:
        self.seqs += seqs
        self.loss_sum += loss_sum
        self.label_sum += labels

    def loss(self) -> float:
        return self.loss_sum / max(self.label_sum, 1)


def _train_loop(run: _Run) -> None:
    """Train pass after pass up to the last step, validating and checkpointing every ``--eval-every`` steps."""
    run.cb.start(run.total_steps, run.step)
    window = _Window()
    workers = _loader_workers(run.opts, run.devices.device)
    finished = run.step >= run.total_steps
    # A first Ctrl-C/SIGTERM stops after the current step with a fresh checkpoint; a second one stops at
    # once, and the last periodic checkpoint is what a resume starts from.
    with GracefulStop("training") as stop:
        while not finished and run.pass_index < run.opts.epochs:
            finished = _train_pass(run, window, stop, workers)
            if not finished:
                run.pass_index += 1
                run.batch_in_pass = 0


def _train_pass(run: _Run, window: _Window, stop: GracefulStop, workers: int) -> bool:
    """The rest of the current pass over the shuffled windows; whether the last step is reached.

    Raises TrainingInterrupted (after a checkpoint) when a stop was asked for on any rank.
    """
    opts, devices = run.opts, run.devices
    sampler = PassBatches(len(run.train_set), opts.batch_size, opts.seed, run.pass_index, run.batch_in_pass,
                          devices.rank, devices.world)
    loader = DataLoader(run.train_set, batch_sampler=sampler, num_workers=workers,
                        pin_memory=devices.device.type == "cuda", worker_init_fn=_seed_worker,
                        generator=torch.Generator().manual_seed(opts.seed))
    run.train_module.train()
    for x, y in loader:
        loss, n_labels = run.train_step(x, y)
        window.add(x.shape[0] * devices.world, float(loss.detach()) * run.data.seq_len, n_labels)
        elapsed = max(time.time() - window.started, 1e-9)
        run.cb.step(run.step, window.loss(), window.seqs / elapsed, run.pass_index)
        if run.step % opts.eval_every == 0 or run.step >= run.total_steps:
            _barrier(devices.distributed)
            run.validate(window.loss(), window.seqs / elapsed)
            run.save_checkpoint()
            _barrier(devices.distributed)
            window.reset()
        if run.step >= run.total_steps:
            return True
        if _stop_everywhere(stop.requested, devices.distributed, devices.device):
            run.save_checkpoint()
            raise TrainingInterrupted(f"training interrupted at step {run.step} of {run.total_steps}; the "
                                      "checkpoint is saved: run the same command with --resume to continue",
                                      run.output)
    return False


def _write_model(run: _Run, t_start: float) -> dict | None:
    """Write the model file (best validated weights, else the last ones) and the training logs; drop the checkpoint.

    Returns the selected weights' validation metrics (None without validation).
    """
    ds, opts, output, log = run.data.ds, run.opts, run.output, run.log
    split, kinds, train_nights, val_nights = run.data.split, run.data.kinds, run.data.train_nights, run.data.val_nights
    step, best, device, world = run.step, run.best, run.devices.device, run.devices.world
    csv_path, json_path = log_paths(output)
    result_val = None
    final_state = None
    if val_nights and best["state"] is not None:
        final_state = best["state"]
        result_val = best["metrics"]
    if run.devices.is_main:
        train_counts = {s: sum(n.stage_counts.get(s, 0) for n in train_nights) for s in STAGES}
        training = {
            "dataset": ds.identity(),  # folder name and content digest: never a path of this machine
            "dataset_created": ds.manifest.get("created"),
            "layout": ds.manifest.get("options", {}).get("layout"),
            "train_subjects": split.train, "val_subjects": split.val,
            "train_nights": [n.id for n in train_nights], "val_nights": [n.id for n in val_nights],
            "train_epochs_per_stage": train_counts,
            "options": _json_safe(opts.fingerprint()),
            "steps": step, "best_step": best["step"] if val_nights else None,
            "selection": (_SELECTION_TEXT[opts.select] if val_nights else "last step (no validation subjects)"),
            "device": str(device), "world_size": world,
            "seconds": round(time.time() - t_start, 1),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **finetune.training_record(opts, run.parent),
        }
        spec = dict(ds.manifest["channel_spec"])
        spec = {"kinds": list(kinds), "preset": spec.get("preset"),
                "candidates": {k: spec["candidates"][k] for k in kinds}}
        save_model(output, run.model, spec, ds.manifest["conditioning"], _json_safe(training),
                   _json_safe(result_val), state_dict=final_state, calibration=_json_safe(run.calibration),
                   fit=_fit_record(run))
        _write_log_csv(csv_path, log)
        atomic_write_json(json_path, _json_safe({"sleepstage_version": __version__, "model": output.name,
                                                 "training": training, "validation": result_val,
                                                 "calibration": run.calibration, "log": log}))
        write_model_card(output)  # NAME.card.json and NAME.card.md beside NAME.pt (model/card.py)
        checkpoint_path(output).unlink(missing_ok=True)
    return result_val


def _calibrate(run: _Run) -> None:
    """Fit the temperature on the validation nights with the selected weights (rank 0, which writes the model)."""
    from sleepstage_cli.training.calibrate import fit_on_validation

    if not run.devices.is_main:
        return
    if run.data.val_nights:
        run.cb.stage(f"calibrating the probabilities on {len(run.data.val_nights)} validation night(s)")
    state = run.best["state"] if run.data.val_nights else None
    run.calibration = fit_on_validation(run.model, state, run.data.ds, run.data.val_nights, run.data.index,
                                        run.devices.device, run.devices.amp)


def _fit_record(run: _Run) -> dict:
    """What the model was trained on, for score's fit check: labels, rates, units and amplitudes of the
    training nights, a summary of their spectra, thresholds set on the validation nights."""
    from sleepstage_cli.spectrograms.fitsummary import fit_record

    data = run.data
    run.cb.stage("summarising the training nights for the fit check")
    return fit_record(data.ds, data.train_nights, data.val_nights, data.kinds, data.index)


_SELECTION_TEXT = {"aggregated": "best validation accuracy",
                   "per-position": "best mean per-position validation accuracy (released code)"}


def _stop_everywhere(requested: bool, distributed: bool, device: torch.device) -> bool:
    """Whether any rank was asked to stop (all ranks must stop at the same step)."""
    if not distributed:
        return requested
    import torch.distributed as dist

    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _barrier(distributed: bool) -> None:
    if distributed:
        import torch.distributed as dist

        dist.barrier()


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _write_log_csv(path: Path, log: list[dict]) -> None:
    import pandas as pd

    columns = ["step", "pass", "train_loss", "sequences_per_s", "val_accuracy", "val_macro_f1", "val_kappa", "best"]
    atomic_write_text(path, pd.DataFrame(log, columns=columns).to_csv(index=False))
