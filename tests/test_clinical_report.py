"""The staging report as a clinician reads it (issue 14, item 3).

Lights off/on (EDF+ annotations, or --lights-off/--lights-on), time in bed and latencies from lights off,
the clock times of sleep onset and final awakening, latencies to each stage, plain-language labels, the
main sleep period of a long recording, epochs numbered as in the CSV, the key figures, the fit verdict and
the model card, the evaluation report's paired hypnograms; and a headless browser shows all of it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, run_cli, write_edf

from sleepstage_cli.errors import InputError
from sleepstage_cli.evaluation.period import analyse_night, choose_period, main_sleep_period
from sleepstage_cli.evaluation.sleepstats import PLAIN_LABELS, STAT_FIELDS, sleep_statistics
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.lights import Lights, clock_lights, find_lights, lights_event, parse_clock, read_lights
from sleepstage_cli.report.comparesvg import paired_hypnogram_svg
from sleepstage_cli.report.html import evaluation_report_html, night_report_html
from sleepstage_cli.report.svgplot import STAGE_COLOURS, runs
from sleepstage_cli.simulate.hypnogram import make_hypnogram
from sleepstage_cli.stages import STAGES

W, N1, N2, N3, R, U = 0, 1, 2, 3, 4, -1
EP = 30.0
CODES = {s: i for i, s in enumerate(STAGES)} | {"?": -1}


def hyp(*runs_: tuple[int, int]) -> np.ndarray:
    return np.concatenate([np.full(k, s, dtype=np.int64) for s, k in runs_])


class Dom(HTMLParser):
    """Visible text (script/style/title left out) and every element's attributes, by id and by data-field."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.ids: dict[str, dict] = {}
        self.fields: dict[str, dict] = {}
        self.tags: list[tuple[str, dict]] = []
        self._skip = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if "id" in a:
            self.ids[a["id"]] = a
        if "data-field" in a:
            self.fields.setdefault(a["data-field"], a)
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.text))

    def value(self, field: str) -> float:
        return float(self.fields[field]["data-value"])


# --------------------------------------------------------------------------- statistics over a period

def plain_statistics(stages: np.ndarray, onsets: np.ndarray, off: float, on: float) -> dict:
    """What a technician does by hand: keep the epochs whose middle lies between lights off and on, walk them."""
    keep = [i for i in range(len(stages)) if off <= onsets[i] + EP / 2 <= on]
    st = [int(stages[i]) for i in keep]
    t0 = onsets[keep[0]]
    first = {}
    for k, s in enumerate(st):
        first.setdefault(s, k)
    sleep_at = [k for k, s in enumerate(st) if s >= 1]
    onset_k, last_k = sleep_at[0], sleep_at[-1]
    awakenings, prev = 0, None
    for s in st[onset_k:last_k + 1]:
        if s < 0:
            continue
        if s == W and prev != W:
            awakenings += 1
        prev = s
    out = {"TIB": len(st) * 0.5, "TST": len(sleep_at) * 0.5, "SOL": (onsets[keep[onset_k]] - t0) / 60,
           "WASO": st[onset_k:last_k + 1].count(W) * 0.5, "N_awakenings": awakenings,
           "Lat_REM": (first[R] - onset_k) * 0.5 if R in first else math.nan,
           "sleep_onset": onsets[keep[onset_k]], "final_awakening": onsets[keep[last_k]] + EP}
    for name, code in (("Lat_N1", N1), ("Lat_N2", N2), ("Lat_N3", N3), ("Lat_REM_LO", R)):
        out[name] = (onsets[keep[first[code]]] - t0) / 60 if code in first else math.nan
    out["SE"] = 100 * out["TST"] / out["TIB"]
    return out


# Wake before lights off (reading in bed with the recording running), a night, wake after lights on.
NIGHT = hyp((W, 14), (N1, 3), (W, 2), (N1, 2), (N2, 16), (N3, 12), (N2, 5), (R, 6), (W, 3), (N2, 10), (U, 2),
            (N2, 4), (R, 8), (W, 1), (N1, 2), (N2, 6), (W, 9), (N2, 3), (W, 12))


