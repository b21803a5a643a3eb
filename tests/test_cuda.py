"""The GPU path: AMP training and scoring, NCCL data-parallel training under torchrun, crossval --devices,
checkpoints resumed across devices. CUDA only: every test is skipped without a CUDA GPU. `pytest -m cuda`
selects them; `bash benchmarks/gpu_check.sh` runs them on a GPU machine.

``SLEEPSTAGE_CUDA_TESTS_ON_CPU=1`` runs the same test bodies on the CPU instead ('cpu' for every GPU, gloo
instead of NCCL, no AMP): a check of the tests themselves on a machine without a GPU, nothing more.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli, simulated_dataset

from sleepstage_cli.training.train import Callbacks

ON_CPU = os.environ.get("SLEEPSTAGE_CUDA_TESTS_ON_CPU") == "1"
HAVE_CUDA = torch.cuda.is_available()
N_GPUS = 2 if ON_CPU else (torch.cuda.device_count() if HAVE_CUDA else 0)
DEVICE = "cpu" if ON_CPU else "cuda"  # what --device gets
AMP = not ON_CPU  # train and score use mixed precision on CUDA by default

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (HAVE_CUDA or ON_CPU),
                       reason=f"needs a CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"),
]

VAL = "01-03-0003"
PROBS = ["p_W", "p_N1", "p_N2", "p_N3", "p_REM"]


def gpu(index: int = 0) -> str:
    """The name a model file records for GPU ``index`` ('cpu' in the CPU run of these tests)."""
    return "cpu" if ON_CPU else f"cuda:{index}"


def finite(values) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Three simulated half-hour nights (MASS layout: one subject each), prepared."""
    root = tmp_path_factory.mktemp("cuda")
    return {"root": root, "sim": root / "sim", "data": simulated_dataset(root, nights=3, hours=0.5)}


@pytest.fixture(scope="module")
def amp_model(data: dict) -> dict:
    """`train --device cuda` (AMP on by default) for 30 steps, validating on the third subject."""
    model = data["root"] / "amp.pt"
    proc = run_cli("train", data["data"], "-o", model, "--device", DEVICE, "--epochs", "5", "--max-steps", "30",
                   "--seq-len", "10", "--batch-size", "16", "--lr", "1e-3", "--eval-every", "15",
                   "--val-subjects", VAL, "--seed", "1")
    return {"model": model, "proc": proc}


def check_trained_on_gpu(model: Path, steps: int, seed: int, seq_len: int, world: int = 1) -> dict:
    """The model file says it was trained on GPU 0 for ``steps`` steps; losses and weights are finite and the
    weights moved away from their seeded initial values (steps were taken, not all skipped by the scaler)."""
    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.model.staging import StagingModel

    loaded = load_model(model)
    training = loaded.meta["training"]
    assert training["device"] == gpu(0) and training["world_size"] == world and training["steps"] == steps
    log = json.loads(model.with_name(model.stem + ".train.json").read_text())["log"]
    assert log and finite(row["train_loss"] for row in log), log
    state = loaded.model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):  # leaves this process's random state as it was
        torch.manual_seed(seed)  # as train.py's _seeded_model draws the initial weights
        random.seed(seed)
        init = StagingModel("seqsleepnet", 3, seq_len).state_dict()
    random.setstate(py_state)
    assert not torch.equal(state["net.output.weight"], init["net.output.weight"]), "no step changed the weights"
    assert math.isfinite(loaded.temperature)
    return loaded.meta


