"""Calibrated confidence: the expected calibration error `evaluate` reports, the temperature `train` fits and
stores, and the probabilities `score` gives with it (issue 14, item 2)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.errors import InputError
from sleepstage_cli.evaluation.calibration import calibrate, expected_calibration_error, fit_temperature, reliability
from sleepstage_cli.model.modelfile import load_model
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.scoring.inference import score_night, tempered_softmax
from sleepstage_cli.stages import STAGES

P_COLUMNS = [f"p_{s}" for s in STAGES]


# --------------------------------------------------------------------------- an independent ECE

def ece_by_loop(rows: list[tuple[list[float], int]]) -> float:
    """ECE written out the long way: ``rows`` are (probabilities, reference code); bins (k/10, (k+1)/10],
    0 in the first one; the predicted stage is the first stage of largest probability."""
    bins: dict[int, list[tuple[float, bool]]] = {k: [] for k in range(10)}
    for probs, ref in rows:
        top = max(probs)
        predicted = probs.index(top)
        for k in range(10):
            lo, hi = k / 10, (k + 1) / 10
            if lo < top <= hi or (k == 0 and top == 0):
                bins[k].append((top, predicted == ref))
                break
    total = sum(len(b) for b in bins.values())
    ece = 0.0
    for members in bins.values():
        if members:
            accuracy = sum(1 for _, hit in members if hit) / len(members)
            confidence = sum(c for c, _ in members) / len(members)
            ece += abs(accuracy - confidence) * len(members) / total
    return ece


def test_ece_of_a_hand_computed_case() -> None:
    probs = np.array([[0.95, 0.0125, 0.0125, 0.0125, 0.0125],  # bin (0.9, 1]: right
                      [0.0125, 0.95, 0.0125, 0.0125, 0.0125],  # bin (0.9, 1]: wrong
                      [0.1, 0.55, 0.2, 0.1, 0.05],  # bin (0.5, 0.6]: right
                      [0.3, 0.25, 0.25, 0.1, 0.1],  # 0.3 is in (0.2, 0.3], not (0.3, 0.4]: wrong
                      [0.2, 0.2, 0.2, 0.2, 0.2]])  # reference unscored: does not count
    ref = np.array([0, 0, 1, 2, -1])
    # (0.9, 1]: |0.5 - 0.95| x 2/4 = 0.225; (0.5, 0.6]: |1 - 0.55| x 1/4 = 0.1125; (0.2, 0.3]: |0 - 0.3| x 1/4
    assert expected_calibration_error(probs, ref) == pytest.approx(0.225 + 0.1125 + 0.075, abs=1e-12)
    bins = reliability(probs[:4].max(axis=1), probs[:4].argmax(axis=1) == ref[:4])["bins"]
    assert [b["n"] for b in bins] == [0, 0, 1, 0, 0, 1, 0, 0, 0, 2]
    assert bins[9]["accuracy"] == 0.5 and bins[9]["confidence"] == pytest.approx(0.95)


def test_ece_equals_the_loop_on_random_probabilities() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        probs = rng.dirichlet(np.full(5, 0.6), size=300)
        probs[:10] = np.eye(5)[rng.integers(0, 5, 10)]  # confidence exactly 1
        ref = rng.integers(-1, 5, 300)
        want = ece_by_loop([(list(p), int(r)) for p, r in zip(probs, ref) if r >= 0])
        assert expected_calibration_error(probs, ref) == pytest.approx(want, abs=1e-12)


# --------------------------------------------------------------------------- evaluate, on files we write

def write_prediction(path: Path, stages: list[str], probs: np.ndarray | None, onset0: float = 0.0) -> None:
    """A prediction table as `score` writes it (probabilities to 4 decimals), or without p_ columns."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "onset_s", "stage", *P_COLUMNS, "confidence", "flag"] if probs is not None
                   else ["onset", "duration", "stage"])
        for i, stage in enumerate(stages):
            onset = onset0 + 30.0 * i
            if probs is None:
                w.writerow([onset, 30, stage])
            else:
                p = [round(float(v), 4) for v in probs[i]]
                w.writerow([i, onset, stage, *p, max(p), ""])


