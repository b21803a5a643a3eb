"""HTML reports: the numbers shown equal the statistics given, figures are embedded PNGs, nothing external."""

from __future__ import annotations

import base64
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from sleepstage_cli.evaluation.metrics import agreement
from sleepstage_cli.evaluation.sleepstats import STAT_FIELDS, sleep_statistics, statistics_agreement
from sleepstage_cli.report.html import (
    MAX_REVIEW_RUNS,
    evaluation_report_html,
    format_value,
    night_report_html,
    summarise_nights,
    write_report,
)
from sleepstage_cli.report.plots import bland_altman_png, confusion_png
from sleepstage_cli.report.svgplot import hypnogram_svg, runs
from sleepstage_cli.stages import STAGES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = '/data/<script>alert("x")</script> & co.edf'


class Page(HTMLParser):
    """Collects what the tests look at: statistic cells, tables by id, tags, attributes, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[dict] = []
        self.tables: dict[str, list[dict]] = {}
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: dict | None = None
        self._row: dict | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": []}
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th"):
            self._cell = {"attrs": a, "text": "", "table": self._table}

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            if self._row is not None:
                self._row["cells"].append(self._cell)
            if "data-field" in self._cell["attrs"]:
                self.cells.append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data

    def field(self, name: str) -> dict:
        hits = [c for c in self.cells if c["attrs"]["data-field"] == name]
        assert hits, f"no cell for {name}"
        return hits[0]

    def rows(self, table: str) -> list[dict]:
        return [r for r in self.tables[table] if r["cells"] and r["cells"][0]["attrs"].get("scope") != "col"]


def resolve(obj, path: str):
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else obj[part]
    return obj


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def check_cell(cell: dict, expected: float) -> None:
    """data-value is the raw value and the text is that value through the one formatting helper."""
    raw = float(cell["attrs"]["data-value"])
    assert same(raw, float(expected)), cell
    assert cell["text"] == format_value(expected, cell["attrs"]["data-unit"]), cell


def check_self_contained(text: str, page: Page) -> None:
    assert not page.tags & {"script", "link", "iframe", "object", "embed", "base", "form"}
    assert not [a for a in page.attrs if a[1].startswith("on")]
    for tag, key, value in page.attrs:
        if key in ("src", "href", "srcset", "poster", "data"):
            assert value.startswith("data:image/png;base64,"), (tag, key, value[:40])
    stripped = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    stripped = stripped.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, not a fetch
    assert "http" not in stripped.lower() and "url(" not in stripped and 'src="/' not in stripped
    assert "file:" not in stripped and "@import" not in stripped


def svgs(html_text: str) -> list[ET.Element]:
    """The inline SVG figures, parsed as XML (so they are well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html_text, re.S)]


def svg_items(svg: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in svg.iter(f"{{http://www.w3.org/2000/svg}}{tag}") if e.get("class") == cls]


def pngs(page: Page) -> list[bytes]:
    out = []
    for tag, key, value in page.attrs:
        if tag == "img" and key == "src":
            data = base64.b64decode(value.split(",", 1)[1], validate=True)
            assert data.startswith(PNG_MAGIC)
            out.append(data)
    return out


def markov_hypnogram(rng: np.random.Generator, n: int) -> np.ndarray:
    stages, s = [], 0
    for _ in range(n):
        if rng.random() < 0.12:
            s = int(rng.choice(5, p=[0.2, 0.15, 0.4, 0.1, 0.15]))
        stages.append(s)
    return np.array(stages)