def test_latencies_and_times_from_lights_off_match_a_hand_count() -> None:
    onsets = np.arange(NIGHT.size) * EP
    for off, on in ((10 * EP, 112 * EP), (10 * EP + 14, 112 * EP - 16), (3 * EP, (NIGHT.size - 5) * EP)):
        a = analyse_night(onsets, NIGHT, EP, Lights(off, on, "command line"))
        expected = plain_statistics(NIGHT, onsets, off, on)
        assert a.period.kind == "lights" and a.period.latencies_from == "lights off"
        for key in ("TIB", "TST", "SOL", "WASO", "N_awakenings", "Lat_REM", "Lat_N1", "Lat_N2", "Lat_N3",
                    "Lat_REM_LO", "SE"):
            assert a.statistics[key] == pytest.approx(expected[key]), (off, on, key)
        assert a.times["sleep_onset"] == expected["sleep_onset"]
        assert a.times["final_awakening"] == expected["final_awakening"]
        assert (a.times["lights_off"], a.times["lights_on"]) == (off, on)
    # Without lights: from the start of the recording, as sleep_statistics always did
    whole = analyse_night(onsets, NIGHT, EP)
    assert whole.period.kind == "all" and whole.statistics == sleep_statistics(NIGHT, EP)
    assert whole.statistics["Lat_N2"] == (14 + 3 + 2 + 2) * 0.5 and whole.period.latencies_from.endswith("recording")
    # lights off only: it ends with the recording; lights that leave no epoch are refused
    only_off = analyse_night(onsets, NIGHT, EP, Lights(20 * EP, None, "x"))
    assert only_off.statistics["TIB"] == (NIGHT.size - 20) * 0.5
    with pytest.raises(InputError, match="leaves no epoch"):
        choose_period(onsets, NIGHT, EP, Lights((NIGHT.size + 10) * EP, None, "x"))


def test_plain_language_labels() -> None:
    assert all(f.label for f in STAT_FIELDS) and set(PLAIN_LABELS) == {f.name for f in STAT_FIELDS}
    assert PLAIN_LABELS["N_awakenings"] == "Number of awakenings"
    assert PLAIN_LABELS["Lat_REM"] == "REM latency from sleep onset"
    assert not any("_" in label for label in PLAIN_LABELS.values())


# --------------------------------------------------------------------------- lights off / on

@pytest.mark.parametrize("text, kind", [
    ("Lights off", "off"), ("LIGHTS OFF", "off"), ("Lights off@@EEG F4-A1", "off"), ("lights_out", "off"),
    ("LightsOff", "off"), ("Lights on", "on"), ("LIGHTS ON", "on"), ("Lights on@@EEG Fpz-Cz", "on"),
    ("lights-on.", "on"), ("Sleep stage W", None), ("Lights off for 5 min", None), ("Highlights on", None),
])
def test_lights_spellings(text: str, kind: str | None) -> None:
    assert lights_event(text) == kind


def test_lights_from_edf_annotations(tmp_path: Path, foreign) -> None:
    eeg = np.random.default_rng(0).normal(0, 20, 100 * 600)
    path = write_edf(tmp_path / "night.edf", {"EEG C4-A1": (eeg, 100.0)}, annotations=[
        (5.0, -1, "Sleep stage W"), (30.0, -1, "Lights on"), (60.0, -1, "LIGHTS OFF"), (120.0, -1, "Lights off"),
        (570.5, -1, "Lights on@@EEG C4-A1")])
    lights = read_lights(path)
    # the first lights off, and the first lights on after it
    assert (lights.off_s, lights.on_s, lights.source) == (60.0, 570.5, "EDF+ annotations")
    assert find_lights([400.0, 100.0], ["Lights on", "lights out"]) == Lights(100.0, 400.0, "EDF+ annotations")
    assert read_lights(write_edf(tmp_path / "plain.edf", {"EEG": (eeg, 100.0)})) == Lights()
    # PhysioNet's HMC spelling
    hmc = read_lights(foreign("test_edfann.edf"))
    assert hmc.off_s == pytest.approx(33.43) and hmc.on_s == pytest.approx(25618.74)


def test_lights_from_clock_times() -> None:
    start = dt.datetime(2024, 3, 1, 22, 47, 30)
    got = clock_lights(start, parse_clock("23:00"), parse_clock("06:30"))
    assert (got.off_s, got.on_s) == (750.0, 750.0 + 7.5 * 3600)  # lights on earlier on the clock: next day
    assert clock_lights(start, parse_clock("01:15:30"), None).off_s == (2 * 3600 + 28 * 60)
    assert clock_lights(start, parse_clock("22:30"), None).off_s == -1050.0  # just before the start
    assert clock_lights(start, None, parse_clock("07:00")).on_s == 8 * 3600 + 12 * 60 + 30
    for bad in ("25:00", "23:60", "11pm", "23"):
        with pytest.raises(InputError, match="--lights-off takes a clock time"):
            parse_clock(bad, "--lights-off")
    with pytest.raises(InputError, match="start time"):
        clock_lights(None, parse_clock("23:00"), None)


