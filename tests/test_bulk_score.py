"""Scoring nights in bulk (issue 16): a folder scored in one process, its nights read side by side in
worker processes, gives each night exactly what scoring it alone gives; errors are still one line."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, run_cli, write_edf

from sleepstage_cli.errors import SleepstageError
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.layout import night_key
from sleepstage_cli.scoring import inference
from sleepstage_cli.scoring.pipeline import MAX_READERS, ReadAhead, read_night, reader_count

MASS_LABELS = ["EEG C4-CLE", "EEG A1-CLE", "EEG C4-LER", "EOG Right Horiz", "EOG Left Horiz", "EMG Chin1",
               "EMG Chin2"]


def _cut(src: Path, dst: Path, seconds: float) -> Path:
    """The first ``seconds`` of a simulated MASS night as a new EDF (another length than the others)."""
    header = read_header(src)
    with EdfReader(src, header) as r:
        sig = {s.label: r.read(s)[: int(seconds * 256)] for s in header.signals if s.label in MASS_LABELS}
    return write_edf(dst, {k: (v, 256) for k, v in sig.items()})


@pytest.fixture
def nights(trained, tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """A folder of four nights of three lengths, the second of them unreadable (a truncated EDF)."""
    folder = tmp_path / "nights"
    folder.mkdir()
    sim = trained["sim"]
    good = [folder / "n1.edf", folder / "n3.edf", folder / "n4.edf"]
    good[0].symlink_to(sim / "01-03-0005 PSG.edf")  # 1 h
    _cut(sim / "01-03-0006 PSG.edf", good[1], 20 * 60)  # 20 min
    good[2].symlink_to(sim / "01-03-0004 PSG.edf")  # 1 h, another night
    bad = folder / "n2.edf"
    bad.write_bytes((sim / "01-03-0006 PSG.edf").read_bytes()[:5000])
    return folder, good, bad


def _cli_in_process(*args: object) -> tuple[int, str]:
    """``sleepstage ARGS`` in this process (no fresh interpreter): exit code and stderr."""
    from sleepstage_cli.cli.main import app

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            app(args=[str(a) for a in args], prog_name="sleepstage")
        except SystemExit as exc:
            return (exc.code if isinstance(exc.code, int) else 1), err.getvalue()
    return 0, err.getvalue()


def test_folder_run_gives_each_night_what_scoring_it_alone_gives(trained, nights, tmp_path: Path) -> None:
    """One folder process (nights read side by side, in order) against each night scored on its own; the
    unreadable night among them is reported in one line and the others are scored."""
    folder, good, bad = nights
    out = tmp_path / "scored"
    proc = run_cli("score", folder, "-o", out, "--model", trained["model"], "--device", "cpu")
    assert_clean_error(proc, "1 of 4 nights could not be scored", str(bad))
    reasons = [ln for ln in proc.stderr.splitlines() if "not scored:" in ln]
    assert len(reasons) == 1 and str(bad) in reasons[0]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["night"]) == ["n1", "n3", "n4"]  # each night once, the bad one left out

    lengths = set()
    for night in good:
        alone = tmp_path / "alone" / f"{night_key(night)}.csv"
        code, err = _cli_in_process("score", night, "-o", alone, "--model", trained["model"], "--device", "cpu")
        assert code == 0, err
        assert (out / alone.name).read_bytes() == alone.read_bytes(), night.name  # stages, probabilities, times
        epochs = len(pd.read_csv(alone))
        lengths.add(epochs)
        row = summary[summary["night"] == night_key(night)].iloc[0]
        assert row["source"] == str(night) and row["epochs"] == epochs
    assert len(lengths) == 3  # nights of different lengths: a night scored as another would show


def test_read_ahead_with_several_readers_yields_every_night_once_in_order(nights, trained) -> None:
    """Two reading processes, three nights in flight: each path comes back once, in the order given, with
    that very night's epochs (as reading it here gives them), and the unreadable one as its error."""
    from sleepstage_cli.model.modelfile import load_model

    folder, good, bad = nights
    loaded = load_model(trained["model"])
    order = [good[2], bad, good[1], good[0]]
    with ReadAhead(order, loaded.channel_spec, loaded.conditioning, readers=2) as ahead:
        got = list(ahead)
    assert [path for path, _ in got] == order
    for path, item in got:
        if path == bad:
            assert isinstance(item, SleepstageError) and str(bad) in str(item)
            continue
        alone = read_night(path, loaded.channel_spec, loaded.conditioning, night_key(path))
        assert item.source == path and item.night_id == night_key(path)
        np.testing.assert_array_equal(item.x, alone.x)
        np.testing.assert_array_equal(item.onsets, alone.onsets)
    assert reader_count(1) == 1 and 1 <= reader_count(100) <= MAX_READERS


def test_default_batch_size_per_device(monkeypatch) -> None:
    """256 epochs per batch on CPU; on CUDA a quarter of the free memory, bounded (no GPU needed)."""
    import torch

    assert inference.default_batch_size("cpu", 3) == inference.CPU_BATCH == 256
    low, high = inference.GPU_BATCH_RANGE
    per_epoch = 3 * inference.EPOCH_BYTES_PER_CHANNEL
    for free, want in ((8 << 30, (8 << 30) // 4 // per_epoch), (50 << 20, low), (80 << 30, high)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 2 * free))
        assert inference.default_batch_size("cuda", 3) == want
    assert low < (8 << 30) // 4 // per_epoch < high  # the middle case is sized, not clamped


def test_score_reads_with_one_blas_thread_unless_told_otherwise() -> None:
    """Set before numpy loads (so the reading processes forked later inherit it); the user's choice stays."""
    code = ("import os, sys; import sleepstage_cli.cli.main; from sleepstage_cli.cli.commands import score; "
            "score._one_blas_thread(); "
            "print(os.environ.get('OPENBLAS_NUM_THREADS'), 'numpy' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.split() == ["1", "False"]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OPENBLAS_NUM_THREADS": "3"})
    assert res.stdout.split() == ["3", "False"]