def write_reference(path: Path, codes: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onset", "duration", "stage"])
        for i, c in enumerate(codes):
            w.writerow([30.0 * i, 30, STAGES[c] if c >= 0 else "?"])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def loop_rows(pred: Path, ref: Path) -> list[tuple[list[float], int]]:
    """(probabilities as written, reference code) of the epochs scored in both files, matched by onset."""
    ref_code = {float(r["onset"]): (-1 if r["stage"] == "?" else STAGES.index(r["stage"])) for r in read_rows(ref)}
    out = []
    for r in read_rows(pred):
        code = ref_code.get(float(r["onset_s"]), -1)
        if code >= 0 and r["stage"] != "?":
            out.append(([float(r[c]) for c in P_COLUMNS], code))
    return out


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> dict:
    """Three nights of predictions with known probabilities (edge confidences 0.3, 0.5 and 1 included), their
    references, and `sleepstage evaluate` run on them."""
    root = tmp_path_factory.mktemp("calibration")
    pred_dir, ref_dir = root / "pred", root / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    rng = np.random.default_rng(7)
    for k, n in enumerate((120, 80, 45)):
        probs = rng.dirichlet(np.full(5, 0.7), size=n)
        probs[0] = [0.3, 0.25, 0.25, 0.1, 0.1]
        probs[1] = [0.1, 0.5, 0.2, 0.1, 0.1]
        probs[2] = [0.0, 0.0, 1.0, 0.0, 0.0]
        top = probs.argmax(axis=1)
        ref = np.where(rng.random(n) < 0.6, top, rng.integers(0, 5, n))  # right more often than not
        ref[5:8] = -1  # unscored in the reference
        stages = [STAGES[t] for t in top]
        stages[10] = "?"  # unscored in the prediction
        write_prediction(pred_dir / f"night{k}.csv", stages, probs)
        write_reference(ref_dir / f"night{k}.csv", ref)
    out = root / "out"
    proc = run_cli("evaluate", pred_dir, ref_dir, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return {"pred": pred_dir, "ref": ref_dir, "out": out, "proc": proc}


def test_evaluate_ece_matches_an_independent_computation(predictions: dict) -> None:
    pred_dir, ref_dir, out = predictions["pred"], predictions["ref"], predictions["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    nights = sorted(p.stem for p in pred_dir.glob("*.csv"))
    per_night = {n: loop_rows(pred_dir / f"{n}.csv", ref_dir / f"{n}.csv") for n in nights}
    pooled = [row for n in nights for row in per_night[n]]
    assert metrics["pooled"]["ece"] == pytest.approx(ece_by_loop(pooled), abs=1e-12)
    assert metrics["pooled"]["calibration"]["n"] == len(pooled) == metrics["pooled"]["n"]
    shown = {n["night"]: n["metrics"]["ece"] for n in metrics["per_night"]}
    for n in nights:
        assert shown[n] == pytest.approx(ece_by_loop(per_night[n]), abs=1e-12), n
    csv_ece = {r["night"]: float(r["ece"]) for r in read_rows(out / "per_night.csv")}
    assert csv_ece == pytest.approx({n: ece_by_loop(per_night[n]) for n in nights}, abs=1e-12)
    assert metrics["summary"]["ece"]["mean"] == pytest.approx(np.mean(list(csv_ece.values())), abs=1e-12)
    bins = metrics["pooled"]["calibration"]["bins"]
    assert sum(b["n"] for b in bins) == len(pooled) and bins[2]["n"] >= 3 and bins[4]["n"] >= 3  # 0.3, 0.5
    shown_on_screen = f"{100 * metrics['pooled']['ece']:.1f}"
    assert any("calibration error, ECE (%)" in ln and shown_on_screen in ln
               for ln in predictions["proc"].stdout.splitlines())


def test_evaluation_report_has_a_reliability_diagram(predictions: dict) -> None:
    html = (predictions["out"] / "report.html").read_text()
    metrics = json.loads((predictions["out"] / "metrics.json").read_text())
    assert '<section id="calibration">' in html and '<svg' in html and 'class="reliability"' in html
    assert f'data-field="pooled.ece" data-value="{metrics["pooled"]["ece"]!r}"' in html
    for k, b in enumerate(metrics["pooled"]["calibration"]["bins"]):
        assert f'data-field="pooled.calibration.bins.{k}.n" data-value="{float(b["n"])!r}"' in html
        assert (f'class="bin-accuracy" data-bin="{k}"' in html) == (b["n"] > 0)


def test_predictions_without_probabilities_have_no_ece_and_say_so(predictions: dict, tmp_path: Path) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    rows = read_rows(predictions["pred"] / "night0.csv")
    write_prediction(pred_dir / "night0.csv", [r["stage"] for r in rows], None)
    proc = run_cli("evaluate", pred_dir, predictions["ref"] / "night0.csv", "-o", tmp_path / "none")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert "ece" not in metrics["pooled"] and "ece" not in metrics["per_night"][0]["metrics"]
    assert any("no prediction carries stage probabilities" in n for n in metrics["notes"])
    assert "ece" not in read_rows(tmp_path / "none" / "per_night.csv")[0]
    assert 'id="calibration"' not in (tmp_path / "none" / "report.html").read_text()

    # Mixed: one night without probabilities, two with; ece over the two, and a note says so.
    for name in ("night1.csv", "night2.csv"):
        (pred_dir / name).write_bytes((predictions["pred"] / name).read_bytes())
    proc = run_cli("evaluate", pred_dir, predictions["ref"], "-o", tmp_path / "mixed")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "mixed" / "metrics.json").read_text())
    both = [row for n in ("night1", "night2") for row in loop_rows(pred_dir / f"{n}.csv",
                                                                   predictions["ref"] / f"{n}.csv")]
    assert metrics["pooled"]["ece"] == pytest.approx(ece_by_loop(both), abs=1e-12)
    assert metrics["pooled"]["calibration"]["nights"] == 2
    assert "ece" not in metrics["per_night"][0]["metrics"] and "ece" in metrics["per_night"][1]["metrics"]
    assert any("covers 2 of 3 nights" in n and "night0" in n for n in metrics["notes"])
    assert read_rows(tmp_path / "mixed" / "per_night.csv")[0]["ece"] == ""


# --------------------------------------------------------------------------- temperature scaling

@pytest.mark.parametrize("t0", [0.6, 1.0, 2.5])
def test_temperature_fit_recovers_a_known_temperature(t0: float) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 3.0, (20000, 5))
    mean_lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # what the model says (log-probabilities)
    truth = tempered_softmax(mean_lp, t0)  # what the labels are drawn from
    labels = (truth.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)
    assert fit_temperature(mean_lp, labels) == pytest.approx(t0, rel=0.05)
    fit = calibrate([mean_lp[:9000], mean_lp[9000:]], [labels[:9000], labels[9000:]])
    assert fit["nights"] == 2 and fit["epochs"] == 20000
    assert fit["nll_after"] <= fit["nll_before"]
    if t0 != 1.0:  # a miscalibrated model: calibration must cut its ECE by a lot
        assert fit["ece_after"] < fit["ece_before"] / 3


