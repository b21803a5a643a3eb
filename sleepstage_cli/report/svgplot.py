"""The night report's hypnogram and hypnodensity as inline SVG.

Drawn directly rather than through matplotlib: a night's report must come out of ``sleepstage score``
fast (importing matplotlib alone took a tenth of scoring a whole night), and an SVG stays sharp at any
zoom in the self-contained HTML. Same picture as :func:`sleepstage_cli.report.plots.hypnogram_png`: W on top,
then REM (drawn in red), N1, N2, N3; unscored epochs shaded grey, flagged ones orange; under it, the
stacked stage probabilities with one colour per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

import numpy as np

from sleepstage_cli.stages import STAGES

STAGE_COLOURS: dict[str, str] = {"W": "#f0b429", "N1": "#9ad0ec", "N2": "#3b7dc4", "N3": "#1d2f6f",
                                 "REM": "#d62728"}
"""One colour per stage, shared by every figure and legend."""
_LEVEL = {0: 4, 4: 3, 1: 2, 2: 1, 3: 0}  # code -> row from the bottom
_LEVEL_NAMES = ("N3", "N2", "N1", "REM", "W")
_STACK = (3, 2, 1, 4, 0)  # hypnodensity bottom-up, in the hypnogram's order
_UNSCORED, _FLAGGED = "#9e9e9e", "#ff8c00"

WIDTH, LEFT, RIGHT = 960, 56, 90
HYP_TOP, HYP_HEIGHT, GAP, PROB_HEIGHT, AXIS = 24, 150, 14, 70, 34


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, stop) index pairs of the runs of True in a boolean array; ``stop`` is exclusive."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def has_flag(entry: object) -> bool:
    """Whether a per-epoch flag entry (a string or a list of strings) says anything."""
    if entry is None:
        return False
    if isinstance(entry, str):
        return bool(entry.strip())
    return any(str(e).strip() for e in entry)  # type: ignore[union-attr]


_TICK_STEPS_S = (300, 600, 900, 1800, 3600, 7200, 10800, 21600)


def _ticks(span_s: float, start: datetime | None) -> list[tuple[float, str]]:
    """(seconds from start, label) pairs, about a dozen at most and at round times: clock times (``HH:MM``) when the
    start is known, else time since the start (``h:mm``). A nap gets ticks every few minutes, a night hourly."""
    step = next((s for s in _TICK_STEPS_S if span_s / s <= 12), _TICK_STEPS_S[-1])
    if start is None:
        first = 0.0
    else:
        of_day = start.hour * 3600 + start.minute * 60 + start.second + start.microsecond / 1e6
        first = -of_day % step
    out = []
    t = first
    while t <= span_s + 1e-6:
        if start is None:
            label = f"{int(t // 3600)}:{int(t % 3600 // 60):02d}"
        else:
            label = (start + timedelta(seconds=t)).strftime("%H:%M")
        out.append((t, label))
        t += step
    return out


def hypnogram_svg(onsets_s: Sequence[float] | np.ndarray, stages: Sequence[int] | np.ndarray,
                  probabilities: np.ndarray | None = None, flags: Sequence | None = None, title: str = "",
                  *, start: datetime | None = None, epoch_length: float | None = None,
                  marks: Sequence[tuple[float, str]] = (), period: tuple[int, int] | None = None) -> str:
    """SVG markup of one night's hypnogram (and hypnodensity when ``probabilities`` (n x 5) are given).

    ``marks``: (seconds from the start, label) drawn as labelled vertical lines (lights off, lights on);
    ``period``: (first, stop) epochs the statistics cover, the rest lightly shaded."""
    onsets, codes, ep, probs, flagged = _checked_inputs(onsets_s, stages, probabilities, flags, epoch_length)
    frame = _Frame(onsets, codes, ep, with_probabilities=probs is not None)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {frame.height}" width="100%" '
           f'role="img" class="hypnogram"><title>{escape(title or "hypnogram")}</title>',
           '<style>text{font:11px sans-serif;fill:#333}</style>']
    if title:
        out.append(f'<text x="{LEFT}" y="14" style="font-weight:bold">{escape(title)}</text>')
    out += _level_lines(frame)
    if not codes.size:
        out.append(f'<text x="{LEFT + frame.plot_w / 2}" y="{HYP_TOP + HYP_HEIGHT / 2}" text-anchor="middle">'
                   "no epochs</text></svg>")
        return "".join(out)
    out += _shading(frame, onsets, codes, ep, flagged)
    out += _outside_period(frame, onsets, ep, period)
    out += _stage_lines(frame, onsets, codes, ep)
    if probs is not None:
        out += _hypnodensity(frame, onsets, ep, probs)
    out += _marks(frame, marks)
    out += _time_axis(frame, start)
    out += _legend(flagged is not None and flagged.any())
    out.append("</svg>")
    return "".join(out)


def _checked_inputs(onsets_s, stages, probabilities, flags, epoch_length):
    """Onsets, stage codes, epoch length, clipped probabilities (or None) and flagged epochs (or None), checked."""
    onsets = np.asarray(onsets_s, dtype=np.float64).ravel()
    codes = np.asarray(stages, dtype=np.int64).ravel()
    if onsets.size != codes.size:
        raise ValueError(f"{onsets.size} onsets but {codes.size} stages")
    ep = float(epoch_length) if epoch_length else (float(np.median(np.diff(onsets))) if onsets.size > 1 else 30.0)
    probs = None
    if probabilities is not None and codes.size:
        probs = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
        if probs.shape != (codes.size, len(STAGES)):
            raise ValueError(f"probabilities must be {codes.size} x {len(STAGES)}, got {probs.shape}")
    flagged = np.array([has_flag(f) for f in flags], dtype=bool) if flags is not None and len(flags) else None
    if flagged is not None and flagged.size != codes.size:
        raise ValueError(f"{flagged.size} flag entries but {codes.size} epochs")
    return onsets, codes, ep, probs, flagged


class _Frame:
    """The figure's geometry: where a time (s) and a hypnogram level fall."""

    def __init__(self, onsets: np.ndarray, codes: np.ndarray, ep: float, with_probabilities: bool) -> None:
        self.plot_w = WIDTH - LEFT - RIGHT
        self.bottom = HYP_TOP + HYP_HEIGHT + (GAP + PROB_HEIGHT if with_probabilities else 0)
        self.height = self.bottom + AXIS
        self.span = float(onsets[-1] + ep) if codes.size else 1.0
        self.origin = min(0.0, float(onsets[0])) if codes.size else 0.0

    def x(self, t: float) -> float:
        return LEFT + (t - self.origin) / max(self.span - self.origin, 1e-9) * self.plot_w

    @staticmethod
    def y_level(level: int) -> float:
        return HYP_TOP + HYP_HEIGHT * (1 - (level + 0.5) / 5)


