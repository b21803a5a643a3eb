"""Bad input and faults, command by command (the hardening issue's list).

Every case asserts one ``error:`` line naming the file and the reason, a non-zero exit (1, or 130 for an
interrupt), no traceback and no "internal error" (that would be a bug), and that what was already at the
output location is byte-identical afterwards. ``CASES`` at the end lists them, one line each.

Most runs go through the real command line in-process (``cli``: the Typer app with its error policy,
output captured) because a fresh interpreter costs seconds; interrupts and concurrent runs use real
processes. The nights are small and made here (three 10-minute nights, a 2-step model), so the file
does not depend on the session's ``trained`` fixture.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli, write_edf, write_hypnogram_edf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

RATE = 100
CHANNELS = ("--eeg", "EEG", "--eog", "EOG", "--emg", "EMG")
CYCLE = ("W", "N1", "N2", "N3", "REM")
NIGHTS = ("alpha_night1", "beta_night1", "gamma_night1")  # three subjects: alpha, beta, gamma


# --------------------------------------------------------------------------- running the command line

@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: object) -> Run:
    """``sleepstage ARGS`` in this process: parsing, the command, the error policy, exit code and output."""
    from sleepstage_cli.cli.main import app  # registers every command

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args=[str(a) for a in args], prog_name="sleepstage")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001  (escaped the error policy: shown as the user would see it)
            traceback.print_exc(file=err)
            code = 99
    return Run(code, out.getvalue(), err.getvalue())


def clean_error(res, *needles: str, code: int = 1) -> str:
    """One error line holding ``needles``, the exit code, no traceback, and not an internal error."""
    assert_clean_error(res, *needles)
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
    assert "internal error" not in line, line
    assert res.returncode == code, (res.returncode, res.stderr)
    return line


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (hidden ones too) with its bytes."""
    files = {}
    for root in map(Path, roots):
        paths = sorted(root.rglob("*")) if root.is_dir() else [root] if root.exists() else []
        files.update({str(p): p.read_bytes() for p in paths if p.is_file()})
    return files


def assert_unchanged(before: dict[str, bytes], *roots: Path, ignore: tuple[str, ...] = ()) -> None:
    after = snapshot(*roots)
    before, after = ({k: v for k, v in d.items() if not (ignore and Path(k).name.endswith(ignore))}
                     for d in (before, after))
    assert sorted(after) == sorted(before), "files added or removed"
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"changed: {changed}"


# --------------------------------------------------------------------------- small nights

def psg_signals(seconds: float, seed: int = 0, labels=("EEG", "EOG", "EMG")) -> dict:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    return {lab: (25 * rng.standard_normal(n) + 20 * np.sin(2 * np.pi * (3 + 5 * i) * t), RATE)
            for i, lab in enumerate(labels)}


