"""benchmarks/gpu_check.sh where there is no CUDA (as on CI), and bench_gpu.py's measuring path run on the CPU."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
MEASURES = ["training, sequences/s (steady, batch 8, L=10)", "scoring, nights/s (whole command, 2 nights)",
            "scoring, nights/s after start-up"]


def gpu_check(python: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": python})


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, gpu_check.sh runs the GPU checks (minutes)")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0() -> None:
    proc = gpu_check(sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"gpu_check: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}): no CUDA device is "
        "visible, the GPU checks are skipped"], proc.stdout
    assert proc.stderr == ""


def test_gpu_check_without_sleepstage_says_how_to_install(tmp_path: Path) -> None:
    python = tmp_path / "python"  # this interpreter without its site-packages: no torch, no sleepstage_cli
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    python.chmod(0o755)
    proc = gpu_check(str(python))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "cannot import sleepstage_cli" in proc.stderr and 'pip install -e ".[test]"' in proc.stderr


def test_bench_gpu_measures_the_whole_path_on_the_cpu(tmp_path: Path) -> None:
    """`bench_gpu.py --device-under-test cpu --tiny`: the training and scoring runs of both columns, one table of
    measure | CPU | GPU | GPU/CPU with a figure per cell, and the same figures in the JSON."""
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device-under-test", "cpu",
                           "--tiny", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("measure"))
    assert re.split(r"\s{2,}", lines[head].strip()) == ["measure", "CPU", "GPU", "GPU/CPU"]
    assert set(lines[head + 1].replace(" ", "")) == {"-"}
    table = [re.split(r"\s{2,}", line.strip()) for line in lines[head + 2:head + 5]]
    assert [row[0] for row in table] == MEASURES
    assert "dry run" in lines[head + 5] and lines[head + 6].startswith("elapsed: ")

    figures = json.loads(out.read_text())
    assert figures["device_under_test"] == "cpu" and figures["dry_run"] is True and figures["amp"] is False
    assert [r["measure"] for r in figures["rows"]] == MEASURES
    for i, (row, shown) in enumerate(zip(figures["rows"], table)):
        if i == 2 and None in (row["cpu"], row["gpu"]):  # the N-night run was not slower than the 1-night one
            assert "n/a" in shown
            continue
        assert row["cpu"] > 0 and row["gpu"] > 0 and math.isclose(row["gpu_per_cpu"], row["gpu"] / row["cpu"])
        assert [float(v) for v in shown[1:3]] == pytest.approx([row["cpu"], row["gpu"]], rel=0.01)
        assert float(shown[3].rstrip("x")) == pytest.approx(row["gpu_per_cpu"], rel=0.01)
    for column in ("cpu", "gpu"):
        train, score = figures["train"][column], figures["score"][column]
        assert train["device"] == score["device"] == "cpu" and train["steps_timed"] == 3
        assert train["sequences_per_s"] == pytest.approx(8 / train["step_s"])
        assert len(score["runs_all"]) == len(score["runs_one"]) == 1
        assert score["nights_per_s"] == pytest.approx(2 / score["seconds_all"])
    assert figures["rows"][0]["cpu"] == pytest.approx(figures["train"]["cpu"]["sequences_per_s"])
    assert figures["rows"][1]["gpu"] == pytest.approx(figures["score"]["gpu"]["nights_per_s"])