# --------------------------------------------------------------------------- a 24-h recording

def day_and_night(seed: int = 3) -> tuple[np.ndarray, slice]:
    """24 h from 08:00: a day awake with a stray sleep epoch or two every 20 min and a 45-min nap, then a
    simulated 8-h night from 23:00, then an hour awake. Returns the stages and the night's slice."""
    rng = np.random.default_rng(seed)
    night = make_hypnogram(rng, 8.0, EP).stage.astype(np.int64)
    day = np.zeros(15 * 120, dtype=np.int64)
    dozes = np.arange(20, day.size - 60, 40)
    day[dozes] = N1
    day[dozes[::2] + 1] = N2
    day[720:810] = N2  # a nap at 14:00
    stages = np.concatenate([day, night, np.zeros(120, dtype=np.int64)])
    return stages, slice(day.size, day.size + night.size)


def hand_awakenings(stages: np.ndarray) -> int:
    sleep = [i for i, s in enumerate(stages) if s >= 1]
    count, prev = 0, None
    for s in stages[sleep[0]:sleep[-1] + 1]:
        if s >= 0:
            count += s == W and prev != W
            prev = s
    return count


def test_24_hour_recording_reports_its_main_sleep_period() -> None:
    stages, night = day_and_night()
    onsets = np.arange(stages.size) * EP
    start = dt.datetime(2024, 5, 6, 8, 0)
    night_awakenings = hand_awakenings(stages[night])
    everything = analyse_night(onsets, stages, EP, mode="all", start=start)
    assert everything.statistics["N_awakenings"] > 3 * night_awakenings  # the day's dozes count: dozens
    assert any("over 18 h" in n for n in everything.period.notes)

    for mode in ("auto", None):  # asked for, or the default beyond 18 h (with a warning)
        a = analyse_night(onsets, stages, EP, mode=mode, start=start)
        assert a.period.kind == "main"
        sleep_in_night = night.start + np.flatnonzero(stages[night] >= 1)
        assert (a.period.first, a.period.stop) == (sleep_in_night[0], sleep_in_night[-1] + 1)
        assert a.statistics["N_awakenings"] == night_awakenings
        assert a.statistics["TST"] == np.count_nonzero(stages[night] >= 1) * 0.5
        assert math.isnan(a.statistics["TIB"]) and math.isnan(a.statistics["SE"])  # no lights: not known
        assert a.period.latencies_from == "sleep onset"
        assert bool(a.period.notes) == (mode is None)
    assert "main sleep period" in a.period.notes[0] and "--sleep-period all" in a.period.notes[0]
    # lights off/on win over the main sleep period
    lit = analyse_night(onsets, stages, EP, Lights(night.start * EP, night.stop * EP, "command line"), "auto", start)
    assert lit.period.kind == "lights" and lit.statistics["N_awakenings"] == night_awakenings

    # the report says which period, and its key figures are the main period's
    page = Dom(night_report_html({"night_id": "24h", "source": "day.edf", "onsets": onsets, "stages": stages,
                                  "start": start, "epoch_length": EP}))
    assert page.value("key.N_awakenings") == night_awakenings
    assert "main sleep period" in page.visible and "time in bed" in page.visible
    assert page.value("key.sleep_onset") == onsets[a.period.first]


def test_main_sleep_period_rule_edges() -> None:
    assert main_sleep_period(hyp((W, 10))) is None
    assert main_sleep_period(hyp((W, 2), (N2, 2), (W, 2))) == (2, 4)  # a nap: its sleep epochs themselves
    # an awakening of 50 min inside the night is bridged; 70 min is not, and the bigger part wins
    for gap, expect_whole in ((100, True), (140, False)):
        st = hyp((W, 60), (N2, 300), (W, gap), (N2, 200), (W, 60))
        first, stop = main_sleep_period(st)
        assert first == 60 and stop == (60 + 300 + gap + 200 if expect_whole else 360)


# --------------------------------------------------------------------------- the evaluation report