def _level_lines(frame: _Frame) -> list[str]:
    out = []
    for level, name in enumerate(_LEVEL_NAMES):
        yy = frame.y_level(level)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + frame.plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6e6e6"/>'
                   f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{name}</text>')
    return out


def _shading(frame: _Frame, onsets: np.ndarray, codes: np.ndarray, ep: float,
             flagged: np.ndarray | None) -> list[str]:
    """Grey bands over unscored epochs, orange ones over flagged epochs, down through the hypnodensity."""
    x, out = frame.x, []
    for mask, colour, label in ((codes < 0, _UNSCORED, "unscored"), (flagged, _FLAGGED, "flagged")):
        if mask is None:
            continue
        for i, j in runs(mask):
            out.append(f'<rect class="{label}" x="{x(onsets[i]):.1f}" y="{HYP_TOP}" '
                       f'width="{max(x(onsets[j - 1] + ep) - x(onsets[i]), 0.5):.1f}" '
                       f'height="{frame.bottom - HYP_TOP}" fill="{colour}" fill-opacity="0.35"/>')
    return out


def _stage_lines(frame: _Frame, onsets: np.ndarray, codes: np.ndarray, ep: float) -> list[str]:
    """The hypnogram: one horizontal segment per epoch, joined by verticals; a gap in time breaks it. REM in red."""
    x, y_level, out = frame.x, frame.y_level, []
    path, prev_end = [], None
    for t, c in zip(onsets, codes):
        if c < 0:
            prev_end = None
            continue
        yy = y_level(_LEVEL[int(c)])
        if prev_end is not None and abs(t - prev_end) < 1e-6:
            path.append(f"L{x(t):.1f},{yy:.1f}")
        else:
            path.append(f"M{x(t):.1f},{yy:.1f}")
        path.append(f"L{x(t + ep):.1f},{yy:.1f}")
        prev_end = t + ep
    if path:
        out.append(f'<path class="stages" d="{"".join(path)}" fill="none" stroke="black" stroke-width="1"/>')
    for code, name in enumerate(STAGES):  # each stage's runs in its colour (REM's lines keep class "rem")
        yy = y_level(_LEVEL[code])
        cls = "rem" if name == "REM" else f"seg-{name}"
        for i, j in runs(codes == code):
            out.append(f'<line class="{cls}" x1="{x(onsets[i]):.1f}" x2="{x(onsets[j - 1] + ep):.1f}" '
                       f'y1="{yy:.1f}" y2="{yy:.1f}" stroke="{STAGE_COLOURS[name]}" stroke-width="4"/>')
    return out


