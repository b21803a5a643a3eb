"""recipes/sleep-edf-20.sh, offline: every step against a local mirror on 127.0.0.1 (tiny settings), then
`score --model NAME` with the model it installed (issue 15's road from public data to a shared model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_fetch import Mirror, _write_sums

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sleep-edf-20.sh"


def test_recipe_runs_end_to_end_against_a_local_mirror(tmp_path: Path) -> None:
    from sleepstage_cli.simulate import simulate

    root = tmp_path / "physionet" / "sleep-edfx"
    simulate(root / "sleep-cassette", nights=4, layout="sleep-edf", seed=8, hours=0.5, study="SC")
    (root / "sleep-cassette" / "simulation.json").unlink()
    _write_sums(root)
    mirror = Mirror(root.parent)
    mirror.thread.start()
    work, data_dir = tmp_path / "work", tmp_path / "zoo"
    env = {**os.environ, "WORK": str(work), "BASE_URL": mirror.url, "DEVICE": "cpu", "NAME": "sedf-demo",
           "SUBJECTS": "0-1", "ALLOW_MISSING": "1", "SLEEPSTAGE": f"{sys.executable} -m sleepstage_cli",
           "TRAIN_ARGS": "--max-steps 3 --seq-len 5 --batch-size 8", "SLEEPSTAGE_DATA_DIR": str(data_dir),
           "COLUMNS": "100", "NO_COLOR": "1"}
    try:
        proc = subprocess.run(["bash", str(RECIPE)], env=env, capture_output=True, text=True, timeout=900)
    finally:
        mirror.server.shutdown()
        mirror.server.server_close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 7):
        assert f"== {n}/6" in proc.stderr
    assert mirror.edf_gets() == 8  # 4 nights, PSG + hypnogram each
    split = json.loads((work / "crossval" / "split.json").read_text())
    assert split["reference"]["name"] == "sleepedf-20"
    assert (work / "crossval" / "evaluation" / "metrics.json").exists()
    assert (work / "sedf-demo.card.md").exists()
    assert "Model card" in proc.stdout and "Cross-validat" in proc.stdout  # models show, with step 3's metrics

    night = root / "sleep-cassette" / "SC4011E0-PSG.edf"
    scored = run_cli_env(env, "score", night, "-o", tmp_path / "scored.csv", "--model", "sedf-demo")
    assert scored.returncode == 0, scored.stderr
    assert len((tmp_path / "scored.csv").read_text().splitlines()) > 20


def run_cli_env(env: dict, *args) -> subprocess.CompletedProcess:
    """conftest.run_cli with the recipe's environment (its model zoo folder)."""
    return subprocess.run([sys.executable, "-m", "sleepstage_cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)

