"""Agreement metrics as the SeqSleepNet paper reports them: confusion matrix, accuracy, Cohen's kappa,
macro-F1, per-class figures.

Conventions: rows of the confusion matrix are the reference, columns the prediction; unscored epochs
(code < 0 in either) never count. Per-class F1 is 2TP / (2TP + FP + FN); a class absent from both
reference and prediction has no F1 and is left out of the macro mean (scikit-learn's
``zero_division=np.nan``), so a night without N3 is not penalised for it. Kappa is NaN when chance
agreement is total (both hypnograms a single identical class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sleepstage_cli.stages import N_CLASSES, STAGES


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Counts (n_classes x n_classes), reference in rows; pairs with a negative code are left out."""
    ref = np.asarray(reference, dtype=np.int64).ravel()
    pred = np.asarray(predicted, dtype=np.int64).ravel()
    if ref.shape != pred.shape:
        raise ValueError(f"reference has {ref.size} epochs, prediction {pred.size}")
    keep = (ref >= 0) & (pred >= 0) & (ref < n_classes) & (pred < n_classes)
    return np.bincount(ref[keep] * n_classes + pred[keep], minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def scores(cm: np.ndarray) -> dict:
    """Every figure the paper reports, from a confusion matrix.

    Returns a dict with ``n``, ``accuracy``, ``kappa``, ``macro_f1``, ``mean_sensitivity``,
    ``mean_specificity`` and ``per_class`` (name -> support, sensitivity, specificity, precision, f1).
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    ref_tot = cm.sum(axis=1)
    pred_tot = cm.sum(axis=0)
    fn = ref_tot - tp
    fp = pred_tot - tp
    tn = n - tp - fn - fp
    accuracy = _div(tp.sum(), n)
    expected = _div(float((ref_tot * pred_tot).sum()), n * n)
    kappa = _div(accuracy - expected, 1.0 - expected) if n else math.nan
    per_class = {}
    f1s, sens, specs = [], [], []
    for i, name in enumerate(STAGES[: cm.shape[0]]):
        f1 = _div(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
        se = _div(tp[i], ref_tot[i])
        sp = _div(tn[i], tn[i] + fp[i])
        pr = _div(tp[i], pred_tot[i])
        per_class[name] = {"support": int(ref_tot[i]), "sensitivity": se, "specificity": sp, "precision": pr,
                           "f1": f1}
        f1s.append(f1)
        sens.append(se)
        specs.append(sp)
    return {
        "n": int(n),
        "accuracy": accuracy,
        "kappa": kappa,
        "macro_f1": _nanmean(f1s),
        "mean_sensitivity": _nanmean(sens),
        "mean_specificity": _nanmean(specs),
        "per_class": per_class,
    }


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def agreement(reference: np.ndarray, predicted: np.ndarray) -> dict:
    """:func:`scores` of the confusion matrix of two label arrays, plus the matrix itself."""
    cm = confusion_matrix(reference, predicted)
    out = scores(cm)
    out["confusion"] = cm.tolist()
    return out


def summarise_nights(per_night: Sequence[dict], keys: Sequence[str] = ("accuracy", "macro_f1", "kappa")) -> dict:
    """Mean and sample SD (ddof = 1) over nights of each metric, NaN nights left out:
    ``{key: {"mean": ..., "sd": ..., "n": ...}}``."""
    out = {}
    for key in keys:
        v = np.array([float(r.get(key, math.nan)) for r in per_night], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[key] = {"mean": float(v.mean()) if v.size else math.nan,
                    "sd": float(v.std(ddof=1)) if v.size >= 2 else math.nan, "n": int(v.size)}
    return out