def _outside_period(frame: _Frame, onsets: np.ndarray, ep: float, period: tuple[int, int] | None) -> list[str]:
    """Light shading over the epochs outside the period the statistics cover."""
    if period is None or not onsets.size:
        return []
    first, stop = max(int(period[0]), 0), min(int(period[1]), onsets.size)
    spans = []
    if first > 0:
        spans.append((frame.x(frame.origin), frame.x(onsets[first]) if first < onsets.size else frame.x(frame.span)))
    if stop < onsets.size:
        spans.append((frame.x(onsets[stop - 1] + ep) if stop > 0 else frame.x(frame.origin), frame.x(frame.span)))
    return [f'<rect class="outside-period" x="{a:.1f}" y="{HYP_TOP}" width="{max(b - a, 0.5):.1f}" '
            f'height="{frame.bottom - HYP_TOP}" fill="#000" fill-opacity="0.07"/>' for a, b in spans]


def _marks(frame: _Frame, marks: Sequence[tuple[float, str]]) -> list[str]:
    """Labelled dashed vertical lines (lights off, lights on) across the figure."""
    out = []
    for t, label in marks:
        if not frame.origin <= t <= frame.span:
            continue
        xx = frame.x(t)
        right = xx > LEFT + frame.plot_w / 2  # the label goes inward
        anchor, dx = ("end", -4) if right else ("start", 4)
        out.append(f'<line class="mark" x1="{xx:.1f}" x2="{xx:.1f}" y1="{HYP_TOP - 4}" y2="{frame.bottom}" '
                   'stroke="#2e7d32" stroke-width="1.5" stroke-dasharray="5,3"/>'
                   f'<text x="{xx + dx:.1f}" y="{HYP_TOP - 6}" text-anchor="{anchor}" '
                   f'style="fill:#2e7d32;font-weight:bold">{escape(label)}</text>')
    return out


def _hypnodensity(frame: _Frame, onsets: np.ndarray, ep: float, probs: np.ndarray) -> list[str]:
    """The stage probabilities stacked under the hypnogram, one polygon per stage."""
    x, out = frame.x, []
    top = HYP_TOP + HYP_HEIGHT + GAP
    xs = np.repeat([x(t) for t in onsets], 2)
    xs[1::2] = [x(t + ep) for t in onsets]
    lower = np.zeros(onsets.size)
    for k in _STACK:
        upper = lower + probs[:, k]
        ys_up = top + PROB_HEIGHT * (1 - np.repeat(upper, 2))
        ys_lo = top + PROB_HEIGHT * (1 - np.repeat(lower, 2))
        pts = [f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys_up)]
        pts += [f"{a:.1f},{b:.1f}" for a, b in zip(xs[::-1], ys_lo[::-1])]
        out.append(f'<polygon class="p-{STAGES[k]}" points="{" ".join(pts)}" fill="{STAGE_COLOURS[STAGES[k]]}"/>')
        lower = upper
    for v in (0.0, 0.5, 1.0):  # the probability axis, 0 to 1
        yy = top + PROB_HEIGHT * (1 - v)
        out.append(f'<line class="p-tick" x1="{LEFT - 3}" x2="{LEFT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#333"/>'
                   f'<text class="p-tick" x="{LEFT - 5}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
    cy = top + PROB_HEIGHT / 2
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{top + PROB_HEIGHT}" stroke="#333"/>'
               f'<text x="12" y="{cy:.1f}" transform="rotate(-90 12 {cy:.1f})" text-anchor="middle">probability</text>')
    return out


def _time_axis(frame: _Frame, start: datetime | None) -> list[str]:
    x, axis_y = frame.x, frame.bottom
    out = [f'<line x1="{LEFT}" x2="{LEFT + frame.plot_w}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>']
    for t, label in _ticks(frame.span, start):
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#333"/>'
                   f'<text x="{x(t):.1f}" y="{axis_y + 16}" text-anchor="middle">{escape(label)}</text>')
    caption = "clock time" if start is not None else "time since the start of the recording"
    out.append(f'<text x="{LEFT + frame.plot_w / 2}" y="{axis_y + 30}" text-anchor="middle">{caption}</text>')
    return out


def _legend(any_flagged: bool) -> list[str]:
    legend = [(STAGE_COLOURS[s], s) for s in STAGES] + [(_UNSCORED, "unscored")]
    if any_flagged:
        legend.append((_FLAGGED, "flagged"))
    out = []
    for i, (colour, label) in enumerate(legend):
        yy = HYP_TOP + 4 + 16 * i
        out.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{yy}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{WIDTH - RIGHT + 27}" y="{yy + 9}">{label}</text>')
    return out


__all__ = ["STAGE_COLOURS", "has_flag", "hypnogram_svg", "runs"]
