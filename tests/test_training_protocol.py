"""The training protocol SPEC.md states, pinned: defaults, loss, L2, Adam's step, batches, validation
interval, model selection (aggregated and the released per-position), the baselines' released settings."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.data.loader import WindowDataset
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.training import train as train_mod
from sleepstage_cli.training.train import (
    TrainOptions,
    evaluate_per_position,
    l2_penalty,
    loss_fn,
    nights_of,
    train_model,
)

VAL = ["01-03-0005"]


def test_defaults_are_the_papers() -> None:
    o = TrainOptions()
    assert (o.lr, o.batch_size, o.epochs, o.eval_every, o.l2, o.resolved_seq_len()) == (1e-4, 32, 10, 100, 1e-3, 20)
    assert o.select == "aggregated" and o.preset is None
    for net in ("e2e-arnn", "multitask-arnn"):  # released settings of the epoch-wise baselines
        a = TrainOptions(net=net)
        assert (a.epochs, a.eval_every, a.resolved_seq_len()) == (20, 500, 1)
    assert TrainOptions(net="e2e-arnn", epochs=3, eval_every=7).epochs == 3


def _cli_options(monkeypatch, data: Path, *args: str) -> TrainOptions:
    """The TrainOptions `sleepstage train` hands to the core for these arguments (nothing is trained)."""
    from sleepstage_cli.cli.main import app

    seen = {}

    def fake_train_model(dataset, output, opts, **kwargs):
        seen["opts"] = opts
        raise KeyboardInterrupt  # stop here: the options are what this test reads

    monkeypatch.setattr(train_mod, "train_model", fake_train_model)
    CliRunner().invoke(app, ["train", str(data), "-o", "m.pt", *args])
    return seen["opts"]


def test_command_line_defaults_reach_the_trainer(monkeypatch, trained) -> None:
    data = trained["data"]
    o = _cli_options(monkeypatch, data)
    assert (o.net, o.lr, o.batch_size, o.epochs, o.eval_every, o.l2) == ("seqsleepnet", 1e-4, 32, 10, 100, 1e-3)
    assert o.hparams == {} and o.select == "aggregated"
    a = _cli_options(monkeypatch, data, "--model", "e2e-arnn")
    assert (a.epochs, a.eval_every) == (20, 500)
    p = _cli_options(monkeypatch, data, "--preset", "paper")
    assert p.hparams == {"rnn": "bnlstm"} and p.select == "per-position" and p.preset == "paper"
    assert p.fingerprint()["preset"] == "paper"  # recorded in the model's training options
    q = _cli_options(monkeypatch, data, "--preset", "paper", "--rnn", "lstm", "--select", "aggregated")
    assert q.hparams == {"rnn": "lstm"} and q.select == "aggregated"  # explicit options win
    assert _cli_options(monkeypatch, data, "--model", "e2e-arnn", "--preset", "paper").hparams == {}  # GRU as released


def test_loss_sums_over_the_batch_and_averages_over_positions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=g)
    y = torch.randint(0, 5, (3, 6), generator=g)
    y[0, 2] = -1  # unscored: left out
    loss, n = loss_fn(logits, y, "sequence")
    lp = torch.log_softmax(logits, -1)
    inner = y[:, 1:-1]
    expected = -sum(lp[b, t, inner[b, t]] for b in range(3) for t in range(4) if inner[b, t] >= 0) / 4
    assert n == 11
    assert math.isclose(float(loss), float(expected), rel_tol=1e-6)
    # Multitask: one epoch in, three heads (previous, own, next), their losses summed.
    mt = torch.randn(3, 1, 3, 5, generator=g)
    y3 = torch.randint(0, 5, (3, 3), generator=g)
    loss3, n3 = loss_fn(mt, y3, "neighbours")
    lp3 = torch.log_softmax(mt, -1)
    expected3 = -sum(lp3[b, 0, h, y3[b, h]] for b in range(3) for h in range(3))
    assert n3 == 9 and math.isclose(float(loss3), float(expected3), rel_tol=1e-6)


@pytest.mark.parametrize("rnn", ["gru", "bnlstm"])
def test_l2_is_half_the_squared_norm_of_the_weights(rnn: str) -> None:
    model = StagingModel("seqsleepnet", 2, 3, rnn=rnn)
    norm_modules = {n for n, m in model.named_modules()
                    if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)) or "bn_" in n.rsplit(".", 1)[-1]}
    expected = 0.0
    for name, p in model.named_parameters():
        owner, leaf = name.rsplit(".", 1)
        if "filterbank" in name or leaf.startswith("bias") or owner in norm_modules:
            continue
        expected += 0.5 * float((p.detach().double() ** 2).sum())
    assert math.isclose(float(l2_penalty(model).detach()), expected, rel_tol=1e-5)


def test_deepsleepnet_decays_only_its_first_convolutions() -> None:
    model = StagingModel("deepsleepnet", 2, 3)
    decayed = model.regularised_parameters()
    assert [tuple(p.shape) for p in decayed] == [(64, 2, 50), (64, 2, 400)]  # fs/2 and 4*fs kernels
    assert decayed[0] is model.net.small[0].weight and decayed[1] is model.net.large[0].weight


def _initial_parameters(opts: TrainOptions, n_channels: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    model = StagingModel(opts.net, n_channels, opts.resolved_seq_len())
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_one_adam_step_moves_each_weight_by_the_learning_rate(trained, tmp_path: Path) -> None:
    # Adam's first step is lr * g / (|g| + eps): every weight with a gradient moves by lr.
    opts = TrainOptions(seq_len=5, max_steps=1, seed=2)
    start = _initial_parameters(opts, 3)
    result = train_model(trained["data"], tmp_path / "m.pt", opts, val_fraction=0)
    moved = torch.cat([(result.last_state[k] - v).abs().flatten() for k, v in start.items()])
    moved = moved[moved > 1e-7]
    assert moved.numel() > 1000
    assert float(moved.median()) == pytest.approx(1e-4, rel=1e-2)


def test_batches_of_32_and_validation_every_n_steps(trained, tmp_path: Path) -> None:
    opts = TrainOptions(seq_len=5, epochs=1, eval_every=4, seed=1)
    result = train_model(trained["data"], tmp_path / "m.pt", opts, val_subjects=VAL)
    ds = PreparedDataset(trained["data"])
    windows = len(WindowDataset(ds.root, nights_of(ds, result.split.train), 5, [0, 1, 2]))
    assert result.steps == math.ceil(windows / 32)  # one pass, the last batch kept
    expected = [s for s in range(4, result.steps + 1, 4)]
    if result.steps % 4:
        expected.append(result.steps)
    assert [row["step"] for row in result.log] == expected


def test_multitask_does_not_train_on_a_nights_border_epochs(trained) -> None:
    ds = PreparedDataset(trained["data"])
    night = ds.nights[0]
    labels = np.asarray(ds.open(night)["label"])
    all_windows = WindowDataset(ds.root, [night], 1, [0])
    inner = WindowDataset(ds.root, [night], 1, [0], skip_borders=True)
    assert len(all_windows) == int((labels >= 0).sum())
    assert len(inner) == int((labels[1:-1] >= 0).sum())
    assert set(inner.start_of.tolist()) == {t for t in range(1, len(labels) - 1) if labels[t] >= 0}


def test_per_position_accuracy_against_window_by_window_scoring(trained) -> None:
    torch.manual_seed(0)
    model = StagingModel("seqsleepnet", 3, 4).eval()
    ds = PreparedDataset(trained["data"])
    night = ds.nights[0]
    rec = ds.open(night)
    x = torch.from_numpy(np.array(rec["x"], dtype=np.float32))
    labels = np.asarray(rec["label"])
    with torch.no_grad():
        windows = torch.stack([x[s:s + 4] for s in range(len(x) - 3)])
        pred = torch.cat([model(windows[i:i + 64]) for i in range(0, len(windows), 64)]).argmax(-1).numpy()
    per_position = []
    for j in range(4):
        target = labels[j:j + len(pred)]
        ok = target >= 0
        per_position.append((pred[ok, j] == target[ok]).mean())
    got = evaluate_per_position(model, ds, [night], [0, 1, 2], torch.device("cpu"), False)
    assert got["position_accuracy"] == pytest.approx(float(np.mean(per_position)), abs=1e-12)
    assert got["accuracy"] == pytest.approx(train_mod.evaluate(model, ds, [night], [0, 1, 2],
                                                               torch.device("cpu"), False)["accuracy"])


@pytest.mark.parametrize("select, kept", [("aggregated", "first"), ("per-position", "last")])
def test_ties_go_to_the_earlier_or_the_later_checkpoint(trained, tmp_path: Path, select: str, kept: str) -> None:
    # A learning rate too small to change any float32 weight: every validation ties.
    opts = TrainOptions(seq_len=5, max_steps=6, eval_every=2, lr=1e-15, select=select, seed=3)
    result = train_model(trained["data"], tmp_path / "m.pt", opts, val_subjects=VAL)
    accuracies = {row["val_accuracy"] for row in result.log}
    assert len(accuracies) == 1
    assert result.best_step == (2 if kept == "first" else 6)


def test_preset_paper_refuses_a_standardised_dataset(trained, tmp_path: Path) -> None:
    from tests.conftest import assert_clean_error, run_cli

    proc = run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--preset", "paper", "--max-steps", "1")
    assert_clean_error(proc, "--no-standardise", "data")
    assert not (tmp_path / "m.pt").exists()


def test_unknown_select_and_preset_are_refused(trained, tmp_path: Path) -> None:
    from tests.conftest import assert_clean_error, run_cli

    assert_clean_error(run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--select", "best"),
                       "--select", "per-position")
    assert_clean_error(run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--preset", "tf"),
                       "--preset", "paper")


def test_bnlstm_trains_and_scores_end_to_end(trained, tmp_path: Path) -> None:
    from sleepstage_cli.model.modelfile import load_model
    from tests.conftest import run_cli

    opts = TrainOptions(seq_len=5, max_steps=3, eval_every=3, hparams={"rnn": "bnlstm"}, select="per-position")
    train_model(trained["data"], tmp_path / "bn.pt", opts, val_subjects=VAL)
    loaded = load_model(tmp_path / "bn.pt")
    assert loaded.meta["architecture"]["hparams"]["rnn"] == "bnlstm"
    assert loaded.meta["training"]["options"]["select"] == "per-position"
    assert "per-position" in loaded.meta["training"]["selection"]
    proc = run_cli("score", trained["held_out"], "-m", tmp_path / "bn.pt", "-o", tmp_path / "h.csv")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "h.csv").read_text().splitlines()) > 100


def test_multitask_training_leaves_the_border_epochs_out(trained, tmp_path: Path) -> None:
    opts = TrainOptions(net="multitask-arnn", epochs=1, seed=1)
    result = train_model(trained["data"], tmp_path / "mt.pt", opts, val_fraction=0)
    ds = PreparedDataset(trained["data"])
    inner = WindowDataset(ds.root, nights_of(ds, result.split.train), 1, [0, 1, 2], skip_borders=True)
    assert result.steps == math.ceil(len(inner) / 32)


def test_preset_paper_end_to_end(tmp_path: Path) -> None:
    """prepare as released (no standardisation, the original filters), train --preset paper, score."""
    import json

    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.simulate import simulate
    from tests.conftest import run_cli

    simulate(tmp_path / "sim", nights=3, layout="mass", seed=5, hours=0.5)
    data, model = tmp_path / "raw", tmp_path / "paper.pt"
    proc = run_cli("prepare", tmp_path / "sim", "-o", data, "--min-hours", "0", "--no-standardise",
                   "--filters", "original")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("train", data, "-o", model, "--preset", "paper", "--seq-len", "5", "--max-steps", "4",
                   "--eval-every", "2", "--val-subjects", "01-03-0003")
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stderr.splitlines() if ln.startswith("preset paper:"))
    for choice in ("cell bnlstm", "selection per-position", "not standardised", "original filters"):
        assert choice in header, header
    meta = load_model(model).meta
    assert meta["architecture"]["hparams"]["rnn"] == "bnlstm"
    assert meta["training"]["options"]["preset"] == "paper"
    assert meta["training"]["options"]["select"] == "per-position"
    assert meta["conditioning"]["standardise"] is False and meta["conditioning"]["filters"] == "original"
    night = sorted((tmp_path / "sim").glob("*0001 PSG.edf"))[0]
    proc = run_cli("score", night, "-m", model, "-o", tmp_path / "h.csv", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert len(rows) > 50 and json.loads(json.dumps(rows[0]))
