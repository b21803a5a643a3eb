"""Faults of issue 11 around score, evaluate and the hypnogram/layout readers: a command's output never
replaces its input, workers die with a killed score, a killed folder score finishes when run again,
numbered and European CSV hypnograms, macOS junk and renamed links, errors said once, option ranges."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, run_cli, write_edf, write_hypnogram_edf

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.hypnogram import read_hypnogram
from sleepstage_cli.stages import UNSCORED

W, N1, N2, N3, R = range(5)


def _nights(trained, folder: Path, codes=("0004", "0005", "0006"), name=None) -> list[Path]:
    """Links to simulated MASS recordings (1 h each) in ``folder``, named ``name(code)`` if given."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for code in codes:
        link = folder / (name(code) if name else f"01-03-{code} PSG.edf")
        link.symlink_to(trained["sim"] / f"01-03-{code} PSG.edf")
        links.append(link)
    return links


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- item 2: outputs vs inputs

def test_score_never_replaces_its_epochs_from_hypnogram(trained, tmp_path: Path) -> None:
    night = _nights(trained, tmp_path, ["0006"], name=lambda code: "n.edf")[0]
    expert = tmp_path / "n.csv"
    expert.write_text("onset,duration,stage\n0,30,W\n30,30,N1\n60,60,N2\n")
    for force in ([], ["--force"]):
        proc = run_cli("score", night, "-o", expert, "--epochs-from", expert, "--model", trained["model"], *force)
        assert_clean_error(proc, f"cannot write output {expert}", "one of this command's inputs",
                           "--force never replaces an input")
    assert expert.read_text() == "onset,duration,stage\n0,30,W\n30,30,N1\n60,60,N2\n"
    assert not (tmp_path / "n.report.html").exists()


def test_score_folder_into_itself_keeps_the_expert_files(trained, tmp_path: Path) -> None:
    """The generic layout's <night>.csv beside <night>.edf is the expert's: never the output, even with
    --force. Without such files, scoring a folder into itself works, and so does running it again."""
    data = tmp_path / "lab"
    _nights(trained, data, ["0005", "0006"], name=lambda code: f"n{code[-1]}.edf")
    (data / "n5.csv").write_text("W\nN1\nN2\n")
    before = _files(data)
    proc = run_cli("score", data, "-o", data, "--model", trained["model"], "--force")
    assert_clean_error(proc, str(data / "n5.csv"), "would replace a file in one of this command's inputs")
    assert _files(data) == before  # nothing written: not n6's files either, nor a summary

    (data / "n5.csv").unlink()
    proc = run_cli("score", data, "-o", data, "--model", trained["model"], "--no-report")
    assert proc.returncode == 0, proc.stderr
    scored = _files(data)
    assert {"n5.csv", "n6.csv", "summary.csv"} <= set(scored)
    for force in ([], ["--force"]):  # the earlier run's complete outputs are kept, not refused nor rewritten
        proc = run_cli("score", data, "-o", data, "--model", trained["model"], "--no-report", *force)
        assert proc.returncode == 0, proc.stderr
        assert "2 night(s) already scored" in proc.stderr
        assert _files(data) == scored


# --------------------------------------------------------------------------- item 3: kill -9 of a folder score

def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), fields[0])
    return out


def _descendants(pid: int) -> set[int]:
    table, found, todo = _parents(), set(), [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, (pp, _) in table.items() if pp == parent}
        todo.extend(kids - found)
        found |= kids
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _parents()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_folder_score_leaves_no_worker_and_the_same_command_finishes(trained, tmp_path: Path) -> None:
    nights, out = tmp_path / "nights", tmp_path / "scored"
    _nights(trained, nights, ("0003", "0004", "0005", "0006"))
    args = ["score", nights, "-o", out, "--model", trained["model"], "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "sleepstage_cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        # killed once its read-ahead worker runs and the first night is written, with more to do
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            workers = _descendants(proc.pid)
            if workers and (out / "01-03-0003.csv").exists():
                break
            time.sleep(0.01)
        assert proc.poll() is None and workers, "the score ended before it could be killed"
        workers = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), "workers outlived the killed score"
    finally:
        for pid in _alive(workers):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(list(out.glob("*.csv"))) < 5  # not finished (4 nights and the summary)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["night"]) == [f"01-03-000{i}" for i in range(3, 7)]
    for i in range(3, 7):
        assert (out / f"01-03-000{i}.csv").exists() and (out / f"01-03-000{i}.report.html").exists()