def stage_rows(n_epochs: int, start: float = 0.0) -> list[tuple[float, float, str]]:
    return [(start + 30.0 * i, 30.0, CYCLE[(i // 4) % 5]) for i in range(n_epochs)]


def write_table(path: Path, rows) -> Path:
    path.write_text("onset,duration,stage\n" + "".join(f"{o:g},{d:g},{s}\n" for o, d, s in rows),
                    encoding="utf-8")
    return path


def make_night(folder: Path, name: str, seconds: float = 600, seed: int = 0, signals: dict | None = None,
               rows=None) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    edf = write_edf(folder / f"{name}.edf", signals or psg_signals(seconds, seed))
    csv = write_table(folder / f"{name}.csv", rows if rows is not None else stage_rows(int(seconds // 30)))
    return edf, csv


def set_field(path: Path, offset: int, width: int, value: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + width] = value.ljust(width)
    path.write_bytes(bytes(raw))
    return path


def set_signal_field(path: Path, column: int, width: int, index: int, value: bytes) -> Path:
    """Rewrite one per-signal header field (``column``: the field's offset per signal, e.g. 0 label, 104 pmin)."""
    ns = int(path.read_bytes()[252:256])
    return set_field(path, 256 + column * ns + index * width, width, value)


# The bad recordings, each with what its error line must say. Labels are those the model was trained on.
def bad_recording(kind: str, path: Path) -> str:
    if kind == "zero-length":
        path.write_bytes(b"")
        return "file is empty (0 bytes)"
    if kind == "short":  # 20 s: less than one epoch (and than one sequence)
        write_edf(path, psg_signals(20))
        return ""  # the message differs per command
    sig = psg_signals(300)
    if kind == "all-zero":
        sig["EEG"] = (np.zeros(300 * RATE), RATE)
    write_edf(path, sig)
    if kind == "corrupted-header":
        set_field(path, 252, 4, b"x3")
        return "corrupted EDF header: number of signals is 'x3'"
    if kind == "record-count":  # declares more data records than the file holds
        set_field(path, 236, 8, b"900")
        return "truncated EDF: the header declares 900 data records"
    if kind == "duplicate-label":
        set_signal_field(path, 0, 16, 1, b"EEG")  # EOG relabelled EEG: two signals called EEG
        return "channel label 'EEG' appears 2 times"
    if kind == "nan-channel":
        set_signal_field(path, 104, 8, 0, b"nan")  # physical minimum NaN: every sample would be NaN
        return "physical minimum of signal 'EEG' is 'nan', not a finite number"
    if kind == "all-zero":
        return "EEG 'EEG' is flat (all samples equal) in the whole recording"
    if kind == "edf-d-timekeeping":  # EDF+D whose last record claims to start 10^9 s in
        _rewrite_timekeeping(path, {299: "+1000000000"})
        return "EDF+D data record 300 starts 1e+09 s after the first"
    raise ValueError(kind)


def _rewrite_timekeeping(path: Path, onsets: dict[int, str]) -> None:
    """Make an EDF+C file EDF+D, with the time-keeping annotation of some records rewritten."""
    from sleepstage_cli.io.edf import read_header

    header = read_header(path)
    raw = bytearray(path.read_bytes())
    raw[192:197] = b"EDF+D"
    record_bytes = sum(header.record_samples) * header.sample_bytes
    ann = header.annotation_indices[0]
    start = header.header_bytes + sum(header.record_samples[:ann]) * header.sample_bytes
    length = header.record_samples[ann] * header.sample_bytes
    for r, onset in onsets.items():
        pos = start + r * record_bytes
        raw[pos:pos + length] = f"{onset}\x14\x14\x00".encode().ljust(length, b"\x00")
    path.write_bytes(bytes(raw))


RECORDING_FAULTS = ["corrupted-header", "record-count", "zero-length", "duplicate-label", "all-zero", "nan-channel",
                    "short", "edf-d-timekeeping"]


# Hypnograms that cannot be used with a 10-minute night (20 epochs), with what the error line must say.
def bad_hypnogram(kind: str, path: Path) -> str:
    if kind == "unknown-stage":
        write_table(path, [(0, 30, "W"), (30, 30, "N2"), (60, 30, "Z")])
        return "unknown sleep stage 'Z' on line 4"
    if kind == "unknown-stage-edf":
        write_hypnogram_edf(path, [(0, 30, "Sleep stage W"), (30, 30, "Sleep stage 6")])
        return "unknown sleep stage 'Sleep stage 6' at 30 s"
    if kind == "overlapping":
        write_table(path, [(0, 30, "W"), (30, 90, "N2"), (60, 30, "N3")])
        return "overlapping stage annotations: one at 30 s lasting to 120 s, the next at 60 s"
    if kind == "other-night":  # starts after this 10-minute recording has ended
        write_table(path, stage_rows(20, start=3600))
        return "lies within the signal"
    raise ValueError(kind)


HYPNOGRAM_FAULTS = ["unknown-stage", "unknown-stage-edf", "overlapping", "other-night"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The in-process runs use one thread: tiny models gain nothing from more, and on a busy machine two
    threads fighting for two cores made a training step 100 times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """Three 10-minute nights of three subjects, prepared (EEG+EOG+EMG, and EEG+EOG), and a 2-step model."""
    root = tmp_path_factory.mktemp("robust")
    src = root / "src"
    for i, name in enumerate(NIGHTS):
        make_night(src, name, seed=i)
    data, data_no_emg, model = root / "data", root / "data-no-emg", root / "model.pt"
    for args in (("prepare", src, "-o", data, *CHANNELS, "-j", "1"),
                 ("prepare", src, "-o", data_no_emg, "--eeg", "EEG", "--eog", "EOG", "-j", "1"),
                 ("train", data, "-o", model, "--seq-len", "3", "--batch-size", "4", "--epochs", "1", "--max-steps",
                  "2", "--eval-every", "1", "--val-fraction", "0", "--device", "cpu", "--seed", "1")):
        res = cli(*args)
        assert res.returncode == 0, res.stderr
    return SimpleNamespace(root=root, src=src, data=data, data_no_emg=data_no_emg, model=model,
                           night=src / f"{NIGHTS[0]}.edf", hypnogram=src / f"{NIGHTS[0]}.csv")


def copy_dataset(world, dest: Path) -> Path:
    shutil.copytree(world.data, dest)
    return dest


# =========================================================================== prepare

@pytest.mark.parametrize("kind", RECORDING_FAULTS)
def test_prepare_bad_recording(world, tmp_path: Path, kind: str) -> None:
    """A bad night among good ones (--strict): the error names it and why; the dataset's nights are untouched."""
    reason = bad_recording(kind, tmp_path / "bad night.edf")
    write_table(tmp_path / "bad night.csv", stage_rows(1 if kind == "short" else 10))
    data = copy_dataset(world, tmp_path / "data")
    before = snapshot(data / "nights", data / "nights.csv")
    nights = json.loads((data / "manifest.json").read_text())["nights"]
    res = cli("prepare", world.src, tmp_path / "bad night.edf", tmp_path / "bad night.csv", "-o", data, *CHANNELS,
              "-j", "1", "--strict")
    reason = reason or "no scored epoch of bad night.csv lies within the signal (20 s)"
    clean_error(res, "skipped (--strict)", str(tmp_path / "bad night.edf"), reason)
    assert_unchanged(before, data / "nights", data / "nights.csv")
    assert json.loads((data / "manifest.json").read_text())["nights"] == nights


@pytest.mark.parametrize("kind", HYPNOGRAM_FAULTS)
def test_prepare_bad_hypnogram(world, tmp_path: Path, kind: str) -> None:
    """A good recording with a hypnogram that cannot be its own, among good nights (--strict)."""
    night = Path(shutil.copyfile(world.night, tmp_path / "bad night.edf"))
    hyp = tmp_path / ("bad night-Hypnogram.edf" if kind.endswith("-edf") else "bad night.csv")
    reason = bad_hypnogram(kind, hyp)
    data = copy_dataset(world, tmp_path / "data")
    before = snapshot(data / "nights", data / "nights.csv")
    nights = json.loads((data / "manifest.json").read_text())["nights"]
    res = cli("prepare", world.src, night, hyp, "-o", data, *CHANNELS, "-j", "1", "--strict")
    if kind == "other-night":
        reason = f"no scored epoch of {hyp.name} lies within the signal (600 s); is it this night's hypnogram?"
    about = night if kind == "other-night" else hyp  # the pair does not match / the file is wrong
    clean_error(res, "skipped (--strict)", f"{about}: ", reason)
    assert_unchanged(before, data / "nights", data / "nights.csv")
    assert json.loads((data / "manifest.json").read_text())["nights"] == nights


def test_hypnogram_longer_than_the_recording_is_clipped_with_a_warning(world, tmp_path: Path) -> None:
    """An 8-hour hypnogram for a 10-minute recording: prepare, score --epochs-from and evaluate keep the part
    they share and say how much was left out. Not an error: an excerpt of a night with the whole night's
    hypnogram is legitimate (test_foreign prepares such a Sleep-EDF excerpt)."""
    night = Path(shutil.copyfile(world.night, tmp_path / "n.edf"))
    hyp = write_table(tmp_path / "n.csv", stage_rows(960))
    res = cli("prepare", night, hyp, "-o", tmp_path / "data", *CHANNELS, "-j", "1")
    assert res.returncode == 0, res.stderr
    assert "n.csv: the hypnogram runs past the signal (600 s): 940 epoch(s) after it dropped" in res.stderr
    res = cli("score", night, "-o", tmp_path / "n-scored.csv", "--model", world.model, "--epochs-from", hyp)
    assert res.returncode == 0, res.stderr
    assert "940 epoch(s) of n.csv fall outside the recording and are not scored" in res.stderr
    res = cli("evaluate", tmp_path / "n-scored.csv", hyp, "-o", tmp_path / "evaluation")
    assert res.returncode == 0, res.stderr
    assert "940 reference epochs have no prediction (940 of them scored)" in res.stderr


def test_prepare_folder_given_as_file(world, tmp_path: Path) -> None:
    """A folder where a file is expected: an EDF 'file' that is a folder, a channel map that is a folder."""
    data = copy_dataset(world, tmp_path / "data")
    before = snapshot(data)
    (tmp_path / "night.edf").mkdir()
    clean_error(cli("prepare", tmp_path / "night.edf", "-o", data, *CHANNELS, "-j", "1"),
                str(tmp_path / "night.edf"), "folder is empty")
    clean_error(cli("prepare", world.src, "-o", data, "--channel-map", tmp_path, "-j", "1"),
                str(tmp_path), "cannot read channel map: Is a directory")
    assert_unchanged(before, data)


def test_prepare_unordered_annotations_are_sorted(world, tmp_path: Path) -> None:
    """Annotations out of order (not overlapping) are read in time order: the same dataset as ordered ones."""
    shutil.copyfile(world.night, tmp_path / "n.edf")
    rows = stage_rows(20)
    write_table(tmp_path / "n.csv", rows[10:] + rows[:10][::-1])
    res = cli("prepare", tmp_path / "n.edf", tmp_path / "n.csv", "-o", tmp_path / "data", *CHANNELS, "-j", "1")
    assert res.returncode == 0, res.stderr
    from sleepstage_cli.data.dataset import PreparedDataset

    rec = PreparedDataset(tmp_path / "data").open("n")
    assert rec["onset"].tolist() == [30.0 * i for i in range(20)]
    ref = PreparedDataset(world.data).open(NIGHTS[0])
    assert rec["label"].tolist() == ref["label"].tolist()
    np.testing.assert_array_equal(rec["x"], ref["x"])


def test_prepare_record_count_below_file_size_reads_the_declared_records(tmp_path: Path) -> None:
    """The other disagreement: bytes after the declared records are ignored (as EDF allows), not an error."""
    from sleepstage_cli.io.edf import EdfReader, read_header

    edf = write_edf(tmp_path / "n.edf", psg_signals(60))
    set_field(edf, 236, 8, b"50")
    header = read_header(edf)
    assert header.n_records == 50 and header.duration == 50
    with EdfReader(edf, header) as reader:
        assert reader.read(header.signals[0]).shape == (50 * RATE,)


def test_prepare_lock_held_by_another_run(world, tmp_path: Path) -> None:
    """A second run (even with --force and other options) is refused while one writes, before deleting anything."""
    from sleepstage_cli.locks import exclusive_lock

    data = copy_dataset(world, tmp_path / "data")
    before = snapshot(data)
    with exclusive_lock(data):
        res = cli("prepare", world.src, "-o", data, "--eeg", "EEG", "-j", "1", "--force")
    clean_error(res, str(data), "another sleepstage run", "is writing to this folder")
    assert_unchanged(before, data, ignore=(".lock",))


def test_prepare_two_runs_at_once(world, tmp_path: Path) -> None:
    """Two processes preparing into one folder: one waits its turn or is refused; the dataset is whole."""
    from sleepstage_cli.data.dataset import PreparedDataset

    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "sleepstage_cli", "prepare", str(world.src), "-o", str(out), *CHANNELS, "-j", "1"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code != 0:
            clean_error(Run(code, "", err), str(out), "another sleepstage run")
    ds, ref = PreparedDataset(out), PreparedDataset(world.data)
    assert [n.id for n in ds.nights] == list(NIGHTS)
    for night in ds.nights:
        np.testing.assert_array_equal(ds.open(night)["x"], ref.open(night.id)["x"])
    assert not [p for p in out.rglob(".*.tmp")]


# =========================================================================== score

@pytest.fixture
def scored_before(tmp_path: Path):
    """An earlier score output where the failing command would write (it runs with --force)."""
    out = tmp_path / "out" / "night.csv"
    out.parent.mkdir()
    out.write_text("epoch,onset_s,stage\n0,0,W\n")
    out.with_name("night.report.html").write_text("<html>earlier report</html>")
    return out, snapshot(out.parent)


def score_args(world, night: Path, out: Path, *extra: object) -> tuple:
    return ("score", night, "-o", out, "--model", world.model, "--device", "cpu", "--force", *extra)


@pytest.mark.parametrize("kind", RECORDING_FAULTS)
def test_score_bad_recording(world, tmp_path: Path, scored_before, kind: str) -> None:
    out, before = scored_before
    night = tmp_path / "bad night.edf"
    reason = bad_recording(kind, night) or "the recording lasts 20 s, less than one 30-s epoch"
    clean_error(cli(*score_args(world, night, out)), str(night), reason)
    assert_unchanged(before, out.parent)


@pytest.mark.parametrize("kind", HYPNOGRAM_FAULTS)
def test_score_bad_epochs_from(world, tmp_path: Path, scored_before, kind: str) -> None:
    out, before = scored_before
    hyp = tmp_path / ("grid.edf" if kind.endswith("-edf") else "grid.csv")
    reason = bad_hypnogram(kind, hyp)
    where = str(hyp)
    if kind == "other-night":
        where, reason = str(world.night), "no epoch of grid.csv lies within the recording"
    clean_error(cli(*score_args(world, world.night, out, "--epochs-from", hyp)), where, reason)
    assert_unchanged(before, out.parent)


def test_score_folder_given_as_file(world, tmp_path: Path, scored_before) -> None:
    out, before = scored_before
    folder = tmp_path / "night.edf"
    folder.mkdir()
    clean_error(cli(*score_args(world, folder, out)), str(folder), "holds no EDF recording to score")
    # a folder is where --epochs-from looks for each night's hypnogram: this one has none
    clean_error(cli(*score_args(world, world.night, out, "--epochs-from", folder)), str(folder),
                "holds no hypnogram files")
    clean_error(cli("score", world.night, "-o", out, "--model", folder, "--force"), str(folder),
                "is a folder, not a model file")
    assert_unchanged(before, out.parent)


@pytest.mark.parametrize("damage", ["truncated", "not-a-model", "empty"])
def test_score_damaged_model_file(world, tmp_path: Path, scored_before, damage: str) -> None:
    out, before = scored_before
    model = tmp_path / "model.pt"
    data = world.model.read_bytes()
    model.write_bytes({"truncated": data[: len(data) // 2], "not-a-model": b"epoch,onset_s,stage\n" * 50,
                       "empty": b""}[damage])
    said = ("not a sleepstage model file (text, not a torch file)" if damage == "not-a-model"
            else "not a readable model file (truncated or corrupted?)")
    clean_error(cli("score", world.night, "-o", out, "--model", model, "--device", "cpu", "--force"),
                str(model), said)
    assert_unchanged(before, out.parent)


def test_score_model_from_another_channel_set(world, tmp_path: Path, scored_before) -> None:
    """The model wants EEG+EOG+EMG; the recording has no EMG; nor does the model take an --emg it lacks."""
    out, before = scored_before
    night = write_edf(tmp_path / "no emg.edf", psg_signals(300, labels=("EEG", "EOG")))
    clean_error(cli(*score_args(world, night, out)), str(night), "EMG channel 'EMG' not found",
                "the file has: EEG (100 Hz), EOG (100 Hz)", "the model was trained on EEG, EOG, EMG")
    from sleepstage_cli.model.modelfile import load_model

    assert load_model(world.model).kinds == ("eeg", "eog", "emg")
    eeg_eog = tmp_path / "eeg-eog.pt"
    res = cli("train", world.data_no_emg, "-o", eeg_eog, "--seq-len", "3", "--batch-size", "4", "--max-steps", "1",
              "--val-fraction", "0", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    clean_error(cli("score", world.night, "-o", out, "--model", eeg_eog, "--emg", "EMG", "--force"),
                "the model uses eeg, eog channels; it has no emg input")
    assert_unchanged(before, out.parent)


@pytest.mark.parametrize("where", ["parent-is-a-file", "inside-a-file", "output-is-a-folder"])
def test_score_unwritable_output(world, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    if where == "output-is-a-folder":
        out = tmp_path / "night.csv"
        out.mkdir()
        clean_error(cli("score", world.night, "-o", out, "--model", world.model, "--device", "cpu", "--force"),
                    f"cannot write output {out}: it is a folder")
        assert list(out.iterdir()) == []
        return
    out = blocker / "night.csv" if where == "parent-is-a-file" else blocker / "sub" / "night.csv"
    clean_error(cli("score", world.night, "-o", out, "--model", world.model, "--device", "cpu"),
                str(out), f"{blocker} is not a folder")
    assert blocker.read_text() == "mine"


# =========================================================================== train

TRAIN_QUICK = ("--seq-len", "3", "--batch-size", "4", "--epochs", "1", "--max-steps", "1", "--val-fraction", "0",
               "--device", "cpu")


@pytest.fixture
def model_before(tmp_path: Path):
    """An earlier model and its training log where the failing command would write (it runs with --force)."""
    out = tmp_path / "models" / "m.pt"
    out.parent.mkdir()
    for name, text in (("m.pt", "earlier model"), ("m.train.csv", "step\n1\n"), ("m.train.json", "{}")):
        (out.parent / name).write_text(text)
    return out, snapshot(out.parent)


def damaged_dataset(world, tmp_path: Path, damage: str) -> tuple[Path, str]:
    """A copy of the prepared dataset with one kind of damage, and the reason the error must give."""
    data = copy_dataset(world, tmp_path / "data")
    night = data / "nights" / f"{NIGHTS[0]}.npy"
    if damage == "dataset-is-a-file":
        shutil.rmtree(data)
        data.write_text("not a folder")
        return data, "is a file, not a prepared dataset folder"
    if damage == "no-manifest":
        (data / "manifest.json").unlink()
        return data, "not a prepared dataset (no manifest.json)"
    if damage == "manifest-empty":
        (data / "manifest.json").write_bytes(b"")
        return data, "cannot read dataset manifest"
    if damage == "manifest-not-an-object":
        (data / "manifest.json").write_text("[]")
        return data, "manifest.json is not a sleepstage dataset manifest"
    if damage == "manifest-night-entry":
        manifest = json.loads((data / "manifest.json").read_text())
        del manifest["nights"][0]["file"]
        (data / "manifest.json").write_text(json.dumps(manifest))
        return data, "manifest.json is damaged"
    if damage == "night-truncated":
        night.write_bytes(night.read_bytes()[:5000])
        return night, "night file of the prepared dataset is unreadable"
    if damage == "night-missing":
        night.unlink()
        return night, "night file of the prepared dataset is missing"
    raise ValueError(damage)


DATASET_DAMAGE = ["dataset-is-a-file", "no-manifest", "manifest-empty", "manifest-not-an-object",
                  "manifest-night-entry", "night-truncated", "night-missing"]


@pytest.mark.parametrize("damage", DATASET_DAMAGE)
def test_train_damaged_dataset(world, tmp_path: Path, model_before, damage: str) -> None:
    out, before = model_before
    where, reason = damaged_dataset(world, tmp_path, damage)
    clean_error(cli("train", tmp_path / "data", "-o", out, *TRAIN_QUICK, "--force"), str(where), reason)
    assert_unchanged(before, out.parent)


def test_train_nights_shorter_than_one_sequence(world, tmp_path: Path, model_before) -> None:
    out, before = model_before
    clean_error(cli("train", world.data, "-o", out, *TRAIN_QUICK[2:], "--seq-len", "25", "--force"),
                str(world.data), "hold no window of 25 epochs")
    assert_unchanged(before, out.parent)


def test_train_channels_the_dataset_lacks(world, tmp_path: Path, model_before) -> None:
    out, before = model_before
    clean_error(cli("train", world.data_no_emg, "-o", out, *TRAIN_QUICK, "--channels", "eeg,emg", "--force"),
                str(world.data_no_emg), "--channels asks for emg but the dataset holds eeg, eog")
    assert_unchanged(before, out.parent)


@pytest.mark.parametrize("where", ["parent-is-a-file", "inside-a-file"])
def test_train_unwritable_output(world, tmp_path: Path, where: str) -> None:
    """Refused before any training (not after it, when the model is saved)."""
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    out = blocker / "m.pt" if where == "parent-is-a-file" else blocker / "sub" / "m.pt"
    res = cli("train", world.data, "-o", out, *TRAIN_QUICK)
    clean_error(res, str(out), f"{blocker} is not a folder")
    assert "normalisation" not in res.stderr  # refused before the work started
    assert blocker.read_text() == "mine"


def test_train_output_is_a_folder(world, tmp_path: Path) -> None:
    folder = tmp_path / "model.pt"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for force in ((), ("--force",)):
        res = cli("train", world.data, "-o", folder, *TRAIN_QUICK, *force)
        clean_error(res, f"cannot write model file {folder}: it is a folder")
        assert "normalisation" not in res.stderr
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


# =========================================================================== evaluate

@pytest.fixture
def evaluation_before(tmp_path: Path):
    """An earlier evaluation where the failing command would write (it runs with --force)."""
    out = tmp_path / "evaluation"
    out.mkdir()
    for name in ("metrics.json", "per_night.csv", "report.html"):
        (out / name).write_text(f"earlier {name}")
    return out, snapshot(out)


def bad_reference(kind: str, path: Path) -> str:
    """An EDF+ reference hypnogram with one kind of damage (or a table), and what the error must say."""
    if kind in ("unknown-stage", "overlapping", "other-night"):
        if kind == "other-night":  # 20 epochs, 10 hours later: no time in common with the prediction
            write_table(path, stage_rows(20, start=36000))
            return "do not overlap in time; are they the same night?"
        return bad_hypnogram(kind, path)
    if kind == "zero-length":
        path.write_bytes(b"")
        return "file is empty (0 bytes)" if path.suffix == ".edf" else "hypnogram file is empty"
    write_hypnogram_edf(path, [(30.0 * i, 30.0, f"Sleep stage {s}") for i, s in enumerate("W122334RR")])
    if kind == "corrupted-header":
        set_field(path, 244, 8, b"one")
        return "corrupted EDF header: data record duration is 'one', not a number"
    if kind == "record-count":
        set_field(path, 236, 8, b"90")  # pyedflib wrote 9 (one TAL each)
        return "truncated EDF: the header declares 90 data records"
    raise ValueError(kind)


@pytest.mark.parametrize("kind, side, suffix", [
    ("corrupted-header", "ref", ".edf"), ("record-count", "ref", ".edf"), ("zero-length", "ref", ".edf"),
    ("zero-length", "pred", ".csv"), ("unknown-stage", "pred", ".csv"), ("overlapping", "ref", ".csv"),
    ("other-night", "ref", ".csv"),
])
def test_evaluate_bad_hypnogram(tmp_path: Path, evaluation_before, kind: str, side: str, suffix: str) -> None:
    out, before = evaluation_before
    good = write_table(tmp_path / "night1.csv", stage_rows(9))
    bad = tmp_path / f"night1-{side}{suffix}"
    reason = bad_reference(kind, bad)
    pred, ref = (good, bad) if side == "ref" else (bad, good)
    clean_error(cli("evaluate", pred, ref, "-o", out, "--force"), str(bad), reason)
    assert_unchanged(before, out)


def test_evaluate_folder_given_as_file(tmp_path: Path, evaluation_before) -> None:
    out, before = evaluation_before
    good = write_table(tmp_path / "night1.csv", stage_rows(9))
    folder = tmp_path / "night1-Hypnogram.edf"
    folder.mkdir()
    clean_error(cli("evaluate", good, folder, "-o", out, "--force"), str(folder),
                "no reference hypnogram in this folder")
    clean_error(cli("evaluate", folder, good, "-o", out, "--force"), str(folder), "no prediction hypnogram")
    assert_unchanged(before, out)


def test_evaluate_a_dataset_as_predictions(world, tmp_path: Path, evaluation_before) -> None:
    out, before = evaluation_before
    clean_error(cli("evaluate", world.data, world.src, "-o", out, "--force"), str(world.data),
                "is a prepared dataset: it can be the reference (REF), not the predictions")
    assert_unchanged(before, out)


@pytest.mark.parametrize("where", ["parent-is-a-file", "inside-a-file"])
def test_evaluate_unwritable_output(tmp_path: Path, where: str) -> None:
    good = write_table(tmp_path / "night1.csv", stage_rows(9))
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    out = blocker / "evaluation" if where == "parent-is-a-file" else blocker / "sub" / "evaluation"
    clean_error(cli("evaluate", good, good, "-o", out), str(out), f"{blocker} is not a folder")
    assert blocker.read_text() == "mine"


# =========================================================================== crossval

CV_QUICK = ("--folds", "3", "--val-subjects-per-fold", "0", "--seq-len", "3", "--batch-size", "4", "--epochs", "1",
            "--max-steps", "1", "--device", "cpu")


@pytest.fixture
def run_before(world, tmp_path: Path):
    """An earlier cross-validation run folder (its split) where the failing command would write (with --force)."""
    run = tmp_path / "run"
    res = cli("crossval", world.data, "-o", run, *CV_QUICK, "--split-only")
    assert res.returncode == 0, res.stderr
    return run, snapshot(run)


@pytest.mark.parametrize("damage", ["dataset-is-a-file", "manifest-empty", "manifest-not-an-object"])
def test_crossval_damaged_dataset(world, tmp_path: Path, run_before, damage: str) -> None:
    run, before = run_before
    where, reason = damaged_dataset(world, tmp_path, damage)
    clean_error(cli("crossval", tmp_path / "data", "-o", run, *CV_QUICK, "--force"), str(where), reason)
    assert_unchanged(before, run)


def test_crossval_missing_night_file(world, tmp_path: Path) -> None:
    # Found when the fold's training opens the nights, after the run folder was started (see the report):
    # checked here into a new run folder.
    where, reason = damaged_dataset(world, tmp_path, "night-missing")
    clean_error(cli("crossval", tmp_path / "data", "-o", tmp_path / "run", *CV_QUICK), str(where), reason)


def test_crossval_bad_options_and_split_files(world, tmp_path: Path, run_before) -> None:
    run, before = run_before
    clean_error(cli("crossval", world.data, "-o", run, *CV_QUICK, "--folds", "5", "--force"),
                "--folds 5 is more than the 3 subject(s)")
    clean_error(cli("crossval", world.data_no_emg, "-o", run, *CV_QUICK, "--channels", "eeg,emg", "--force"),
                str(world.data_no_emg), "--channels asks for emg but the dataset holds eeg, eog")
    empty = tmp_path / "split.json"
    empty.write_bytes(b"")
    clean_error(cli("crossval", world.data, "-o", run, *CV_QUICK, "--split", empty, "--force"), str(empty),
                "cannot read split file")
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    clean_error(cli("crossval", world.data, "-o", run, *CV_QUICK, "--split", folder, "--force"),
                str(folder / "split.json"), "split file not found")
    assert_unchanged(before, run)


@pytest.mark.parametrize("where", ["parent-is-a-file", "inside-a-file", "run-is-a-file"])
def test_crossval_unwritable_run_folder(world, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    run = {"parent-is-a-file": blocker / "run", "inside-a-file": blocker / "sub" / "run",
           "run-is-a-file": blocker}[where]
    res = cli("crossval", world.data, "-o", run, *CV_QUICK)
    line = clean_error(res, str(blocker))
    if where == "run-is-a-file":
        assert "is a file, not a run folder" in line, line
    else:  # crossval does not check its run folder itself (yet): the error policy's net for OSError names it
        assert "not a folder" in line or f"{run}: Not a directory" in line, line
    assert blocker.read_text() == "mine"


# =========================================================================== a full disk, a read-only folder

class _HalfWritten:
    """A file whose writes fail with ENOSPC once ``budget`` bytes (or characters) have gone through."""

    def __init__(self, fh, budget: int) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data):
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > self._budget:
            self._fh.write(data[: self._budget])
            self._fh.flush()
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= size
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full("manifest.json")``: the atomic writes of files of that name fail half-way (ENOSPC).

    Atomic writes go to ``.<name>.<random>.tmp`` beside the target; both ways sleepstage opens them
    (``open`` in fsutil, ``os.fdopen``) are wrapped. ``state.hits`` counts the failed files.
    """
    import builtins
    import re

    from sleepstage_cli import fsutil
    state = SimpleNamespace(names=(), hits=0)
    real_open, real_fdopen = builtins.open, os.fdopen

    def wrap(fh, name: str, mode: str):
        m = re.fullmatch(r"\.(.+)\.\w+\.tmp", name)
        if "w" not in mode or not m or m.group(1) not in state.names:
            return fh
        state.hits += 1
        return _HalfWritten(fh, 100)

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return wrap(fh, Path(file).name, mode) if isinstance(file, (str, os.PathLike)) else fh

    def fake_fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        try:
            return wrap(fh, Path(os.readlink(f"/proc/self/fd/{fd}")).name, mode)
        except OSError:
            return fh

    monkeypatch.setattr(fsutil, "open", fake_open, raising=False)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)

    def arm(*names: str) -> SimpleNamespace:
        state.names = names
        return state

    return arm


def no_temp_files(*folders: Path) -> bool:
    return not [p for f in folders for p in f.rglob(".*.tmp")]


def test_disk_full_prepare_manifest(world, tmp_path: Path, disk_full) -> None:
    data = copy_dataset(world, tmp_path / "data")
    before = snapshot(data)
    state = disk_full("manifest.json")
    res = cli("prepare", world.src, "-o", data, *CHANNELS, "-j", "1")
    clean_error(res, f"{data / 'manifest.json'}: cannot write the file: No space left on device")
    assert state.hits == 1
    assert_unchanged(before, data, ignore=(".lock",))
    assert no_temp_files(data)


def test_disk_full_prepare_night_file(world, tmp_path: Path, disk_full) -> None:
    """A night prepared again (its recording changed) fails half-way: its previous file is intact."""
    src = tmp_path / "src"
    shutil.copytree(world.src, src)
    data = tmp_path / "data"
    assert cli("prepare", src, "-o", data, *CHANNELS, "-j", "1").returncode == 0
    night = data / "nights" / f"{NIGHTS[0]}.npy"
    before = night.read_bytes()
    os.utime(src / f"{NIGHTS[0]}.edf", (time.time() + 10, time.time() + 10))
    state = disk_full(night.name)
    res = cli("prepare", src, "-o", data, *CHANNELS, "-j", "1", "--strict")
    clean_error(res, f"{night}: cannot write the file: No space left on device", "the run stopped")
    assert state.hits == 1 and night.read_bytes() == before
    assert no_temp_files(data)


def test_disk_full_model_file(world, tmp_path: Path, model_before, disk_full) -> None:
    out, before = model_before
    state = disk_full("m.pt")
    res = cli("train", world.data, "-o", out, *TRAIN_QUICK, "--force")
    clean_error(res, f"{out}: cannot write the file: No space left on device")
    assert state.hits == 1 and out.read_bytes() == before[str(out)]
    assert no_temp_files(out.parent)
    state.names = ()  # space again: the checkpoint of the finished steps gives the model
    res = cli("train", world.data, "-o", out, *TRAIN_QUICK, "--resume")
    assert res.returncode == 0, res.stderr
    assert not out.with_name("m.pt.ckpt").exists() and out.read_bytes() != before[str(out)]


def test_disk_full_hypnogram_csv(world, scored_before, disk_full) -> None:
    out, before = scored_before
    state = disk_full(out.name)
    clean_error(cli(*score_args(world, world.night, out)), f"{out}: cannot write the file: No space left on device")
    assert state.hits == 1
    assert_unchanged(before, out.parent)
    assert no_temp_files(out.parent)


def test_disk_full_evaluation(world, evaluation_before, disk_full) -> None:
    out, before = evaluation_before
    state = disk_full("metrics.json")
    res = cli("evaluate", world.hypnogram, world.hypnogram, "-o", out, "--force")
    clean_error(res, f"{out / 'metrics.json'}: cannot write the file: No space left on device")
    assert state.hits == 1
    assert_unchanged(before, out)
    assert no_temp_files(out)


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: creating or writing anything under ``folder`` fails with EACCES, and
    ``os.access`` says so (the tests run as root, for whom chmod stops nothing)."""
    import builtins

    real = SimpleNamespace(access=os.access, open=os.open, mkdir=os.mkdir, builtin_open=builtins.open)
    folders: list[Path] = []

    def inside(path) -> bool:
        try:
            p = Path(os.fsdecode(path)).absolute()
        except TypeError:
            return False
        return any(p == f or f in p.parents for f in folders)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and inside(path):
            return False
        return real.access(path, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise denied(path)
        return real.open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise denied(path)
        return real.mkdir(path, *args, **kwargs)

    def builtin_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            raise denied(file)
        return real.builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", builtin_open)
    monkeypatch.setattr(io, "open", builtin_open)
    return lambda folder: folders.append(Path(folder).absolute())


@pytest.mark.parametrize("command", ["prepare", "train", "crossval", "score", "evaluate"])
def test_read_only_output_folder(world, tmp_path: Path, read_only, command: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    out = locked / "new"
    args = {"prepare": ("prepare", world.src, "-o", out, *CHANNELS, "-j", "1"),
            "train": ("train", world.data, "-o", out / "m.pt", *TRAIN_QUICK),
            "crossval": ("crossval", world.data, "-o", out, *CV_QUICK),
            "score": score_args(world, world.night, out / "night.csv"),
            "evaluate": ("evaluate", world.hypnogram, world.hypnogram, "-o", out)}[command]
    line = clean_error(cli(*args), str(locked))
    assert f"folder {locked} is not writable" in line or f"{out}: Permission denied" in line, line
    assert list(locked.iterdir()) == []


# =========================================================================== non-ASCII and spaces in paths

def test_non_ascii_and_spaces_in_paths_every_command(tmp_path: Path) -> None:
    """prepare, train, crossval, score (into a folder that does not exist yet) and evaluate, all on paths
    with spaces and non-ASCII characters; errors name such paths exactly."""
    src = tmp_path / "données d'été" / "夜 1"
    for i, name in enumerate(("Zoë night1", "Ångström night1", "Łukasz night1")):
        make_night(src, name, seed=10 + i)
    data, model = tmp_path / "jeu de données é", tmp_path / "modèles" / "modèle 1.pt"
    res = cli("prepare", src, "-o", data, *CHANNELS, "-j", "1")
    assert res.returncode == 0, res.stderr
    from sleepstage_cli.data.dataset import PreparedDataset

    assert sorted(PreparedDataset(data).subjects) == ["Zoë", "Ångström", "Łukasz"]
    res = cli("train", data, "-o", model, *TRAIN_QUICK)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "exécution 1"
    res = cli("crossval", data, "-o", run, *CV_QUICK, "--split-only")
    assert res.returncode == 0 and (run / "split.json").exists(), res.stderr
    scored = tmp_path / "sortie é" / "nouveau dossier" / "Zoë night1.csv"
    res = cli("score", src / "Zoë night1.edf", "-o", scored, "--model", model, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert scored.exists() and scored.with_name("Zoë night1.report.html").exists()
    evaluation = tmp_path / "évaluation 1"
    res = run_cli("evaluate", scored, src / "Zoë night1.csv", "-o", evaluation)  # a real process, its encoding
    assert res.returncode == 0, res.stderr
    assert json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))["n_nights"] == 1

    empty = src / "vide é 2.edf"
    empty.write_bytes(b"")
    clean_error(cli("score", empty, "-o", tmp_path / "x.csv", "--model", model), f"{empty}: file is empty")
    clean_error(run_cli("evaluate", scored, empty, "-o", tmp_path / "e"), f"{empty}: file is empty")


# =========================================================================== Ctrl-C (a real process each)

def _start(*args: object) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sleepstage_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 240) -> Run:
    """Send one SIGINT as soon as ``ready()`` holds; the finished process's exit code and output."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    return Run(proc.returncode, out, err)


def test_sigint_during_prepare_then_the_same_command_finishes(tmp_path: Path) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    for i in range(5):
        make_night(src, f"subject{i} night1", seconds=1800, seed=i,
                   signals={k: (np.repeat(v, 2), 2 * RATE) for k, (v, _) in psg_signals(1800, seed=i).items()})
    args = ("prepare", src, "-o", data, *CHANNELS, "-j", "1")
    res = _interrupt_when(_start(*args), lambda: any((data / "nights").glob("*.npy")))
    line = clean_error(res, str(data), "interrupted with", "run the same command again", code=130)
    assert "Traceback" not in res.stderr, line
    from sleepstage_cli.data.dataset import PreparedDataset

    done = {n.id: (data / n.file).read_bytes() for n in PreparedDataset(data).nights}
    assert 1 <= len(done) < 5 and no_temp_files(data)
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"{len(done)} night(s) already prepared" in res.stderr
    ds = PreparedDataset(data)
    assert len(ds.nights) == 5
    assert all((data / ds.night(i).file).read_bytes() == b for i, b in done.items())  # kept, not redone


def test_sigint_during_train_then_resume_finishes(world, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    args = ("train", world.data, "-o", out, "--seq-len", "3", "--batch-size", "2", "--epochs", "20", "--max-steps",
            "8", "--eval-every", "2", "--val-fraction", "0", "--device", "cpu", "--seed", "2")
    res = _interrupt_when(_start(*args), out.with_name("m.pt.ckpt").exists)
    clean_error(res, str(out), "training interrupted at step", "--resume", code=130)
    assert out.with_name("m.pt.ckpt").exists() and not out.exists()
    clean_error(cli(*args), "--resume")  # a fresh start would lose the checkpoint
    res = cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert "resuming from step" in res.stderr
    assert json.loads(out.with_name("m.train.json").read_text())["training"]["steps"] == 8
    assert not out.with_name("m.pt.ckpt").exists()


def test_sigint_during_score_then_the_same_command_finishes(world, tmp_path: Path) -> None:
    nights, out = tmp_path / "nights", tmp_path / "scored"
    nights.mkdir()
    for i in range(3):
        write_edf(nights / f"night {i}.edf", psg_signals(1200, seed=20 + i))
    args = ("score", nights, "-o", out, "--model", world.model, "--device", "cpu")
    res = _interrupt_when(_start(*args), lambda: (out / "night_0.csv").exists())
    clean_error(res, f"{out}: interrupted after", "of 3 nights", "run the same command again", code=130)
    done = {p.name: p.read_bytes() for p in out.glob("night_*.csv")}
    assert 1 <= len(done) < 3 and no_temp_files(out)
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"{len(done)} night(s) already scored" in res.stderr
    assert sorted(p.name for p in out.glob("night_*.csv")) == [f"night_{i}.csv" for i in range(3)]
    assert all((out / name).read_bytes() == b for name, b in done.items())  # kept, not scored again
    import pandas as pd

    assert sorted(pd.read_csv(out / "summary.csv")["night"]) == [f"night_{i}" for i in range(3)]
    other = shutil.copyfile(world.model, tmp_path / "other.pt")  # another model: nothing counts as scored
    clean_error(cli(*args[:-4], "--model", other), f"{out / 'night_0.csv'} already exists; pass --force")


# =========================================================================== fuzzing the readers

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def _parse_everything(path: Path) -> None:
    """What prepare, score and evaluate do with a file: each step returns or raises our own error."""
    from sleepstage_cli.errors import SleepstageError
    from sleepstage_cli.io.edf import EdfReader, read_annotations, read_header, record_onsets
    from sleepstage_cli.io.hypnogram import has_stage_annotations, read_hypnogram

    steps = [lambda: read_hypnogram(path)]
    try:
        header = read_header(path)
    except SleepstageError:
        header = None
    if header is not None:
        def read_signals() -> None:
            with EdfReader(path, header) as reader:
                for sig in header.signals:
                    reader.read(sig)

        steps = [read_signals, lambda: read_annotations(path, header), lambda: record_onsets(header),
                 lambda: has_stage_annotations(path, header)] + steps
    for step in steps:
        try:
            step()
        except SleepstageError:
            pass


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory) -> SimpleNamespace:
    """Valid files to mutate: EDF+ with two rates and annotations, an annotations-only EDF+, a plain EDF."""
    root = tmp_path_factory.mktemp("fuzz")
    t = np.arange(0, 10, 1 / 100)
    psg = write_edf(root / "psg.edf", {"EEG": (20 * np.sin(t), 100), "EMG": (5 * np.cos(t[::2]), 50)},
                    annotations=[(0, 30, "Sleep stage W"), (30, 30, "Sleep stage 2")])
    hyp = write_hypnogram_edf(root / "hyp.edf", [(0, 30, "Sleep stage W"), (30, 60, "Sleep stage 3"),
                                                 (90, 30, "Sleep stage R"), (120, 0, "Lights on")])
    plain = write_edf(root / "plain.edf", {"EEG": (20 * np.sin(t), 100)}, plus=False)
    return _Base(root=root, files=[psg.read_bytes(), hyp.read_bytes(), plain.read_bytes()])


class _Base(SimpleNamespace):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example: not these bytes
        return "fuzz_base"


# Fixed header fields (offset, width) and per-signal fields (offset per signal, width).
_FIXED = [(0, 8), (168, 8), (176, 8), (184, 8), (192, 44), (236, 8), (244, 8), (252, 4)]
_PER_SIGNAL = [(0, 16), (96, 8), (104, 8), (112, 8), (120, 8), (128, 8), (216, 8)]
_VALUES = st.sampled_from([b"", b" ", b"-1", b"0", b"1", b"2", b"3", b"100", b"-32768", b"32767", b"nan", b"inf",
                           b"-inf", b"1e308", b"-1e308", b"1e-308", b"99999999", b"0.5", b"x", b"EDF+D", b"EDF+C",
                           b"EDF Annotations", b"EEG", b"uV", b"\xff\xfe", b"+3\x14\x14", b"12.34.56"])
_TAL_BITS = [b"+", b"-", b"\x14", b"\x15", b"\x00", b"0", b"30", b"1e400", b"nan", b"Sleep stage ", b"W", b"4",
             b"R", b"?", b"Z", b"\xe9", b"\xff", b"99999999999"]
_MUTATION = st.one_of(  # header fields most often: that is where a reader has to decide what to believe
    st.tuples(st.just("fixed"), st.integers(0, len(_FIXED) - 1), _VALUES),
    st.tuples(st.just("fixed"), st.sampled_from([3, 5, 6, 7]), _VALUES),  # header size, records, duration, ns
    st.tuples(st.just("fixed"), st.integers(0, len(_FIXED) - 1), st.binary(max_size=8)),
    st.tuples(st.just("signal"), st.integers(0, len(_PER_SIGNAL) - 1), st.integers(0, 3), _VALUES),
    st.tuples(st.just("signal"), st.integers(0, len(_PER_SIGNAL) - 1), st.integers(0, 3), st.binary(max_size=8)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("tal"), st.floats(0, 1), st.lists(st.sampled_from(_TAL_BITS), min_size=1, max_size=8)),
)


def _mutate(raw: bytes, mutation: tuple) -> bytes:
    b = bytearray(raw)
    kind = mutation[0]
    try:
        ns = max(1, int(bytes(b[252:256]).strip() or b"1"))
    except ValueError:
        ns = 1
    if kind == "fixed":
        off, width = _FIXED[mutation[1]]
        b[off:off + width] = mutation[2][:width].ljust(width)
    elif kind == "signal":
        col, width = _PER_SIGNAL[mutation[1]]
        off = 256 + col * ns + (mutation[2] % ns) * width
        b[off:off + width] = mutation[3][:width].ljust(width)
    elif kind == "truncate":
        del b[int(mutation[1] * len(b)):]
    elif kind == "insert":
        pos = int(mutation[1] * len(b))
        b[pos:pos] = mutation[2]
    elif kind == "flip" and b:
        b[min(int(mutation[1] * len(b)), len(b) - 1)] = mutation[2]
    elif kind == "tal" and len(b) > 256 * (ns + 1):
        start = 256 * (ns + 1)
        pos = start + int(mutation[1] * (len(b) - start))
        payload = b"".join(mutation[2])
        b[pos:pos + len(payload)] = payload
    return bytes(b[: len(raw) + 64])


@settings(FUZZ, max_examples=300)
@given(which=st.integers(0, 2), mutations=st.lists(_MUTATION, min_size=1, max_size=4))
@example(which=0, mutations=[("fixed", 5, b"nan")])  # records: float("nan") parses; int() of it does not
@example(which=1, mutations=[("fixed", 7, b"inf")])  # signals
@example(which=2, mutations=[("signal", 2, 0, b"nan")])  # a physical minimum of NaN: every sample NaN
def test_fuzz_edf_reader(fuzz_base, which: int, mutations: list) -> None:
    raw = fuzz_base.files[which]
    for m in mutations:
        raw = _mutate(raw, m)
    path = fuzz_base.root / "mutated.edf"
    path.write_bytes(raw)
    _parse_everything(path)


_CELL = st.one_of(
    st.sampled_from(["W", "N1", "N2", "N3", "REM", "R", "?", "4", "5", "-1", "-2", "7", "Sleep stage 2", "MT", "wake",
                     "deep", "", " ", "nan", "inf", "-inf", "1e400", "-30", "0", "30", "20", "15", "1e9", "3.5",
                     "\"", "#", "[Hypnogram]", "onset", "stage", "é", "夜"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
_HEADER = st.sampled_from([None, "onset,duration,stage", "onset,duration,stage", "onset,duration,stage",
                           "onset\tduration\ttrial_type", "epoch,onset_s,stage,confidence", "onset;stage",
                           "Onset Duration Stage", "time,score", "stage", "label,duration"])


_ONSET = st.one_of(st.sampled_from(["0", "30", "60", "-30", "15", "nan", "inf", "", "x", "30.0004"]),
                   st.sampled_from(["3e5", "1e9", "3e10", "1e15", "1.7e308"]),  # a corrupted (huge) time
                   st.integers(-2, 3000).map(lambda i: str(30 * i)), st.floats(-1e6, 1e15).map(repr))
_VALID_STAGE = st.sampled_from(["W", "N1", "N2", "N3", "REM", "R", "?", "4", "-1", "Sleep stage 2", "MT"])
_STAGE = st.one_of(_VALID_STAGE, _VALID_STAGE, _VALID_STAGE, st.sampled_from(["5", "7", "deep", "", "é"]))
_CONF = st.sampled_from(["0.9", "", "nan", "x"])


@st.composite
def _table(draw) -> tuple[str | None, list[list[str]]]:
    """A well-formed table in one of the shapes we read with a few cells corrupted, or anything at all."""
    mode = draw(st.sampled_from(["intervals", "intervals", "our-output", "per-line", "anything"]))
    if mode == "anything":
        rows = draw(st.lists(st.one_of(st.tuples(_ONSET, _ONSET, _STAGE), st.lists(_CELL, min_size=1, max_size=4)),
                             max_size=12))
        return draw(_HEADER), [list(r) for r in rows]
    n = draw(st.integers(1, 12))
    durations = draw(st.lists(st.sampled_from([30, 30, 60, 90, 20, 0]), min_size=n, max_size=n))
    onsets = np.cumsum([0] + [d or 30 for d in durations[:-1]]).tolist()
    stages = draw(st.lists(_VALID_STAGE, min_size=n, max_size=n))
    if mode == "intervals":
        header = draw(st.sampled_from(["onset,duration,stage", "onset,duration,trial_type", "start,dur,label"]))
        rows = [[str(o), str(d), x] for o, d, x in zip(onsets, durations, stages)]
        cells = [_ONSET, _ONSET, st.one_of(_STAGE, _CELL)]
    elif mode == "our-output":
        header = "epoch,onset_s,stage,confidence"
        rows = [[str(i), str(o), x, "0.9"] for i, (o, x) in enumerate(zip(onsets, stages))]
        cells = [_CELL, _ONSET, st.one_of(_STAGE, _CELL), _CONF]
    else:
        header, rows, cells = None, [[x] for x in stages], [st.one_of(_STAGE, _CELL)]
    for _ in range(draw(st.integers(0, 3))):  # a few corrupted cells, each with what might be in its column
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, len(cells) - 1))
        rows[i][j] = draw(cells[j])
    return header, rows


@settings(FUZZ, max_examples=200)
@example(table=("onset,duration,stage", [["0", "30", "W"], ["1.7e308", "30", "N2"]]), layout=(",", ".csv"),
         encoding="utf-8", epoch_length=None)  # a corrupted onset: the gap before it must not become epochs
@example(table=("onset,duration,stage", [["0", "3e10", "W"]]), layout=(",", ".csv"), encoding="utf-8",
         epoch_length=None)  # nor a corrupted duration
@given(table=_table(), layout=st.sampled_from([(",", ".csv"), (",", ".csv"), ("\t", ".tsv"), ("\t", ".tsv"),
                                               (";", ".txt"), (" ", ".txt"), (",", ".txt"), ("\t", ".csv")]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]),
       epoch_length=st.sampled_from([None, None, 30.0, 20.0, 25.0]))
def test_fuzz_hypnogram_tables(fuzz_base, table, layout, encoding, epoch_length) -> None:
    from sleepstage_cli.errors import SleepstageError
    from sleepstage_cli.io.hypnogram import read_hypnogram

    (header, rows), (delimiter, suffix) = table, layout
    lines = ([header.replace(",", delimiter)] if header else []) + [delimiter.join(r) for r in rows]
    path = fuzz_base.root / f"table{suffix}"
    path.write_bytes("\n".join(lines).encode(encoding, errors="replace"))
    try:
        hyp = read_hypnogram(path, epoch_length)
    except SleepstageError:
        return
    assert len(hyp) >= 1 and np.all(np.diff(hyp.onsets) > 0) and set(hyp.stages.tolist()) <= {-1, 0, 1, 2, 3, 4}


def _annotation_edf(tals: list[bytes]) -> bytes:
    """An annotations-only EDF+ written by hand, one annotation TAL per data record (anything goes in it)."""
    records = [b"+%d\x14\x14\x00" % i + tal for i, tal in enumerate(tals)] or [b"+0\x14\x14\x00"]
    size = max(len(r) for r in records)
    size += size % 2
    header = (b"0".ljust(8) + b"X X X X".ljust(80) + b"Startdate 01-JAN-2020 X X X".ljust(80) + b"01.01.20"
              + b"00.00.00" + b"512".ljust(8) + b"EDF+C".ljust(44) + str(len(records)).encode().ljust(8)
              + b"1".ljust(8) + b"1".ljust(4))
    signal = (b"EDF Annotations".ljust(16) + b"".ljust(80) + b"".ljust(8) + b"-1".ljust(8) + b"1".ljust(8)
              + b"-32768".ljust(8) + b"32767".ljust(8) + b"".ljust(80) + str(size // 2).encode().ljust(8)
              + b"".ljust(32))
    return header + signal + b"".join(r.ljust(size, b"\x00") for r in records)


_NUMBER = st.one_of(st.sampled_from(["0", "30", "30.5", "1e9", "1e400", "nan", "-5", "", "abc", "99999999999999"]),
                    st.floats(min_value=-1e6, max_value=1e7, allow_nan=False).map(lambda x: f"{x:.6g}"))
_TEXT = st.one_of(st.sampled_from(["Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3", "Sleep stage 4",
                                   "Sleep stage R", "Sleep stage ?", "Sleep stage N3", "Sleep stage Z",
                                   "Movement time", "Lights off", ""]), st.text(max_size=12))


@settings(FUZZ, max_examples=100)
@given(annotations=st.lists(st.tuples(st.sampled_from(["+", "-", ""]), _NUMBER, st.one_of(st.none(), _NUMBER),
                                      st.lists(_TEXT, min_size=1, max_size=2)), max_size=10))
def test_fuzz_edf_annotations(fuzz_base, annotations) -> None:
    tals = []
    for sign, onset, duration, texts in annotations:
        tal = (sign + onset).encode() + (b"\x15" + duration.encode() if duration is not None else b"")
        tals.append(tal + b"\x14" + b"\x14".join(t.encode("utf-8", errors="replace") for t in texts) + b"\x14\x00")
    path = fuzz_base.root / "annotations.edf"
    path.write_bytes(_annotation_edf(tals))
    _parse_everything(path)


def test_score_night_shorter_than_one_sequence_is_scored_and_flagged(world, tmp_path: Path) -> None:
    """Not an error: 2 epochs for a 3-epoch model are scored with a padded sequence and flagged (see test_score)."""
    night = write_edf(tmp_path / "short.edf", psg_signals(60))
    res = cli("score", night, "-o", tmp_path / "short.csv", "--model", world.model, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "fewer than one 3-epoch sequence" in res.stderr
    assert (tmp_path / "short.csv").read_text().count("short night") == 2


# =========================================================================== the list

CASES = (
    # (test, command(s), input, what the error line says)
    ("test_prepare_bad_recording[corrupted-header]", "prepare", "EDF header field not a number",
     "corrupted EDF header: number of signals is 'x3'"),
    ("test_score_bad_recording[corrupted-header]", "score", "EDF header field not a number", "corrupted EDF header"),
    ("test_evaluate_bad_hypnogram[corrupted-header-ref-.edf]", "evaluate", "EDF+ hypnogram, record duration 'one'",
     "corrupted EDF header: data record duration is 'one'"),
    ("test_prepare_bad_recording[record-count]", "prepare", "header declares more records than the file holds",
     "truncated EDF: the header declares 900 data records"),
    ("test_score_bad_recording[record-count]", "score", "same", "truncated EDF"),
    ("test_evaluate_bad_hypnogram[record-count-ref-.edf]", "evaluate", "same, EDF+ hypnogram", "truncated EDF"),
    ("test_prepare_record_count_below_file_size_reads_the_declared_records", "(reader)",
     "header declares fewer records than the file holds", "not an error: the declared records are read"),
    ("test_prepare_bad_recording[zero-length]", "prepare", "0-byte EDF", "file is empty (0 bytes)"),
    ("test_score_bad_recording[zero-length]", "score", "0-byte EDF", "file is empty (0 bytes)"),
    ("test_evaluate_bad_hypnogram[zero-length-pred-.csv]", "evaluate", "0-byte CSV", "hypnogram file is empty"),
    ("test_score_damaged_model_file[empty]", "score", "0-byte model file", "not a readable model file"),
    ("test_train_damaged_dataset[manifest-empty]", "train", "0-byte manifest.json", "cannot read dataset manifest"),
    ("test_crossval_damaged_dataset[manifest-empty]", "crossval", "0-byte manifest.json",
     "cannot read dataset manifest"),
    ("test_prepare_folder_given_as_file", "prepare", "a folder night.edf; --channel-map a folder",
     "folder is empty / cannot read channel map: Is a directory"),
    ("test_score_folder_given_as_file", "score", "folder as night, --epochs-from, --model",
     "holds no EDF recording / is a folder, not a hypnogram file / is a folder, not a model file"),
    ("test_evaluate_folder_given_as_file", "evaluate", "a folder x-Hypnogram.edf as REF and PRED",
     "no reference/prediction hypnogram in this folder"),
    ("test_train_output_is_a_folder", "train", "-o names a folder", "cannot write model file X: it is a folder"),
    ("test_train_damaged_dataset[dataset-is-a-file]", "train", "a file as DATASET",
     "is a file, not a prepared dataset folder"),
    ("test_crossval_bad_options_and_split_files", "crossval",
     "--split: a folder without split.json, an empty file; --folds > subjects; --channels the dataset lacks",
     "split file not found / cannot read split file / ..."),
    ("test_non_ascii_and_spaces_in_paths_every_command", "all five", "paths with spaces, é, 夜, Å, Ł",
     "they work; errors name such paths exactly"),
    ("test_prepare_bad_recording[duplicate-label]", "prepare", "two signals labelled EEG",
     "channel label 'EEG' appears 2 times"),
    ("test_score_bad_recording[duplicate-label]", "score", "same", "channel label 'EEG' appears 2 times"),
    ("test_prepare_bad_recording[all-zero]", "prepare", "EEG all zeros", "EEG 'EEG' is flat (all samples equal)"),
    ("test_score_bad_recording[all-zero]", "score", "same", "EEG 'EEG' is flat"),
    ("test_prepare_bad_recording[nan-channel]", "prepare", "physical minimum 'nan' (NaN samples)",
     "physical minimum of signal 'EEG' is 'nan', not a finite number"),
    ("test_score_bad_recording[nan-channel]", "score", "same", "not a finite number"),
    ("test_prepare_bad_recording[short]", "prepare", "20-s night", "no scored epoch of X lies within the signal"),
    ("test_score_bad_recording[short]", "score", "20-s night", "the recording lasts 20 s, less than one 30-s epoch"),
    ("test_score_night_shorter_than_one_sequence_is_scored_and_flagged", "score", "2 epochs, 3-epoch model",
     "not an error: padded, flagged 'short night'"),
    ("test_train_nights_shorter_than_one_sequence", "train", "--seq-len 25, 20-epoch nights",
     "the training nights hold no window of 25 epochs"),
    ("test_prepare_bad_recording[edf-d-timekeeping]", "prepare", "EDF+D record claiming to start at 10^9 s",
     "EDF+D data record 300 starts 1e+09 s after the first"),
    ("test_score_bad_recording[edf-d-timekeeping]", "score", "same", "starts 1e+09 s after the first"),
    ("test_prepare_bad_hypnogram[unknown-stage]", "prepare", "CSV stage 'Z'", "unknown sleep stage 'Z' on line 4"),
    ("test_prepare_bad_hypnogram[unknown-stage-edf]", "prepare", "EDF+ 'Sleep stage 6'",
     "unknown sleep stage 'Sleep stage 6' at 30 s"),
    ("test_score_bad_epochs_from[unknown-stage]", "score", "--epochs-from with stage 'Z'", "unknown sleep stage"),
    ("test_evaluate_bad_hypnogram[unknown-stage-pred-.csv]", "evaluate", "prediction with stage 'Z'",
     "unknown sleep stage"),
    ("test_prepare_bad_hypnogram[overlapping]", "prepare", "annotations 30-120 s and 60-90 s",
     "overlapping stage annotations: one at 30 s lasting to 120 s, the next at 60 s"),
    ("test_score_bad_epochs_from[overlapping]", "score", "same as --epochs-from", "overlapping stage annotations"),
    ("test_evaluate_bad_hypnogram[overlapping-ref-.csv]", "evaluate", "same as REF", "overlapping stage annotations"),
    ("test_prepare_unordered_annotations_are_sorted", "prepare", "annotations out of order",
     "not an error: sorted, the same dataset"),
    ("test_prepare_bad_hypnogram[other-night]", "prepare", "hypnogram starting after the recording ends",
     "no scored epoch of X lies within the signal (600 s); is it this night's hypnogram?"),
    ("test_hypnogram_longer_than_the_recording_is_clipped_with_a_warning", "prepare, score, evaluate",
     "8-h hypnogram, 10-min recording", "not an error: warning: ... runs past the signal: 940 epoch(s) dropped"),
    ("test_score_bad_epochs_from[other-night]", "score", "--epochs-from after the recording",
     "no epoch of grid.csv lies within the recording"),
    ("test_evaluate_bad_hypnogram[other-night-ref-.csv]", "evaluate", "REF 10 h after PRED",
     "do not overlap in time; are they the same night?"),
    ("test_score_damaged_model_file[truncated]", "score", "model file cut in half",
     "not a readable model file (truncated or corrupted?)"),
    ("test_score_damaged_model_file[not-a-model]", "score", "a CSV as --model", "not a sleepstage model file (text"),
    ("test_score_model_from_another_channel_set", "score",
     "EEG+EOG+EMG model, EEG+EOG recording; --emg for an EEG+EOG model",
     "EMG channel 'EMG' not found; the file has: ... / it has no emg input"),
    ("test_train_channels_the_dataset_lacks", "train", "--channels eeg,emg on an EEG+EOG dataset",
     "--channels asks for emg but the dataset holds eeg, eog"),
    ("test_train_damaged_dataset[night-truncated]", "train", "night file cut short",
     "night file of the prepared dataset is unreadable"),
    ("test_train_damaged_dataset[night-missing]", "train", "night file deleted",
     "night file of the prepared dataset is missing"),
    ("test_crossval_missing_night_file", "crossval", "night file deleted", "night file ... is missing"),
    ("test_train_damaged_dataset[manifest-not-an-object]", "train", "manifest.json holding []",
     "manifest.json is not a sleepstage dataset manifest"),
    ("test_train_damaged_dataset[manifest-night-entry]", "train", "a night entry without 'file'",
     "manifest.json is damaged"),
    ("test_evaluate_a_dataset_as_predictions", "evaluate", "a prepared dataset as PRED",
     "is a prepared dataset: it can be the reference (REF), not the predictions"),
    ("test_score_unwritable_output[parent-is-a-file]", "score", "-o taken.txt/night.csv",
     "cannot write output ...: taken.txt is not a folder"),
    ("test_score_unwritable_output[inside-a-file]", "score", "-o taken.txt/sub/night.csv", "taken.txt is not a folder"),
    ("test_score_unwritable_output[output-is-a-folder]", "score", "-o night.csv, a folder", "it is a folder"),
    ("test_train_unwritable_output[inside-a-file]", "train", "-o taken.txt/sub/m.pt",
     "taken.txt is not a folder (before training)"),
    ("test_evaluate_unwritable_output[inside-a-file]", "evaluate", "-o taken.txt/sub/evaluation",
     "taken.txt is not a folder"),
    ("test_crossval_unwritable_run_folder[inside-a-file]", "crossval", "-o taken.txt/sub/run",
     "taken.txt/sub/run: Not a directory"),
    ("test_read_only_output_folder[prepare]", "all five", "output in a folder that refuses writes",
     "folder X is not writable / X: Permission denied"),
    ("test_disk_full_prepare_manifest", "prepare", "ENOSPC half-way through manifest.json",
     "manifest.json: cannot write the file: No space left on device"),
    ("test_disk_full_prepare_night_file", "prepare", "ENOSPC half-way through a night file (rebuilt)",
     "nights/alpha_night1.npy: cannot write the file: No space left on device"),
    ("test_disk_full_model_file", "train", "ENOSPC half-way through the model file",
     "m.pt: cannot write the file: No space left on device (then --resume finishes)"),
    ("test_disk_full_hypnogram_csv", "score", "ENOSPC half-way through the hypnogram CSV",
     "night.csv: cannot write the file: No space left on device"),
    ("test_disk_full_evaluation", "evaluate", "ENOSPC half-way through metrics.json",
     "metrics.json: cannot write the file: No space left on device"),
    ("test_sigint_during_prepare_then_the_same_command_finishes", "prepare", "SIGINT after the first night",
     "exit 130, interrupted with N night(s) still to prepare; the same command finishes"),
    ("test_sigint_during_train_then_resume_finishes", "train", "SIGINT after the first checkpoint",
     "exit 130, training interrupted at step N ... --resume; --resume finishes"),
    ("test_sigint_during_score_then_the_same_command_finishes", "score", "SIGINT after the first night",
     "exit 130, interrupted after N of 3 nights; the same command scores the rest"),
    ("test_prepare_two_runs_at_once", "prepare", "two processes, one folder",
     "one finishes; the other too (after) or: another sleepstage run (pid N) is writing to this folder"),
    ("test_prepare_lock_held_by_another_run", "prepare", "--force while another run holds the lock",
     "another sleepstage run ... is writing to this folder (nothing deleted)"),
    ("test_fuzz_edf_reader", "(readers)", "300 mutated EDF/EDF+ files", "parse, or InputError"),
    ("test_fuzz_hypnogram_tables", "(readers)", "200 generated CSV/TSV/TXT hypnograms", "parse, or InputError"),
    ("test_fuzz_edf_annotations", "(readers)", "100 hand-written EDF+ annotation files", "parse, or InputError"),
)


def test_the_case_list_names_tests_of_this_file() -> None:
    names = {name.split("[")[0] for name, *_ in CASES}
    assert all(callable(globals().get(n)) for n in names), sorted(n for n in names if n not in globals())
    assert len({name for name, *_ in CASES}) == len(CASES) >= 25