@pytest.fixture(scope="module")
def night() -> dict:
    rng = np.random.default_rng(11)
    n = 900
    truth = markov_hypnogram(rng, n)
    logits = rng.normal(0, 1, (n, 5))
    logits[np.arange(n), truth] += rng.uniform(0, 4, n)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    stages = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    flags: list[list[str]] = [[] for _ in range(n)]
    for i in range(200, 212):
        flags[i] = ["flat signal"]
    flags[212] = ["flat signal", "NaN samples"]
    stages[200:213] = -1
    probs[200:213] = np.nan
    confidence[200:213] = np.nan
    stages[700:705] = -1  # unscored with no stated reason
    onsets = np.arange(n) * 30.0
    onsets[500:] += 300.0  # a 5-minute gap in the recording
    flags[500] = ["gap in recording"]
    return {
        "night_id": 'night <1> "A"', "source": EVIL, "onsets": onsets, "stages": stages,
        "probabilities": probs, "confidence": confidence, "flags": flags, "low_confidence_threshold": 0.5,
        "start": datetime(2024, 3, 1, 22, 47, 30), "epoch_length": 30.0,
        "model": {"model_file": "models/seqsleepnet-3ch.pt", "network": "SeqSleepNet", "version": "1.0",
                  "channels": ["EEG C4-A1", "EOG", "EMG"], "trained_on": "MASS SS3, 57 subjects",
                  "validation": {"accuracy": 0.871, "kappa": 0.815}, "sleepstage_version": "0.1.0",
                  "scored_at": "2024-03-02T08:00:00"},
        "statistics": sleep_statistics(stages, 30.0),
        "notes": ["13 epochs marked: flat EEG", "<b>not bold</b>"],
    }


@pytest.fixture(scope="module")
def night_html(night: dict) -> str:
    return night_report_html(night)


def test_night_statistics_shown_equal_input(night: dict, night_html: str) -> None:
    page = Page(night_html)
    stats = night["statistics"]
    shown = {c["attrs"]["data-field"] for c in page.cells}
    assert {f"statistics.{f.name}" for f in STAT_FIELDS} <= shown  # every field is in a table
    for cell in page.cells:
        path = cell["attrs"]["data-field"]
        if path.startswith(("statistics.", "model.")):
            check_cell(cell, resolve(night, path))
    # independently of format_value: minutes and % with one decimal, counts whole
    assert page.field("statistics.TST")["text"] == f"{stats['TST']:.1f}"
    assert page.field("statistics.SE")["text"] == f"{stats['SE']:.1f}"
    assert page.field("statistics.N_awakenings")["text"] == str(int(stats["N_awakenings"]))
    assert page.field("statistics.%N2")["text"] == f"{stats['%N2']:.1f}"
    check_cell(page.field("n_epochs"), 900)
    assert len(page.rows("sleep-statistics")) == sum(f.group == "summary" for f in STAT_FIELDS)
    assert [r["cells"][0]["text"] for r in page.rows("stage-time")] == ["W", "N1", "N2", "N3", "REM", "NREM"]


def simple_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            out.append((start, i - 1))
            start = None
    return out


def test_night_review_tables(night: dict, night_html: str) -> None:
    page = Page(night_html)
    conf, stages = night["confidence"], night["stages"]
    low = [(not math.isnan(c)) and c < 0.5 and s >= 0 for c, s in zip(conf, stages)]
    expected = simple_runs(np.array(low))
    rows = page.rows("low-confidence")
    got = [(int(r["attrs"]["data-first"]), int(r["attrs"]["data-last"])) for r in rows]
    assert len(rows) == min(len(expected), MAX_REVIEW_RUNS)
    assert set(got) <= set(expected) and got == sorted(got)
    for (a, b), row in zip(got, rows):
        label = str(a) if a == b else f"{a}–{b}"  # the hypnogram CSV's epoch numbers, from 0
        assert row["cells"][0]["text"] == label
        mins = [c for c in row["cells"] if c["attrs"].get("data-field") == "min_confidence"]
        check_cell(mins[0], float(np.min(conf[a:b + 1])))
        check_cell([c for c in row["cells"] if c["attrs"].get("data-field") == "duration"][0], (b - a + 1) / 2)
    # clock time of the first listed run
    clock = night["start"] + timedelta(seconds=float(night["onsets"][got[0][0]]))
    assert rows[0]["cells"][1]["text"] == clock.strftime("%H:%M:%S")

    flagged = page.rows("flagged")
    spans = {(int(r["attrs"]["data-first"]), int(r["attrs"]["data-last"])): r["cells"][3]["text"] for r in flagged}
    assert spans == {(200, 211): "flat signal", (212, 212): "flat signal; NaN samples",
                     (500, 500): "gap in recording", (700, 704): "not scored"}
    text = " ".join(page.text)
    assert f"{sum(low)} epochs in {len(expected)} runs." in text
    assert "19 epochs in 4 runs." in text  # 12 + 1 + 1 + 5 flagged epochs