def test_half_finished_folder_is_finished_without_force(trained, tmp_path: Path) -> None:
    """What a kill leaves: nights complete, one night's files half written, one not started."""
    nights, out = tmp_path / "nights", tmp_path / "scored"
    _nights(trained, nights)
    args = ("score", nights, "-o", out, "--model", trained["model"], "--device", "cpu")
    assert run_cli(*args).returncode == 0
    (out / "01-03-0005.report.html").unlink()  # killed while writing this night
    for p in out.glob("01-03-0006.*"):  # killed before this one
        p.unlink()
    complete = (out / "01-03-0004.csv").read_bytes(), (out / "01-03-0004.report.html").read_bytes()

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "1 night(s) already scored" in proc.stderr
    assert ((out / "01-03-0004.csv").read_bytes(), (out / "01-03-0004.report.html").read_bytes()) == complete
    for code in ("0004", "0005", "0006"):
        assert (out / f"01-03-{code}.csv").exists() and (out / f"01-03-{code}.report.html").exists()
    assert sorted(pd.read_csv(out / "summary.csv")["night"]) == ["01-03-0004", "01-03-0005", "01-03-0006"]


# --------------------------------------------------------------------------- items 7 and 13: CSV hypnograms

def test_numbered_epochs_keep_their_place(tmp_path: Path) -> None:
    """Epochs 11-15 missing: later epochs stay at their own times, the gap is unscored; 1-based unless the
    first epoch is 0."""
    p = tmp_path / "numbered.csv"
    numbers = [*range(1, 11), *range(16, 21)]
    p.write_text("Epoch,Stage\n" + "".join(f"{n},{'N2' if n < 11 else 'REM'}\n" for n in numbers))
    hyp = read_hypnogram(p)
    np.testing.assert_allclose(hyp.onsets, 30.0 * np.arange(20))
    assert hyp.stages.tolist() == [N2] * 10 + [UNSCORED] * 5 + [R] * 5
    assert any("5 unannotated epoch(s) from 300 s" in n for n in hyp.notes)

    zero = tmp_path / "zero.tsv"
    zero.write_text("epoch\tstage\n0\tW\n1\tN1\n3\tN3\n")
    hyp = read_hypnogram(zero)
    np.testing.assert_allclose(hyp.onsets, [0, 30, 60, 90])
    assert hyp.stages.tolist() == [W, N1, UNSCORED, N3]


@pytest.mark.parametrize("rows, message", [
    ("1,W\n2,N1\n\n2,N2\n", "line 5: epoch number 2 is given twice"),
    ("1,W\n3,N1\n2,N2\n", "line 4: epoch number 2 is lower than the one before it (3)"),
    ("1,W\n2.5,N1\n", "line 3: epoch number '2.5' is not a whole number"),
])
def test_numbered_epochs_out_of_order_name_the_line(tmp_path: Path, rows: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("Epoch,Stage\n" + rows)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_hypnogram(p)
    assert str(p) in str(exc.value)


def test_semicolon_separated_csv_with_decimal_commas(tmp_path: Path) -> None:
    p = tmp_path / "europe.csv"
    p.write_text("Onset;Duration;Stage\n0,5;30;W\n30,5;60;N2\n90,5;30,0;REM\n", encoding="utf-8")
    hyp = read_hypnogram(p)
    np.testing.assert_allclose(hyp.onsets, [0.5, 30.5, 60.5, 90.5])
    assert hyp.stages.tolist() == [W, N2, N2, R]
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("Epoch;Stage\n1;W\n3;N2\n")
    assert read_hypnogram(numbered).stages.tolist() == [W, UNSCORED, N2]


# --------------------------------------------------------------------------- item 14: one rule for folders

def test_score_folder_ignores_macos_appledouble_files(trained, tmp_path: Path) -> None:
    nights, out = tmp_path / "nights", tmp_path / "scored"
    _nights(trained, nights, ["0006"])
    (nights / "._01-03-0006 PSG.edf").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4000))
    proc = run_cli("score", nights, "-o", out, "--model", trained["model"], "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["01-03-0006.csv", "summary.csv"]
    assert "._" not in proc.stderr


def test_prepare_pairs_a_renamed_link_by_its_own_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = write_edf(elsewhere / "other.edf", {"EEG": (30 * rng.standard_normal(100 * 600), 100)})
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "renamed PSG.edf").symlink_to(target)
    (lab / "renamed.csv").write_text("".join(f"{s}\n" for s in ["W", "N1", "N2", "N3", "REM"] * 4))
    out = tmp_path / "data"
    proc = run_cli("prepare", lab, "-o", out, "--eeg", "EEG", "--min-hours", "0")
    assert proc.returncode == 0, proc.stderr
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert [n["id"] for n in manifest["nights"]] == ["renamed"]
    assert manifest["nights"][0]["n_epochs"] == 20
    # the same file given twice (its link's folder and the file itself) is still one night
    proc = run_cli("prepare", lab, lab / "renamed PSG.edf", "-o", tmp_path / "data2", "--eeg", "EEG",
                   "--min-hours", "0")
    assert proc.returncode == 0, proc.stderr
    assert [n["id"] for n in json.loads((tmp_path / "data2" / "manifest.json").read_text())["nights"]] == ["renamed"]


