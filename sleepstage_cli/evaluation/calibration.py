"""Calibration of predicted probabilities: expected calibration error, reliability bins, temperature scaling.

**Expected calibration error (ECE).** Each epoch's confidence is its top probability and its prediction
the stage of that probability (top-label calibration). Epochs go into :data:`N_BINS` equal-width bins of
the confidence, right-closed: (0, 0.1], (0.1, 0.2], ..., (0.9, 1.0], with a confidence of exactly 0 in the
first bin (:data:`BIN_EDGES`). ECE = sum over bins of |accuracy - mean confidence| x the bin's share of
epochs, accuracy being the fraction of the bin's epochs whose predicted stage is the reference stage.
Only epochs scored in both hypnograms count (as for every other metric).

**Temperature scaling.** Scoring's probabilities are ``softmax(mean_lp / T)``, ``mean_lp`` an epoch's mean
aggregated log-probability (:func:`sleepstage_cli.scoring.inference.tempered_softmax`). :func:`fit_temperature`
chooses the scalar T > 0 that minimises the mean negative log-likelihood of the reference stages of the
validation epochs under those very probabilities. The NLL is convex in 1/T, so a bounded scalar search on
1/T finds the minimum; T never changes the argmax, so the stages are those of the uncalibrated model.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sleepstage_cli.scoring.inference import tempered_softmax
from sleepstage_cli.stages import N_CLASSES, STAGES

N_BINS = 10
BIN_EDGES = tuple(k / N_BINS for k in range(N_BINS + 1))
"""0, 0.1, ..., 1.0: bin k holds confidences in (BIN_EDGES[k], BIN_EDGES[k + 1]] (bin 0 also holds 0)."""

T_BOUNDS = (0.05, 20.0)
"""The temperatures :func:`fit_temperature` searches."""

PROBABILITY_COLUMNS = tuple(f"p_{s}" for s in STAGES)
"""The columns of a prediction table holding the stage probabilities (score's CSV)."""


# --------------------------------------------------------------------------- ECE and reliability

def top_label(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's confidence (its largest probability) and predicted stage (the first index of it)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, N_CLASSES)
    return p.max(axis=1), p.argmax(axis=1)


def bin_of(confidence: np.ndarray) -> np.ndarray:
    """The bin (0..N_BINS - 1) of each confidence: (0, 0.1] -> 0, ..., (0.9, 1] -> 9; 0 -> 0."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    return np.searchsorted(np.asarray(BIN_EDGES[1:-1]), c, side="left")


def reliability(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """ECE and the reliability diagram's bins of epochs given by their confidence and correctness.

    Returns ``{"n", "ece", "bins"}``, ``bins`` one dict per bin: ``low``, ``high``, ``n``, ``accuracy`` and
    ``confidence`` (mean; both NaN for an empty bin). ``ece`` is NaN without epochs.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != hit.shape:
        raise ValueError(f"{conf.size} confidences but {hit.size} correctness values")
    idx = bin_of(conf)
    n = conf.size
    bins, ece = [], 0.0
    for k in range(N_BINS):
        inside = idx == k
        count = int(inside.sum())
        acc = float(hit[inside].mean()) if count else math.nan
        mean_conf = float(conf[inside].mean()) if count else math.nan
        if count:
            ece += abs(acc - mean_conf) * count / n
        bins.append({"low": BIN_EDGES[k], "high": BIN_EDGES[k + 1], "n": count, "accuracy": acc,
                     "confidence": mean_conf})
    return {"n": int(n), "ece": float(ece) if n else math.nan, "bins": bins}


def expected_calibration_error(probabilities: np.ndarray, reference: np.ndarray) -> float:
    """ECE of (N, 5) probabilities against reference stage codes; epochs with a code < 0 do not count."""
    ref = np.asarray(reference, dtype=np.int64).ravel()
    conf, pred = top_label(probabilities)
    keep = ref >= 0
    return reliability(conf[keep], pred[keep] == ref[keep])["ece"]


# --------------------------------------------------------------------------- temperature scaling

def nll(mean_lp: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` (0-4) under ``softmax(mean_lp / temperature)``."""
    z = np.asarray(mean_lp, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]))


def fit_temperature(mean_lp: np.ndarray, labels: np.ndarray) -> float:
    """The T in :data:`T_BOUNDS` minimising :func:`nll` (1 when there is no epoch, or nothing beats T = 1)."""
    from scipy.optimize import minimize_scalar

    mean_lp = np.asarray(mean_lp, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return 1.0
    lo, hi = T_BOUNDS
    found = minimize_scalar(lambda beta: nll(mean_lp, labels, 1.0 / beta), bounds=(1.0 / hi, 1.0 / lo),
                            method="bounded", options={"xatol": 1e-7})
    t = float(1.0 / found.x)
    return t if nll(mean_lp, labels, t) < nll(mean_lp, labels, 1.0) else 1.0


def calibrate(mean_lps: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict:
    """Fit T on nights given by their (N, 5) mean log-probabilities and reference codes (< 0: not scored).

    Returns ``temperature``, ``ece_before`` / ``ece_after`` (T = 1 / fitted T), ``nll_before`` / ``nll_after``,
    ``nights`` and ``epochs`` (the scored epochs it was fitted on).
    """
    m, y = np.zeros((0, N_CLASSES)), np.zeros(0, np.int64)
    for night_lp, night_labels in zip(mean_lps, labels):
        codes = np.asarray(night_labels, dtype=np.int64)
        m = np.concatenate([m, np.asarray(night_lp, dtype=np.float64)[codes >= 0]])
        y = np.concatenate([y, codes[codes >= 0]])
    t = fit_temperature(m, y)
    out = {"temperature": t, "nights": len(labels), "epochs": int(y.size)}
    for when, temp in (("before", 1.0), ("after", t)):
        out[f"ece_{when}"] = expected_calibration_error(tempered_softmax(m, temp), y) if y.size else math.nan
        out[f"nll_{when}"] = nll(m, y, temp) if y.size else math.nan
    return out


# --------------------------------------------------------------------------- probabilities of predictions

def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in ("\t", ";", ",", "|")}
    return max(counts, key=counts.__getitem__)


def read_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Onsets (s) and p_W..p_REM of a prediction table (score's CSV), or None when it has no such columns.

    Rows without probabilities (empty cells) hold NaN. EDF files and unreadable tables give None too:
    the hypnogram reader reports what is wrong with them.
    """
    path = Path(path)
    if path.suffix.lower() in (".edf", ".bdf"):
        return None
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError):
        return None
    if not lines:
        return None
    delim = _delimiter(lines[0])
    rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delim)]
    head = [c.lower() for c in rows[0]]
    onset_col = next((head.index(c) for c in ("onset_s", "onset") if c in head), None)
    p_cols = [head.index(c.lower()) if c.lower() in head else None for c in PROBABILITY_COLUMNS]
    if onset_col is None or None in p_cols:
        return None

    def number(cell: str) -> float:
        try:
            return float(cell.replace(",", ".") if delim == ";" else cell)
        except ValueError:
            return math.nan

    body = [r for r in rows[1:] if len(r) == len(head)]
    onsets = np.array([number(r[onset_col]) for r in body], dtype=np.float64)
    probs = np.array([[number(r[i]) for i in p_cols] for r in body], dtype=np.float64).reshape(-1, N_CLASSES)
    return onsets, probs


def aligned_probabilities(path: str | Path, onsets: np.ndarray, tolerance: float = 1e-3) -> np.ndarray | None:
    """The probabilities of a prediction file's epochs at ``onsets`` (its hypnogram's), NaN rows where it
    has none; None when the file carries no probabilities at all."""
    read = read_probabilities(path)
    if read is None:
        return None
    file_onsets, probs = read
    ok = np.isfinite(file_onsets) & np.isfinite(probs).all(axis=1)
    file_onsets, probs = file_onsets[ok], probs[ok]
    if file_onsets.size == 0:
        return None
    order = np.argsort(file_onsets, kind="stable")
    file_onsets, probs = file_onsets[order], probs[order]
    want = np.asarray(onsets, dtype=np.float64)
    j = np.minimum(np.searchsorted(file_onsets, want - tolerance, side="left"), file_onsets.size - 1)
    out = np.full((want.size, N_CLASSES), np.nan)
    found = np.abs(file_onsets[j] - want) <= tolerance
    out[found] = probs[j[found]]
    return out


def evaluation_calibration(nights: Sequence) -> tuple[dict | None, list[str]]:
    """ECE of an evaluation's nights whose prediction files carry probabilities.

    ``nights`` are :class:`~sleepstage_cli.evaluation.evaluate.NightResult`; each one with probabilities gets
    ``metrics["ece"]``. Returns the pooled ``{"ece", "n", "nights", "bins"}`` (None when no prediction has
    probabilities) and notes saying which nights it leaves out.
    """
    confs, hits, without, files = [], [], [], 0
    for night in nights:
        if night.pred_source is None or night.pred_onsets is None:
            continue
        files += 1
        probs = aligned_probabilities(night.pred_source, night.pred_onsets)
        ref, pred = np.asarray(night.ref_codes, np.int64), np.asarray(night.pred_codes, np.int64)
        keep = (ref >= 0) & (pred >= 0)
        if probs is None or not np.isfinite(probs[keep]).all():
            without.append(night.night)
            continue
        conf, top = top_label(probs[keep])
        night.metrics["ece"] = reliability(conf, top == ref[keep])["ece"]
        confs.append(conf)
        hits.append(top == ref[keep])
    if not files:
        return None, []
    if not confs:
        return None, ["no prediction carries stage probabilities (p_W..p_REM columns): no calibration error "
                      "(ece) is reported"]
    pooled = reliability(np.concatenate(confs), np.concatenate(hits))
    pooled["nights"] = len(confs)
    notes = []
    if without:
        shown = ", ".join(without[:8]) + (f" and {len(without) - 8} more" if len(without) > 8 else "")
        notes.append(f"the calibration error (ece) covers {len(confs)} of {len(confs) + len(without)} nights: the "
                     f"predictions of {shown} carry no stage probabilities (p_W..p_REM) for every compared epoch")
    return pooled, notes
