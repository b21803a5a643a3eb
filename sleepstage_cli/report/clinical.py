"""The top of the staging report, as a clinician reads it: key figures, the fit verdict, the model card.

Key figures come in plain words (``Total sleep time``, not ``TST``), durations in hours and minutes,
events as clock times (lights off and on, sleep onset, final awakening), and the latencies to each stage
counted from lights off when it is known. Each value's cell carries ``data-field="key.<name>"`` and
``data-value`` (the raw number: minutes, %, or seconds from the recording's start for a clock time), like
every number of the report (see :mod:`sleepstage_cli.report.html`).

This module has its own small escaping and formatting so that :mod:`~sleepstage_cli.report.html` can
import it (and not the other way round).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping

import numpy as np

from sleepstage_cli.evaluation.period import analyse_night, choose_period, clock, key_times

CSS = """
table.kf{border-collapse:separate;border-spacing:6px;margin:.3em -6px;width:calc(100% + 12px)}
table.kf td{border:1px solid #d5dfec;border-radius:4px;background:#f7faff;padding:6px 10px;width:25%}
table.kf .l{color:#555;font-size:.85em}table.kf .v{font-size:1.35em;font-weight:bold;margin-top:2px}
table.kf .v small{font-size:.6em;font-weight:normal;color:#666}table.kf td.na{text-align:left}
table.kf td.na .v{color:#999}
.verdict-slot{border-left:5px solid #3b7dc4;background:#eef3fa;padding:.5em 1em;margin:.6em 0}
.verdict-slot.warn{border-color:#ff8c00;background:#fff4e0}.verdict-slot.bad{border-color:#d62728;background:#fde8e8}
.period{margin:.2em 0 .6em}.card th{background:#f6f6f6;width:12em;font-weight:normal}
"""
"""Styles of these blocks; the report's page adds them to its own."""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))


def hours_minutes(minutes: float) -> str:
    """``432.5`` -> ``7 h 13 min``; under an hour ``45 min``."""
    total = int(round(float(minutes)))
    return f"{total // 60} h {total % 60:02d} min" if total >= 60 else f"{total} min"


def _cell(name: str, label: str, value: object, text: str, small: str = "") -> str:
    raw = repr(float(value)) if _finite(value) else "nan"
    na = "" if _finite(value) else ' class="na"'
    shown = _e(text) if _finite(value) else "—"
    extra = f" <small>{_e(small)}</small>" if small and _finite(value) else ""
    return (f'<td{na} data-field="key.{_e(name)}" data-value="{raw}"><div class="l">{_e(label)}</div>'
            f'<div class="v">{shown}{extra}</div></td>')


def _grid(cells: list[str], per_row: int = 4) -> str:
    rows = ["<tr>" + "".join(cells[i:i + per_row]) + "</tr>" for i in range(0, len(cells), per_row)]
    return "".join(rows)


def night_context(night: Mapping, stages: np.ndarray, onsets: np.ndarray, ep: float,
                  start: dt.datetime | None) -> tuple[dict, dict, dict]:
    """The night's statistics, key times and period (dicts as :meth:`NightAnalysis.report_fields` gives them),
    taken from ``night`` when there, else computed (the whole recording, or its main sleep period beyond 18 h)."""
    stats, times, period = night.get("statistics"), night.get("times"), night.get("period")
    if stats and times and period:
        return dict(stats), dict(times), dict(period)
    analysis = analyse_night(onsets, stages, ep, start=start)
    if stats and not period:  # statistics given without their period: the whole recording, as they were computed
        chosen = choose_period(onsets, stages, ep, mode="all", start=start)
        analysis = type(analysis)(chosen, dict(stats), key_times(onsets, stages, ep, chosen))
    fields = analysis.report_fields(onsets, ep, start)
    return (dict(stats) if stats else fields["statistics"], dict(times) if times else fields["times"],
            dict(period) if period else fields["period"])


def _verdict(verdict: object) -> str:
    """The fit check's verdict (a string, or a dict with ``verdict``, optional ``level`` ok/warn/bad and
    ``reasons``), shown in the key-figures block. Nothing when absent."""
    if not verdict:
        return ""
    if isinstance(verdict, Mapping):
        text, level = str(verdict.get("verdict", "")), str(verdict.get("level", ""))
        reasons = [str(r) for r in verdict.get("reasons") or ()]
    else:
        text, level, reasons = str(verdict), "", []
    cls = {"warn": " warn", "bad": " bad", "refuse": " bad", "poor": " bad"}.get(level.lower(), "")
    why = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    return (f'<div id="fit-verdict" class="verdict-slot{cls}"><strong>Does the model fit this recording?</strong> '
            f"{_e(text)}{f'<ul>{why}</ul>' if why else ''}</div>")


def key_figures_html(stats: Mapping, times: Mapping, period: Mapping, start: dt.datetime | None,
                     verdict: object = None) -> str:
    """The ``key-figures`` section: what a clinician looks for first, then which period the figures cover.

    data-field names: ``key.lights_off``, ``key.sleep_onset``, ``key.final_awakening``, ``key.lights_on``
    (seconds from the recording's start), ``key.<FIELD>`` for the statistics shown (their unit).
    """
    def when(name: str, label: str, missing: str = "not known") -> str:
        t = times.get(name)
        if _finite(t):
            return _cell(name, label, t, clock(float(t), start))
        return (f'<td class="na" data-field="key.{name}" data-value="nan"><div class="l">{_e(label)}</div>'
                f'<div class="v">{_e(missing)}</div></td>')

    def minutes(name: str, label: str, long: bool = False) -> str:
        v = stats.get(name)
        if long and _finite(v) and float(v) >= 59.5:  # hours and minutes, the minutes beside
            return _cell(name, label, v, hours_minutes(float(v)), f"({float(v):.0f} min)")
        return _cell(name, label, v, f"{float(v):.1f} min" if _finite(v) else "")

    def percent(name: str, label: str) -> str:
        v = stats.get(name)
        return _cell(name, label, v, f"{float(v):.1f} %" if _finite(v) else "")

    awak = stats.get("N_awakenings")
    frm = str(period.get("latencies_from") or "lights off")
    cells = [when("lights_off", "Lights off"), when("sleep_onset", "Sleep onset", "no sleep"),
             when("final_awakening", "Final awakening", "no sleep"), when("lights_on", "Lights on"),
             minutes("TIB", "Time in bed", long=True), minutes("TST", "Total sleep time", long=True),
             percent("SE", "Sleep efficiency"),
             minutes("WASO", "Wake after sleep onset"),
             minutes("SOL", "Sleep onset latency"),
             _cell("N_awakenings", "Number of awakenings", awak, f"{int(awak)}" if _finite(awak) else ""),
             minutes("Lat_REM", "REM latency from sleep onset"),
             percent("SME", "Sleep maintenance efficiency")]
    lat = [minutes(k, f"Latency to {s}") for k, s in (("Lat_N1", "N1"), ("Lat_N2", "N2"), ("Lat_N3", "N3"),
                                                      ("Lat_REM_LO", "REM"))]
    return ('<section id="key-figures"><h2>Key figures</h2>' + _verdict(verdict)
            + f'<p class="period">{_e(period.get("description", ""))}</p>'
            + f'<table class="kf" id="key-figures-table">{_grid(cells)}</table>'
            + f'<h3>Latencies to each stage, from {_e(frm)}</h3><table class="kf" id="latencies">{_grid(lat)}</table>'
            + "</section>")


def _card_rows(night: Mapping) -> list[tuple[str, str]]:
    card = night.get("model_card")
    if card:
        rows = [(str(k), str(v)) for k, v in card.items() if v not in (None, "")]
    else:  # a report made from a provenance dict only: what it says of the same things
        model = night.get("model") or {}
        wanted = (("network", "Network"), ("channels", "Channels"), ("trained on", "Trained on"),
                  ("trained_on", "Trained on"), ("model file", "Model file"), ("model_file", "Model file"))
        rows = []
        for key, label in wanted:
            v = model.get(key)
            if v not in (None, ""):
                rows.append((label, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)))
    channels = night.get("channels")
    if channels:
        rows.append(("Read from this recording", "; ".join(f"{str(k).upper()} = {v}" for k, v in channels.items())))
    return rows


def model_card_html(night: Mapping) -> str:
    """The ``model-card`` section: the model in a few lines (``night["model_card"]``, else what the provenance
    dict ``night["model"]`` says of it) and the channels read from this recording. Empty when nothing is known."""
    rows = _card_rows(night)
    if not rows:
        return ""
    body = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
    return ('<section id="model-card"><h2>The model that scored this night</h2>'
            f'<table class="card" id="model-card-table">{body}</table>'
            '<p class="small">Full provenance at the end of the report.</p></section>')


def hypnogram_marks(times: Mapping) -> list[tuple[float, str]]:
    """Vertical marks for the hypnogram: lights off and on when known."""
    out = []
    for key, label in (("lights_off", "lights off"), ("lights_on", "lights on")):
        t = times.get(key)
        if _finite(t):
            out.append((float(t), label))
    return out


__all__ = ["CSS", "hours_minutes", "hypnogram_marks", "key_figures_html", "model_card_html", "night_context"]