def test_night_with_nothing_to_review(night: dict) -> None:
    n = len(night["stages"])
    calm = {**night, "stages": np.full(n, 2), "confidence": np.full(n, 0.99), "flags": [""] * n}
    text = " ".join(Page(night_report_html(calm)).text)
    assert text.count("None.") == 2 and "0 epochs" not in text


def test_night_images_escaping_and_no_external_resources(night: dict, night_html: str) -> None:
    page = Page(night_html)
    check_self_contained(night_html, page)
    assert not pngs(page) and len(night_html.encode()) < 1_000_000
    (svg,) = svgs(night_html)
    stages = np.asarray(night["stages"])
    assert len(svg_items(svg, "path", "stages")) == 1
    assert {e.get("class") for e in svg.iter("{http://www.w3.org/2000/svg}polygon")} == {f"p-{s}" for s in STAGES}
    assert len(svg_items(svg, "rect", "unscored")) == len(runs(stages < 0))
    assert len(svg_items(svg, "line", "rem")) == len(runs(stages == 4))
    flagged = [bool(f) for f in night["flags"]]
    assert len(svg_items(svg, "rect", "flagged")) == len(runs(np.array(flagged)))
    assert "<script" not in night_html.lower() and "<b>not bold" not in night_html
    text = "".join(page.text)
    assert EVIL in text and 'night <1> "A"' in text and "<b>not bold</b>" in text
    assert "13 epochs marked: flat EEG" in text and "models/seqsleepnet-3ch.pt" in text
    assert "EEG C4-A1, EOG, EMG" in text


def test_night_without_optional_parts(night: dict) -> None:
    bare = {k: night[k] for k in ("night_id", "source", "onsets", "stages")}
    html_text = night_report_html(bare)  # statistics computed, no probabilities, confidence or flags
    page = Page(html_text)
    assert "low-confidence" not in page.tables and len(svgs(html_text)) == 1
    assert not list(svgs(html_text)[0].iter("{http://www.w3.org/2000/svg}polygon"))  # no hypnodensity
    check_cell(page.field("statistics.TST"), night["statistics"]["TST"])
    # no recording start: times since the start; unscored epochs listed even without a stated reason
    rows = {int(r["attrs"]["data-first"]): r for r in page.rows("flagged")}
    assert sorted(rows) == [200, 700]
    assert rows[200]["cells"][1]["text"] == "+01:40:00" and rows[200]["cells"][3]["text"] == "not scored"
    with pytest.raises(ValueError, match="flag entries"):
        night_report_html({**night, "flags": [[]] * 3})


@pytest.fixture(scope="module")
def evaluation() -> dict:
    rng = np.random.default_rng(5)
    refs, preds, per_night = [], [], []
    for k in range(8):
        ref = markov_hypnogram(rng, 600)
        pred = np.where(rng.random(600) < 0.8, ref, rng.integers(0, 5, 600))
        ref[:3] = -1  # unscored reference epochs never count
        refs.append(ref)
        preds.append(pred)
        a = agreement(ref, pred)
        per_night.append({"night": f"S{k:02d} <night>", "n": a["n"], "accuracy": a["accuracy"],
                          "kappa": a["kappa"], "macro_f1": a["macro_f1"]})
    ref_all, pred_all = np.concatenate(refs), np.concatenate(preds)
    sa = statistics_agreement([sleep_statistics(p) for p in preds], [sleep_statistics(r) for r in refs],
                              ["TST", "SE", "WASO", "SOL", "Lat_REM", "N_awakenings"])
    return {"title": "Fold <3> evaluation", "pooled": agreement(ref_all, pred_all), "per_night": per_night,
            "summary": summarise_nights(per_night), "stats_agreement": sa, "notes": ["compared on 8 nights"],
            "_ref": ref_all, "_pred": pred_all}


