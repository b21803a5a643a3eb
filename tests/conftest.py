"""Shared fixtures: small EDF files written on the fly, the CLI runner, the foreign-file folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyedflib
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FOREIGN = Path(os.environ.get("SLEEPSTAGE_FOREIGN_EDF", SHARED / "foreign-edf"))


def write_edf(path: Path, signals: dict[str, tuple[np.ndarray, float]], annotations=(), unit: str = "uV",
              plus: bool = True, prange: float = 1000.0) -> Path:
    """Write an EDF(+) file: ``signals`` maps label -> (data in µV, rate); ``annotations`` (onset, dur, text)."""
    path = Path(path)
    file_type = pyedflib.FILETYPE_EDFPLUS if plus else pyedflib.FILETYPE_EDF
    writer = pyedflib.EdfWriter(str(path), len(signals), file_type=file_type)
    try:
        headers = []
        for label, (_data, rate) in signals.items():
            headers.append(dict(label=label, dimension=unit, sample_frequency=rate, physical_min=-prange,
                                physical_max=prange, digital_min=-32768, digital_max=32767))
        if signals:
            writer.setSignalHeaders(headers)
            writer.writeSamples([np.clip(np.asarray(d, float), -prange, prange) for d, _ in signals.values()])
        for onset, duration, text in annotations:
            writer.writeAnnotation(onset, duration, text)
    finally:
        writer.close()
    return path


def write_hypnogram_edf(path: Path, annotations) -> Path:
    """An annotations-only EDF+ file, as Sleep-EDF and MASS ship their hypnograms."""
    return write_edf(path, {}, annotations)


@pytest.fixture
def foreign(tmp_path: Path):
    """Copy a file from ../shared/foreign-edf into tmp_path (skips when the folder is absent)."""

    def get(rel: str, name: str | None = None) -> Path:
        src = FOREIGN / rel
        if not src.exists():
            pytest.skip(f"reference file {src} not available")
        dst = tmp_path / (name or Path(rel).name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    return get


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed command line in a fresh process (as a user would)."""
    return subprocess.run([sys.executable, "-m", "sleepstage_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def simulated_dataset(root: Path, nights: int, hours: float, seed: int = 5) -> Path:
    """``nights`` simulated MASS nights (one subject each) of ``hours``, prepared into ``root/data``."""
    from sleepstage_cli.simulate import simulate

    simulate(root / "sim", nights=nights, layout="mass", seed=seed, hours=hours)
    proc = run_cli("prepare", root / "sim", "-o", root / "data", "--min-hours", "0")
    assert proc.returncode == 0, proc.stderr
    return root / "data"


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A failed run: non-zero exit, one 'error:' line naming what is wrong, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Simulated nights (MASS layout, 6 subjects of 1 h), prepared, and a briefly trained SeqSleepNet.

    Subject 6 is held out entirely (never trained or validated on) for scoring tests.
    """
    from sleepstage_cli.simulate import simulate

    root = tmp_path_factory.mktemp("trained")
    sim = root / "sim"
    simulate(sim, nights=6, layout="mass", seed=11, hours=1.0)
    held_out = sorted(sim.glob("*0006 PSG.edf"))[0]
    train_src = root / "train-src"
    train_src.mkdir()
    for p in sim.iterdir():
        if p.suffix == ".edf" and "0006" not in p.name:
            (train_src / p.name).symlink_to(p)
    data = root / "data"
    proc = run_cli("prepare", train_src, "-o", data, "--min-hours", "0", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    model = root / "model.pt"
    proc = run_cli("train", data, "-o", model, "--epochs", "2", "--seq-len", "10", "--batch-size", "16",
                   "--lr", "1e-3", "--eval-every", "20", "--val-subjects", "01-03-0005", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "sim": sim, "data": data, "model": model, "held_out": held_out,
            "truth": json.loads((sim / "simulation.json").read_text())}