def test_temperature_changes_probabilities_not_stages() -> None:
    torch.manual_seed(0)
    model = StagingModel("seqsleepnet", 1, 4).eval()
    x = torch.randn(11, 1, 3000).numpy()
    plain = score_night(model, x)
    hot = score_night(model, x, temperature=3.0)
    cold = score_night(model, x, temperature=0.4)
    for other in (hot, cold):
        np.testing.assert_array_equal(other.stages, plain.stages)
        np.testing.assert_array_equal(other.probabilities.argmax(axis=1), plain.stages)
        np.testing.assert_allclose(other.probabilities.sum(axis=1), 1.0, atol=1e-12)
    mean_lp = plain.log_scores / plain.coverage[:, None]
    np.testing.assert_allclose(plain.probabilities, tempered_softmax(mean_lp, 1.0), atol=1e-12)
    np.testing.assert_allclose(hot.probabilities, tempered_softmax(mean_lp, 3.0), atol=1e-12)
    assert (hot.probabilities.max(axis=1) < plain.probabilities.max(axis=1)).all()  # softer
    assert (cold.probabilities.max(axis=1) > plain.probabilities.max(axis=1)).all()  # sharper
    with pytest.raises(ValueError, match="temperature"):
        score_night(model, x, temperature=0.0)


# --------------------------------------------------------------------------- train stores T; score uses it

def _validation_scores(trained, loaded) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ds = PreparedDataset(trained["data"])
    mean_lps, labels = [], []
    for night in (n for n in ds.nights if n.subject == "01-03-0005"):
        rec = ds.open(night)
        result = score_night(loaded.model, np.array(rec["x"], dtype=np.float32))
        mean_lps.append(result.log_scores / result.coverage[:, None])
        labels.append(np.asarray(rec["label"], dtype=np.int64))
    return mean_lps, labels