@pytest.fixture(scope="module")
def evaluation_html(evaluation: dict) -> str:
    return evaluation_report_html(evaluation)


def test_evaluation_numbers_equal_input(evaluation: dict, evaluation_html: str) -> None:
    page = Page(evaluation_html)
    derived = ("confusion_row_total.", "confusion_row_pct.")
    for cell in page.cells:
        path = cell["attrs"]["data-field"]
        if not path.startswith(derived):
            check_cell(cell, resolve(evaluation, path))
    pooled = evaluation["pooled"]
    assert page.field("pooled.accuracy")["text"] == f"{100 * pooled['accuracy']:.1f}"
    assert page.field("pooled.kappa")["text"] == f"{pooled['kappa']:.3f}"
    assert page.field("pooled.macro_f1")["text"] == f"{100 * pooled['macro_f1']:.1f}"
    for metric in ("accuracy", "macro_f1", "kappa"):
        v = np.array([r[metric] for r in evaluation["per_night"]])
        check_cell(page.field(f"summary.{metric}.mean"), float(np.mean(v)))
        check_cell(page.field(f"summary.{metric}.sd"), float(np.std(v, ddof=1)))
    names = [r["cells"][0]["text"] for r in page.rows("per-night")]
    assert names == [r["night"] for r in evaluation["per_night"]]
    assert "<night>" not in evaluation_html and "Fold <3>" not in evaluation_html


def test_evaluation_per_class_and_confusion_match_labels(evaluation: dict, evaluation_html: str) -> None:
    page = Page(evaluation_html)
    ref, pred = evaluation["_ref"], evaluation["_pred"]
    keep = ref >= 0
    ref, pred = ref[keep], pred[keep]
    for i, name in enumerate(STAGES):
        tp = np.sum((ref == i) & (pred == i))
        check_cell(page.field(f"pooled.per_class.{name}.support"), int(np.sum(ref == i)))
        check_cell(page.field(f"pooled.per_class.{name}.sensitivity"), tp / np.sum(ref == i))
        check_cell(page.field(f"pooled.per_class.{name}.precision"), tp / np.sum(pred == i))
        for j in range(len(STAGES)):
            count = int(np.sum((ref == i) & (pred == j)))
            assert page.field(f"pooled.confusion.{i}.{j}")["text"] == str(count)
            check_cell(page.field(f"confusion_row_pct.{i}.{j}"), 100.0 * count / np.sum(ref == i))
        check_cell(page.field(f"confusion_row_total.{i}"), int(np.sum(ref == i)))
    rows = page.rows("confusion-percent")
    for row in rows:
        assert sum(float(c["attrs"]["data-value"]) for c in row["cells"][1:]) == pytest.approx(100.0)
    assert [r["cells"][0]["text"] for r in page.rows("per-class")] == list(STAGES)


def test_evaluation_stats_agreement_images_and_self_contained(evaluation: dict, evaluation_html: str) -> None:
    page = Page(evaluation_html)
    sa = evaluation["stats_agreement"]
    assert [r["cells"][0]["text"] for r in page.rows("stats-agreement")] == list(sa)
    d = np.array(sa["TST"]["pred_values"]) - np.array(sa["TST"]["ref_values"])
    check_cell(page.field("stats_agreement.TST.bias"), float(d.mean()))
    check_cell(page.field("stats_agreement.TST.loa_high"), float(d.mean() + 1.96 * d.std(ddof=1)))
    assert page.field("stats_agreement.N_awakenings.bias")["attrs"]["data-unit"] == "mean"
    check_self_contained(evaluation_html, page)
    assert len(pngs(page)) == 1 + 5  # confusion + Bland-Altman of TST, SE, WASO, SOL, Lat_REM
    bare = evaluation_report_html({"title": "t", "pooled": evaluation["pooled"], "per_night": [],
                                   "stats_agreement": {}})
    assert "stats-agreement" not in Page(bare).tables