def test_device_selection_and_mixed_precision_on_cuda() -> None:
    from sleepstage_cli.model.staging import StagingModel
    from sleepstage_cli.scoring.inference import autocast_for
    from sleepstage_cli.training.train import TrainOptions, _set_up_devices, resolve_device

    assert str(resolve_device("auto")) == gpu(0)  # CUDA first
    assert str(resolve_device(DEVICE)) == gpu(0)
    assert _set_up_devices(TrainOptions(device=DEVICE)).amp is AMP
    assert _set_up_devices(TrainOptions(device=DEVICE, amp=False)).amp is False
    device = torch.device(gpu(0))
    model = StagingModel("seqsleepnet", 3, 10).to(device).eval()
    dtypes: set[torch.dtype] = set()

    def note(module, inputs, output) -> None:
        for t in output if isinstance(output, tuple) else (output,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                dtypes.add(t.dtype)

    for module in model.modules():
        module.register_forward_hook(note)
    x = torch.randn(2, 10, 3, 3000, device=device)
    with torch.no_grad():
        with autocast_for(device, True):
            half = model(x)
        assert (torch.float16 in dtypes) is AMP, dtypes  # the layers ran in float16 under AMP
        dtypes.clear()
        with autocast_for(device, False):
            full = model(x)
        assert dtypes == {torch.float32}, dtypes
    assert torch.isfinite(half).all() and torch.isfinite(full).all()
    assert torch.allclose(half.float().softmax(-1), full.softmax(-1), atol=0.02)


def test_amp_training_on_cuda_writes_a_finite_model_trained_there(amp_model: dict) -> None:
    proc = amp_model["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = check_trained_on_gpu(amp_model["model"], steps=30, seed=1, seq_len=10)
    log = json.loads(amp_model["model"].with_name("amp.train.json").read_text())["log"]
    assert [row["step"] for row in log] == [15, 30]
    assert all(row["val_accuracy"] is not None for row in log)  # validation scored on the GPU (AMP) too
    assert meta["training"]["best_step"] in (15, 30)


def test_no_amp_training_on_cuda(data: dict) -> None:
    model = data["root"] / "no-amp.pt"
    proc = run_cli("train", data["data"], "-o", model, "--device", DEVICE, "--no-amp", "--epochs", "2",
                   "--max-steps", "6", "--seq-len", "10", "--batch-size", "16", "--lr", "1e-3", "--eval-every", "3",
                   "--val-subjects", VAL, "--seed", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_trained_on_gpu(model, steps=6, seed=4, seq_len=10)


def test_scoring_on_cuda_agrees_with_the_cpu(amp_model: dict, data: dict) -> None:
    """`score --device cuda` (always AMP on CUDA) against `--device cpu`: same stages on >= 98 % of the epochs of
    the three nights, probabilities within 0.02 (mean difference within 0.002), same flags."""
    assert amp_model["proc"].returncode == 0, amp_model["proc"].stderr[-3000:]
    out = {}
    for device in (DEVICE, "cpu"):
        folder = data["root"] / f"scored-{device}"
        proc = run_cli("score", data["sim"], "-o", folder, "--model", amp_model["model"], "--device", device,
                       "--no-report", "--force")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"device {gpu(0) if device == DEVICE else 'cpu'}" in proc.stderr
        out[device] = {p.stem: pd.read_csv(p, keep_default_na=False) for p in sorted(folder.glob("01-03-*.csv"))}
    gpu_csv, cpu_csv = out[DEVICE], out["cpu"]
    assert sorted(gpu_csv) == sorted(cpu_csv) == ["01-03-0001", "01-03-0002", "01-03-0003"]
    agree = total = 0
    diffs = []
    for night, c in cpu_csv.items():
        g = gpu_csv[night]
        assert len(g) == len(c) > 50 and g["onset_s"].tolist() == c["onset_s"].tolist()
        assert g["flag"].tolist() == c["flag"].tolist()
        agree += int((g["stage"] == c["stage"]).sum())
        total += len(c)
        scored = (c["stage"] != "?").to_numpy()
        diffs.append(np.abs(g.loc[scored, PROBS].to_numpy(float) - c.loc[scored, PROBS].to_numpy(float)))
    diff = np.concatenate(diffs)
    assert agree / total >= 0.98, f"stages agree on {agree} of {total} epochs"
    assert diff.max() <= 0.02 and diff.mean() <= 0.002, (diff.max(), diff.mean())


def test_torchrun_trains_data_parallel_with_nccl(data: dict, tmp_path: Path) -> None:
    """`torchrun --standalone --nproc_per_node=N -m sleepstage_cli train ...`, N = min(2, GPUs): one model file,
    world size N, and with N = 2 NCCL carried the collectives (NCCL_DEBUG=INFO lines). With one GPU, N = 1:
    only the torchrun launch on the GPU is checked (NCCL needs two GPUs)."""
    import torch.distributed as dist

    if not dist.is_available() or importlib.util.find_spec("torch.distributed.run") is None:
        pytest.skip("this torch has no torch.distributed / torchrun")
    n = min(2, N_GPUS)
    if not ON_CPU and n > 1 and not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCCL_DEBUG": "INFO", "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           "-m", "sleepstage_cli", "train", str(data["data"]), "-o", str(out / "ddp.pt"),
                           "--device", DEVICE, "--epochs", "1", "--max-steps", "4", "--seq-len", "5",
                           "--batch-size", "4", "--eval-every", "2", "--val-subjects", VAL, "--seed", "2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # Rank 0 alone writes: the model, its logs and card, once; no checkpoint or temporary file is left.
    assert sorted(p.name for p in out.iterdir()) == ["ddp.card.json", "ddp.card.md", "ddp.pt", "ddp.train.csv",
                                                     "ddp.train.json"]
    check_trained_on_gpu(out / "ddp.pt", steps=4, seed=2, seq_len=5, world=n)
    if n > 1 and not ON_CPU:
        assert "NCCL INFO" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-4000:]


def test_crossval_devices_spread_folds_over_gpus(data: dict, tmp_path: Path) -> None:
    """`crossval --devices 0,1` (two GPUs) or `--devices 0,0` (two workers sharing one GPU): every fold trained
    on a GPU it was given, and the pooled metrics are there."""
    if ON_CPU:
        devices, expected = "cpu,cpu", {"cpu"}
    elif N_GPUS >= 2:
        devices, expected = "0,1", {"cuda:0", "cuda:1"}
    else:
        devices, expected = "0,0", {"cuda:0"}
    run = tmp_path / "run"
    proc = run_cli("crossval", data["data"], "--folds", "3", "-o", run, "--devices", devices, "--epochs", "1",
                   "--max-steps", "4", "--seq-len", "5", "--batch-size", "8", "--eval-every", "4",
                   "--val-subjects-per-fold", "1", "--seed", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folds = pd.read_csv(run / "folds.csv", keep_default_na=False)
    assert sorted(folds["fold"]) == [1, 2, 3]
    assert set(folds["device"]) == expected  # with 0,1 the first two folds start on different GPUs
    from sleepstage_cli.model.modelfile import load_model

    for fold in (1, 2, 3):
        meta = load_model(run / f"fold-{fold:02d}" / "model.pt").meta["training"]
        assert meta["device"] == folds.loc[folds["fold"] == fold, "device"].item()
    pooled = json.loads((run / "evaluation" / "metrics.json").read_text())["pooled"]
    assert 0 <= pooled["accuracy"] <= 1 and -1 <= pooled["kappa"] <= 1 and 0 <= pooled["macro_f1"] <= 1
    assert sorted(p.stem for p in (run / "predictions").glob("*.csv")) == ["01-03-0001", "01-03-0002", "01-03-0003"]


class _Stop(Exception):
    pass


class _StopAtStep3(Callbacks):
    """Training callbacks that stop the run at step 3, after the checkpoint of step 2 was written."""

    def step(self, step, loss, seq_per_s, pass_index):
        if step == 3:
            raise _Stop


@pytest.mark.parametrize("first,then", [("cpu", DEVICE), (DEVICE, "cpu")], ids=["cpu-then-cuda", "cuda-then-cpu"])
def test_checkpoint_resumes_on_the_other_device(data: dict, tmp_path: Path, first: str, then: str) -> None:
    """A run stopped on one device resumes on the other (the device and AMP may change on --resume): a CPU
    checkpoint holds no GradScaler state, which the resumed AMP run must do without."""
    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.training.train import TrainOptions, checkpoint_path, train_model

    out = tmp_path / "m.pt"
    opts = TrainOptions(seq_len=5, batch_size=4, epochs=1, max_steps=4, eval_every=2, seed=3, device=first)
    with pytest.raises(_Stop):
        train_model(data["data"], out, opts, callbacks=_StopAtStep3(), val_subjects=[VAL])
    ckpt = torch.load(checkpoint_path(out), map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and bool(ckpt["scaler"]) is (AMP and first == DEVICE)
    result = train_model(data["data"], out, dataclasses.replace(opts, device=then), resume=True, val_subjects=[VAL])
    assert result.steps == 4 and not checkpoint_path(out).exists()
    training = load_model(out).meta["training"]
    assert training["steps"] == 4 and training["device"] == (gpu(0) if then == DEVICE else "cpu")
    assert all(torch.isfinite(v).all() for v in result.last_state.values() if v.is_floating_point())


@pytest.mark.skipif(not ON_CPU and N_GPUS < 2, reason="needs two CUDA GPUs")
def test_training_on_the_second_gpu_keeps_off_the_first(data: dict, tmp_path: Path) -> None:
    """`--device cuda:1` makes cuda:1 the process's current device, so that what torch places by default (the
    DataLoader's pinned memory and pin thread, here with one loader worker) goes there too, not to cuda:0."""
    if ON_CPU:
        pytest.skip("about CUDA devices only")
    script = (
        "import sys, torch\n"
        "from sleepstage_cli.training.train import TrainOptions, train_model\n"
        "opts = TrainOptions(seq_len=5, batch_size=4, epochs=1, max_steps=2, eval_every=2, seed=0, "
        "device='cuda:1', workers=1)\n"
        "train_model(sys.argv[1], sys.argv[2], opts, val_subjects=[sys.argv[3]])\n"
        "print(torch.cuda.current_device(), torch.cuda.memory_allocated(0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(data["data"]), str(tmp_path / "m.pt"), VAL],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1", "0"]  # current device cuda:1; nothing of the run allocated on cuda:0
    from sleepstage_cli.model.modelfile import load_model

    assert load_model(tmp_path / "m.pt").meta["training"]["device"] == "cuda:1"
