"""Model files, their metadata, run folders and reports name datasets and model files by name and content
(sha256), never by where they lie on the user's machine: paths carry user and patient names.

Every private thing here lies under a folder named ``patient-Jane-Doe``; no file sleepstage writes may say it.
Older model files, checkpoints and run folders, which hold the dataset's absolute path, still work and are
shown by folder name only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli

from sleepstage_cli.data.dataset import MANIFEST, PreparedDataset, write_night
from sleepstage_cli.digests import file_sha256
from sleepstage_cli.model.modelfile import load_model
from sleepstage_cli.model.modelmeta import peek_metadata
from sleepstage_cli.training.train import Callbacks, TrainingInterrupted, TrainOptions, train_model

MARKER = "patient-Jane-Doe"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
TINY = TrainOptions(seq_len=5, batch_size=8, epochs=1, max_steps=2, eval_every=2, seed=0, device="cpu")
TINY_CLI = ["--epochs", "1", "--max-steps", "2", "--seq-len", "5", "--batch-size", "8", "--eval-every", "2",
            "--seed", "0", "--device", "cpu"]


def copy_dataset(src: Path, dst: Path) -> Path:
    """A prepared dataset copied elsewhere (its spectrogram cache too: training need not compute it again)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def texts_under(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the members of zip archives, a model file's, unpacked too)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == ".lock":
            continue
        out[str(p.relative_to(folder))] = p.read_bytes()
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as archive:
                for name in archive.namelist():
                    out[f"{p.relative_to(folder)}:{name}"] = archive.read(name)
    return out


def assert_says_none_of(files: dict[str, bytes], *secrets: str) -> None:
    for name, data in files.items():
        for secret in secrets:
            assert secret.encode() not in data, f"{name} says {secret!r}"


@pytest.fixture(scope="module")
def private(trained, tmp_path_factory) -> dict:
    """The trained fixture's dataset in a patient's folder, and a model trained on it a few steps."""
    home = tmp_path_factory.mktemp("home") / MARKER
    data = copy_dataset(trained["data"], home / "data")
    model = home / "models" / "model.pt"
    train_model(data, model, TINY, val_subjects=["01-03-0005"])
    return {"home": home, "data": data, "model": model, "held_out": trained["held_out"]}


def test_model_file_names_its_dataset_by_folder_name_and_content(private) -> None:
    model, home = private["model"], private["home"]
    assert_says_none_of(texts_under(model.parent), MARKER, str(home))  # model file, model.train.json/.csv
    meta = peek_metadata(model)
    assert MARKER not in json.dumps(meta)
    recorded = meta["training"]["dataset"]
    assert recorded["name"] == "data" and HEX64.match(recorded["sha256"])
    assert recorded == PreparedDataset(private["data"]).identity() == load_model(model).meta["training"]["dataset"]
    assert json.loads(model.with_name("model.train.json").read_text())["model"] == "model.pt"


def test_dataset_digest_follows_content_not_place(private, tmp_path: Path) -> None:
    identity = PreparedDataset(private["data"]).identity()
    manifest = json.loads((private["data"] / MANIFEST).read_text())
    for night in manifest["nights"]:  # prepare recorded each night file's digest as it wrote it
        assert night["sha256"] == file_sha256(private["data"] / night["file"])

    moved = copy_dataset(private["data"], tmp_path / "elsewhere" / "data")
    assert PreparedDataset(moved).identity() == identity
    renamed = moved.rename(tmp_path / "elsewhere" / "renamed")
    assert PreparedDataset(renamed).identity() == {"name": "renamed", "sha256": identity["sha256"]}

    # A dataset prepared before night digests were recorded: they are computed from the files, same digest.
    legacy = copy_dataset(private["data"], tmp_path / "legacy" / "data")
    old = json.loads((legacy / MANIFEST).read_text())
    for night in old["nights"]:
        del night["sha256"]
    (legacy / MANIFEST).write_text(json.dumps(old))
    assert PreparedDataset(legacy).identity() == identity
    # ... and one night's label changed changes it.
    first = PreparedDataset(legacy).nights[0]
    rec = np.load(legacy / first.file, mmap_mode="r+")
    rec["label"][0] = (int(rec["label"][0]) + 1) % 5
    rec.flush()
    del rec
    changed = PreparedDataset(legacy).identity()
    assert changed["name"] == "data" and HEX64.match(changed["sha256"]) and changed["sha256"] != identity["sha256"]

    # The same change written as prepare writes a night (its digest recorded in the manifest).
    again = copy_dataset(private["data"], tmp_path / "again" / "data")
    ds = PreparedDataset(again)
    rec = np.array(ds.open(first.id))
    labels = rec["label"].copy()
    labels[0] = (int(labels[0]) + 1) % 5
    digest = write_night(again / first.file, rec["x"], rec["onset"], labels)
    assert digest == file_sha256(again / first.file)  # the bytes as written are the bytes on disk
    manifest = json.loads((again / MANIFEST).read_text())
    next(n for n in manifest["nights"] if n["id"] == first.id)["sha256"] = digest
    (again / MANIFEST).write_text(json.dumps(manifest))
    assert PreparedDataset(again).identity() == changed


def test_staging_report_names_the_model_file_and_dataset_without_paths(private, tmp_path: Path) -> None:
    out = tmp_path / "scored"
    proc = run_cli("score", private["held_out"], "-o", out / "night.csv", "--model", private["model"])
    assert proc.returncode == 0, proc.stderr
    files = texts_under(out)
    assert {"night.csv", "night.report.html"} <= set(files), sorted(files)
    assert_says_none_of(files, MARKER, str(private["model"].parent), str(private["home"]))
    html = files["night.report.html"].decode()
    short = file_sha256(private["model"])[:12]
    dataset = PreparedDataset(private["data"]).identity()
    assert f"model.pt (sha256 {short})" in html
    assert f"nights of data (sha256 {dataset['sha256'][:12]})" in html
    assert str(private["held_out"].parent) not in html and private["held_out"].name in html  # the file, no folder


def test_crossval_run_folder_holds_no_path(private, tmp_path: Path) -> None:
    home, data = private["home"], private["data"]
    subjects = PreparedDataset(data).subjects
    split = home / "splits" / "mine.json"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps({"folds": [{"test": subjects[:2], "val": subjects[2:3]},
                                           {"test": subjects[2:4], "val": subjects[4:5]}]}))
    run = home / "cv-run"
    args = ["crossval", data, "-o", run, "--split", split, *TINY_CLI]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    files = texts_under(run)
    assert {"crossval.json", "split.json", "crossval.log", "evaluation/metrics.json", "evaluation/per_night.csv",
            "evaluation/report.html", "fold-01/metrics.json", "fold-01/model.pt"} <= set(files), sorted(files)
    assert_says_none_of(files, MARKER, str(home), str(home.parents[1]))  # nor the folder of every test file
    identity = PreparedDataset(data).identity()
    described = json.loads(files["crossval.json"])
    assert described["dataset"] == identity and described["split_made_by"] == {"file": "mine.json",
                                                                               "sha256": file_sha256(split)}
    assert json.loads(files["split.json"])["dataset"] == identity
    metrics = json.loads(files["evaluation/metrics.json"])
    assert metrics["reference"] == identity and metrics["prediction"] == "predictions"
    assert metrics["crossval"]["run"] == "cv-run"
    assert {n["prediction"] for n in metrics["per_night"]} == {f"{n['night']}.csv" for n in metrics["per_night"]}

    # A run folder of an older sleepstage names the dataset by its absolute path: the same command resumes it
    # (finished folds kept) when the folder name is the same, and names the dataset as this version does.
    # Its digest (over the identity with the path) differs from this version's: its DONE markers hold it.
    models = {p: p.stat().st_mtime_ns for p in run.glob("fold-*/model.pt")}
    older = {**described, "dataset": f"/home/someone/{MARKER}/data", "command": f"sleepstage crossval {data}",
             "digest": "0123456789abcdef"}
    (run / "crossval.json").write_text(json.dumps(older))
    for done in run.glob("fold-*/DONE"):
        done.write_text(json.dumps({**json.loads(done.read_text()), "digest": "0123456789abcdef"}))
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "2 of 2 folds already finished" in proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in run.glob("fold-*/model.pt")} == models
    resumed = json.loads((run / "crossval.json").read_text())
    assert resumed["dataset"] == identity and resumed["digest"] == "0123456789abcdef"
    assert MARKER not in json.dumps(resumed)
    # ... and refuses it, as before, when the dataset is another.
    (run / "crossval.json").write_text(json.dumps({**older, "dataset": "/home/someone/other"}))
    assert_clean_error(run_cli(*args), "another dataset (other, now data (sha256 ")


