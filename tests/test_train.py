"""`sleepstage train`: learning on simulated nights, model files, resume after a kill, DDP, baselines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.data.loader import PassBatches, WindowDataset, pass_order
from sleepstage_cli.model.modelfile import load_model
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.spectrograms.cache import SpectrogramCache
from sleepstage_cli.spectrograms.frontend import SpectrogramFrontEnd
from sleepstage_cli.training.train import (
    TrainingInterrupted,
    TrainOptions,
    evaluate,
    l2_penalty,
    subject_split,
    train_model,
)


def test_training_beats_the_majority_class(trained) -> None:
    meta = load_model(trained["model"]).meta
    val = meta["validation"]
    ds = PreparedDataset(trained["data"])
    labels = np.concatenate([ds.open(n)["label"] for n in ds.nights if n.subject == "01-03-0005"])
    labels = labels[labels >= 0]
    majority = np.bincount(labels).max() / labels.size
    assert val["accuracy"] > majority + 0.15, (val["accuracy"], majority)
    assert val["kappa"] > 0.3
    assert meta["training"]["val_subjects"] == ["01-03-0005"]
    assert "01-03-0005" not in meta["training"]["train_subjects"]


def test_model_file_is_self_contained_and_reloads_identically(trained) -> None:
    loaded = load_model(trained["model"])
    meta = loaded.meta
    assert meta["architecture"]["net"] == "seqsleepnet" and meta["architecture"]["seq_len"] == 10
    assert meta["channel_spec"]["kinds"] == ["eeg", "eog", "emg"]
    assert meta["conditioning"]["band"] == [0.3, 40.0] and meta["sampling_rate"] == 100.0
    assert meta["classes"] == ["W", "N1", "N2", "N3", "REM"]
    assert meta["sleepstage_version"]
    assert not loaded.model.normalizer.is_identity  # normalisation statistics travel with the model
    # Re-evaluating the reloaded weights on the validation nights reproduces the stored figures exactly.
    ds = PreparedDataset(trained["data"])
    nights = [n for n in ds.nights if n.subject == "01-03-0005"]
    again = evaluate(loaded.model, ds, nights, [0, 1, 2], torch.device("cpu"), amp=False)
    assert again["confusion"] == meta["validation"]["confusion"]
    twice = load_model(trained["model"]).model
    x = torch.from_numpy(np.array(ds.open(nights[0])["x"][:10]))[None]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), twice(x))


def test_newer_model_and_dataset_formats_are_refused(trained, tmp_path: Path) -> None:
    payload = torch.load(trained["model"], weights_only=True)
    payload["format_version"] = 99
    payload["sleepstage_version"] = "9.0"
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    assert_clean_error(run_cli("score", trained["held_out"], "-o", tmp_path / "x.csv", "--model", newer),
                       "newer.pt", "format version 99 is newer", "sleepstage 9.0", "upgrade")
    data = tmp_path / "data"
    data.mkdir()
    manifest = json.loads((trained["data"] / "manifest.json").read_text())
    manifest["format_version"] = 7
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run_cli("train", data, "-o", tmp_path / "m.pt"), "format version 7 is newer", "upgrade")


def test_training_log_beside_the_model(trained) -> None:
    log_csv = trained["model"].with_name("model.train.csv")
    log_json = trained["model"].with_name("model.train.json")
    rows = log_csv.read_text().splitlines()
    assert rows[0].startswith("step,pass,train_loss,sequences_per_s,val_accuracy")
    assert len(rows) > 2
    info = json.loads(log_json.read_text())
    assert info["training"]["steps"] == int(rows[-1].split(",")[0])
    assert not trained["model"].with_name("model.pt.ckpt").exists()  # removed once training finished


def test_windows_stay_within_nights_and_cover_all(trained) -> None:
    ds = PreparedDataset(trained["data"])
    windows = WindowDataset(ds.root, ds.nights, 10, [0, 1, 2])
    expected = 0
    for night in ds.nights:
        labels = ds.open(night)["label"]
        for s in range(len(labels) - 9):
            expected += int((labels[s:s + 10] >= 0).any())
    assert len(windows) == expected
    x, y = windows[len(windows) - 1]
    k, s = windows.night_of[-1], windows.start_of[-1]
    rec = ds.open(ds.nights[k])
    np.testing.assert_array_equal(x.numpy(), rec["x"][s:s + 10])
    padded = np.pad(rec["label"], 1, constant_values=-1)
    np.testing.assert_array_equal(y.numpy(), padded[s:s + 12])


def test_spectrogram_cache_feeds_the_same_features(trained) -> None:
    """Training reads cached spectrograms; they equal the front end on the raw window, and the model's
    output from them equals its output from the raw signal (the path scoring takes)."""
    ds = PreparedDataset(trained["data"])
    cache = SpectrogramCache(ds, [0, 2])
    assert cache.folder.parent == ds.root / "cache"
    cache.ensure(ds.nights[:2], torch.device("cpu"))
    stamp = cache.path(ds.nights[0]).stat().st_mtime_ns
    cache.ensure(ds.nights[:2], torch.device("cpu"))  # already there: not recomputed
    assert cache.path(ds.nights[0]).stat().st_mtime_ns == stamp
    raw = WindowDataset(ds.root, ds.nights[:2], 6, [0, 2])
    spec = WindowDataset(ds.root, ds.nights[:2], 6, [0, 2], feature_files=cache.files(ds.nights[:2]))
    x_raw, y_raw = raw[7]
    x_spec, y_spec = spec[7]
    assert torch.equal(y_raw, y_spec) and x_spec.shape == (6, 2, 29, 129)
    front = SpectrogramFrontEnd()
    np.testing.assert_allclose(x_spec.numpy(), front(x_raw).numpy(), atol=1e-4)
    model = load_model(trained["model"]).model
    two = StagingModel("seqsleepnet", 2, 6).eval()
    two.set_normalisation(model.normalizer.mean[[0, 2]], model.normalizer.std[[0, 2]])
    with torch.no_grad():
        np.testing.assert_allclose(two(x_spec[None], spectrogram=True).numpy(), two(x_raw[None]).numpy(),
                                   atol=1e-4)


def test_pass_order_and_rank_shares() -> None:
    assert np.array_equal(pass_order(100, 1, 0), pass_order(100, 1, 0))
    assert not np.array_equal(pass_order(100, 1, 0), pass_order(100, 1, 1))
    full = [i for b in PassBatches(103, 8, 5, 2) for i in b]
    assert sorted(full) == list(range(103))
    r0 = list(PassBatches(103, 8, 5, 2, rank=0, world=2))
    r1 = list(PassBatches(103, 8, 5, 2, rank=1, world=2))
    assert len(r0) == len(r1)
    assert not set(i for b in r0 for i in b) & set(i for b in r1 for i in b)
    resumed = [i for b in PassBatches(103, 8, 5, 2, first_batch=3) for i in b]
    assert resumed == full[24:]


def test_subject_split_never_splits_a_subject(trained) -> None:
    ds = PreparedDataset(trained["data"])
    split = subject_split(ds, val_fraction=0.4, seed=1)
    assert set(split.train).isdisjoint(split.val) and set(split.train) | set(split.val) == set(ds.subjects)
    assert split == subject_split(ds, val_fraction=0.4, seed=1)
    assert len(split.val) == 2


def test_l2_excludes_the_filterbank() -> None:
    model = StagingModel("seqsleepnet", 2, 3)
    fb = [p for n, p in model.named_parameters() if "filterbank" in n]
    assert fb
    before = l2_penalty(model)
    with torch.no_grad():
        for p in fb:
            p.add_(10.0)
    assert torch.equal(l2_penalty(model), before)
    with torch.no_grad():
        model.net.output.weight.add_(1.0)
    assert l2_penalty(model) > before


@pytest.mark.parametrize("net, kwargs", [("e2e-arnn", {}), ("multitask-arnn", {}),
                                         ("deepsleepnet", {"seq_len": 3, "batch_size": 2})])
def test_baselines_train_a_few_steps(trained, tmp_path: Path, net: str, kwargs: dict) -> None:
    opts = TrainOptions(net=net, epochs=1, max_steps=3, eval_every=3, seed=0, **kwargs)
    result = train_model(trained["data"], tmp_path / f"{net}.pt", opts, val_subjects=["01-03-0005"])
    assert result.steps == 3
    loaded = load_model(tmp_path / f"{net}.pt")
    assert loaded.meta["architecture"]["net"] == net
    assert loaded.meta["validation"]["n"] > 0


def test_same_seed_same_weights(trained, tmp_path: Path) -> None:
    opts = TrainOptions(seq_len=5, batch_size=8, max_steps=3, eval_every=3, seed=4)
    a = train_model(trained["data"], tmp_path / "a.pt", opts, val_subjects=["01-03-0005"]).last_state
    b = train_model(trained["data"], tmp_path / "b.pt", opts, val_subjects=["01-03-0005"]).last_state
    c = train_model(trained["data"], tmp_path / "c.pt", TrainOptions(seq_len=5, batch_size=8, max_steps=3,
                                                                      eval_every=3, seed=5),
                    val_subjects=["01-03-0005"]).last_state
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_channel_subset_model(trained, tmp_path: Path) -> None:
    opts = TrainOptions(channels=("eeg",), seq_len=5, epochs=1, max_steps=2, eval_every=2)
    train_model(trained["data"], tmp_path / "eeg.pt", opts, val_fraction=0)
    loaded = load_model(tmp_path / "eeg.pt")
    assert loaded.kinds == ("eeg",) and loaded.model.n_channels == 1
    assert loaded.meta["training"]["selection"].startswith("last step")


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared"


def test_resume_after_a_kill_continues_and_finishes(trained, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    args = ["train", str(trained["data"]), "-o", str(out), "--epochs", "2", "--seq-len", "5", "--batch-size", "8",
            "--eval-every", "4", "--val-subjects", "01-03-0005", "--seed", "9", "--max-steps", "16"]
    proc = subprocess.Popen([sys.executable, "-m", "sleepstage_cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out.with_name("m.pt.ckpt")
    _wait_for(ckpt)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    state = torch.load(ckpt, weights_only=True)
    assert 4 <= state["step"] < 16

    refused = run_cli(*args)  # a fresh start would lose the checkpoint: refused
    assert_clean_error(refused, "--resume")
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {state['step']}" in resumed.stderr
    log = json.loads(out.with_name("m.train.json").read_text())
    steps = [row["step"] for row in log["log"]]
    assert steps == [4, 8, 12, 16]  # the log runs on from the checkpoint, nothing twice
    assert log["training"]["steps"] == 16
    assert not ckpt.exists()


def test_sigint_saves_a_checkpoint_and_exits_cleanly(trained, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    args = ["train", str(trained["data"]), "-o", str(out), "--epochs", "50", "--seq-len", "5", "--batch-size", "8",
            "--eval-every", "3", "--val-subjects", "01-03-0005"]
    proc = subprocess.Popen([sys.executable, "-m", "sleepstage_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out.with_name("m.pt.ckpt"))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "--resume" in err
    assert out.with_name("m.pt.ckpt").exists() and not out.exists()


def test_mismatched_resume_is_refused(trained, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    opts = TrainOptions(seq_len=5, epochs=1, max_steps=2, eval_every=1)
    ckpt = out.with_name("m.pt.ckpt")
    # Leave a checkpoint behind: a Ctrl-C during the first step stops training cleanly after it.

    class Stop:
        def stage(self, text): ...
        def start(self, total, step): ...
        def evaluated(self, step, metrics, best): ...
        def step(self, step, loss, rate, pass_index):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="interrupted at step 1"):
        train_model(trained["data"], out, opts, callbacks=Stop(), val_subjects=["01-03-0005"])
    assert ckpt.exists()
    other = TrainOptions(seq_len=5, epochs=1, max_steps=2, eval_every=1, lr=1e-3)
    with pytest.raises(Exception, match="other options"):
        train_model(trained["data"], out, other, resume=True, val_subjects=["01-03-0005"])


def test_train_errors(trained, tmp_path: Path) -> None:
    assert_clean_error(run_cli("train", tmp_path / "nope", "-o", tmp_path / "m.pt"), "nope", "not found")
    assert_clean_error(run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--model", "resnet"),
                       "unknown model 'resnet'")
    assert_clean_error(run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--val-subjects", "zz"),
                       "zz")
    existing = tmp_path / "taken.pt"
    existing.write_bytes(b"precious")
    assert_clean_error(run_cli("train", trained["data"], "-o", existing), "already exists", "--force")
    assert existing.read_bytes() == b"precious"
    assert_clean_error(run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--device", "cuda"), "CUDA")


DDP_WORKER = """
import os, sys, torch
from sleepstage_cli.training.train import TrainOptions, train_model
data, out = sys.argv[1], sys.argv[2]
opts = TrainOptions(seq_len=5, batch_size=4, epochs=1, max_steps=3, eval_every=3, seed=2, device="cpu")
res = train_model(data, os.path.join(out, "ddp.pt"), opts, val_subjects=["01-03-0005"])
torch.save(res.last_state, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
"""


def test_ddp_two_gloo_processes_agree(trained, tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000), str(worker), str(trained["data"]),
                           str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    init = StagingModel("seqsleepnet", 3, 5).state_dict()
    assert not torch.equal(s0["net.output.weight"], init["net.output.weight"])  # it did train
    meta = load_model(tmp_path / "ddp.pt").meta
    assert meta["training"]["world_size"] == 2 and meta["training"]["steps"] == 3


def test_ddp_on_two_machines_each_with_its_own_copy_of_the_dataset(trained, tmp_path: Path) -> None:
    """Multi-node torchrun (two "machines" here, one process each): each fills its own copy's spectrogram cache."""
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(30500 + os.getpid() % 1000)
    procs = []
    for node in (0, 1):
        data, out = tmp_path / f"node{node}" / "data", tmp_path / f"node{node}" / "out"
        shutil.copytree(trained["data"], data, ignore=shutil.ignore_patterns("cache", ".lock"))
        out.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                                       str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                                       "--master_port", port, str(worker), str(data), str(out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
    errors = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [code for code, _ in errors] == [0, 0], errors[1][1][-3000:] + errors[0][1][-3000:]
    for node in (0, 1):
        assert any((tmp_path / f"node{node}" / "data" / "cache").rglob("*.npy")), node  # its own cache
    s0 = torch.load(tmp_path / "node0" / "out" / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "node1" / "out" / "rank1.pt", weights_only=True)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert (tmp_path / "node0" / "out" / "ddp.pt").exists() and not (tmp_path / "node1" / "out" / "ddp.pt").exists()
    assert load_model(tmp_path / "node0" / "out" / "ddp.pt").meta["training"]["world_size"] == 2