# --------------------------------------------------------------------------- item 15: errors said once, and why

def test_a_score_error_is_said_once(trained, tmp_path: Path) -> None:
    hyp = write_hypnogram_edf(tmp_path / "only.edf", [(0, 30, "Sleep stage W")])
    proc = run_cli("score", hyp, "-o", tmp_path / "x.csv", "--model", trained["model"])
    assert_clean_error(proc, str(hyp), "holds no signals")
    assert proc.stderr.count("holds no signals") == 1 and "warning" not in proc.stderr

    nights = tmp_path / "nights"
    _nights(trained, nights, ["0006"])
    bad = nights / "01-03-0001 PSG.edf"
    bad.write_bytes((trained["sim"] / "01-03-0001 PSG.edf").read_bytes()[:5000])  # truncated
    proc = run_cli("score", nights, "-o", tmp_path / "scored", "--model", trained["model"], "--no-report")
    assert_clean_error(proc, "1 of 2 nights could not be scored", str(bad))
    reasons = [ln for ln in proc.stderr.splitlines() if "not scored:" in ln]
    assert len(reasons) == 1 and str(bad) in reasons[0]
    reason = reasons[0].split(f"{bad}: ", 1)[1]
    assert proc.stderr.count(reason) == 1  # the error line points at the warning, it does not repeat it
    assert (tmp_path / "scored" / "01-03-0006.csv").exists()


def test_prepare_on_a_hypnogram_only_file_says_so(trained, tmp_path: Path) -> None:
    base = shutil.copy(trained["sim"] / "01-03-0001 Base.edf", tmp_path / "01-03-0001 Base.edf")
    proc = run_cli("prepare", base, "-o", tmp_path / "data", "--eeg", "EEG")
    assert_clean_error(proc, str(base), "holds only annotations (a hypnogram)",
                       "no recording was found to pair it with")


# --------------------------------------------------------------------------- item 11: option ranges

@pytest.mark.parametrize("args, option, bound", [
    (("score", "n.edf", "-o", "x.csv", "--batch-size", "0"), "--batch-size", "greater than or equal to 1"),
    (("score", "n.edf", "-o", "x.csv", "--batch-size", "-5"), "--batch-size", "greater than or equal to 1"),
    (("score", "n.edf", "-o", "x.csv", "--low-confidence", "1.5"), "--low-confidence", "less than or equal to 1"),
    (("evaluate", "p.csv", "r.csv", "-o", "ev", "--epoch-length", "0"), "--epoch-length",
     "greater than or equal to 20"),
    (("evaluate", "p.csv", "r.csv", "-o", "ev", "--tolerance", "-1"), "--tolerance", "greater than or equal to 0"),
])
def test_numeric_options_are_refused_out_of_range(tmp_path: Path, args: tuple, option: str, bound: str) -> None:
    for name in ("p.csv", "r.csv"):
        (tmp_path / name).write_text("W\nN1\nN2\n")
    write_edf(tmp_path / "n.edf", {"EEG": (np.zeros(100 * 60), 100)})
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if f"'{option}'" in ln)
    assert bound in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.edf", "p.csv", "r.csv"]


@pytest.mark.parametrize("args, message", [
    (("--tolerance", "20"), "--tolerance must be at least 0 s and below half an epoch (15 s)"),
    (("--epoch-length", "25"), "--epoch-length takes 30 or 20 (seconds)"),
])
def test_evaluate_options_are_checked_before_reading(tmp_path: Path, args: tuple, message: str) -> None:
    proc = run_cli("evaluate", tmp_path / "missing.csv", tmp_path / "missing-too.csv", "-o", tmp_path / "ev", *args)
    assert_clean_error(proc, message)