def test_older_model_file_with_a_dataset_path_loads_scores_and_shows_the_folder_name(private,
                                                                                      tmp_path: Path) -> None:
    payload = torch.load(private["model"], map_location="cpu", weights_only=True)
    payload["training"]["dataset"] = "/home/someone/patient-x/data"
    older = tmp_path / "older.pt"
    torch.save(payload, older)
    assert load_model(older).meta["training"]["dataset"] == "/home/someone/patient-x/data"
    out = tmp_path / "scored"
    proc = run_cli("score", private["held_out"], "-o", out / "night.csv", "--model", older)
    assert proc.returncode == 0, proc.stderr
    html = (out / "night.report.html").read_text()
    assert re.search(r"nights of data</td>", html), html
    assert_says_none_of(texts_under(out), "patient-x", "/home/someone", str(tmp_path))


def test_checkpoint_of_an_older_sleepstage_resumes(private, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    ckpt = out.with_name("m.pt.ckpt")

    class Stop(Callbacks):  # Ctrl-C during the first step: a checkpoint is left behind
        def step(self, step, loss, rate, pass_index):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train_model(private["data"], out, TINY, callbacks=Stop(), val_subjects=["01-03-0005"])
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert MARKER not in json.dumps(state["fingerprint"])
    assert state["fingerprint"]["dataset"] == PreparedDataset(private["data"]).identity()
    for where, resumes in (("/somewhere/else/other", False), (f"/home/someone/{MARKER}/data", True)):
        state["fingerprint"]["dataset"] = where  # how an older sleepstage recorded it
        torch.save(state, ckpt)
        if resumes:
            result = train_model(private["data"], out, TINY, resume=True, val_subjects=["01-03-0005"])
            assert result.steps == 2 and out.exists() and not ckpt.exists()
        else:
            with pytest.raises(Exception, match="other options, data or split"):
                train_model(private["data"], out, TINY, resume=True, val_subjects=["01-03-0005"])
