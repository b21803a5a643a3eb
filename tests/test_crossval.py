"""`sleepstage crossval`: subject-wise folds, resume after a kill, refused restarts, split files, parallel folds."""

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
from conftest import assert_clean_error

from sleepstage_cli.errors import InputError

# Tiny training: 20 steps per fold leave time to kill a run after fold 2's first checkpoint (step 4).
TINY = ["--epochs", "3", "--max-steps", "20", "--seq-len", "5", "--batch-size", "8", "--eval-every", "4",
        "--val-subjects-per-fold", "1", "--seed", "0"]
SUBJECTS = ["subject01", "subject02", "subject03"]


def cli(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command line in a fresh process, one thread per process (as each --jobs worker gets here)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sleepstage_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (its lock file too) with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Generic layout: 3 subjects with 2 half-hour nights each."""
    from sleepstage_cli.simulate import simulate

    root = tmp_path_factory.mktemp("cv-data")
    simulate(root / "sim", nights=6, layout="generic", seed=4, hours=0.5)
    proc = cli("prepare", root / "sim", "-o", root / "ds", "--channel-map", root / "sim" / "channels.toml")
    assert proc.returncode == 0, proc.stderr
    return root / "ds"


@pytest.fixture(scope="module")
def resumed(dataset: Path, tmp_path_factory) -> dict:
    """A 3-fold run killed (SIGKILL) during fold 2, then the same command again."""
    run = tmp_path_factory.mktemp("cv-run") / "run"
    args = ["crossval", dataset, "--folds", 3, "-o", run, *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sleepstage_cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    ckpt = run / "fold-02" / "model.pt.ckpt"
    deadline = time.time() + 400
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    killed = {"fold1_done": (run / "fold-01" / "DONE").exists(), "fold2_done": (run / "fold-02" / "DONE").exists(),
              "fold2_model": (run / "fold-02" / "model.pt").exists(), "fold3": (run / "fold-03").exists(),
              "step": torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else None}
    model1 = run / "fold-01" / "model.pt"
    before = (model1.read_bytes(), model1.stat().st_mtime_ns) if model1.exists() else None
    again = cli(*args)
    return {"run": run, "dataset": dataset, "args": args, "killed": killed, "model1": before, "again": again}


def test_killed_run_resumes_without_retraining_the_finished_fold(resumed: dict) -> None:
    run, killed, again = resumed["run"], resumed["killed"], resumed["again"]
    assert killed["fold1_done"] and not killed["fold2_done"] and not killed["fold2_model"] and not killed["fold3"]
    assert killed["step"] is not None and 4 <= killed["step"] < 20
    assert again.returncode == 0, again.stderr
    assert "1 of 3 folds already finished (fold 1)" in again.stderr
    assert f"fold 2/3: resuming from step {killed['step']}" in again.stderr
    model1 = run / "fold-01" / "model.pt"
    assert (model1.read_bytes(), model1.stat().st_mtime_ns) == resumed["model1"]  # not retrained
    log = json.loads((run / "fold-02" / "model.train.json").read_text())
    assert [row["step"] for row in log["log"]] == [4, 8, 12, 16, 20]  # runs on from the checkpoint
    events = (run / "crossval.log").read_text()
    assert "fold-02: resuming training from its checkpoint" in events and "finished" in events
    for i in (1, 2, 3):
        assert (run / f"fold-0{i}" / "DONE").exists()
        assert not (run / f"fold-0{i}" / "model.pt.ckpt").exists()


def test_every_subject_tested_once_and_the_split_is_what_trained(resumed: dict) -> None:
    from sleepstage_cli.data.dataset import PreparedDataset
    from sleepstage_cli.model.modelfile import load_model

    run = resumed["run"]
    ds = PreparedDataset(resumed["dataset"])
    split = json.loads((run / "split.json").read_text())
    tested = [s for f in split["folds"] for s in f["test"]]
    assert sorted(tested) == ds.subjects == SUBJECTS  # each once
    for f in split["folds"]:
        test, val, train = set(f["test"]), set(f["val"]), set(f["train"])
        assert len(val) == 1 and not (test & val or test & train or val & train)
        assert test | val | train == set(SUBJECTS)
        fold_dir = run / f"fold-{f['fold']:02d}"
        meta = load_model(fold_dir / "model.pt").meta["training"]
        assert (meta["train_subjects"], meta["val_subjects"]) == (f["train"], f["val"])
        predicted = sorted(p.stem for p in (fold_dir / "predictions").glob("*.csv"))
        assert predicted == sorted(n.id for n in ds.nights if n.subject in test)  # both nights of a subject
    assert sorted(p.stem for p in (run / "predictions").glob("*.csv")) == sorted(n.id for n in ds.nights)


def test_pooled_metrics_equal_evaluate_on_the_saved_csvs(resumed: dict, tmp_path: Path) -> None:
    run = resumed["run"]
    proc = cli("evaluate", run / "predictions", resumed["dataset"], "-o", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads((run / "evaluation" / "metrics.json").read_text())
    theirs = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ours["pooled"] == theirs["pooled"] and ours["summary"] == theirs["summary"]
    assert [n["metrics"] for n in ours["per_night"]] == [n["metrics"] for n in theirs["per_night"]]
    for name in ("confusion.csv", "per_night.csv", "per_class.csv"):
        assert (run / "evaluation" / name).read_text() == (tmp_path / "ev" / name).read_text(), name
    assert (run / "evaluation" / "report.html").stat().st_size > 1000
    # Pooled over folds = the folds' confusion matrices summed; folds.csv has one row per fold.
    folds = [json.loads((run / f"fold-0{i}" / "metrics.json").read_text()) for i in (1, 2, 3)]
    assert np.sum([f["pooled"]["confusion"] for f in folds], axis=0).tolist() == ours["pooled"]["confusion"]
    rows = (run / "folds.csv").read_text().splitlines()
    assert rows[0].startswith("fold,test_subjects,val_subjects") and len(rows) == 4
    assert [float(r.split(",")[6]) for r in rows[1:]] == [f["fold"]["accuracy"] for f in folds]
    assert "the same figures: sleepstage evaluate" in resumed["again"].stderr
    assert "Per fold" in resumed["again"].stdout and "Agreement over 6 night(s)" in resumed["again"].stdout


def test_folds_csv_records_each_folds_calibration(resumed: dict) -> None:
    """Each fold's T and validation ECE before/after (from its model file), and its test nights' ECE."""
    import csv

    from sleepstage_cli.model.modelfile import load_model

    run = resumed["run"]
    with open(run / "folds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for row in rows:
        fold_dir = run / f"fold-{int(row['fold']):02d}"
        loaded = load_model(fold_dir / "model.pt")
        cal = loaded.meta["calibration"]
        assert float(row["temperature"]) == pytest.approx(loaded.temperature) == pytest.approx(cal["temperature"])
        assert float(row["val_ece_before"]) == pytest.approx(cal["ece_before"])
        assert float(row["val_ece_after"]) == pytest.approx(cal["ece_after"])
        assert cal["nll_after"] <= cal["nll_before"]
        test_ece = json.loads((fold_dir / "metrics.json").read_text())["pooled"]["ece"]
        assert float(row["ece"]) == pytest.approx(test_ece)
    assert "val. ECE" in resumed["again"].stdout


def test_a_different_command_is_refused_and_nothing_changes(resumed: dict) -> None:
    run = resumed["run"]
    before = snapshot(run)
    args = list(resumed["args"])
    args[args.index("--seed") + 1] = 1
    proc = cli(*args, "--lr", 0.001)
    assert_clean_error(proc, "--lr 0.0001 (now 0.001)", "--seed 0 (now 1)", "--force")
    assert snapshot(run) == before


def test_force_starts_over(resumed: dict, tmp_path: Path) -> None:
    from sleepstage_cli.training.crossval import crossval, plan_run
    from sleepstage_cli.training.train import TrainOptions

    run = tmp_path / "run"
    shutil.copytree(resumed["run"], run)
    (run / "notes.txt").write_text("mine")
    opts = TrainOptions(seq_len=5, epochs=3, max_steps=20, batch_size=8, eval_every=4, seed=1)
    plan = plan_run(resumed["dataset"], run, opts, folds=3, val_subjects_per_fold=1)
    with pytest.raises(Exception, match="--seed 0 .now 1."):
        crossval(plan, split_only=True)
    assert crossval(plan, force=True, split_only=True) is None
    assert not any(run.glob("fold-*")) and not (run / "predictions").exists() and not (run / "evaluation").exists()
    assert json.loads((run / "crossval.json").read_text())["options"]["seed"] == 1
    assert json.loads((run / "split.json").read_text())["folds"] == [f.to_json() for f in plan.split.folds]
    assert (run / "notes.txt").read_text() == "mine"  # only what a run writes is deleted


def test_fold_killed_after_training_is_only_scored_again(resumed: dict, tmp_path: Path) -> None:
    import torch

    from sleepstage_cli.training.crossval import crossval, plan_run
    from sleepstage_cli.training.train import TrainOptions

    run = tmp_path / "run"
    shutil.copytree(resumed["run"], run)
    fold3 = run / "fold-03"
    old = (fold3 / "predictions" / "subject02_night1.csv").read_text()
    for name in ("DONE", "metrics.json"):
        (fold3 / name).unlink()
    shutil.rmtree(fold3 / "predictions")
    model = fold3 / "model.pt"
    stamp = (model.read_bytes(), model.stat().st_mtime_ns)
    opts = TrainOptions(seq_len=5, epochs=3, max_steps=20, batch_size=8, eval_every=4, seed=0, device="cpu")
    plan = plan_run(resumed["dataset"], run, opts, folds=3, val_subjects_per_fold=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = crossval(plan)
    finally:
        torch.set_num_threads(threads)
    assert result.skipped == [1, 2]
    assert (model.read_bytes(), model.stat().st_mtime_ns) == stamp
    assert (fold3 / "DONE").exists()
    new = (fold3 / "predictions" / "subject02_night1.csv").read_text()
    assert [r.split(",")[2] for r in new.splitlines()] == [r.split(",")[2] for r in old.splitlines()]


def test_first_interrupt_checkpoints_the_fold_and_stops(dataset: Path, tmp_path: Path) -> None:
    from sleepstage_cli.errors import Interrupted
    from sleepstage_cli.training.crossval import Monitor, crossval, plan_run
    from sleepstage_cli.training.train import Callbacks, TrainOptions

    class CtrlC(Callbacks):
        def step(self, step, loss, rate, pass_index):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    class Watch(Monitor):
        def __init__(self) -> None:
            self.ended: list = []

        def fold_begin(self, fold, device):
            return CtrlC()

        def fold_end(self, fold, summary):
            self.ended.append((fold.index, summary))

    opts = TrainOptions(seq_len=5, epochs=1, max_steps=6, batch_size=8, eval_every=5, device="cpu")
    plan = plan_run(dataset, tmp_path / "run", opts, folds=3, val_subjects_per_fold=1)
    watch = Watch()
    with pytest.raises(Interrupted, match="interrupted in fold 1.*run the same command again") as info:
        crossval(plan, monitor=watch)
    assert info.value.exit_code == 130
    import torch

    assert torch.load(tmp_path / "run" / "fold-01" / "model.pt.ckpt", weights_only=True)["step"] == 2
    assert watch.ended == [(1, None)] and not (tmp_path / "run" / "fold-02").exists()


def test_split_file_is_reproduced_exactly(dataset: Path, tmp_path: Path) -> None:
    from sleepstage_cli.training.crossval import crossval, plan_run
    from sleepstage_cli.training.split import load_split
    from sleepstage_cli.training.train import TrainOptions

    given = {"folds": [{"test": ["subject02"], "val": ["subject03"]},
                       {"test": ["subject03", "subject01"], "validation": []}]}
    (tmp_path / "published.json").write_text(json.dumps(given))
    plan = plan_run(dataset, tmp_path / "a", TrainOptions(), split_file=tmp_path / "published.json")
    assert crossval(plan, split_only=True) is None
    written = json.loads((tmp_path / "a" / "split.json").read_text())["folds"]
    assert written == [{"fold": 1, "test": ["subject02"], "val": ["subject03"], "train": ["subject01"]},
                       {"fold": 2, "test": ["subject01", "subject03"], "val": [], "train": ["subject02"]}]
    assert not any((tmp_path / "a").glob("fold-*"))  # --split-only trains nothing
    # An earlier run's split.json (or its folder) gives the very same folds.
    assert [f.to_json() for f in load_split(tmp_path / "a", SUBJECTS).folds] == written
    again = plan_run(dataset, tmp_path / "b", TrainOptions(seed=5), split_file=tmp_path / "a" / "split.json")
    assert [f.to_json() for f in again.split.folds] == written


def test_errors_are_one_line(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"folds": [{"test": ["subject01"]}, {"test": ["subject99", "subject02"]}]}))
    proc = cli("crossval", dataset, "-o", tmp_path / "r", "--split", bad)
    assert_clean_error(proc, "fold 2", "subject99", "subject01, subject02, subject03")
    assert not (tmp_path / "r").exists()  # refused before anything was written

    from sleepstage_cli.training.crossval import plan_run
    from sleepstage_cli.training.split import load_split, make_split
    from sleepstage_cli.training.train import TrainOptions

    with pytest.raises(InputError, match="--folds 5 is more than the 3 subject"):
        plan_run(dataset, tmp_path / "r", TrainOptions(), folds=5)
    with pytest.raises(InputError, match="--channels asks for ecg"):
        plan_run(dataset, tmp_path / "r", TrainOptions(channels=("eeg", "ecg")), folds=3, val_subjects_per_fold=1)
    with pytest.raises(InputError, match="too few for 3 folds.*--val-subjects-per-fold"):
        make_split(SUBJECTS, 3, 4)
    with pytest.raises(InputError, match="--folds 1 needs --test-fraction"):
        make_split(SUBJECTS, 1, 1)
    with pytest.raises(InputError, match="--test-fraction .* --folds 1"):
        make_split(SUBJECTS, 3, 1, test_fraction=0.2)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"test": ["subject01"]}, {"test": ["subject01"]}]))
    with pytest.raises(InputError, match="subject01 is tested in folds 1 and 2"):
        load_split(twice, SUBJECTS)
    overlap = tmp_path / "overlap.json"
    overlap.write_text(json.dumps([{"test": ["subject01"], "val": ["subject01"]}]))
    with pytest.raises(InputError, match="both tested and validated"):
        load_split(overlap, SUBJECTS)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("n,k", [(3, 3), (7, 3), (62, 20), (10, 4)])
def test_made_folds_partition_the_subjects(n: int, k: int) -> None:
    from sleepstage_cli.training.split import make_split

    subjects = [f"s{i:02d}" for i in range(n)]
    v = 1 if n < 8 else 4
    split = make_split(subjects, k, v, seed=3)
    tested = [s for f in split.folds for s in f.test]
    assert sorted(tested) == subjects
    sizes = [len(f.test) for f in split.folds]
    assert max(sizes) - min(sizes) <= 1 and len(sizes) == k
    for f in split.folds:
        assert len(f.val) == v and set(f.test) | set(f.val) | set(f.train) == set(subjects)
        assert len(f.test) + len(f.val) + len(f.train) == n
    assert make_split(subjects, k, v, seed=3) == split  # the seed decides
    assert [f.test for f in make_split(subjects, k, v, seed=4).folds] != [f.test for f in split.folds]
    holdout = make_split(subjects, 1, v, seed=3, test_fraction=0.2)
    assert len(holdout.folds) == 1 and len(holdout.folds[0].test) == max(1, round(0.2 * n))
    # Default validation size: 4 on MASS SS3's 62 subjects in 20 folds, fewer on small datasets.
    assert [len(f.val) for f in make_split(subjects, k).folds] == [4 if n == 62 else 1] * k


def test_crossval_accepts_every_training_option() -> None:
    import typer.main

    from sleepstage_cli.cli.main import app

    commands = typer.main.get_command(app).commands
    train = {p.name: p for p in commands["train"].params}
    cv = {p.name: p for p in commands["crossval"].params}
    for name in set(train) - {"dataset", "output", "val_subjects", "val_fraction", "resume", "force"}:
        assert name in cv, name
        assert cv[name].opts == train[name].opts and cv[name].default == train[name].default, name


def test_two_jobs_make_the_same_folds_and_results(resumed: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [a if a != resumed["run"] else run for a in resumed["args"]]
    proc = cli(*args, "--jobs", 2)
    assert proc.returncode == 0, proc.stderr
    assert "fold 3 done" in proc.stderr and "3/3" in proc.stderr
    first = resumed["run"]
    folds = json.loads((run / "split.json").read_text())["folds"]
    assert folds == json.loads((first / "split.json").read_text())["folds"]
    # One thread per process in both runs, same seeds: the same arithmetic, the same hypnograms
    # (the first run was even killed and resumed in between).
    for p in sorted((first / "predictions").glob("*.csv")):
        assert (run / "predictions" / p.name).read_text() == p.read_text(), p.name
    assert (json.loads((run / "evaluation" / "metrics.json").read_text())["pooled"]
            == json.loads((first / "evaluation" / "metrics.json").read_text())["pooled"])


# --------------------------------------------------------------------------- folds anywhere (--fold)

def test_three_fold_processes_at_once_then_pooling_equal_one_process(resumed: dict, tmp_path: Path) -> None:
    """Issue 16's criterion: --fold 1, 2 and 3 started at once, then the command without --fold, give the
    pooled metrics (and hypnograms) of the single process that ran every fold of the same split."""
    run = tmp_path / "run"
    args = [a if a != resumed["run"] else run for a in resumed["args"]]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "sleepstage_cli", *map(str, args), "--fold", str(k)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for k in (1, 2, 3)]
    ends = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [code for code, _ in ends] == [0, 0, 0], ends
    for k, (_, err) in enumerate(ends, start=1):
        assert f"fold {k} done" in err and not any(f"fold {j} done" in err for j in {1, 2, 3} - {k}), err
    log = (run / "crossval.log").read_text()
    assert log.count(" started by ") == 4  # the run (once: the split is written once) and each fold once
    assert log.count(" resumed by ") == 2 and all(log.count(f"fold-0{k}: started by") == 1 for k in (1, 2, 3))
    models = {k: (run / f"fold-0{k}" / "model.pt").stat().st_mtime_ns for k in (1, 2, 3)}

    pooled = cli(*args)  # the same command without --fold: pools, trains nothing
    assert pooled.returncode == 0, pooled.stderr
    assert "3 of 3 folds already finished" in pooled.stderr
    assert {k: (run / f"fold-0{k}" / "model.pt").stat().st_mtime_ns for k in (1, 2, 3)} == models
    first = resumed["run"]
    assert json.loads((run / "split.json").read_text())["folds"] == json.loads((first / "split.json").read_text())[
        "folds"]
    for p in sorted((first / "predictions").glob("*.csv")):
        assert (run / "predictions" / p.name).read_text() == p.read_text(), p.name
    assert (json.loads((run / "evaluation" / "metrics.json").read_text())["pooled"]
            == json.loads((first / "evaluation" / "metrics.json").read_text())["pooled"])


def test_missing_folds_are_named_and_a_running_fold_is_left_to_its_process(resumed: dict, tmp_path: Path) -> None:
    from sleepstage_cli.locks import exclusive_lock
    from sleepstage_cli.training.folds import this_process

    run = tmp_path / "run"
    shutil.copytree(resumed["run"], run)
    args = [a if a != resumed["run"] else run for a in resumed["args"]]
    for name in ("DONE", "metrics.json"):
        (run / "fold-03" / name).unlink()
    shutil.rmtree(run / "evaluation")
    model3 = (run / "fold-03" / "model.pt").stat().st_mtime_ns
    with exclusive_lock(run / "fold-03"):  # as a process training fold 3 holds it
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert f"fold 3 is being run by another sleepstage process ({this_process()}): not run here" in proc.stderr
        assert f"not pooled yet: 1 of 3 folds not finished: fold 3 (running: {this_process()})" in proc.stderr
        assert not (run / "fold-03" / "DONE").exists() and not (run / "evaluation").exists()
        assert_clean_error(cli(*args, "--pool-only"), "cannot pool the run yet", f"fold 3 (running: {this_process()})")
    refused = cli(*args, "--pool-only")
    assert_clean_error(refused, "1 of 3 folds not finished: fold 3 (not running: not started yet, failed or stopped)")
    assert (run / "fold-03" / "model.pt").stat().st_mtime_ns == model3 and not (run / "evaluation").exists()
    again = cli(*args, "--fold", "3")  # killed after training: only its scoring is redone, then it pools
    assert again.returncode == 0, again.stderr
    assert (run / "fold-03" / "model.pt").stat().st_mtime_ns == model3
    assert (json.loads((run / "evaluation" / "metrics.json").read_text())["pooled"]
            == json.loads((resumed["run"] / "evaluation" / "metrics.json").read_text())["pooled"])


def test_fold_options_are_checked_before_anything_runs(resumed: dict) -> None:
    run = resumed["run"]
    before = snapshot(run)
    args = list(resumed["args"])
    assert_clean_error(cli(*args, "--fold", "4"), "--fold 4: the split has no such fold (its folds are 1-3)")
    assert_clean_error(cli(*args, "--fold", "2-1"), "--fold 2-1: give fold numbers")
    assert_clean_error(cli(*args, "--fold", "1", "--force"), "--force starts the whole run over")
    assert_clean_error(cli(*args, "--fold", "2", "--lr", 0.001), "--lr 0.0001 (now 0.001)")  # same options enforced
    assert snapshot(run) == before


def test_force_is_refused_while_another_process_trains_a_fold(resumed: dict, tmp_path: Path) -> None:
    from sleepstage_cli.errors import SleepstageError
    from sleepstage_cli.locks import exclusive_lock, shared_lock
    from sleepstage_cli.training.crossval import crossval, plan_run
    from sleepstage_cli.training.folds import RUNNING, this_process
    from sleepstage_cli.training.train import TrainOptions

    run = tmp_path / "run"
    shutil.copytree(resumed["run"], run)
    opts = TrainOptions(seq_len=5, epochs=3, max_steps=20, batch_size=8, eval_every=4, seed=1)
    plan = plan_run(resumed["dataset"], run, opts, folds=3, val_subjects_per_fold=1)
    def results() -> dict:  # lock files aside (each taker writes its name in them)
        return {k: v for k, v in snapshot(run).items() if not Path(k).name.startswith(".")}

    before = results()
    with shared_lock(run, RUNNING), exclusive_lock(run / "fold-02"):
        with pytest.raises(SleepstageError, match=f"running folds of this run .{this_process()}.; --force would"):
            crossval(plan, force=True, split_only=True)
    assert results() == before
    assert crossval(plan, force=True, split_only=True) is None  # nobody runs a fold now
    assert not any(run.glob("fold-*"))


@pytest.mark.parametrize("text, folds", [("3", [3]), ("3,7,12", [3, 7, 12]), ("1-4, 9", [1, 2, 3, 4, 9]),
                                         ("5,5,2-3", [2, 3, 5])])
def test_fold_lists(text: str, folds: list[int]) -> None:
    from sleepstage_cli.training.crossval import parse_fold_list

    assert parse_fold_list(text) == folds


@pytest.mark.parametrize("text", ["", "a", "3,", "0x2", "4-2", "-1"])
def test_bad_fold_lists(text: str) -> None:
    from sleepstage_cli.training.crossval import parse_fold_list

    with pytest.raises(InputError, match="--fold"):
        parse_fold_list(text)


def test_a_process_waits_while_another_writes_the_run_description(dataset: Path, tmp_path: Path) -> None:
    """Processes started together take turns on the run folder's lock (held for seconds at most), never refused."""
    import socket

    from test_locks import hold

    from sleepstage_cli.training.crossval import Monitor, crossval, plan_run
    from sleepstage_cli.training.train import TrainOptions

    run = tmp_path / "run"
    plan = plan_run(dataset, run, TrainOptions(seed=0), folds=3, val_subjects_per_fold=1)
    class Said(Monitor):
        lines: list = []

        def info(self, text: str) -> None:
            self.lines.append(text)

    other = hold(run, ".lock", "exclusive", 1.5)  # another process writing the run's description
    try:
        assert crossval(plan, split_only=True, only=[2], monitor=Said()) is None  # waited for it, not refused
        assert Said.lines == [f"waiting for pid {other.pid} on {socket.gethostname()}, which is writing or pooling "
                              "this run (at most 15 min)"]
    finally:
        other.wait()
        other.stdout.close()
    assert "for fold 2" in (run / "crossval.log").read_text()


def test_a_parallel_worker_finding_its_fold_taken_leaves_it_and_goes_on(resumed: dict, tmp_path: Path) -> None:
    """--jobs: a worker whose fold another process started meanwhile reports "busy": the fold is left to that
    process (not a failure, the run goes on with the next fold)."""
    from types import SimpleNamespace

    from sleepstage_cli.training.crossval import Monitor, plan_run
    from sleepstage_cli.training.folds import FoldJob
    from sleepstage_cli.training.jobs import _Dispatcher
    from sleepstage_cli.training.train import TrainOptions

    opts = TrainOptions(seq_len=5, epochs=3, max_steps=20, batch_size=8, eval_every=4, seed=0)
    plan = plan_run(resumed["dataset"], tmp_path / "run", opts, folds=3, val_subjects_per_fold=1)
    jobs = [FoldJob(plan.run_dir, plan.dataset, opts, f, plan.digest, "cpu") for f in plan.split.folds]
    plan.run_dir.mkdir()  # its diary goes there

    class Said(Monitor):
        def __init__(self) -> None:
            self.lines, self.ended = [], []

        def info(self, text: str) -> None:
            self.lines.append(text)

        def fold_end(self, fold, summary) -> None:
            self.ended.append((fold.index, summary))

    said = Said()
    pool = _Dispatcher(plan, jobs, said, events=None, stop=SimpleNamespace(requested=False))
    worker = SimpleNamespace(job=None, device="cpu", tasks=SimpleNamespace(put=lambda job: None))
    pool.workers = [worker]
    pool.give(worker)
    assert worker.job.fold.index == 1
    pool.ended(1, "busy", "pid 77 on node7")
    assert said.ended == [(1, None)] and not pool.failed
    assert said.lines == ["fold 1 is being run by another sleepstage process (pid 77 on node7): not run here"]
    assert worker.job.fold.index == 2  # handed the next fold
    pool.ended(2, "error", "boom")
    assert pool.failed == ["fold 2 failed: boom"]  # the difference: an error is a failure
    log = (plan.run_dir / "crossval.log").read_text()
    assert "fold-02: failed: boom" in log and "fold-01" not in log
