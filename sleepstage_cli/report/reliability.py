"""The evaluation report's reliability diagram (calibration of the predicted probabilities) as inline SVG.

Drawn from the bins of :func:`sleepstage_cli.evaluation.calibration.reliability`: for each of the 10
confidence bins a bar up to the bin's accuracy, a red band from there to the bin's mean confidence (the
gap the expected calibration error weighs by the bin's share of epochs), the diagonal of perfect
calibration, and under the plot the share of epochs in each bin.
"""

from __future__ import annotations

import math
from html import escape

SIZE, LEFT, TOP, BOTTOM_AXIS, SHARE_HEIGHT, RIGHT = 300, 52, 28, 40, 50, 20
_BAR, _GAP, _SHARE = "#3b7dc4", "#d62728", "#9e9e9e"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def reliability_svg(calibration: dict) -> str:
    """SVG markup of the reliability diagram of ``calibration`` (``ece``, ``n`` and ``bins``: ``low``, ``high``,
    ``n``, ``accuracy``, ``confidence``)."""
    bins = list(calibration.get("bins") or [])
    n = int(calibration.get("n") or 0)
    ece = calibration.get("ece")
    width, height = LEFT + SIZE + RIGHT, TOP + SIZE + BOTTOM_AXIS + SHARE_HEIGHT + 20

    def x(v: float) -> float:
        return LEFT + SIZE * v

    def y(v: float) -> float:
        return TOP + SIZE * (1 - v)

    title = f"Reliability diagram (ECE {100 * ece:.1f} %)" if _finite(ece) else "Reliability diagram"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'role="img" class="reliability"><title>{escape(title)}</title>',
           '<style>text{font:11px sans-serif;fill:#333}</style>',
           f'<text x="{LEFT}" y="16" style="font-weight:bold">{escape(title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{SIZE}" height="{SIZE}" fill="none" stroke="#333"/>']
    for k, b in enumerate(bins):
        x0, x1 = x(b["low"]) + 1, x(b["high"]) - 1
        if b["n"] and _finite(b["accuracy"]) and _finite(b["confidence"]):
            acc, conf = b["accuracy"], b["confidence"]
            out.append(f'<rect class="bin-accuracy" data-bin="{k}" x="{x0:.1f}" y="{y(acc):.1f}" '
                       f'width="{x1 - x0:.1f}" height="{y(0) - y(acc):.1f}" fill="{_BAR}"/>')
            out.append(f'<rect class="bin-gap" data-bin="{k}" x="{x0:.1f}" y="{y(max(acc, conf)):.1f}" '
                       f'width="{x1 - x0:.1f}" height="{abs(y(acc) - y(conf)):.1f}" fill="{_GAP}" '
                       'fill-opacity="0.35" stroke="#d62728"/>')
        share = b["n"] / n if n else 0.0
        top = TOP + SIZE + BOTTOM_AXIS + SHARE_HEIGHT * (1 - share)
        out.append(f'<rect class="bin-share" data-bin="{k}" x="{x0:.1f}" y="{top:.1f}" width="{x1 - x0:.1f}" '
                   f'height="{SHARE_HEIGHT * share:.1f}" fill="{_SHARE}"/>')
    out.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#333" stroke-dasharray="4 3"/>')
    for i in range(6):
        v = i / 5
        out.append(f'<text x="{x(v):.1f}" y="{TOP + SIZE + 14}" text-anchor="middle">{v:.1f}</text>'
                   f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    out += [f'<text x="{LEFT + SIZE / 2}" y="{TOP + SIZE + 28}" text-anchor="middle">confidence (top probability)'
            "</text>",
            f'<text transform="translate(14 {TOP + SIZE / 2}) rotate(-90)" text-anchor="middle">accuracy</text>',
            f'<text x="{LEFT - 6}" y="{TOP + SIZE + BOTTOM_AXIS + SHARE_HEIGHT / 2 + 4}" text-anchor="end">'
            "share</text>",
            f'<text x="{LEFT + SIZE / 2}" y="{height - 4}" text-anchor="middle">share of the {n} epochs per bin'
            "</text>", "</svg>"]
    return "".join(out)


def calibration_section(calibration: dict) -> str:
    """The report's ``calibration`` section: what ECE is, the diagram, and the bins as a table (``reliability``).

    data-field names: ``pooled.calibration.bins.<k>.<n|accuracy|confidence>``.
    """
    rows = []
    for k, b in enumerate(calibration.get("bins") or []):
        cells = [f'<th scope="row">{"[" if k == 0 else "("}{b["low"]:.1f}, {b["high"]:.1f}]</th>']
        for key in ("n", "accuracy", "confidence"):
            value = b.get(key)
            shown = ("—" if not _finite(value) else str(int(value)) if key == "n" else f"{100 * value:.1f}")
            raw = repr(float(value)) if _finite(value) else "nan"
            cells.append(f'<td class="num" data-field="pooled.calibration.bins.{k}.{key}" data-value="{raw}">'
                         f"{shown}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f'<th scope="col">{h}</th>' for h in ("Confidence bin", "Epochs", "Accuracy (%)",
                                                          "Mean confidence (%)"))
    nights = calibration.get("nights")
    return ('<section id="calibration"><h2>Calibration of the probabilities</h2>'
            '<p class="small">Each epoch\'s confidence is its top probability. Expected calibration error (ECE) = '
            "sum over the 10 confidence bins of |accuracy - mean confidence| x the bin's share of epochs"
            + (f"; over {int(nights)} night(s) whose predictions carry probabilities" if nights else "")
            + ". Bars: accuracy per bin; red: the gap to the bin's mean confidence; dashed: perfect calibration.</p>"
            f"<figure>{reliability_svg(calibration)}</figure>"
            f'<table id="reliability"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            "</section>")


__all__ = ["calibration_section", "reliability_svg"]
