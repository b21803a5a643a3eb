"""The model zoo (`sleepstage models list|show|install|remove`, `score --model NAME`) and model cards.

Every test installs into its own data folder ($SLEEPSTAGE_DATA_DIR): the user's real one is never touched.
Downloads come from a server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from conftest import assert_clean_error, run_cli


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-data"
    monkeypatch.setenv("SLEEPSTAGE_DATA_DIR", str(folder))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_train_writes_the_model_card(trained: dict) -> None:
    model = trained["model"]
    card = json.loads(model.with_name("model.card.json").read_text())
    md = model.with_name("model.card.md").read_text()
    assert card["format"] == "sleepstage-model-card" and card["kind"] == "model"
    assert card["content_sha256"] == sha256(model)
    assert card["data"]["datasets"][0]["name"] == "data" and len(card["data"]["datasets"][0]["sha256"]) == 64
    assert card["data"]["subjects"] == {"train": 4, "validation": 1}
    assert card["data"]["nights"] == {"train": 4, "validation": 1}
    assert card["channels"]["kinds"] == ["eeg", "eog", "emg"] and card["channels"]["derivations"]["eeg"]
    assert card["conditioning"]["standardise"] is True and card["conditioning"]["filters"] == "sleepstage"
    assert card["network"]["name"] == "seqsleepnet" and card["network"]["seq_len"] == 10
    assert card["network"]["training_options"]["epochs"] == 2
    assert 0 <= card["validation"]["accuracy"] <= 1 and card["validation"]["nights"] == 1
    assert card["calibration"]["temperature"] > 0
    assert "adult" in card["intended_use"] and any("EEG, EOG, EMG" in lim for lim in card["limits"])
    assert "data use agreement" in card["licence"]["training_data"]  # the MASS layout's licence
    assert card["sleepstage_version"] and card["parent"] is None and card["cross_validation"] is None
    for heading in ("## Data", "## Channels and derivations", "## Conditioning", "## Network and options",
                    "## Metrics", "## Calibration", "## Intended use", "## Limits", "## Licence of the training data"):
        assert heading in md
    assert sha256(model) in md


def test_install_list_show_score_remove(trained: dict, tmp_path: Path, data_dir: Path) -> None:
    proc = run_cli("models", "install", trained["model"], "--name", "demo")
    assert proc.returncode == 0, proc.stderr
    installed = data_dir / "models" / "demo.pt"
    assert installed.read_bytes() == trained["model"].read_bytes()
    index = json.loads((data_dir / "models" / "index.json").read_text())["models"]
    assert index["demo"]["sha256"] == sha256(trained["model"]) and index["demo"]["source"] == "model.pt"
    assert str(tmp_path) not in json.dumps(index)  # a file's name, never where it lay

    listing = run_cli("models", "list")
    assert listing.returncode == 0, listing.stderr
    row = next(ln for ln in listing.stdout.splitlines() if ln.strip().startswith("demo"))
    assert "installed" in row and "seqsleepnet" in row and "EEG+EOG+EMG" in row and sha256(installed)[:12] in row

    shown = run_cli("models", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    for text in ("Model card: demo", "Channels and derivations", "Intended use", "Licence of the training data",
                 sha256(installed)):
        assert text in shown.stdout
    as_json = json.loads(run_cli("models", "show", "demo", "--json").stdout)
    assert as_json["content_sha256"] == sha256(installed) and as_json["name"] == "demo"

    again = run_cli("models", "install", trained["model"], "--name", "demo")
    assert_clean_error(again, "demo", "--force")

    out = tmp_path / "night.csv"
    scored = run_cli("score", trained["held_out"], "-o", out, "--model", "demo")
    assert scored.returncode == 0, scored.stderr
    assert out.exists()
    report = out.with_name("night.report.html").read_text()
    assert "data use agreement" in report and "Intended use" in report

    removed = run_cli("models", "remove", "demo")
    assert removed.returncode == 0, removed.stderr
    assert not installed.exists() and not (data_dir / "models" / "demo.card.json").exists()
    assert trained["model"].exists()  # the source is never touched
    assert_clean_error(run_cli("score", trained["held_out"], "-o", tmp_path / "again.csv", "--model", "demo"),
                       "demo", "models list")


def test_a_tampered_installed_model_is_refused(trained: dict, tmp_path: Path, data_dir: Path) -> None:
    assert run_cli("models", "install", trained["model"], "--name", "lab").returncode == 0
    installed = data_dir / "models" / "lab.pt"
    data = bytearray(installed.read_bytes())
    data[-100] ^= 0xFF
    installed.write_bytes(bytes(data))
    proc = run_cli("score", trained["held_out"], "-o", tmp_path / "n.csv", "--model", "lab")
    assert_clean_error(proc, "lab", "changed after it was installed")
    assert not (tmp_path / "n.csv").exists()
    assert "CHANGED" in run_cli("models", "list").stdout


def test_install_from_a_url_checks_the_sha256(trained: dict, server, data_dir: Path) -> None:
    root, base = server
    shutil.copyfile(trained["model"], root / "sleep-model.pt")
    good = sha256(trained["model"])
    bad = "0" * 64
    refused = run_cli("models", "install", f"{base}/sleep-model.pt", "--sha256", bad)
    assert_clean_error(refused, "differs from --sha256", "not installed")
    assert not (data_dir / "models" / "sleep-model.pt").exists()
    assert not list((data_dir / "models").glob("*.pt")) and not (data_dir / "models" / "index.json").exists()
    assert not [p for p in (data_dir / "models").iterdir() if p.name.startswith(".install-")]

    ok = run_cli("models", "install", f"{base}/sleep-model.pt", "--sha256", good)
    assert ok.returncode == 0, ok.stderr
    index = json.loads((data_dir / "models" / "index.json").read_text())["models"]
    assert index["sleep-model"]["source"] == f"{base}/sleep-model.pt" and index["sleep-model"]["sha256"] == good

    missing = run_cli("models", "install", f"{base}/nothing-here.pt", "--name", "x")
    assert_clean_error(missing, "cannot download")


def test_not_a_model_and_bad_names_are_refused(tmp_path: Path, data_dir: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    assert_clean_error(run_cli("models", "install", text), "notes.pt", "not a sleepstage model file")
    assert_clean_error(run_cli("models", "install", tmp_path / "absent.pt"), "not found")
    assert_clean_error(run_cli("models", "install", text, "--name", "../evil"), "not allowed")
    assert_clean_error(run_cli("models", "install", text, "--sha256", "xyz"), "64 hexadecimal")
    assert_clean_error(run_cli("models", "remove", "ghost"), "ghost")
    assert not (data_dir / "models" / "index.json").exists()


def test_unknown_name_lists_the_models(trained: dict, tmp_path: Path) -> None:
    assert run_cli("models", "install", trained["model"], "--name", "alpha").returncode == 0
    proc = run_cli("score", trained["held_out"], "-o", tmp_path / "n.csv", "--model", "beta")
    assert_clean_error(proc, "'beta'", "installed: alpha", "models list")
    assert_clean_error(run_cli("models", "show", "beta"), "installed: alpha")


def test_shipped_models_are_listed_and_resolved(trained: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sleepstage_cli.cli.main import app
    from sleepstage_cli.model import zoo

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    shutil.copyfile(trained["model"], shipped / "default.pt")
    monkeypatch.setattr(zoo, "zoo_folders", lambda: [shipped])
    assert zoo.resolve_model("default") == shipped / "default.pt"
    assert zoo.resolve_model(str(trained["model"])) == trained["model"]  # an existing path wins
    runner = CliRunner()
    listing = runner.invoke(app, ["models", "list"], env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    row = next(ln for ln in listing.output.splitlines() if ln.strip().startswith("default"))
    assert "shipped" in row and "seqsleepnet" in row
    table = [ln for ln in listing.output.splitlines() if not ln.startswith("installed models:")]
    assert all(len(ln) <= 80 for ln in table), listing.output
    removed = runner.invoke(app, ["models", "remove", "default"])
    assert removed.exit_code != 0 and (shipped / "default.pt").exists()


def test_the_card_of_a_crossval_run_has_the_spread_over_folds(tmp_path: Path, data_dir: Path) -> None:
    from sleepstage_cli.simulate import simulate

    simulate(tmp_path / "sim", nights=6, layout="generic", seed=4, hours=0.5)  # 3 subjects
    assert run_cli("prepare", tmp_path / "sim", "-o", tmp_path / "ds", "--channel-map",
                   tmp_path / "sim" / "channels.toml").returncode == 0
    run = tmp_path / "run"
    proc = run_cli("crossval", tmp_path / "ds", "--folds", 3, "-o", run, "--epochs", 1, "--max-steps", 4,
                   "--seq-len", 5, "--batch-size", 8, "--eval-every", 4, "--val-subjects-per-fold", 1)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((run / "card.json").read_text())
    folds = [row for row in (run / "folds.csv").read_text().splitlines()[1:]]
    cv = card["cross_validation"]
    assert card["kind"] == "crossval" and cv["folds"] == 3 == len(folds)
    accs = [f["accuracy"] for f in cv["per_fold"]]
    mean = sum(accs) / 3
    assert cv["over_folds"]["accuracy"]["mean"] == pytest.approx(mean)
    sd = (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5
    assert cv["over_folds"]["accuracy"]["sd"] == pytest.approx(sd)
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert cv["pooled"]["accuracy"] == pytest.approx(metrics["pooled"]["accuracy"])
    assert card["data"]["nights"]["train"] == 6 and card["data"]["subjects"]["train"] == 3
    assert card["licence"]["training_data"].startswith("not stated")  # the generic layout's licence is unknown
    md = (run / "card.md").read_text()
    assert "mean ± SD over folds" in md and "Cross-validation, 3 folds" in md

    # The cross-validated metrics go into an installed model's card.
    fold_model = run / "fold-01" / "model.pt"
    ok = run_cli("models", "install", fold_model, "--name", "cv", "--crossval", run)
    assert ok.returncode == 0, ok.stderr
    shown = run_cli("models", "show", "cv")
    assert "mean ± SD over folds" in shown.stdout
    assert_clean_error(run_cli("models", "install", fold_model, "--name", "cv2", "--crossval", tmp_path),
                       "card.json")
    assert os.environ["SLEEPSTAGE_DATA_DIR"] == str(data_dir)


def test_an_index_naming_a_file_elsewhere_never_deletes_it(tmp_path: Path, data_dir: Path) -> None:
    from sleepstage_cli.errors import SleepstageError
    from sleepstage_cli.model import registry

    outside = tmp_path / "precious.pt"
    outside.write_bytes(b"not ours")
    folder = data_dir / "models"
    folder.mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps({"format": registry.INDEX_FORMAT, "format_version": 1, "models": {
        "evil": {"file": "../../precious.pt", "sha256": "0" * 64}}}))
    for use in (registry.remove, registry.verified_path):
        with pytest.raises(SleepstageError, match="not a model file of its own folder"):
            use("evil")
    assert outside.read_bytes() == b"not ours"
