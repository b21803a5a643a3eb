"""Figures for the reports: hypnogram with hypnodensity, confusion matrix, Bland-Altman plot.

Everything draws on a bare :class:`matplotlib.figure.Figure` rendered by Agg, never through pyplot,
so no display is touched and no global figure state leaks between calls (or threads). Each function
returns PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter

from sleepstage_cli.stages import STAGES

STAGE_COLOURS: dict[str, str] = {"W": "#f0b429", "N1": "#9ad0ec", "N2": "#3b7dc4", "N3": "#1d2f6f",
                                 "REM": "#d62728"}
"""One colour per stage, shared by the hypnodensity and any legend."""

# Clinical layout: W on top, REM just under it, then N1, N2, N3 at the bottom.
_LEVEL: dict[int, int] = {0: 4, 4: 3, 1: 2, 2: 1, 3: 0}
_LEVEL_NAMES = ("N3", "N2", "N1", "REM", "W")
_UNSCORED_COLOUR = "#9e9e9e"
_FLAG_COLOUR = "#ff8c00"


def _png(fig: Figure, dpi: int) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No software/version metadata: the same night gives the same bytes.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, stop) index pairs of the runs of True in a boolean array; ``stop`` is exclusive."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _has_flag(entry: object) -> bool:
    if entry is None:
        return False
    if isinstance(entry, str):
        return bool(entry.strip())
    return any(str(e).strip() for e in entry)  # type: ignore[union-attr]


def _steps(onsets_h: np.ndarray, ends_h: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant curve through each epoch, broken (NaN) at gaps in the recording."""
    xs = np.stack([onsets_h, ends_h], axis=1).ravel()
    ys = np.repeat(values, 2, axis=0)
    gaps = np.flatnonzero(onsets_h[1:] - ends_h[:-1] > 1e-6) + 1
    if gaps.size:
        xs = np.insert(xs, 2 * gaps, np.nan)
        ys = np.insert(ys, 2 * gaps, np.nan, axis=0)
    return xs, ys


def _time_axis(ax, span_h: float, start: datetime | None) -> None:
    if start is None:
        ax.set_xlabel("Time since start of recording (h)")
        return
    step = 1.0 if span_h <= 12 else 2.0
    first = -(start.minute * 60 + start.second + start.microsecond / 1e6) / 3600.0  # previous whole hour
    ticks = first + step * np.arange(0, math.ceil((span_h - first) / step) + 1)
    ax.xaxis.set_major_locator(FixedLocator(ticks[(ticks >= -1e-9) & (ticks <= span_h + 1e-9)]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda h, _: (start + timedelta(hours=h)).strftime("%H:%M")))
    ax.set_xlabel("Clock time")


def hypnogram_png(onsets_s: Sequence[float] | np.ndarray, stages: Sequence[int] | np.ndarray,
                  probabilities: np.ndarray | None = None, flags: Sequence | None = None, title: str = "",
                  *, start: datetime | None = None, epoch_length: float | None = None, dpi: int = 100) -> bytes:
    """Hypnogram (and hypnodensity) of one night as PNG bytes.

    Parameters
    ----------
    onsets_s : array of float, shape (n,)
        Epoch onsets in seconds from the start of the recording.
    stages : array of int, shape (n,)
        Codes 0 W, 1 N1, 2 N2, 3 N3, 4 REM; negative codes (unscored) leave a gap, shaded grey.
    probabilities : array, shape (n, 5), optional
        Per-stage probabilities; drawn as a stacked strip (hypnodensity) under the hypnogram.
    flags : sequence, optional
        Per epoch a string or a list of strings (empty = not flagged); flagged epochs are shaded orange.
    title : str
        Figure title.
    start : datetime, optional
        Clock time of the recording start; the x axis then shows clock time instead of hours.
    epoch_length : float, optional
        Epoch duration in s; by default the median spacing of the onsets (30 s for a single epoch).
    """
    onsets = np.asarray(onsets_s, dtype=np.float64).ravel()
    codes = np.asarray(stages, dtype=np.int64).ravel()
    if onsets.size != codes.size:
        raise ValueError(f"{onsets.size} onsets but {codes.size} stages")
    if epoch_length is None:
        epoch_length = float(np.median(np.diff(onsets))) if onsets.size > 1 else 30.0
    with_probs = probabilities is not None and codes.size > 0
    fig = Figure(figsize=(10, 4.2 if with_probs else 2.8), layout="constrained")
    if with_probs:
        ax, axp = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    else:
        ax, axp = fig.subplots(1, 1), None
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    ax.set_yticks(range(5), _LEVEL_NAMES)
    ax.set_ylim(-0.5, 4.5)
    ax.grid(axis="y", color="#e0e0e0", linewidth=0.6)
    bottom_ax = axp if axp is not None else ax
    if codes.size == 0:
        ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes)
        _time_axis(bottom_ax, 0.0, None)
        return _png(fig, dpi)

    on_h = onsets / 3600.0
    end_h = (onsets + epoch_length) / 3600.0
    levels = np.array([_LEVEL.get(int(c), np.nan) for c in codes], dtype=np.float64)
    xs, ys = _steps(on_h, end_h, levels)
    ax.plot(xs, ys, color="black", linewidth=0.9)
    rem = codes == 4
    if rem.any():
        ax.hlines(np.full(int(rem.sum()), 3.0), on_h[rem], end_h[rem], color=STAGE_COLOURS["REM"], linewidth=3.5)

    flagged = np.array([_has_flag(f) for f in flags], dtype=bool) if flags is not None and len(flags) else None
    if flagged is not None and flagged.size != codes.size:
        raise ValueError(f"{len(flags)} flag entries but {codes.size} epochs")  # type: ignore[arg-type]
    axes = [ax] + ([axp] if axp is not None else [])
    for a in axes:
        for i, j in runs(codes < 0):
            a.axvspan(on_h[i], end_h[j - 1], color=_UNSCORED_COLOUR, alpha=0.35, linewidth=0)
        if flagged is not None:
            for i, j in runs(flagged):
                a.axvspan(on_h[i], end_h[j - 1], color=_FLAG_COLOUR, alpha=0.35, linewidth=0)

    if axp is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.shape != (codes.size, len(STAGES)):
            raise ValueError(f"probabilities must be {codes.size} x {len(STAGES)}, got {probs.shape}")
        # Stack bottom-up in the hypnogram's order (N3 at the bottom, W on top) so the strip reads alike.
        order = [3, 2, 1, 4, 0]
        px, py = _steps(on_h, end_h, np.clip(probs, 0.0, 1.0))
        lower = np.zeros(px.size)
        for k in order:
            upper = lower + py[:, k]
            axp.fill_between(px, lower, upper, color=STAGE_COLOURS[STAGES[k]], linewidth=0)
            lower = upper
        axp.set_ylim(0, 1)
        axp.set_ylabel("probability", fontsize=8)
        axp.set_yticks([0, 0.5, 1])
    handles = [Patch(color=STAGE_COLOURS[s], label=s) for s in STAGES]
    handles += [Patch(color=_UNSCORED_COLOUR, alpha=0.35, label="unscored")]
    if flagged is not None and flagged.any():
        handles.append(Patch(color=_FLAG_COLOUR, alpha=0.35, label="flagged"))
    (axp if axp is not None else ax).legend(handles=handles if axp is not None else handles[4:],
                                           loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    span = float(end_h[-1])
    ax.set_xlim(min(0.0, float(on_h[0])), span)
    _time_axis(bottom_ax, span, start)
    return _png(fig, dpi)


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