def test_evaluation_report_draws_each_night_predicted_against_reference() -> None:
    rng = np.random.default_rng(4)
    nights = []
    for k in range(3):
        ref = make_hypnogram(rng, 1.0, EP).stage.astype(np.int64)
        pred = np.where(rng.random(ref.size) < 0.85, ref, rng.integers(0, 5, ref.size))
        pred[:2] = -1
        nights.append({"night": f"n{k}", "onsets": np.arange(ref.size) * EP, "pred": pred, "ref": ref,
                       "epoch_length": EP})
    html = evaluation_report_html({"title": "t", "pooled": {"n": 1}, "per_night": [], "hypnograms": nights})
    figures = re.findall(r'<figure class="night-pair" data-night="([^"]+)">(.*?)</figure>', html, re.S)
    assert [name for name, _ in figures] == ["n0", "n1", "n2"]
    for (_, svg), n in zip(figures, nights):
        differ = (n["pred"] >= 0) & (n["ref"] >= 0) & (n["pred"] != n["ref"])
        assert svg.count('class="disagree"') == len(runs(differ))
        for code, name in enumerate(STAGES):  # both hypnograms coloured by stage
            assert svg.count(f'class="seg-{name}"') == len(runs(n["pred"] == code)) + len(runs(n["ref"] == code))
    assert "no epoch compared" in paired_hypnogram_svg([], [], [])


# --------------------------------------------------------------------------- score, end to end

def _copy_with_annotations(psg: Path, target: Path, annotations) -> Path:
    """The recording's signals rewritten as an EDF+ with extra annotations (clock start: the writer's)."""
    header = read_header(psg)
    with EdfReader(psg, header) as reader:
        signals = {s.label: (reader.read(s), s.sampling_rate) for s in header.signals}
    return write_edf(target, signals, annotations)


@pytest.fixture(scope="module")
def lit(trained, tmp_path_factory) -> dict:
    """The held-out night scored with --lights-off/--lights-on (on epoch boundaries) and a low-confidence
    threshold that lists many runs."""
    out = tmp_path_factory.mktemp("lit")
    psg = trained["held_out"]
    start = read_header(psg).start
    off_s, on_s = 20 * EP, 100 * EP
    clock = [(start + dt.timedelta(seconds=s)).strftime("%H:%M:%S") for s in (off_s, on_s)]
    proc = run_cli("score", psg, "-o", out / "night.csv", "--model", trained["model"], "--lights-off", clock[0],
                   "--lights-on", clock[1], "--low-confidence", "0.9")
    assert proc.returncode == 0, proc.stderr
    return {"csv": out / "night.csv", "html": out / "night.report.html", "start": start, "off": off_s, "on": on_s}


def test_score_with_lights_reports_from_lights_off(lit) -> None:
    df = pd.read_csv(lit["csv"], keep_default_na=False)
    stages = df["stage"].map(CODES).to_numpy()
    expected = plain_statistics(stages, df["onset_s"].to_numpy(), lit["off"], lit["on"])
    page = Dom(lit["html"].read_text(encoding="utf-8"))
    assert page.value("key.lights_off") == lit["off"] and page.value("key.lights_on") == lit["on"]
    for key in ("TIB", "TST", "SOL", "WASO", "N_awakenings", "Lat_N1", "Lat_N2", "Lat_N3", "Lat_REM_LO", "SE"):
        got, want = page.value(f"key.{key}"), expected[key]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want), key
    assert page.value("key.sleep_onset") == expected["sleep_onset"]
    assert page.value("key.final_awakening") == expected["final_awakening"]
    text = page.visible
    for s in (lit["off"], lit["on"], expected["sleep_onset"], expected["final_awakening"]):
        assert (lit["start"] + dt.timedelta(seconds=float(s) + 30)).strftime("%H:%M") in text  # nearest minute
    assert "lights off to lights on" in text and "from the command line" in text
    assert "Latencies to each stage, from lights off" in text


