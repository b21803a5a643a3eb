"""Faults that cost users data or time in `prepare` and prepared datasets (issue 11, items 1, 3, 5, 10, 11, 16)."""

from __future__ import annotations

import errno
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
from conftest import assert_clean_error, run_cli
from typer.testing import CliRunner

from sleepstage_cli.data.dataset import PreparedDataset, write_night
from sleepstage_cli.simulate import simulate

NIGHTS = ["01-03-0001", "01-03-0002", "01-03-0003"]
PREP = ["--min-hours", "0", "-j", "1"]
TRAIN = ["--epochs", "1", "--max-steps", "2", "--seq-len", "10", "--batch-size", "4",
         "--val-subjects", NIGHTS[2], "--eval-every", "1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """Three simulated MASS nights of 15 minutes (three subjects)."""
    folder = tmp_path_factory.mktemp("sim") / "src"
    simulate(folder, nights=3, layout="mass", seed=5, hours=0.25)
    return folder


@pytest.fixture(scope="module")
def prepared(sim, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("prepared") / "data"
    proc = run_cli("prepare", sim, "-o", data, *PREP)
    assert proc.returncode == 0, proc.stderr
    return data


def copy_of(prepared: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    return data


def edit_manifest(data: Path, change) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    change(manifest)
    (data / "manifest.json").write_text(json.dumps(manifest))


def entry(manifest: dict, night: str) -> dict:
    return next(n for n in manifest["nights"] if n["id"] == night)


# ------------------------------------------------------------------ item 1: --force deletes only its own files

def test_force_rebuild_deletes_only_night_files_it_wrote(sim, prepared, tmp_path: Path) -> None:
    data = copy_of(prepared, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victims = {"absolute": elsewhere / "other-dataset-night.npy", "dotdot": tmp_path / "notes.npy",
               "through-nights": tmp_path / "thesis.npy"}
    for path in victims.values():
        path.write_text("not yours")

    def plant(manifest: dict) -> None:
        manifest["nights"] += [
            {**manifest["nights"][0], "id": "abs", "file": str(victims["absolute"])},
            {**manifest["nights"][0], "id": "up", "file": "../notes.npy"},
            {**manifest["nights"][0], "id": "../../thesis", "file": "nights/../../thesis.npy"},
        ]

    edit_manifest(data, plant)
    proc = run_cli("prepare", sim, "-o", data, *PREP, "--force")
    assert proc.returncode == 0, proc.stderr
    for path in victims.values():
        assert path.read_text() == "not yours", path
    assert sorted(n.id for n in PreparedDataset(data).nights) == NIGHTS  # its own nights rebuilt


# ------------------------------------------------------------------ item 3: kill -9 of prepare -j 2

def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _is_worker(pid: int) -> bool:
    try:
        return b"--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left for whoever reaps it


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_kill_9_of_prepare_with_jobs_leaves_no_worker_and_rerun_finishes(tmp_path: Path) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    simulate(src, nights=4, layout="mass", seed=2, hours=0.5)
    cmd = [sys.executable, "-m", "sleepstage_cli", "prepare", str(src), "-o", str(data), "--min-hours", "0",
           "-j", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = [p for p in _children(proc.pid) if _is_worker(p)]
            time.sleep(0.05)
        assert len(workers) == 2, "the pool's workers never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15  # a correctness wait: workers must end, however long it takes them
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived their killed parent"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    rerun = run_cli(*cmd[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert len(PreparedDataset(data).nights) == 4


# ------------------------------------------------------------------ item 5: a full disk stops the run

def _enospc_on_save(monkeypatch, fail_at: int) -> None:
    """np.save (how night files are written) fails with ENOSPC from its ``fail_at``-th call on."""
    real_save, calls = np.save, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) >= fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save)


def test_full_disk_stops_prepare_and_keeps_finished_nights(sim, tmp_path: Path, monkeypatch) -> None:
    from sleepstage_cli.cli.main import app

    data = tmp_path / "data"
    _enospc_on_save(monkeypatch, fail_at=2)
    res = CliRunner().invoke(app, ["prepare", str(sim), "-o", str(data), *PREP], env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    line = errors[0]
    assert "no space left on device" in line.lower() and f"{NIGHTS[1]}.npy" in line
    assert "MB" in line and "run the same command again" in line
    manifest = json.loads((data / "manifest.json").read_text())
    assert [n["id"] for n in manifest["nights"]] == [NIGHTS[0]]
    assert manifest["skipped"] == []  # a full disk is not the night's fault
    assert sorted(p.name for p in (data / "nights").iterdir()) == [f"{NIGHTS[0]}.npy"]  # night 3 never started
    assert not (data / "manifest.journal").exists()


def _mount_tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def test_really_full_disk_stops_prepare_with_workers(sim, prepared, tmp_path: Path) -> None:
    """On a small real file system (tmpfs; skipped where mounting is not allowed), room for one night."""
    night_size = (prepared / "nights" / f"{NIGHTS[0]}.npy").stat().st_size
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, night_size * 3 // 2 + 256 * 1024):
        pytest.skip("cannot mount a tmpfs here")
    try:
        data = disk / "data"
        proc = run_cli("prepare", sim, "-o", data, "--min-hours", "0", "-j", "2")
        assert_clean_error(proc, "No space left on device", "MB)", "run the same command again")
        manifest = json.loads((data / "manifest.json").read_text())
        assert len(manifest["nights"]) == 1 and manifest["skipped"] == []
        assert [p.name for p in (data / "nights").iterdir()] == [Path(manifest["nights"][0]["file"]).name]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# ------------------------------------------------------------------ item 10: a damaged dataset is refused before use

def _other_channels(data: Path) -> str:
    rec = np.load(data / "nights" / f"{NIGHTS[0]}.npy")
    write_night(data / "nights" / f"{NIGHTS[0]}.npy", rec["x"][:, :2], rec["onset"], rec["label"])
    return "holds 2 channel(s) but the dataset has 3"


def _wrong_epoch_count(data: Path) -> str:
    edit_manifest(data, lambda m: entry(m, NIGHTS[0]).update(n_epochs=entry(m, NIGHTS[0])["n_epochs"] + 7))
    return "but the manifest says"


def _shared_file(data: Path) -> str:
    def share(m: dict) -> None:
        first = entry(m, NIGHTS[0])
        entry(m, NIGHTS[1]).update(file=first["file"], n_epochs=first["n_epochs"])

    edit_manifest(data, share)
    return "share one file"


def _listed_twice(data: Path) -> str:
    edit_manifest(data, lambda m: m["nights"].append(dict(entry(m, NIGHTS[0]))))
    return f"lists night '{NIGHTS[0]}' twice"


def _outside_relative(data: Path) -> str:
    shutil.copy(data / "nights" / f"{NIGHTS[0]}.npy", data.parent / "stray.npy")
    edit_manifest(data, lambda m: entry(m, NIGHTS[0]).update(file="../stray.npy"))
    return "outside the dataset folder"


def _outside_absolute(data: Path) -> str:
    shutil.copy(data / "nights" / f"{NIGHTS[0]}.npy", data.parent / "stray.npy")
    edit_manifest(data, lambda m: entry(m, NIGHTS[0]).update(file=str(data.parent / "stray.npy")))
    return "outside the dataset folder"


DAMAGE = {"other-channels": _other_channels, "wrong-epoch-count": _wrong_epoch_count, "shared-file": _shared_file,
          "listed-twice": _listed_twice, "outside-relative": _outside_relative,
          "outside-absolute": _outside_absolute}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_train_refuses_a_damaged_dataset_before_training(prepared, tmp_path: Path, damage: str) -> None:
    data = copy_of(prepared, tmp_path)
    reason = DAMAGE[damage](data)
    model = tmp_path / "m.pt"
    proc = run_cli("train", data, "-o", model, *TRAIN)
    assert_clean_error(proc, reason)
    assert not model.exists() and not list(tmp_path.glob("m.*"))


def test_validation_accepts_a_sound_dataset(prepared) -> None:
    ds = PreparedDataset(prepared)
    assert [n.id for n in ds.nights] == NIGHTS
    assert ds.open(NIGHTS[0]).shape == (ds.nights[0].n_epochs,)


# ------------------------------------------------------------------ item 11: prepare's numeric options

@pytest.mark.parametrize("option, value, allowed", [
    ("--trim-minutes", "-5", "greater than or equal to 0"),
    ("--jobs", "0", "greater than or equal to 1"),
    ("--min-hours", "-1", "greater than or equal to 0"),
    ("--epoch-length", "0", "20 or 30"),
    ("--epoch-length", "-30", "20 or 30"),
])
def test_prepare_refuses_numeric_options_out_of_range(sim, tmp_path: Path, option: str, value: str,
                                                      allowed: str) -> None:
    out = tmp_path / "data"
    proc = run_cli("prepare", sim, "-o", out, "--trim", option, value)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"'{option}'" in proc.stderr and allowed in proc.stderr, proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ item 16: a linear, crash-safe manifest

def _fake_sources(tmp_path: Path, n: int):
    from sleepstage_cli.io.layout import NightSource

    psg = tmp_path / "fake.edf"
    psg.write_bytes(b"")
    return [NightSource(f"n{i:02d}", f"s{i:02d}", psg, psg) for i in range(n)]


def _fake_record(night_id: str) -> dict:
    return {"id": night_id, "subject": night_id, "file": f"nights/{night_id}.npy", "n_epochs": 1,
            "stage_counts": {}, "signal_hours": 0.0}


def _options():
    from sleepstage_cli.data.prepare import PrepareOptions
    from sleepstage_cli.io.channels import build_spec

    return PrepareOptions(layout="generic", spec=build_spec(("eeg",), None, {"eeg": ("C4-M1",)}))


def test_manifest_is_written_a_constant_number_of_times_per_run(tmp_path: Path, monkeypatch) -> None:
    import sleepstage_cli.data.prepare as prep

    writes = []
    real_save = prep.save_manifest
    monkeypatch.setattr(prep, "save_manifest", lambda root, m: (writes.append(1), real_save(root, m)))
    monkeypatch.setattr(prep, "prepare_night", lambda src, opts, root: prep.NightResult(
        src.night_id, src.psg, record=_fake_record(src.night_id)))
    summary = prep.run_prepare(_fake_sources(tmp_path, 30), [], tmp_path / "data", _options(), jobs=1)
    assert len(summary.prepared) == 30
    assert len(writes) <= 3, f"manifest written {len(writes)} times for 30 nights"
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert [n["id"] for n in manifest["nights"]] == [f"n{i:02d}" for i in range(30)]
    assert not (tmp_path / "data" / "manifest.journal").exists()


def test_journal_of_a_killed_run_is_read_and_folded_in(sim, prepared, tmp_path: Path) -> None:
    """A run killed after its last night: the journal has the night, the manifest does not yet."""
    data = copy_of(prepared, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    last = entry(manifest, NIGHTS[2])
    manifest["nights"].remove(last)
    (data / "manifest.json").write_text(json.dumps(manifest))
    torn = json.dumps(entry(manifest, NIGHTS[0]))[:40]  # killed while appending: no whole line
    (data / "manifest.journal").write_text(json.dumps(last) + "\n" + torn)
    night = data / last["file"]
    before = night.stat().st_mtime_ns

    assert [n.id for n in PreparedDataset(data).nights] == NIGHTS  # readers see every finished night

    proc = run_cli("prepare", sim, "-o", data, *PREP)
    assert proc.returncode == 0, proc.stderr
    assert "3 night(s) already prepared" in proc.stderr
    assert night.stat().st_mtime_ns == before  # kept, not prepared again
    assert [n["id"] for n in json.loads((data / "manifest.json").read_text())["nights"]] == NIGHTS
    assert not (data / "manifest.journal").exists()


def test_simulate_force_replaces_only_its_own_files(tmp_path):
    """`simulate --force` deleted the whole output folder; now only the files its simulation.json lists go, a
    manifest pointing outside the folder deletes nothing there, and a folder it never wrote is refused."""
    out = tmp_path / "sim"
    assert run_cli("simulate", out, "--nights", "1", "--hours", "0.25").returncode == 0
    mine = out / "my notes.txt"
    mine.write_text("keep me")
    outside = tmp_path / "outside.edf"
    outside.write_text("not simulate's")
    manifest = json.loads((out / "simulation.json").read_text())
    manifest["nights"].append({"psg": str(outside), "hypnogram": "../outside.edf"})
    (out / "simulation.json").write_text(json.dumps(manifest))

    proc = run_cli("simulate", out, "--nights", "2", "--hours", "0.25", "--layout", "generic", "--force")
    assert proc.returncode == 0, proc.stderr
    assert mine.read_text() == "keep me" and outside.read_text() == "not simulate's"
    assert not list(out.glob("01-03-*")), "the earlier run's MASS files are replaced"
    assert len(json.loads((out / "simulation.json").read_text())["nights"]) == 2

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "01-03-0001 PSG.edf").write_text("a real recording")
    proc = run_cli("simulate", theirs, "--nights", "1", "--hours", "0.25", "--force")
    assert_clean_error(proc, "not written by 'sleepstage simulate'")
    assert (theirs / "01-03-0001 PSG.edf").read_text() == "a real recording"
    proc = run_cli("simulate", out, "--nights", "1", "--layout", "bogus", "--force")
    assert_clean_error(proc, "unknown layout")
    assert mine.exists() and (out / "simulation.json").exists()