def test_trained_model_stores_its_temperature_and_ece_before_and_after(trained) -> None:
    loaded = load_model(trained["model"])
    cal = loaded.meta["calibration"]
    assert loaded.temperature == loaded.meta["temperature"] == cal["temperature"]
    assert loaded.temperature != 1.0 and cal["nights"] == 1
    assert cal["ece_after"] <= cal["ece_before"] and cal["nll_after"] <= cal["nll_before"]
    log = json.loads(trained["model"].with_name("model.train.json").read_text())
    assert log["calibration"] == pytest.approx(cal)
    # The figures are those of the stored model on its validation night, computed here on our own.
    mean_lps, labels = _validation_scores(trained, loaded)
    rows = [(list(p), int(y)) for m, lab in zip(mean_lps, labels) for p, y in zip(m, lab) if y >= 0]
    assert cal["epochs"] == len(rows)
    assert cal["ece_before"] == pytest.approx(ece_by_loop([(list(tempered_softmax(np.array(p), 1.0)), y)
                                                           for p, y in rows]), abs=1e-6)
    assert cal["ece_after"] == pytest.approx(ece_by_loop([(list(tempered_softmax(np.array(p), loaded.temperature)),
                                                           y) for p, y in rows]), abs=1e-6)
    nll = -np.mean([math.log(tempered_softmax(np.array(p), loaded.temperature)[y]) for p, y in rows])
    assert cal["nll_after"] == pytest.approx(nll, rel=1e-6)


def test_score_writes_calibrated_probabilities_and_confidence(trained, tmp_path: Path) -> None:
    from sleepstage_cli.scoring.pipeline import score_recording

    loaded = load_model(trained["model"])
    out = tmp_path / "scored.csv"
    proc = run_cli("score", trained["held_out"], "--model", trained["model"], "-o", out)
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    written = np.array([[float(r[c]) for c in P_COLUMNS] for r in rows])
    night = score_recording(trained["held_out"], loaded, "held-out", amp=False)
    loaded.temperature = 1.0
    raw = score_recording(trained["held_out"], loaded, "held-out", amp=False)
    np.testing.assert_allclose(written, night.probabilities, atol=6e-5)
    assert np.abs(written - raw.probabilities).max() > 1e-2  # not the uncalibrated ones
    np.testing.assert_array_equal(night.stages, raw.stages)
    assert [r["stage"] for r in rows] == [STAGES[s] if s >= 0 else "?" for s in night.stages]
    conf = np.array([float(r["confidence"]) if r["confidence"] else np.nan for r in rows])
    np.testing.assert_allclose(conf, night.confidence, atol=6e-5)
    report = out.with_name("scored.report.html").read_text()
    assert f"temperature T = {load_model(trained['model']).temperature:.3f}" in report


def test_model_without_a_temperature_loads_with_t_1(trained, tmp_path: Path) -> None:
    payload = torch.load(trained["model"], weights_only=True)
    for key in ("temperature", "calibration"):
        payload.pop(key)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    loaded = load_model(old)
    assert loaded.temperature == 1.0 and "calibration" not in loaded.meta
    ds = PreparedDataset(trained["data"])
    x = np.array(ds.open(ds.nights[0])["x"][:40], dtype=np.float32)
    result = score_night(loaded.model, x, temperature=loaded.temperature)
    np.testing.assert_allclose(result.probabilities, tempered_softmax(result.log_scores / result.coverage[:, None]),
                               atol=1e-12)
    payload["temperature"] = -2.0
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(InputError, match="temperature"):
        load_model(bad)


def test_training_without_validation_nights_is_not_calibrated(trained, tmp_path: Path) -> None:
    from sleepstage_cli.training.train import TrainOptions, train_model

    opts = TrainOptions(seq_len=5, batch_size=8, epochs=1, max_steps=2, eval_every=2, seed=1, device="cpu")
    result = train_model(trained["data"], tmp_path / "m.pt", opts, val_fraction=0)
    assert result.calibration["temperature"] == 1.0
    assert result.calibration["note"] == "not calibrated (no validation nights)"
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.temperature == 1.0 and loaded.meta["calibration"]["ece_before"] is None