def test_report_numbers_epochs_as_the_csv(lit) -> None:
    df = pd.read_csv(lit["csv"], keep_default_na=False)
    html = lit["html"].read_text(encoding="utf-8")
    table = re.search(r'<table id="low-confidence">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r'<tr data-first="(\d+)" data-last="(\d+)"><td>([^<]+)</td><td>([^<]+)</td>', table)
    assert len(rows) >= 3
    low = df["confidence"].astype(float).to_numpy() < 0.9
    for first, last, label, when in rows:
        a, b = (int(x) for x in label.split("–")) if "–" in label else (int(label), int(label))
        assert (a, b) == (int(first), int(last))
        by_epoch = df.set_index("epoch")
        assert low[df["epoch"].between(a, b).to_numpy()].all()  # the CSV's epochs a..b are the run
        assert not (a > 0 and low[df.index[df["epoch"] == a - 1][0]])
        onset = float(by_epoch.loc[a, "onset_s"])
        assert when == (lit["start"] + dt.timedelta(seconds=onset)).strftime("%H:%M:%S")
    assert "the first epoch of the recording is epoch 0" in Dom(html).visible


def test_score_reads_lights_from_edf_annotations(trained, tmp_path: Path) -> None:
    psg = _copy_with_annotations(trained["held_out"], tmp_path / "lit.edf",
                                 [(15 * EP, -1, "LIGHTS OFF"), (90 * EP, -1, "Lights on@@EEG C4-A1")])
    out = tmp_path / "out"
    proc = run_cli("score", psg, "-o", out, "--model", trained["model"], "--sleep-period", "auto")
    assert proc.returncode == 0, proc.stderr
    page = Dom((out / "lit.report.html").read_text(encoding="utf-8"))
    assert page.value("key.lights_off") == 15 * EP and page.value("key.lights_on") == 90 * EP
    assert page.value("key.TIB") == (90 - 15) * 0.5
    assert "from the EDF+ annotations" in page.visible
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    start = read_header(psg).start
    assert summary.loc[0, "stats_period"] == "lights"
    assert summary.loc[0, "lights_off"] == (start + dt.timedelta(seconds=15 * EP)).isoformat(timespec="seconds")
    assert "they bound the statistics" in proc.stderr  # --sleep-period auto does not override known lights

    # A night without lights, --sleep-period auto: its main sleep period; bad options are clean errors
    proc = run_cli("score", trained["held_out"], "-o", tmp_path / "auto.csv", "--model", trained["model"],
                   "--sleep-period", "auto")
    assert proc.returncode == 0, proc.stderr
    page = Dom((tmp_path / "auto.report.html").read_text(encoding="utf-8"))
    assert "main sleep period" in page.visible and math.isnan(page.value("key.TIB"))
    assert_clean_error(run_cli("score", trained["held_out"], "-o", tmp_path / "x.csv", "--model", trained["model"],
                               "--lights-off", "25:00"), "--lights-off", "25:00")
    assert_clean_error(run_cli("score", trained["held_out"], "-o", tmp_path / "y.csv", "--model", trained["model"],
                               "--sleep-period", "night"), "--sleep-period")


# --------------------------------------------------------------------------- in a browser

def _browser() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _chromium(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def _has_colour(pixels: np.ndarray, hex_colour: str, tol: int = 12) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tol).sum() >= 20)


def test_report_in_a_headless_browser(lit, tmp_path: Path) -> None:
    """The report a clinician opens, rendered by Chromium: everything of issue 14's item 3 is there."""
    from PIL import Image

    browser = _browser()
    if browser is None:
        pytest.skip("chromium not installed (.ci/run installs it)")
    url = lit["html"].resolve().as_uri()
    shot = tmp_path / "report.png"
    done = _chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", url)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50  # not a blank page
    for stage, colour in STAGE_COLOURS.items():  # the hypnogram and hypnodensity, coloured by stage
        assert _has_colour(pixels, colour), stage
    assert _has_colour(pixels, "#2e7d32")  # the lights off / on marks

    dom = _chromium(browser, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Dom(dom.stdout)
    text = page.visible
    for words in ("Key figures", "Lights off", "Lights on", "Time in bed", "Total sleep time", "Sleep efficiency",
                  "Sleep onset", "Final awakening", "Sleep onset latency", "Wake after sleep onset",
                  "Number of awakenings", "Latency to N1", "Latency to N2", "Latency to N3", "Latency to REM",
                  "REM latency from sleep onset", "Does the model fit this recording?",
                  "The model that scored this night", "Trained on", "Network", "Channels",
                  "the first epoch of the recording is epoch 0", "lights off to lights on"):
        assert words in text, words
    for code in ("Lat_REM", "N_awakenings", "N_stage_shifts", "Unscored_SPT"):  # names for machines only
        assert code not in text, code
    for section in ("key-figures", "fit-verdict", "model-card", "hypnogram", "statistics", "review"):
        assert section in page.ids, section
    ids = list(page.ids)
    assert ids.index("key-figures") < ids.index("hypnogram") < ids.index("statistics")  # key figures on top
    assert ids.index("model-card") < ids.index("hypnogram")
    ticks = [a for tag, a in page.tags if tag == "text" and a.get("class") == "p-tick"]
    assert len(ticks) == 3  # the hypnodensity's 0, 0.5, 1
    assert re.search(r"probability", text) and all(t in text for t in ("0.5",))
