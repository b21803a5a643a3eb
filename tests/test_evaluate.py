"""`sleepstage evaluate`: metrics against scikit-learn, pairing, epoch matching by onset, output files, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli, write_edf, write_hypnogram_edf
from sklearn import metrics as skm

from sleepstage_cli.errors import InputError, OutputExistsError
from sleepstage_cli.evaluation.evaluate import (
    COUNT_KEYS,
    OUTPUT_FILES,
    SUMMARY_KEYS,
    evaluate_night,
    evaluate_pairs,
    match_epochs,
    pair_nights,
)
from sleepstage_cli.evaluation.metrics import agreement, confusion_matrix, scores
from sleepstage_cli.evaluation.sleepstats import sleep_statistics, statistics_agreement
from sleepstage_cli.io.hypnogram import Hypnogram
from sleepstage_cli.io.layout import pairing_key
from sleepstage_cli.report.evaluation_files import write_evaluation
from sleepstage_cli.stages import STAGES

LABELS = list(range(5))


# --------------------------------------------------------------------------- independent reference values

def sk_figures(ref: np.ndarray, pred: np.ndarray) -> dict:
    """The SPEC.md figures by scikit-learn, unscored epochs (negative codes) left out first."""
    keep = (ref >= 0) & (pred >= 0)
    y, p = ref[keep], pred[keep]
    if y.size == 0:
        return {"n": 0}
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, p, labels=LABELS, zero_division=np.nan)
    mcm = skm.multilabel_confusion_matrix(y, p, labels=LABELS)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), np.nan)
    return {
        "n": int(y.size),
        "accuracy": skm.accuracy_score(y, p),
        "kappa": skm.cohen_kappa_score(y, p, labels=LABELS),
        "macro_f1": skm.f1_score(y, p, average="macro", labels=LABELS, zero_division=np.nan),
        "mean_sensitivity": float(np.nanmean(rec)),
        "mean_specificity": float(np.nanmean(spec)),
        "precision": prec, "sensitivity": rec, "f1": f1, "support": support, "specificity": spec,
        "confusion": skm.confusion_matrix(y, p, labels=LABELS),
    }


def assert_close(actual, expected, tol: float = 1e-9, what: str = "") -> None:
    """Equal within ``tol``, None (JSON null) and NaN both meaning 'undefined'."""
    a = math.nan if actual is None else float(actual)
    e = math.nan if expected is None else float(expected)
    if math.isnan(e):
        assert math.isnan(a), f"{what}: expected undefined, got {a}"
    else:
        assert abs(a - e) <= tol, f"{what}: {a} != {e}"


def assert_matches_sklearn(got: dict, ref: np.ndarray, pred: np.ndarray, what: str = "") -> None:
    """``got`` (metrics.agreement layout, maybe from JSON) equals scikit-learn on the same epochs."""
    exp = sk_figures(ref, pred)
    assert got["n"] == exp["n"], what
    for key in ("accuracy", "kappa", "macro_f1", "mean_sensitivity", "mean_specificity"):
        assert_close(got[key], exp[key], what=f"{what} {key}")
    for i, s in enumerate(STAGES):
        c = got["per_class"][s]
        assert c["support"] == exp["support"][i], f"{what} {s}"
        for key in ("sensitivity", "specificity", "precision", "f1"):
            assert_close(c[key], exp[key][i], what=f"{what} {s} {key}")
    np.testing.assert_array_equal(np.asarray(got["confusion"]), exp["confusion"])


def random_codes(rng: np.random.Generator, n: int, absent: tuple[int, ...] = (), masked: float = 0.1) -> np.ndarray:
    classes = [c for c in LABELS if c not in absent]
    codes = rng.choice(classes, size=n)
    codes[rng.random(n) < masked] = -1
    return codes.astype(np.int64)


def noisy(rng: np.random.Generator, ref: np.ndarray, flip: float = 0.3, absent: tuple[int, ...] = ()) -> np.ndarray:
    """A prediction agreeing with ``ref`` most of the time."""
    pred = ref.copy()
    swap = rng.random(ref.size) < flip
    pred[swap] = random_codes(rng, int(swap.sum()), absent, masked=0.15)
    return pred


def hyp(stages, onsets=None, epoch_length: float = 30.0, source: str | None = None) -> Hypnogram:
    stages = np.asarray(stages, dtype=np.int8)
    if onsets is None:
        onsets = epoch_length * np.arange(stages.size)
    return Hypnogram(onsets=np.asarray(onsets, float), stages=stages, epoch_length=epoch_length,
                     source=Path(source) if source else None)


# --------------------------------------------------------------------------- metrics

CASES = [  # (seed, classes absent from the reference, classes absent from the prediction)
    (0, (), ()),
    (1, (3,), ()),          # N3 predicted but never in the reference
    (2, (), (1,)),          # N1 in the reference, never predicted
    (3, (1, 3), (1, 3)),    # absent from both: left out of the macro mean
    (4, (0, 1, 2, 3), (0, 1, 2, 3)),  # a single class in both: kappa undefined
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # kappa of one class
@pytest.mark.parametrize("seed,ref_absent,pred_absent", CASES)
def test_metrics_equal_sklearn(seed: int, ref_absent, pred_absent) -> None:
    rng = np.random.default_rng(seed)
    ref = random_codes(rng, 400, ref_absent)
    pred = noisy(rng, ref, absent=pred_absent)
    if pred_absent:
        pred[np.isin(pred, pred_absent)] = -1
    got = agreement(ref, pred)
    assert_matches_sklearn(got, ref, pred, f"seed {seed}")
    np.testing.assert_array_equal(confusion_matrix(ref, pred), sk_figures(ref, pred)["confusion"])
    assert_close(scores(confusion_matrix(ref, pred))["macro_f1"], got["macro_f1"])
    # The same through the evaluation path, the hypnograms on one grid.
    night = evaluate_night("x", hyp(pred), hyp(ref))
    assert_matches_sklearn(night.metrics, ref, pred, f"seed {seed} via evaluate_night")
    assert night.counts["n"] == int(((ref >= 0) & (pred >= 0)).sum())


def test_pooled_and_per_night_equal_independent_computations() -> None:
    rng = np.random.default_rng(11)
    pairs, refs, preds = [], [], []
    for k, n in enumerate((150, 90, 240)):
        ref = random_codes(rng, n, absent=(3,) if k == 1 else ())  # night 1 has no N3
        pred = noisy(rng, ref, flip=0.2 + 0.1 * k)
        pairs.append((f"n{k}", hyp(pred), hyp(ref)))
        refs.append(ref)
        preds.append(pred)
    ev = evaluate_pairs(pairs)
    assert_matches_sklearn(ev.pooled, np.concatenate(refs), np.concatenate(preds), "pooled")
    for night, ref, pred in zip(ev.nights, refs, preds):
        assert_matches_sklearn(night.metrics, ref, pred, night.night)
    per_night = [sk_figures(r, p) for r, p in zip(refs, preds)]
    for key in ("accuracy", "kappa", "macro_f1", "mean_sensitivity", "mean_specificity"):
        v = np.array([f[key] for f in per_night])
        assert_close(ev.summary[key]["mean"], v.mean(), what=key)
        assert_close(ev.summary[key]["sd"], v.std(ddof=1), what=key)
    # A night without N3 has no N3 sensitivity: the mean over nights leaves it out.
    sens = [f["sensitivity"][3] for f in per_night]
    assert math.isnan(sens[1])
    assert ev.summary["N3_sensitivity"]["n"] == 2
    assert_close(ev.summary["N3_sensitivity"]["mean"], np.nanmean(sens))
    assert set(SUMMARY_KEYS) == set(ev.summary)
    # Sleep statistics agreement is the sleepstats function of the per-night statistics.
    expected = statistics_agreement([sleep_statistics(p) for p in preds], [sleep_statistics(r) for r in refs])
    for name, a in expected.items():
        for key in ("n", "bias", "sd", "loa_low", "loa_high", "r"):
            assert_close(ev.stats_agreement[name][key], a[key], what=f"{name} {key}")


# --------------------------------------------------------------------------- epoch matching

def test_matching_is_by_onset_not_position() -> None:
    rng = np.random.default_rng(5)
    ref = random_codes(rng, 100, masked=0.0)
    onsets = 30.0 * np.arange(100)
    # The prediction starts 5 epochs late, skips epochs 40-44, runs 3 epochs past the end, jitters 0.4 s.
    keep = (np.arange(100) >= 5) & ~((np.arange(100) >= 40) & (np.arange(100) < 45))
    pred_onsets = np.concatenate([onsets[keep], 3000.0 + 30.0 * np.arange(3)]) + 0.4
    pred_codes = np.concatenate([noisy(rng, ref[keep]), [0, 0, 0]])
    night = evaluate_night("x", hyp(pred_codes, pred_onsets), hyp(ref, onsets))
    assert night.counts["matched"] == 90
    assert night.counts["ref_unmatched"] == 10 and night.counts["ref_unmatched_scored"] == 10
    assert night.counts["pred_unmatched"] == 3
    assert_matches_sklearn(night.metrics, ref[keep], pred_codes[:90])
    assert any("10 reference epochs have no prediction" in n for n in night.notes)
    assert any("3 predicted epochs have no reference epoch" in n for n in night.notes)
    np.testing.assert_array_equal(night.onsets, onsets[keep])
    # Sleep statistics cover the matched span on the reference grid, the skipped epochs unscored in both.
    span_ref = ref[5:].copy()
    span_pred = np.full(95, -1)
    span_pred[keep[5:]] = pred_codes[:90]
    span_ref[~keep[5:]] = -1
    assert night.ref_stats == sleep_statistics(span_ref)
    assert night.pred_stats == sleep_statistics(span_pred)
    assert set(night.counts) == set(COUNT_KEYS)


def test_offset_grid_is_a_clear_error() -> None:
    ref = hyp(np.zeros(50, int), source="ref.edf")
    pred = hyp(np.zeros(50, int), 30.0 * np.arange(50) + 10.0, source="pred.csv")
    with pytest.raises(InputError) as exc:
        match_epochs(pred, ref)
    msg = str(exc.value)
    assert "offset by +10 s" in msg and "--epochs-from ref.edf" in msg and "pred.csv" in msg
    assert len(match_epochs(pred, ref, tolerance=10.0).ref_index) == 50


def test_epoch_length_tolerance_and_overlap_errors() -> None:
    ref = hyp(np.zeros(20, int), source="ref.edf")
    with pytest.raises(InputError, match="20-s epochs but reference ref.edf has 30-s epochs"):
        match_epochs(hyp(np.zeros(30, int), epoch_length=20.0, source="p.csv"), ref)
    with pytest.raises(InputError, match="below half an epoch"):
        match_epochs(hyp(np.zeros(20, int)), ref, tolerance=15.0)
    with pytest.raises(InputError, match="do not overlap in time"):
        match_epochs(hyp(np.zeros(20, int), 10000.0 + 30.0 * np.arange(20)), ref)


# --------------------------------------------------------------------------- pairing

def test_night_keys() -> None:
    assert pairing_key("SC4001E0-PSG.csv") == pairing_key("SC4001EC-Hypnogram.edf") == "SC4001"
    assert pairing_key("01-03-0001 PSG.csv") == pairing_key("01-03-0001 Base.edf") == "01-03-0001"
    names = ("night1.csv", "night1-PSG.csv", "night1 PSG.csv", "night1-Hypnogram.edf", "night1 Base.edf",
             "night1_sleepscoring.edf", "night1.hypnogram.csv", "Night1.edf.csv", "night1")
    assert {pairing_key(n) for n in names} == {"night1"}
    assert pairing_key("my night.csv") == pairing_key("my_night")  # a prepared dataset's id of "my night.edf"


def _touch_table(path: Path) -> Path:
    path.write_text("onset,duration,stage\n0,30,W\n")
    return path


def test_pairing_of_folders(tmp_path: Path) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    (ref / "annotations").mkdir(parents=True)
    pred.mkdir()
    for name in ("SC4001E0-PSG.csv", "SC4002E0-PSG.csv", "SC4099E0-PSG.csv", "report.html"):
        _touch_table(pred / name)
    write_hypnogram_edf(ref / "SC4001EC-Hypnogram.edf", [(0, 30, "Sleep stage W")])
    write_hypnogram_edf(ref / "annotations" / "SC4002EC-Hypnogram.edf", [(0, 30, "Sleep stage W")])
    write_hypnogram_edf(ref / "SC4011EH-Hypnogram.edf", [(0, 30, "Sleep stage W")])
    # The recording beside its hypnogram is not a second reference for SC4001.
    write_edf(ref / "SC4001E0-PSG.edf", {"EEG Fpz-Cz": (np.zeros(3000), 100.0)})
    p = pair_nights(pred, ref)
    assert [(x.night, x.pred.name, x.ref.name) for x in p.pairs] == [
        ("SC4001", "SC4001E0-PSG.csv", "SC4001EC-Hypnogram.edf"),
        ("SC4002", "SC4002E0-PSG.csv", "SC4002EC-Hypnogram.edf")]
    assert [Path(x).name for x in p.pred_only] == ["SC4099E0-PSG.csv"]
    assert [Path(x).name for x in p.ref_only] == ["SC4011EH-Hypnogram.edf"]
    # A single prediction file is paired within the folder; the other references are not its business.
    single = pair_nights(pred / "SC4002E0-PSG.csv", ref)
    assert len(single.pairs) == 1 and not single.ref_only
    # Two files are paired whatever their names.
    assert len(pair_nights(pred / "SC4099E0-PSG.csv", ref / "SC4011EH-Hypnogram.edf").pairs) == 1


def test_pairing_a_score_output_folder(tmp_path: Path) -> None:
    """What `sleepstage score` writes: one hypnogram per night, its copies and other files left out."""
    pred, ref = tmp_path / "scored", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for night in ("SC4001", "night1"):
        _touch_table(pred / f"{night}.csv")
        (pred / f"{night}.events.tsv").write_text("onset\tduration\ttrial_type\n0\t30\tW\n")
        write_hypnogram_edf(pred / f"{night}.annotations.edf", [(0, 30, "Sleep stage W")])
        (pred / f"{night}.attention.csv").write_text("epoch,a\n1,0.5\n")
        (pred / f"{night}.report.html").write_text("<html></html>")
    _touch_table(pred / "summary.csv")
    write_hypnogram_edf(ref / "SC4001EC-Hypnogram.edf", [(0, 30, "Sleep stage W")])
    _touch_table(ref / "night1.csv")
    p = pair_nights(pred, ref)
    assert [(x.night, x.pred.name) for x in p.pairs] == [("SC4001", "SC4001.csv"), ("night1", "night1.csv")]
    assert not p.pred_only and not p.ref_only


def test_pairing_errors(tmp_path: Path) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    _touch_table(pred / "a.csv")
    _touch_table(ref / "b.csv")
    with pytest.raises(InputError) as exc:
        pair_nights(pred, ref)
    assert str(pred) in str(exc.value) and str(ref) in str(exc.value) and "a" in str(exc.value)
    _touch_table(pred / "b.csv")
    _touch_table(pred / "b-PSG.tsv")
    with pytest.raises(InputError, match="2 prediction files for night 'b'"):
        pair_nights(pred, ref)
    with pytest.raises(InputError, match="not found"):
        pair_nights(tmp_path / "missing", ref)


# --------------------------------------------------------------------------- output files

def _small_evaluation():
    rng = np.random.default_rng(3)
    pairs = []
    for k in range(2):
        ref = random_codes(rng, 60)
        pairs.append((f"night{k}", hyp(noisy(rng, ref)), hyp(ref)))
    pairs.append(("no_n3", hyp(np.array([0, 1, 2, 2, 4, 0])), hyp(np.array([0, 2, 2, 2, 4, 0]))))
    return evaluate_pairs(pairs)


def test_write_evaluation_files_columns_and_refusal(tmp_path: Path, monkeypatch) -> None:
    import csv

    from sleepstage_cli.report import plots
    # The figures are plots.py's business (tests/test_report.py); drawing them here only costs time.
    monkeypatch.setattr(plots, "confusion_png", lambda *a, **k: b"png")
    monkeypatch.setattr(plots, "bland_altman_png", lambda *a, **k: b"png")
    ev = _small_evaluation()
    out = tmp_path / "eval"
    paths = write_evaluation(out, ev)
    assert sorted(p.name for p in paths) == sorted(OUTPUT_FILES)
    data = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN became null
    assert data["pooled"]["per_class"]["N3"]["sensitivity"] is not None
    assert data["per_night"][2]["metrics"]["per_class"]["N3"]["sensitivity"] is None

    def rows(name: str) -> list[dict]:
        with open(out / name, newline="") as fh:
            return list(csv.DictReader(fh))

    per_night = rows("per_night.csv")
    assert [r["night"] for r in per_night] == ["night0", "night1", "no_n3"]
    assert {"accuracy", "kappa", "macro_f1", "n", "ref_unmatched", "N1_f1"} <= set(per_night[0])
    assert float(per_night[0]["kappa"]) == ev.nights[0].metrics["kappa"]
    assert [r["stage"] for r in rows("per_class.csv")] == list(STAGES)
    confusion = rows("confusion.csv")
    assert list(confusion[0]) == ["reference", *STAGES]
    assert [[int(r[s]) for s in STAGES] for r in confusion] == ev.pooled["confusion"]
    norm = rows("confusion_normalised.csv")
    assert abs(sum(float(norm[0][s]) for s in STAGES) - 1.0) < 1e-12
    stats = rows("sleep_statistics.csv")
    assert [(r["night"], r["scoring"]) for r in stats[:2]] == [("night0", "reference"), ("night0", "prediction")]
    assert "TST" in stats[0] and "WASO" in stats[0]
    agree = rows("stats_agreement.csv")
    assert {"field", "unit", "bias", "loa_low", "loa_high", "r"} <= set(agree[0])
    html = (out / "report.html").read_text()
    assert 'data-field="pooled.kappa"' in html and "no_n3" in html

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    with pytest.raises(OutputExistsError):
        write_evaluation(out, _small_evaluation())
    assert before == {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    write_evaluation(out, ev, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


# --------------------------------------------------------------------------- end to end (CLI)

def _runs(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """(first epoch, number of epochs, code) of each run of equal codes."""
    edges = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [codes.size]])
    return [(int(a), int(b - a), int(codes[a])) for a, b in zip(starts, ends)]


_EDF_TEXT = {0: "Sleep stage W", 1: "Sleep stage 1", 2: "Sleep stage 2", 3: "Sleep stage 3", 4: "Sleep stage R",
             -1: "Sleep stage ?"}


def write_score_csv(path: Path, onsets: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> Path:
    """A prediction in `sleepstage score`'s output format, '?' for epochs it could not score."""
    lines = ["epoch,onset_s,stage,p_W,p_N1,p_N2,p_N3,p_REM,confidence,flag"]
    for k, (onset, code) in enumerate(zip(onsets, codes)):
        prob = rng.dirichlet(np.ones(5))
        stage = STAGES[code] if code >= 0 else "?"
        flag = "artefact" if code < 0 else ""
        lines.append(f"{k + 1},{onset:.1f},{stage},{','.join(f'{q:.4f}' for q in prob)},{prob.max():.4f},{flag}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _matched(pred_onsets, pred_codes, ref_onsets, ref_codes) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the epochs present in both, matched by rounded onset (independently of the package)."""
    by_onset = {round(float(o)): int(c) for o, c in zip(pred_onsets, pred_codes)}
    pairs = [(int(c), by_onset[round(float(o))]) for o, c in zip(ref_onsets, ref_codes) if round(float(o)) in by_onset]
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def test_cli_csv_predictions_against_edf_annotations(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    pred_dir, ref_dir, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "eval"
    pred_dir.mkdir()
    ref_dir.mkdir()
    expected_ref, expected_pred = [], []
    for night, n in (("SC4001", 120), ("SC4002", 90)):
        ref = random_codes(rng, n, masked=0.0)
        ref[10:13] = -1  # "Sleep stage ?"
        ref[50:52] = -2  # no annotation: a gap the reader fills with unscored epochs
        annotations = [(30.0 * a, 30.0 * k, _EDF_TEXT[c]) for a, k, c in _runs(ref) if c != -2]
        ref[50:52] = -1
        write_hypnogram_edf(ref_dir / f"{night}EC-Hypnogram.edf", annotations)
        onsets = 30.0 * np.arange(n)
        keep = np.ones(n, bool)
        keep[:4] = False      # the prediction starts 2 minutes late
        keep[70:75] = False   # and skips a few epochs
        pred = noisy(rng, ref[keep], flip=0.25)
        write_score_csv(pred_dir / f"{night}E0-PSG.csv", onsets[keep], pred, rng)
        r, p = _matched(onsets[keep], pred, onsets, ref)
        expected_ref.append(r)
        expected_pred.append(p)
    write_hypnogram_edf(ref_dir / "SC4011EH-Hypnogram.edf", [(0, 300, "Sleep stage W")])
    write_score_csv(pred_dir / "SC4021E0-PSG.csv", 30.0 * np.arange(5), np.zeros(5, int), rng)

    proc = run_cli("evaluate", pred_dir, ref_dir, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert any("without a prediction" in w and "SC4011EH-Hypnogram.edf" in w for w in warnings), proc.stderr
    assert any("without a reference" in w and "SC4021E0-PSG.csv" in w for w in warnings), proc.stderr
    assert any("SC4001: 4 reference epochs have no prediction (4 of them scored)" in w for w in warnings), proc.stderr
    # The reader keeps time on one grid: epochs a prediction skips come back as unscored ('?') epochs.
    assert any("SC4001: prediction: 5 unannotated epoch(s) from 2100 s kept as unscored" in w for w in warnings)
    assert "Cohen's kappa" in proc.stdout and "Confusion matrix" in proc.stdout

    data = json.loads((out / "metrics.json").read_text())
    assert [n["night"] for n in data["per_night"]] == ["SC4001", "SC4002"]
    for night, r, p in zip(data["per_night"], expected_ref, expected_pred):
        c = night["counts"]
        assert c["ref_unmatched"] == 4 and c["pred_unmatched"] == 0 and c["unscored_ref"] == 5
        assert c["ref_scored_not_compared"] == 4 + 5 + int(((r >= 0) & (p < 0)).sum())
        assert_matches_sklearn(night["metrics"], r, p, night["night"])
    # Pooled = the concatenated matched epochs of all nights.
    assert_matches_sklearn(data["pooled"], np.concatenate(expected_ref), np.concatenate(expected_pred), "pooled")
    per_night = [sk_figures(r, p) for r, p in zip(expected_ref, expected_pred)]
    for key in ("accuracy", "kappa", "macro_f1"):
        v = np.array([f[key] for f in per_night])
        assert_close(data["summary"][key]["mean"], v.mean(), what=key)
        assert_close(data["summary"][key]["sd"], v.std(ddof=1), what=key)
    assert [Path(p).name for p in data["unpaired"]["predictions"]] == ["SC4021E0-PSG.csv"]
    assert [Path(p).name for p in data["unpaired"]["references"]] == ["SC4011EH-Hypnogram.edf"]

    # The output exists: refused without --force, nothing altered.
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    again = run_cli("evaluate", pred_dir, ref_dir, "-o", out)
    assert_clean_error(again, str(out), "--force")
    assert before == {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-ds")
    sim, ds = root / "sim", root / "ds"
    proc = run_cli("simulate", sim, "--nights", 2, "--layout", "generic", "--hours", 0.5, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("prepare", sim, "-o", ds, "--channel-map", sim / "channels.toml")
    assert proc.returncode == 0, proc.stderr
    return ds


def test_cli_against_a_prepared_dataset(prepared: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    manifest = json.loads((prepared / "manifest.json").read_text())
    pred_dir, out = tmp_path / "pred", tmp_path / "eval"
    pred_dir.mkdir()
    expected = []
    names = iter(("{}.csv", "{}.hypnogram.csv"))
    for night in manifest["nights"]:
        rec = np.load(prepared / night["file"], mmap_mode="r")
        onsets, labels = np.array(rec["onset"]), np.array(rec["label"], dtype=np.int64)
        keep = np.arange(onsets.size) >= 3
        pred = noisy(rng, labels[keep], flip=0.3)
        write_score_csv(pred_dir / next(names).format(night["id"]), onsets[keep] + 0.5, pred, rng)
        expected.append(_matched(onsets[keep], pred, onsets, labels))
    proc = run_cli("evaluate", pred_dir, prepared, "-o", out, "--tolerance", 0.6)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "metrics.json").read_text())
    assert data["reference_is_dataset"] is True
    assert [n["night"] for n in data["per_night"]] == [n["id"] for n in manifest["nights"]]
    for night, (r, p) in zip(data["per_night"], expected):
        assert night["counts"]["ref_unmatched"] == 3
        assert_matches_sklearn(night["metrics"], r, p, night["night"])
    assert_matches_sklearn(data["pooled"], np.concatenate([r for r, _ in expected]),
                           np.concatenate([p for _, p in expected]), "pooled")


def test_cli_grid_offset_and_bad_stage_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ref = tmp_path / "night7-Hypnogram.edf"
    codes = random_codes(rng, 40, masked=0.0)
    write_hypnogram_edf(ref, [(30.0 * a, 30.0 * k, _EDF_TEXT[c]) for a, k, c in _runs(codes)])
    shifted = write_score_csv(tmp_path / "night7.csv", 30.0 * np.arange(40) + 10.0, codes, rng)
    proc = run_cli("evaluate", shifted, ref, "-o", tmp_path / "out")
    assert_clean_error(proc, "offset by +10 s", "--epochs-from", str(shifted))
    assert not (tmp_path / "out").exists()

    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,onset_s,stage\n1,0.0,W\n2,30.0,N5\n")
    proc = run_cli("evaluate", bad, ref, "-o", tmp_path / "out")
    assert_clean_error(proc, str(bad), "unknown sleep stage 'N5'")
    assert not (tmp_path / "out").exists()
