"""Faults of training (issue 11): outputs over inputs, a full disk under the spectrogram cache, files that are
not models, and numeric options out of range — for train, crossval and simulate.

The dataset is made here (three simulated nights of a quarter of an hour, prepared); every refusal is
checked to come before any training, so nothing trains but one tiny run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli, simulated_dataset, write_edf

QUICK = ("--epochs", "1", "--max-steps", "1", "--seq-len", "10", "--batch-size", "8", "--val-fraction", "0")
CV_QUICK = ("--folds", "3", "--val-subjects-per-fold", "0", "--split-only")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Three simulated nights (MASS layout, one subject each) prepared into a dataset."""
    return simulated_dataset(tmp_path_factory.mktemp("faults-train"), nights=3, hours=0.25)


def copy_dataset(prepared: Path, dst: Path) -> Path:
    shutil.copytree(prepared, dst, ignore=shutil.ignore_patterns("cache", ".lock"))
    return dst


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# =========================================================================== item 2: outputs over inputs

@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("target", ["manifest.json", "nights/01-03-0002.npy", "nights.csv"])
def test_train_never_writes_over_its_dataset(prepared: Path, tmp_path: Path, target: str, force: bool) -> None:
    data = copy_dataset(prepared, tmp_path / "data")
    before = snapshot(data)
    proc = run_cli("train", data, "-o", data / target, *QUICK, *(["--force"] if force else []))
    assert_clean_error(proc, f"cannot write model file {data / target}", "inputs", "--force never replaces")
    assert snapshot(data) == before  # byte for byte, and refused before training (no cache, no model)


def test_train_log_beside_the_model_never_replaces_a_dataset_file(prepared: Path, tmp_path: Path) -> None:
    """-o DATA/nights.pt would write its training log as DATA/nights.train.csv: a file of the user's there."""
    data = copy_dataset(prepared, tmp_path / "data")
    (data / "nights.train.csv").write_text("my notes\n")
    before = snapshot(data)
    proc = run_cli("train", data, "-o", data / "nights.pt", *QUICK, "--force")
    assert_clean_error(proc, f"cannot write training log {data / 'nights.train.csv'}")
    assert snapshot(data) == before


def test_a_model_kept_in_the_dataset_folder_can_be_trained_again(prepared: Path, tmp_path: Path) -> None:
    """The refusal is for the dataset's files: a model, checkpoint or log of an earlier training is no input."""
    data = copy_dataset(prepared, tmp_path / "data")
    for extra in ([], ["--force"]):
        proc = run_cli("train", data, "-o", data / "model.pt", *QUICK, *extra)
        assert proc.returncode == 0, proc.stderr
    assert (data / "model.train.csv").exists() and (data / "model.train.json").exists()


@pytest.mark.parametrize("force", [False, True])
def test_crossval_refuses_the_dataset_folder_as_its_run_folder(prepared: Path, tmp_path: Path, force: bool) -> None:
    data = copy_dataset(prepared, tmp_path / "data")
    before = snapshot(data)
    proc = run_cli("crossval", data, "-o", data, *CV_QUICK, *(["--force"] if force else []))
    assert_clean_error(proc, "dataset folder", "--force never replaces an input")
    assert snapshot(data) == before  # its nights.csv is a run's name too: it was deleted with --force