def test_plot_edge_cases() -> None:
    assert "no epochs" in hypnogram_svg([], [])
    one = ET.fromstring(hypnogram_svg([0.0], [-1], title="one <unscored> epoch"))
    assert len(svg_items(one, "rect", "unscored")) == 1 and not svg_items(one, "path", "stages")
    cm = np.zeros((5, 5), dtype=int)
    cm[0, 0] = 3  # stages never seen in the reference leave empty rows
    assert confusion_png(cm).startswith(PNG_MAGIC)
    assert bland_altman_png([1.0], [2.0], "TST", "min").startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="probabilities"):
        hypnogram_svg([0.0, 30.0], [0, 1], probabilities=np.ones((2, 4)))
    with pytest.raises(ValueError, match="onsets"):
        hypnogram_svg([0.0], [0, 1])


def _tick_labels(svg: str) -> list[str]:
    """Texts of the time axis: the labels under the tick marks (y below the axis, centred)."""
    root = ET.fromstring(svg)
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    return [t.text for t in root.iter(f"{ns}text")
            if t.get("text-anchor") == "middle" and t.text and re.fullmatch(r"\d+:\d\d", t.text)]


@pytest.mark.parametrize("hours, start, expected", [
    # a 30-min nap starting 22:18:55: ticks every 5 clock minutes, not none (no whole hour falls inside)
    (0.5, datetime(2008, 6, 22, 22, 18, 55), ["22:20", "22:25", "22:30", "22:35", "22:40", "22:45"]),
    # a night: whole clock hours
    (8.0, datetime(2008, 6, 22, 22, 18, 55), ["23:00", "00:00", "01:00", "02:00", "03:00", "04:00", "05:00",
                                              "06:00"]),
    # 24 h: every second hour (13 labels, both ends included)
    (24.0, datetime(2008, 6, 22, 22, 0, 0), [f"{h % 24:02d}:00" for h in range(22, 47, 2)]),
    # no start time: time since the start, up to the end of the last epoch
    (0.5, None, ["0:00", "0:05", "0:10", "0:15", "0:20", "0:25", "0:30"]),
    (8.0, None, [f"{h}:00" for h in range(9)]),
])
def test_time_axis_ticks(hours: float, start: datetime | None, expected: list[str]) -> None:
    onsets = np.arange(int(hours * 120)) * 30.0
    labels = _tick_labels(hypnogram_svg(onsets, np.full(onsets.size, 2), start=start))
    assert labels == expected


@pytest.mark.parametrize("value, unit, text", [
    (412.25, "min", "412.2"), (87.06, "%", "87.1"), (0.8712, "frac", "87.1"), (0.81549, "coef", "0.815"),
    (3.0, "count", "3"), (0.456, "prob", "0.46"), (float("nan"), "min", "—"), (None, "coef", "—"),
    (-0.04, "min", "0.0"), (7, "auto", "7"), (0.123456, "auto", "0.1235"), (2.5, "mean", "2.5"),
])
def test_format_value(value, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_write_report_atomic(tmp_path: Path, night_html: str) -> None:
    target = tmp_path / "out" / "night.html"
    write_report(target, night_html)
    assert target.read_text(encoding="utf-8") == night_html
    assert [p.name for p in target.parent.iterdir()] == ["night.html"]


def test_renders_in_headless_chromium(tmp_path: Path, night_html: str) -> None:
    browser = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if browser is None:
        pytest.skip("chromium not installed")
    target = tmp_path / "night.html"
    write_report(target, night_html)
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           target.as_uri()], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and 'id="sleep-statistics"' in done.stdout
