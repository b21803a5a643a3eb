"""The evaluation report's per-night figure: the predicted hypnogram above the reference one, on one time axis.

Inline SVG like the night report's hypnogram (:mod:`sleepstage_cli.report.svgplot`), in the same stage
colours and level order (W on top, then REM, N1, N2, N3). A strip between the two marks the epochs where
they disagree (both scored, different stages), so a reader sees at a glance where and how the model errs.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from sleepstage_cli.report.svgplot import _LEVEL, _LEVEL_NAMES, STAGE_COLOURS, _ticks, runs
from sleepstage_cli.stages import STAGES

WIDTH, LEFT, RIGHT = 960, 70, 20
PANEL, STRIP, TOP, AXIS = 80, 12, 18, 34
MAX_NIGHTS = 100
"""At most this many nights get a figure (the first ones, in the report's order)."""


def _panel(codes: np.ndarray, onsets: np.ndarray, ep: float, top: float, x, label: str) -> list[str]:
    def y(code: int) -> float:
        return top + PANEL * (1 - (_LEVEL[code] + 0.5) / 5)

    out = [f'<text x="{LEFT}" y="{top - 4:.1f}" style="font-weight:bold">{html.escape(label)}</text>']
    for level, name in enumerate(_LEVEL_NAMES):
        yy = top + PANEL * (1 - (level + 0.5) / 5)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6e6e6"/>'
                   f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{name}</text>')
    path, prev_end = [], None
    for t, c in zip(onsets, codes):
        if c < 0:
            prev_end = None
            continue
        path.append(f"{'L' if prev_end is not None and abs(t - prev_end) < 1e-6 else 'M'}{x(t):.1f},{y(int(c)):.1f}"
                    f"L{x(t + ep):.1f},{y(int(c)):.1f}")
        prev_end = t + ep
    if path:
        out.append(f'<path class="stages" d="{"".join(path)}" fill="none" stroke="black" stroke-width="0.8"/>')
    for code, name in enumerate(STAGES):
        for i, j in runs(codes == code):
            out.append(f'<line class="seg-{name}" x1="{x(onsets[i]):.1f}" x2="{x(onsets[j - 1] + ep):.1f}" '
                       f'y1="{y(code):.1f}" y2="{y(code):.1f}" stroke="{STAGE_COLOURS[name]}" stroke-width="3.5"/>')
    return out


def paired_hypnogram_svg(onsets_s: Sequence[float] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                         reference: Sequence[int] | np.ndarray, epoch_length: float = 30.0, title: str = "") -> str:
    """SVG of one night: predicted (top) and reference (bottom) hypnograms sharing a time axis, and between
    them the epochs where both are scored and differ (class ``disagree``). Time runs from the first epoch."""
    onsets = np.asarray(onsets_s, dtype=np.float64).ravel()
    pred = np.asarray(predicted, dtype=np.int64).ravel()
    ref = np.asarray(reference, dtype=np.int64).ravel()
    if not onsets.size == pred.size == ref.size:
        raise ValueError(f"{onsets.size} onsets, {pred.size} predicted and {ref.size} reference stages")
    ep = float(epoch_length)
    height = TOP + 2 * PANEL + STRIP + 14 + AXIS
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
           f'class="paired-hypnogram"><title>{html.escape(title or "predicted and reference hypnograms")}</title>',
           "<style>text{font:11px sans-serif;fill:#333}</style>"]
    if not onsets.size:
        return "".join(out) + f'<text x="{LEFT}" y="{TOP + 20}">no epoch compared</text></svg>'
    origin, span = float(onsets[0]), float(onsets[-1] + ep)
    plot_w = WIDTH - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + (t - origin) / max(span - origin, 1e-9) * plot_w

    out += _panel(pred, onsets, ep, TOP, x, "Predicted")
    strip_top = TOP + PANEL + 3
    differ = (pred >= 0) & (ref >= 0) & (pred != ref)
    out.append(f'<text x="{LEFT - 6}" y="{strip_top + STRIP - 2}" text-anchor="end" '
               'style="font-size:9px">differ</text>')
    for i, j in runs(differ):
        out.append(f'<rect class="disagree" x="{x(onsets[i]):.1f}" y="{strip_top}" '
                   f'width="{max(x(onsets[j - 1] + ep) - x(onsets[i]), 0.6):.1f}" height="{STRIP - 2}" '
                   'fill="#d62728"/>')
    ref_top = strip_top + STRIP + 14
    out += _panel(ref, onsets, ep, ref_top, x, "Reference")
    axis_y = ref_top + PANEL
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>')
    for t, label in _ticks(span - origin, None):
        xt = x(origin + t)
        out.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#333"/>'
                   f'<text x="{xt:.1f}" y="{axis_y + 16}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{axis_y + 30}" text-anchor="middle">time since the first compared '
               "epoch (h:mm)</text></svg>")
    return "".join(out)


def night_hypnograms_section(nights: Sequence[dict]) -> str:
    """The evaluation report's ``night-hypnograms`` section: one :func:`paired_hypnogram_svg` per night
    (dicts with ``night``, ``onsets``, ``pred``, ``ref``, ``epoch_length``), the first :data:`MAX_NIGHTS`."""
    if not nights:
        return ""
    figs = []
    for n in list(nights)[:MAX_NIGHTS]:
        name = str(n.get("night", ""))
        svg = paired_hypnogram_svg(n["onsets"], n["pred"], n["ref"], float(n.get("epoch_length") or 30.0), name)
        figs.append(f'<figure class="night-pair" data-night="{html.escape(name, quote=True)}">'
                    f"<figcaption><strong>{html.escape(name)}</strong></figcaption>{svg}</figure>")
    more = (f'<p class="small">{len(nights) - MAX_NIGHTS} more nights not drawn.</p>'
            if len(nights) > MAX_NIGHTS else "")
    return ('<section id="night-hypnograms"><h2>Predicted against reference, night by night</h2>'
            '<p class="small">Each night\'s predicted hypnogram above its reference, on the epochs compared; red '
            "marks between them: epochs where the two differ. Unscored epochs are left blank.</p>"
            + "".join(figs) + more + "</section>")


__all__ = ["MAX_NIGHTS", "night_hypnograms_section", "paired_hypnogram_svg"]
