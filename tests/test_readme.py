"""The README cannot drift from the tool: its commands run, and every option it names exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- docs-test: run -->"
INSTALL_STEPS = re.compile(r"^(python[\d.]* -m venv|\. \S*activate|pip install)")


def runnable_blocks() -> list[list[str]]:
    """Shell lines of the code blocks marked for the docs test, install steps left to CI."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, re.S):
        lines = []
        for line in match.group(1).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            steps = [s.strip() for s in line.split("&&")]
            steps = [s for s in steps if not INSTALL_STEPS.match(s)]
            if steps:
                lines.append(" && ".join(steps))
        blocks.append(lines)
    return blocks


def test_readme_has_the_runnable_blocks() -> None:
    blocks = runnable_blocks()
    assert len(blocks) == 2  # the set-up command and the quickstart
    assert all(line.startswith("sleepstage ") for block in blocks for line in block[0].split(" && "))


@pytest.mark.parametrize("index", [0, 1], ids=["set-up", "quickstart"])
def test_readme_commands_run_as_written(tmp_path: Path, index: int) -> None:
    bindir = Path(sys.executable).parent  # the installed `sleepstage` console script
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    for line in runnable_blocks()[index]:
        proc = subprocess.run(["bash", "-eo", "pipefail", "-c", line], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"README command failed: {line}\n{proc.stderr[-3000:]}"
    if index == 0:
        assert (tmp_path / "demo" / "hypnogram.csv").exists()
        assert (tmp_path / "demo" / "hypnogram.report.html").exists()
    else:
        for produced in ("scored/01-03-0007.csv", "scored/01-03-0007.report.html", "evaluation/report.html",
                         "evaluation/metrics.json", "cv-run/evaluation/report.html"):
            assert (tmp_path / produced).exists(), produced
        # The night scored and evaluated was neither trained nor validated on (issue 14).
        training = json.loads((tmp_path / "model.train.json").read_text())["training"]
        seen = training["train_nights"] + training["val_nights"]
        assert "01-03-0006" in seen
        evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
        assert [n["night"] for n in evaluated["per_night"]] == ["01-03-0007"]
        assert "01-03-0007" not in seen
    _assert_ignored_by_git(tmp_path)


def _assert_ignored_by_git(folder: Path) -> None:
    """Everything the README's commands wrote is in the project's .gitignore (run from the project's root)."""
    written = sorted(p.name for p in folder.iterdir())
    shutil.copyfile(README.with_name(".gitignore"), folder / ".gitignore")
    subprocess.run(["git", "init", "-q", str(folder)], check=True, capture_output=True)
    for name in written:
        proc = subprocess.run(["git", "check-ignore", "-q", name], cwd=folder, capture_output=True)
        assert proc.returncode == 0, f"the README's commands write {name}, which .gitignore does not list"


def test_every_option_the_readme_names_exists() -> None:
    text = README.read_text()
    helps = {}
    for cmd in ("fetch", "simulate", "prepare", "train", "crossval", "score", "evaluate"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0
        helps[cmd] = proc.stdout
    helps["models"] = "".join(run_cli("models", sub, "--help").stdout for sub in ("list", "show", "install", "remove"))
    checked = 0
    # Options written in command lines (`sleepstage CMD ... --opt`) and in the section of each command.
    commands = "fetch|simulate|prepare|train|crossval|score|evaluate|models"
    for cmd, body in re.findall(rf"sleepstage ({commands})\b([^\n`&]*)", text):
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", body):
            assert opt in helps[cmd], f"README uses {opt} with 'sleepstage {cmd}', which has no such option"
            checked += 1
    for cmd, section in re.findall(r"### `sleepstage (\w+)[^`]*`\n(.*?)(?=\n### |\n## )", text, re.S):
        for opt in re.findall(r"`(--[a-z][a-z0-9-]*)", section):
            names = [o for o in re.split(r"[ /]", opt) if o.startswith("--")]
            for name in names:
                assert name in helps[cmd], f"README's {cmd} section names {name}, which {cmd} lacks"
                checked += 1
    assert checked > 40
