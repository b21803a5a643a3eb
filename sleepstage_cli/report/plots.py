"""Figures for the evaluation report: confusion matrix and Bland-Altman plot (the night report's
hypnogram is SVG, see svgplot.py).

Everything draws on a bare :class:`matplotlib.figure.Figure` rendered by Agg, never through pyplot,
so no display is touched and no global figure state leaks between calls (or threads). Each function
returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sleepstage_cli.stages import STAGES


def _png(fig: Figure, dpi: int) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No software/version metadata: the same night gives the same bytes.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def confusion_png(cm_counts: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str] = STAGES,
                  *, dpi: int = 100) -> bytes:
    """Confusion matrix heatmap (reference rows, predicted columns) as PNG bytes.

    The colour is the row-normalised percentage (each reference stage sums to 100 %); each cell shows
    the count and that percentage.
    """
    cm = np.asarray(cm_counts, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(totals > 0, 100.0 * cm / totals, np.nan)
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.subplots()
    img = ax.imshow(np.nan_to_num(pct), cmap="Blues", vmin=0, vmax=100)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{int(cm[i, j])}\n" + ("–" if np.isnan(pct[i, j]) else f"{pct[i, j]:.1f}%")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.nan_to_num(pct[i, j]) > 55 else "black")
    ax.set_xticks(range(cm.shape[1]), list(class_names)[: cm.shape[1]])
    ax.set_yticks(range(cm.shape[0]), list(class_names)[: cm.shape[0]])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Reference")
    fig.colorbar(img, ax=ax, shrink=0.8, label="% of reference stage")
    return _png(fig, dpi)


def bland_altman_png(pred_values: Sequence[float], ref_values: Sequence[float], field: str, unit: str = "",
                     *, dpi: int = 100) -> bytes:
    """Bland-Altman plot (difference pred - ref against their mean, bias and 95 % limits) as PNG bytes."""
    p = np.asarray(pred_values, dtype=np.float64)
    r = np.asarray(ref_values, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    mean, diff = (p + r) / 2.0, p - r
    fig = Figure(figsize=(4.2, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.scatter(mean, diff, s=14, color="#3b7dc4", alpha=0.8)
    if diff.size:
        bias = float(diff.mean())
        ax.axhline(bias, color="black", linewidth=1, label=f"bias {bias:.1f}")
        if diff.size >= 2:
            sd = float(diff.std(ddof=1))
            for k, lim in enumerate((bias - 1.96 * sd, bias + 1.96 * sd)):
                ax.axhline(lim, color="#d62728", linestyle="--", linewidth=1, label="95 % LoA" if k == 0 else None)
        ax.legend(fontsize=7, frameon=False, loc="best")
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"mean of scorings{suffix}", fontsize=8)
    ax.set_ylabel(f"predicted - reference{suffix}", fontsize=8)
    ax.set_title(field, fontsize=9)
    ax.tick_params(labelsize=7)
    return _png(fig, dpi)
