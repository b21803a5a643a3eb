"""The authors' published cross-validation splits, shipped in the package and used by name in `sleepstage crossval`.

The expected folds are worked out here from the shipped files with the rule of SPEC.md (their nKK_N is
night N of the KK-th existing Sleep-EDF SC subject), independently of the code under test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from conftest import assert_clean_error

from sleepstage_cli.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("mass-paper", "sleepedf-20", "sleepedf-78")
COMMIT = "7a2248e78cf8f12ae6d2ae5041bb30ac3133bf29"


def cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command line in a fresh process, on an 80-column terminal."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sleepstage_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def shipped(name: str) -> bytes:
    return resources.files("sleepstage_cli.training").joinpath("reference_split_files", f"{name}.json").read_bytes()


def split_of(name: str) -> dict:
    return json.loads(shipped(name))


def subject_of_night(name: str) -> str:
    """Sleep-EDF-20 names only (n01-n20: subjects 0-19, no absent subject number below 39)."""
    kk = int(name[1:3])
    assert 1 <= kk <= 20
    return f"SC4{kk - 1:02d}"


def sedf_id(name: str) -> str:
    return f"SC4{int(name[1:3]) - 1:02d}{name[-1]}"


# --------------------------------------------------------------------------- the name mapping

@pytest.mark.parametrize("theirs, ours", [("n01_1", "SC4001"), ("n01_2", "SC4002"), ("n14_1", "SC4131"),
                                          ("n37_2", "SC4362"), ("n39_1", "SC4381"), ("n40_1", "SC4401"),
                                          ("n52_2", "SC4522"), ("n67_1", "SC4671"), ("n68_1", "SC4701"),
                                          ("n75_2", "SC4772"), ("n76_1", "SC4801"), ("n78_2", "SC4822")])
def test_sleepedf_names_map_to_our_night_ids(theirs: str, ours: str) -> None:
    from sleepstage_cli.training.reference_splits import night_id, sleepedf_night_id

    assert sleepedf_night_id(theirs) == ours
    assert night_id("sleepedf-78", theirs) == ours
    assert night_id("mass", "01-03-0001") == "01-03-0001"  # MASS: the code is the night (and subject) id


def test_sleepedf_subject_numbers_skip_the_absent_ones() -> None:
    from sleepstage_cli.training.reference_splits import SEDF_SUBJECTS, sleepedf_night_id

    assert len(SEDF_SUBJECTS) == 78 and not {39, 68, 69, 78, 79} & set(SEDF_SUBJECTS)
    ids = [sleepedf_night_id(n) for n in split_of("sleepedf-78")["epochs"]]
    assert len(set(ids)) == 153
    assert {f"SC4{s:02d}{k}" for s in SEDF_SUBJECTS for k in (1, 2)} - set(ids) == {"SC4132", "SC4361", "SC4521"}
    for bad in ("n00_1", "n79_1", "n01_3", "SC4001", "n1_1"):
        with pytest.raises(InputError):
            sleepedf_night_id(bad)


# --------------------------------------------------------------------------- the shipped files

@pytest.mark.parametrize("name", NAMES)
def test_shipped_file_loads_with_its_credit(name: str) -> None:
    from sleepstage_cli.training.reference_splits import read_reference

    data = split_of(name)
    assert data["source"].startswith(f"pquochuy/xsleepnet@{COMMIT} ")
    for needle in ("Phan", "SeqSleepNet", "IEEE", "2019", "xsleepnet", COMMIT):
        assert needle in data["credit"], needle
    assert read_reference(name) == (data, hashlib.sha256(shipped(name)).hexdigest())
    # The wheel carries them: the package folder, and the files named as artifacts (never left out).
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "sleepstage_cli" in wheel["packages"]
    assert "sleepstage_cli/training/reference_split_files/*.json" in wheel["artifacts"]


@pytest.mark.parametrize("name, nights, folds, epochs", [("mass-paper", 200, 20, 228_870),
                                                          ("sleepedf-20", 39, 20, 38_155),
                                                          ("sleepedf-78", 153, 10, 155_055)])
def test_shipped_split_is_self_consistent(name: str, nights: int, folds: int, epochs: int) -> None:
    data = split_of(name)
    everything = set(data["epochs"])
    assert len(everything) == nights and sum(data["epochs"].values()) == epochs and len(data["folds"]) == folds
    tests = [set(f["test"]) for f in data["folds"]]
    assert set().union(*tests) == everything  # the test sets partition the nights
    assert all(not (a & b) for a, b in itertools.combinations(tests, 2))
    subject = (lambda n: n) if name == "mass-paper" else (lambda n: n[:3])
    for f in data["folds"]:
        sides = [set(f[k]) for k in ("test", "val", "train")]
        assert sum(map(len, sides)) == nights and set().union(*sides) == everything
        by_subject = [{subject(n) for n in side} for side in sides]  # a subject's nights on one side
        assert all(not (a & b) for a, b in itertools.combinations(by_subject, 2))
        if name == "mass-paper":
            assert [len(s) for s in sides] == [10, 10, 180]


# --------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def sedf(tmp_path_factory) -> dict:
    """The 39 Sleep-EDF-20 nights (SC4132 does not exist), prepared; and the same without SC4052 and SC4131."""
    from sleepstage_cli.simulate import simulate

    root = tmp_path_factory.mktemp("refsplit-sedf")
    sim = root / "sim"
    simulate(sim, nights=40, layout="sleep-edf", seed=3, hours=0.5)
    for p in sim.glob("SC4132*"):
        p.unlink()
    fewer = root / "fewer"
    fewer.mkdir()
    for p in sim.glob("*.edf"):
        if not p.name.startswith(("SC4052", "SC4131")):
            (fewer / p.name).symlink_to(p)
    for src, out in ((sim, "data"), (fewer, "data-fewer")):
        proc = cli("prepare", src, "-o", root / out, "--channels", "eeg,eog")
        assert proc.returncode == 0, proc.stderr
    return {"root": root, "data": root / "data", "fewer": root / "data-fewer"}


@pytest.fixture(scope="module")
def sedf20(sedf: dict) -> dict:
    run = sedf["root"] / "run"
    proc = cli("crossval", sedf["data"], "--split", "sleepedf-20", "--split-only", "-o", run)
    return {"run": run, "proc": proc}


def test_sleepedf20_folds_are_the_authors_by_subject(sedf: dict, sedf20: dict) -> None:
    proc, run = sedf20["proc"], sedf20["run"]
    assert proc.returncode == 0, proc.stderr
    written = json.loads((run / "split.json").read_text())
    assert list(written) == ["format", "format_version", "sleepstage_version", "dataset", "made_by", "subjects",
                             "folds", "reference"]
    expected = [{"fold": i, **{k: sorted({subject_of_night(n) for n in f[k]}) for k in ("test", "val", "train")}}
                for i, f in enumerate(split_of("sleepedf-20")["folds"], 1)]
    assert written["folds"] == expected and len(expected) == 20
    assert written["subjects"] == [f"SC4{s:02d}" for s in range(20)]
    made_by = {"reference": "sleepedf-20", "sha256": hashlib.sha256(shipped("sleepedf-20")).hexdigest()}
    assert written["made_by"] == made_by
    assert json.loads((run / "crossval.json").read_text())["split_made_by"] == made_by
    assert not any(run.glob("fold-*"))


def test_sleepedf20_epoch_counts_are_compared_shown_and_recorded(sedf: dict, sedf20: dict) -> None:
    from sleepstage_cli.data.dataset import PreparedDataset

    proc, run = sedf20["proc"], sedf20["run"]
    theirs = split_of("sleepedf-20")["epochs"]
    ours = {n.id: n.n_epochs for n in PreparedDataset(sedf["data"]).nights}
    ref = json.loads((run / "split.json").read_text())["reference"]
    assert ref["name"] == "sleepedf-20" and ref["nights_missing"] == [] and ref["folds_skipped"] == []
    assert ref["source"] == split_of("sleepedf-20")["source"] and "SeqSleepNet" in ref["credit"]
    assert ref["epoch_counts"] == [{"night": n, "id": sedf_id(n), "split": theirs[n], "ours": ours[sedf_id(n)],
                                    "difference": ours[sedf_id(n)] - theirs[n]} for n in sorted(theirs)]
    differ = [r for r in ref["epoch_counts"] if r["difference"]]
    assert len(differ) == 39  # half-hour simulated nights
    row = next(ln for ln in proc.stdout.splitlines() if "n14_1" in ln)
    assert "SC4131" in row and f"{theirs['n14_1']:,}" in row and f"{ours['SC4131'] - theirs['n14_1']:+,}" in row
    assert len(re.findall(r"^│ n\d\d_\d +│ SC4\d{3} +│", proc.stdout, re.MULTILINE)) == 39
    assert max(len(ln) for ln in proc.stdout.splitlines()) <= 80
    total = sum(ours.values())
    assert (f"epoch counts: 0 of 39 night(s) match the sleepedf-20 split exactly; total epochs ours {total:,} vs "
            f"theirs 38,155") in proc.stderr


def test_the_same_command_resumes_and_another_split_is_refused(sedf: dict, sedf20: dict) -> None:
    run = sedf20["run"]
    before = (run / "split.json").read_text()
    again = cli("crossval", sedf["data"], "--split", "sleepedf-20", "--split-only", "-o", run)
    assert again.returncode == 0, again.stderr
    assert "resumed by pid" in (run / "crossval.log").read_text().splitlines()[-1]
    assert (run / "split.json").read_text() == before
    other = cli("crossval", sedf["data"], "--split", "sleepedf-78", "--allow-missing", "--split-only", "-o", run)
    assert_clean_error(other, "--split sleepedf-20 (now sleepedf-78)", "--force")
    assert "sha256" not in other.stderr
    made = cli("crossval", sedf["data"], "--folds", 5, "--split-only", "-o", run)
    assert_clean_error(made, "another split (made by --split sleepedf-20 then, by --folds now)")


def test_missing_nights_are_refused_by_name(sedf: dict) -> None:
    run = sedf["root"] / "refused"
    proc = cli("crossval", sedf["fewer"], "--split", "sleepedf-20", "--split-only", "-o", run)
    assert_clean_error(proc, "lacks 2 of the 39 nights", "n06_2 = SC4052", "n14_1 = SC4131", "--allow-missing")
    assert not run.exists()


def test_allow_missing_says_what_each_fold_lacks_and_skips_a_fold_without_test_nights(sedf: dict) -> None:
    from sleepstage_cli.training.split import load_split

    run = sedf["root"] / "allowed"
    proc = cli("crossval", sedf["fewer"], "--split", "sleepedf-20", "--allow-missing", "--split-only", "-o", run)
    assert proc.returncode == 0, proc.stderr
    gone = {"n06_2", "n14_1"}
    folds = split_of("sleepedf-20")["folds"]
    for i, f in enumerate(folds, 1):
        lost = [len(gone & set(f[k])) for k in ("test", "val", "train")]
        counts = (f"{lost[0]} of {len(f['test'])} test, {lost[1]} of {len(f['val'])} validation, {lost[2]} of "
                  f"{len(f['train'])} training nights")
        if set(f["test"]) <= gone:
            assert f"warning: fold {i} skipped: none of its test nights is in the dataset ({counts}" in proc.stderr
        else:
            assert f"warning: fold {i}: {counts} of the split missing" in proc.stderr
    skipped = [i for i, f in enumerate(folds, 1) if set(f["test"]) <= gone]
    assert skipped == [14]
    written = json.loads((run / "split.json").read_text())
    assert [f["fold"] for f in written["folds"]] == [i for i in range(1, 21) if i != 14]  # the authors' numbers
    assert written["reference"]["nights_missing"] == ["n06_2", "n14_1"]
    assert written["reference"]["folds_skipped"] == [14]
    assert "SC413" not in written["subjects"] and "SC405" in written["subjects"]  # SC4051 is still there
    assert len(written["reference"]["epoch_counts"]) == 37
    assert "over these nights; all 39 of the split: 38,155" in proc.stderr
    # Reading the run's split.json back keeps the authors' fold numbers.
    from sleepstage_cli.data.dataset import PreparedDataset

    again = load_split(run, PreparedDataset(sedf["fewer"]).subjects)
    assert [f.to_json() for f in again.folds] == written["folds"]


def test_a_path_wins_over_a_name_and_allow_missing_needs_a_name(sedf: dict, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from sleepstage_cli.training.crossval import plan_run
    from sleepstage_cli.training.train import TrainOptions

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sleepedf-20").write_text(json.dumps({"folds": [{"test": ["SC400"], "val": ["SC401"]}]}))
    plan = plan_run(sedf["data"], tmp_path / "run", TrainOptions(), split_file="sleepedf-20")
    assert plan.split.made_by["file"] == "sleepedf-20" and len(plan.split.folds) == 1
    assert plan.split.reference is None
    with pytest.raises(InputError, match="--allow-missing goes with a reference split"):
        plan_run(sedf["data"], tmp_path / "run", TrainOptions(), split_file="sleepedf-20", allow_missing=True)
    (tmp_path / "sleepedf-20").unlink()
    plan = plan_run(sedf["data"], tmp_path / "run", TrainOptions(), split_file="sleepedf-20")
    assert plan.split.made_by["reference"] == "sleepedf-20" and len(plan.split.folds) == 20
    with pytest.raises(InputError, match="split file not found .the reference splits are named mass-paper"):
        plan_run(sedf["data"], tmp_path / "run", TrainOptions(), split_file="sleepedf-21")


def test_a_split_of_another_dataset_is_refused(sedf: dict) -> None:
    proc = cli("crossval", sedf["data"], "--split", "mass-paper", "--allow-missing", "--split-only", "-o",
               sedf["root"] / "wrong")
    assert_clean_error(proc, "holds none of the 200 nights of the mass-paper split", "--layout mass")


def test_mass_paper_on_a_small_mass_dataset_needs_allow_missing(tmp_path: Path) -> None:
    from sleepstage_cli.simulate import simulate

    simulate(tmp_path / "sim", nights=3, layout="mass", subset="SS3", seed=5, hours=0.5)
    proc = cli("prepare", tmp_path / "sim", "-o", tmp_path / "data", "--min-hours", "0")
    assert proc.returncode == 0, proc.stderr
    args = ["crossval", tmp_path / "data", "--split", "mass-paper", "--split-only", "-o", tmp_path / "run"]
    assert_clean_error(cli(*args), "lacks 197 of the 200 nights of the mass-paper split", "--allow-missing")
    proc = cli(*args, "--allow-missing")
    assert proc.returncode == 0, proc.stderr
    ours = {"01-03-0001", "01-03-0002", "01-03-0003"}
    expected = [{"fold": i, **{k: sorted(ours & set(f[k])) for k in ("test", "val", "train")}}
                for i, f in enumerate(split_of("mass-paper")["folds"], 1) if ours & set(f["test"])]
    written = json.loads((tmp_path / "run" / "split.json").read_text())
    assert written["folds"] == expected and [f["fold"] for f in expected] == [7, 8, 15]
    assert proc.stderr.count("skipped: none of its test nights") == 17
    assert written["reference"]["epochs"]["split_all_nights"] == 228_870
    assert len(written["reference"]["nights_missing"]) == 197


def test_a_fold_without_training_nights_is_skipped_and_split_subjects_are_refused() -> None:
    from sleepstage_cli.training.reference_splits import _fold, sleepedf_night_id

    names = ["n01_1", "n01_2", "n02_1", "n03_1"]
    ids = {n: sleepedf_night_id(n) for n in names}
    subject_of = {"SC4001": "SC400", "SC4002": "SC400", "SC4011": "SC401"}  # no SC4021
    fold, note = _fold(5, {"test": ["n01_1", "n01_2"], "val": ["n02_1"], "train": ["n03_1"]}, ids, subject_of)
    assert fold is None
    assert note == ("fold 5 skipped: none of its training nights is in the dataset (0 of 2 test, 0 of 1 validation, "
                    "1 of 1 training nights missing)")
    fold, note = _fold(6, {"test": ["n02_1"], "val": [], "train": ["n01_1", "n01_2", "n03_1"]}, ids, subject_of)
    assert (fold.index, fold.test, fold.val, fold.train) == (6, ("SC401",), (), ("SC400",))
    assert note == "fold 6: 0 of 1 test, 0 of 0 validation, 1 of 3 training nights of the split missing"
    with pytest.raises(InputError, match="fold 7 of the split puts nights of subject SC400 on both its test and "
                                         "training side"):
        _fold(7, {"test": ["n01_1"], "val": ["n02_1"], "train": ["n01_2"]}, ids, subject_of)