def test_crossval_never_replaces_its_split_file(prepared: Path, tmp_path: Path) -> None:
    data = copy_dataset(prepared, tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    split = run / "split.json"
    split.write_text(json.dumps([{"test": [s]} for s in ("01-03-0001", "01-03-0002", "01-03-0003")]))
    before = split.read_bytes()
    for how in (split, run):  # the file, or the run folder that holds it
        proc = run_cli("crossval", data, "-o", run, "--split", how, "--split-only", "--force")
        assert_clean_error(proc, "split.json", "one of this command's inputs")
        assert split.read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["split.json"]


def test_crossval_never_clears_a_dataset_where_its_results_go(prepared: Path, tmp_path: Path) -> None:
    """RUN/predictions is cleared and refilled by a run: a dataset there is an input, not an old result."""
    run = tmp_path / "run"
    data = copy_dataset(prepared, run / "predictions")
    before = snapshot(data)
    proc = run_cli("crossval", data, "-o", run, *CV_QUICK, "--force")
    assert_clean_error(proc, "predictions", "one of this command's inputs")
    assert snapshot(data) == before


# =========================================================================== item 4: a full disk under the cache

def _cache(prepared: Path, tmp_path: Path):
    from sleepstage_cli.data.dataset import PreparedDataset
    from sleepstage_cli.spectrograms.cache import SpectrogramCache

    ds = PreparedDataset(copy_dataset(prepared, tmp_path / "data"))
    return ds, SpectrogramCache(ds, [0, 1, 2])


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``budget`` bytes have gone through."""

    def __init__(self, fh, budget: int) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data) -> int:
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if size > self._budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= size
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def test_cache_write_on_a_full_disk_is_a_clean_error(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    ds, cache = _cache(prepared, tmp_path)
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):  # the second night's cache file fills the disk half-way
        fh = real_fdopen(fd, mode, *args, **kwargs)
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        return _FullDisk(fh, 500_000) if name.startswith(".01-03-0002.npy.") and "w" in mode else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    from sleepstage_cli.errors import SleepstageError

    with pytest.raises(SleepstageError) as caught:
        cache.ensure(ds.nights, torch.device("cpu"))
    text = str(caught.value)
    assert text.startswith(f"{cache.folder}: no space left on device for the spectrogram cache: it needs "), text
    assert "for 2 night(s)" in text, text  # the night that failed and the one after it
    assert _temp_files(cache.folder) == []
    assert cache.path(ds.nights[0]).exists() and not cache.path(ds.nights[1]).exists()


def test_cache_refused_up_front_when_the_disk_cannot_hold_it(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    ds, cache = _cache(prepared, tmp_path)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    from sleepstage_cli.errors import SleepstageError

    with pytest.raises(SleepstageError, match=r"no space left on device .* needs 4\.0 MB for 3 night\(s\) and "
                                              r"1\.0 MB is free"):
        cache.ensure(ds.nights, torch.device("cpu"))
    assert [p.name for p in cache.folder.iterdir() if p.suffix in (".npy", ".json", ".tmp")] == []


def test_temp_files_of_a_killed_run_are_cleared_at_the_next_open(prepared: Path, tmp_path: Path) -> None:
    from sleepstage_cli.spectrograms.cache import SpectrogramCache

    ds, cache = _cache(prepared, tmp_path)
    other = cache.folder.parent / "spectrograms-0123456789ab"  # a killed run with other channels
    other.mkdir()
    for folder, name in ((cache.folder, ".x.npy.123.tmp"), (cache.folder, ".01-03-0001.npy.k2j4h1.tmp"),
                         (other, ".01-03-0001.json.abc.tmp")):
        (folder / name).write_bytes(b"\0" * 1000)
    running = cache.folder / ".01-03-0003.npy.live.tmp"  # another fold's writer, still at work: locked
    running.write_bytes(b"\0" * 10)
    fd = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        SpectrogramCache(ds, [0, 1, 2])
        assert _temp_files(cache.folder) == [running.name] and _temp_files(other) == []
    finally:
        os.close(fd)  # the writer is gone (killed): its file goes at the next open
    SpectrogramCache(ds, [0, 1, 2])
    assert _temp_files(cache.folder) == []


@pytest.mark.parametrize("name", ["m.pt.ckpt", "m.train.csv"])
def test_checkpoint_and_log_on_a_full_disk_are_clean_errors(prepared: Path, tmp_path: Path, monkeypatch,
                                                            name: str) -> None:
    """The other writers of training go through fsutil's atomic writers (torch.save into memory first)."""
    import builtins

    from sleepstage_cli import fsutil
    from sleepstage_cli.errors import WriteError
    from sleepstage_cli.training.train import TrainOptions, train_model

    def fake_open(file, mode="r", *args, **kwargs):
        fh = builtins.open(file, mode, *args, **kwargs)
        return _FullDisk(fh, 10) if Path(file).name.startswith(f".{name}.") and "w" in mode else fh

    monkeypatch.setattr(fsutil, "open", fake_open, raising=False)
    out = tmp_path / "m.pt"
    opts = TrainOptions(seq_len=10, batch_size=8, epochs=1, max_steps=2, eval_every=1, device="cpu")
    with pytest.raises(WriteError) as caught:
        train_model(copy_dataset(prepared, tmp_path / "data"), out, opts, val_fraction=0)
    assert str(caught.value) == f"{tmp_path / name}: cannot write the file: No space left on device"
    assert not list(tmp_path.glob(".*.tmp")) and not out.exists()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_train_on_a_really_full_disk_says_so(prepared: Path, tmp_path: Path, small_disk: Path) -> None:
    """The dataset (3.2 MB) fits the disk, its spectrogram cache (4 MB) does not: an error, not SIGBUS (135)."""
    data = copy_dataset(prepared, small_disk / "data")
    proc = run_cli("train", data, "-o", tmp_path / "m.pt", *QUICK)
    cache = next((data / "cache").glob("spectrograms-*"))
    assert_clean_error(proc, f"{cache}: no space left on device for the spectrogram cache: it needs 4.0 MB")
    assert proc.returncode == 1
    assert _temp_files(cache) == [] and not list(cache.glob("*.npy"))
    assert not (tmp_path / "m.pt").exists()


# =========================================================================== item 15: a file that is not a model

def _night(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_edf(path, {name: (rng.normal(0, 20, 100 * 600), 100.0) for name in ("EEG", "EOG", "EMG")})


def _not_models(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files given as --model, with what the error says they hold."""
    text = folder / "hypnogram.pt"
    text.write_text("epoch,onset_s,stage\n" * 50)
    other = folder / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2), "epoch": 3}, other)
    module = folder / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    archive = folder / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model/readme.txt", "not a model")
    return {"text": (text, "text, not a torch file"),
            "dict": (other, "a torch file holding a dict of conv.weight, epoch"),
            "module": (module, "a torch file of other objects: torch.nn.modules.linear.Linear"),
            "zip": (archive, "a zip archive, not a torch file")}


@pytest.mark.parametrize("kind", ["text", "dict", "module", "zip"])
def test_score_with_a_file_that_is_not_a_model(tmp_path: Path, kind: str) -> None:
    model, held = _not_models(tmp_path)[kind]
    proc = run_cli("score", _night(tmp_path / "n.edf"), "-o", tmp_path / "o.csv", "--model", model, "--device", "cpu")
    assert_clean_error(proc, f"{model}: not a sleepstage model file ({held})")
    assert "weights_only" not in proc.stderr and "trust" not in proc.stderr
    assert not (tmp_path / "o.csv").exists()


def test_load_model_names_what_a_file_holds(prepared: Path, tmp_path: Path) -> None:
    from sleepstage_cli.errors import InputError
    from sleepstage_cli.model.modelfile import load_model, save_model
    from sleepstage_cli.model.staging import StagingModel

    np.save(tmp_path / "array.npy", np.zeros(3))
    checkpoint = tmp_path / "model.pt.ckpt"
    torch.save({"fingerprint": {}, "optimizer": {}, "step": 3, "model": {}}, checkpoint)
    manifest = json.loads((prepared / "manifest.json").read_text())
    good = tmp_path / "good.pt"
    save_model(good, StagingModel("seqsleepnet", 3, 10), manifest["channel_spec"], manifest["conditioning"], {}, None)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    for path, said in ((tmp_path / "array.npy", "not a sleepstage model file (a NumPy array file, not a torch file)"),
                       (checkpoint, "not a sleepstage model file (a training checkpoint; finish the training with"),
                       (cut, "not a readable model file (truncated or corrupted?)")):
        with pytest.raises(InputError) as caught:
            load_model(path)
        assert str(caught.value).startswith(f"{path}: {said}"), str(caught.value)
        assert "weights_only" not in str(caught.value)
    assert load_model(good).meta["architecture"]["seq_len"] == 10


@pytest.mark.parametrize("kind", ["text", "module"])
def test_resume_from_a_file_that_is_not_a_checkpoint(prepared: Path, tmp_path: Path, kind: str) -> None:
    source, held = _not_models(tmp_path)[kind]
    ckpt = tmp_path / "m.pt.ckpt"
    shutil.copyfile(source, ckpt)
    proc = run_cli("train", prepared, "-o", tmp_path / "m.pt", *QUICK, "--resume")
    assert_clean_error(proc, f"{ckpt}: not a sleepstage checkpoint ({held}); start over with --force")
    assert "weights_only" not in proc.stderr
    assert not (tmp_path / "m.pt").exists()


# =========================================================================== item 11: numeric options

@pytest.mark.parametrize("option,value,said", [
    ("--epochs", "0", "--epochs must be at least 1 (got 0)"),
    ("--batch-size", "-5", "--batch-size must be at least 1 (got -5)"),
    ("--seq-len", "0", "--seq-len must be at least 1 (got 0)"),
    ("--lr", "0", "--lr must be greater than 0 (got 0)"),
    ("--lr", "inf", "--lr must be a finite number greater than 0 (got inf)"),
    ("--l2", "-1", "--l2 must be at least 0 (got -1)"),
    ("--eval-every", "0", "--eval-every must be at least 1 (got 0)"),
    ("--max-steps", "-1", "--max-steps must be at least 1 (got -1)"),
    ("--seed", "-1", "--seed must be at least 0 and at most 4294967295 (got -1)"),
    ("--val-fraction", "-0.5", "--val-fraction must be at least 0 and below 1 (got -0.5)"),
    ("--val-fraction", "1.5", "--val-fraction must be at least 0 and below 1 (got 1.5)"),
])
def test_train_numeric_options_out_of_range(prepared: Path, tmp_path: Path, option: str, value: str,
                                            said: str) -> None:
    args = dict(zip(QUICK[::2], QUICK[1::2]))
    args[option] = value
    proc = run_cli("train", prepared, "-o", tmp_path / "m.pt", *[a for kv in args.items() for a in kv])
    assert_clean_error(proc, said)
    assert proc.returncode == 1 and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("option,value,said", [
    ("--jobs", "0", "--jobs must be at least 1 (got 0)"),
    ("--dropout", "1", "--dropout must be at least 0 and below 1 (got 1)"),
    ("--workers", "-2", "--workers must be at least 0 (got -2)"),
    ("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
])
def test_crossval_numeric_options_out_of_range(prepared: Path, tmp_path: Path, option: str, value: str,
                                               said: str) -> None:
    proc = run_cli("crossval", prepared, "-o", tmp_path / "run", *CV_QUICK, option, value)
    assert_clean_error(proc, said)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option,value,said", [
    ("--nights", "0", "--nights must be at least 1 (got 0)"),
    ("--hours", "-1", "--hours must be at least 0.25 and at most 16 (got -1)"),
    ("--seed", "-1", "--seed must be at least 0 (got -1)"),
])
def test_simulate_numeric_options_out_of_range(tmp_path: Path, option: str, value: str, said: str) -> None:
    """Refused before the output folder is touched: --force empties it."""
    out = tmp_path / "sim"
    out.mkdir()
    (out / "night.edf").write_bytes(b"an earlier night")
    proc = run_cli("simulate", out, option, value, "--force")
    assert_clean_error(proc, said)
    assert (out / "night.edf").read_bytes() == b"an earlier night"
