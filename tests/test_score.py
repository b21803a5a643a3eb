"""`sleepstage score`: end to end on a held-out simulated night, aggregation, outputs, hard nights, errors."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_clean_error, run_cli, write_edf

from sleepstage_cli.evaluation.sleepstats import sleep_statistics
from sleepstage_cli.io.edf import EdfReader, read_header
from sleepstage_cli.io.hypnogram import read_hypnogram
from sleepstage_cli.model.staging import StagingModel
from sleepstage_cli.scoring.inference import score_night
from sleepstage_cli.stages import STAGES

CODES = {s: i for i, s in enumerate(STAGES)} | {"?": -1}
MASS_LABELS = ["EEG C4-CLE", "EEG A1-CLE", "EEG C4-LER", "EOG Right Horiz", "EOG Left Horiz", "EMG Chin1",
               "EMG Chin2"]


def _truth_of(trained, psg: Path) -> dict:
    return next(n for n in trained["truth"]["nights"] if n["psg"] == psg.name)


def test_held_out_night_end_to_end(trained, tmp_path: Path) -> None:
    psg = trained["held_out"]
    truth = _truth_of(trained, psg)
    base = psg.with_name(psg.name.replace("PSG", "Base"))
    out = tmp_path / "night.csv"
    proc = run_cli("score", psg, "-o", out, "--model", trained["model"], "--epochs-from", base)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["epoch", "onset_s", "stage", "p_W", "p_N1", "p_N2", "p_N3", "p_REM", "confidence",
                                "flag", "clock_time"]
    onsets = np.asarray(truth["onsets"])
    stages = np.asarray(truth["stages"])
    assert len(df) == len(onsets)  # one row per scored epoch, onsets as the hypnogram has them
    np.testing.assert_allclose(df["onset_s"], onsets, atol=1e-3)
    probs = df[[f"p_{s}" for s in STAGES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=2e-3)
    pred = df["stage"].map(CODES).to_numpy()
    np.testing.assert_array_equal(pred, probs.argmax(axis=1))
    scored = stages >= 0
    accuracy = float((pred[scored] == stages[scored]).mean())
    majority = np.bincount(stages[scored]).max() / scored.sum()
    assert accuracy > majority + 0.15, (accuracy, majority)
    report = out.with_name("night.report.html")
    assert report.exists()

    # Without a hypnogram: consecutive 30-s epochs from the start of the recording.
    plain = run_cli("score", psg, "-o", tmp_path / "plain.csv", "--model", trained["model"], "--no-report")
    assert plain.returncode == 0, plain.stderr
    df2 = pd.read_csv(tmp_path / "plain.csv")
    n = int(read_header(psg).duration // 30)
    assert len(df2) == n
    np.testing.assert_allclose(df2["onset_s"], 30.0 * np.arange(n))
    assert not (tmp_path / "plain.report.html").exists()


def test_epochs_from_a_folder_pairs_each_night(trained, tmp_path: Path) -> None:
    """Several nights scored on their own hypnograms' epochs, paired as prepare pairs them (MASS codes)."""
    sim, model = trained["sim"], trained["model"]
    psgs, hyps = tmp_path / "psg", tmp_path / "experts" / "annotations"
    psgs.mkdir()
    hyps.mkdir(parents=True)
    for code in ("0005", "0006"):
        (psgs / f"01-03-{code} PSG.edf").symlink_to(sim / f"01-03-{code} PSG.edf")
        (hyps / f"01-03-{code} Base.edf").symlink_to(sim / f"01-03-{code} Base.edf")
    # recordings in the hypnograms' folder (a copy of a night being scored) take no part in the pairing
    shutil.copy(sim / "01-03-0005 PSG.edf", hyps.parent / "01-03-0005 PSG.edf")
    out = tmp_path / "scored"
    proc = run_cli("score", psgs, "-o", out, "--model", model, "--epochs-from", hyps.parent, "--no-report")
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "summary.csv")
    for code in ("0005", "0006"):
        truth = _truth_of(trained, psgs / f"01-03-{code} PSG.edf")
        df = pd.read_csv(out / f"01-03-{code}.csv", keep_default_na=False)
        np.testing.assert_allclose(df["onset_s"], truth["onsets"], atol=1e-3)
        row = summary[summary["night"] == f"01-03-{code}"].iloc[0]
        assert Path(row["epochs_from"]).name == f"01-03-{code} Base.edf"

    # a night without its hypnogram in the folder: refused before anything is scored
    (psgs / "01-03-0004 PSG.edf").symlink_to(sim / "01-03-0004 PSG.edf")
    again = tmp_path / "again"
    assert_clean_error(run_cli("score", psgs, "-o", again, "--model", model, "--epochs-from", hyps.parent),
                       "01-03-0004 PSG.edf", "no hypnogram")
    assert not again.exists()
    # one hypnogram for several nights
    assert_clean_error(run_cli("score", psgs, "-o", again, "--model", model, "--epochs-from",
                               hyps / "01-03-0005 Base.edf"), "01-03-0005 Base.edf", "several nights")
    assert not again.exists()


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-field" in a:
            self.values[a["data-field"]] = a.get("data-value", "")


def test_outputs_formats_attention_and_report(trained, tmp_path: Path) -> None:
    psg = trained["held_out"]
    out = tmp_path / "scored"
    proc = run_cli("score", psg, "-o", out, "--model", trained["model"], "--format", "csv, BIDS,edf", "--attention")
    assert proc.returncode == 0, proc.stderr
    night = "01-03-0006"
    csv = read_hypnogram(out / f"{night}.csv")
    for other in (f"{night}.events.tsv", f"{night}.annotations.edf"):
        again = read_hypnogram(out / other)
        np.testing.assert_array_equal(again.stages, csv.stages)
        np.testing.assert_allclose(again.onsets, csv.onsets)
    att = pd.read_csv(out / f"{night}.attention.csv")
    weights = att[[c for c in att.columns if c.startswith("a_")]].to_numpy()
    assert weights.shape == (len(csv), 29)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-3)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["night"].tolist() == [night] and summary["epochs"].tolist() == [len(csv)]
    cells = _Cells()
    cells.feed((out / f"{night}.report.html").read_text())
    stats = sleep_statistics(csv.stages, 30.0)
    for field in ("TST", "SE", "WASO", "SOL", "N3", "REM"):
        shown = float(cells.values[f"statistics.{field}"])
        assert shown == pytest.approx(stats[field], rel=1e-9, abs=1e-9), field
    assert float(summary["TST_min"][0]) == pytest.approx(stats["TST"])


@pytest.mark.parametrize("name, L", [("seqsleepnet", 6), ("e2e-arnn", 1), ("multitask-arnn", 1)])
def test_aggregation_equals_summing_every_window(name: str, L: int) -> None:
    torch.manual_seed(0)
    model = StagingModel(name, 2, L).eval()
    x = torch.randn(17, 2, 3000)
    got = score_night(model, x.numpy(), batch_size=4).log_scores
    want = torch.zeros(17, 5, dtype=torch.float64)
    with torch.no_grad():
        if name == "seqsleepnet":  # every window of L epochs scored on its own, log-probs summed
            for s in range(17 - L + 1):
                want[s:s + L] += torch.log_softmax(model(x[s:s + L][None]), -1)[0].double()
        elif name == "e2e-arnn":
            for t in range(17):
                want[t] = torch.log_softmax(model(x[t:t + 1][None]), -1)[0, 0]
        else:  # each epoch also predicts its two neighbours
            for t in range(17):
                lp = torch.log_softmax(model(x[t:t + 1][None]), -1)[0, 0].double()
                want[t] += lp[1]
                if t > 0:
                    want[t - 1] += lp[0]
                if t < 16:
                    want[t + 1] += lp[2]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def _mass_like(trained, path: Path, seconds: float | None = None, edit=None) -> Path:
    """A 6-channel copy of the held-out night (MASS labels), optionally cut and edited."""
    src = trained["held_out"]
    header = read_header(src)
    with EdfReader(src, header) as r:
        sig = {s.label: r.read(s) for s in header.signals if s.label in MASS_LABELS}
    if seconds is not None:
        sig = {k: v[: int(seconds * 256)] for k, v in sig.items()}
    if edit is not None:
        edit(sig)
    return write_edf(path, {k: (v, 256) for k, v in sig.items()})


def test_flat_stretches_are_marked(trained, tmp_path: Path) -> None:
    def edit(sig):
        for k in [k for k in sig if k.startswith("EEG")]:  # EEG electrode off for 3 minutes
            sig[k][600 * 256:780 * 256] = 0.0
        for k in sig:  # everything flat for 2 minutes later on
            sig[k][1200 * 256:1320 * 256] = 0.0

    edf = _mass_like(trained, tmp_path / "flat.edf", seconds=1800, edit=edit)
    proc = run_cli("score", edf, "-o", tmp_path / "flat.csv", "--model", trained["model"])
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "flat.csv", keep_default_na=False)
    eeg_off = df[(df.onset_s >= 630) & (df.onset_s < 750)]
    assert (eeg_off.flag.str.contains("flat signal (EEG)", regex=False)).all()
    assert (eeg_off.stage != "?").all()  # EOG and EMG still carry it: scored, but marked
    all_off = df[(df.onset_s >= 1230) & (df.onset_s < 1290)]
    assert (all_off.stage == "?").all() and (all_off.flag.str.contains("flat signal", regex=False)).all()
    clean = df[(df.onset_s >= 60) & (df.onset_s < 500)]
    assert (clean.flag == "").all()
    assert "marked for flat or missing signal" in proc.stderr


def test_edf_plus_d_gap_is_missing_signal(trained, tmp_path: Path) -> None:
    edf = _mass_like(trained, tmp_path / "cont.edf", seconds=1200)
    header = read_header(edf)
    # Turn it into EDF+D with a 120-s gap before record 600 (1-s records): rewrite the time-keeping TALs.
    raw = bytearray(edf.read_bytes())
    raw[192:197] = b"EDF+D"
    sb = header.sample_bytes
    record_bytes = sum(header.record_samples) * sb
    ann = header.annotation_indices[0]
    start = header.header_bytes + sum(header.record_samples[:ann]) * sb
    length = header.record_samples[ann] * sb
    for r in range(header.n_records):
        onset = r + (120 if r >= 600 else 0)
        tal = f"+{onset}\x14\x14\x00".encode().ljust(length, b"\x00")
        pos = start + r * record_bytes
        raw[pos:pos + length] = tal
    dpath = tmp_path / "gap.edf"
    dpath.write_bytes(bytes(raw))
    proc = run_cli("score", dpath, "-o", tmp_path / "gap.csv", "--model", trained["model"])
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "gap.csv", keep_default_na=False)
    assert len(df) == (1200 + 120) // 30
    gap = df[(df.onset_s >= 600) & (df.onset_s < 720)]
    assert (gap.stage == "?").all() and gap.flag.str.contains("missing signal", regex=False).all()
    assert (df[df.onset_s < 540].flag == "").all()
    assert "discontinuous" in proc.stderr


def test_night_shorter_than_one_sequence(trained, tmp_path: Path) -> None:
    edf = _mass_like(trained, tmp_path / "short.edf", seconds=240)  # 8 epochs < L = 10
    proc = run_cli("score", edf, "-o", tmp_path / "short.csv", "--model", trained["model"])
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "short.csv", keep_default_na=False)
    assert len(df) == 8 and (df.stage != "?").all()
    assert df.flag.str.contains("short night", regex=False).all()
    assert "fewer than one 10-epoch sequence" in proc.stderr
    html = (tmp_path / "short.report.html").read_text()
    assert "fewer than one 10-epoch sequence" in html


def test_score_errors(trained, tmp_path: Path) -> None:
    psg = trained["held_out"]
    model = trained["model"]
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(model.read_bytes()[:5000])
    assert_clean_error(run_cli("score", psg, "-o", tmp_path / "a.csv", "--model", truncated), "cut.pt",
                       "truncated or corrupted")
    assert not (tmp_path / "a.csv").exists()

    t = np.arange(0, 300, 1 / 200)
    other = write_edf(tmp_path / "lab.edf", {"C4-M1": (20 * np.sin(t), 200), "E2-M1": (np.sin(t), 200)})
    assert_clean_error(run_cli("score", other, "-o", tmp_path / "b.csv", "--model", model), "lab.edf",
                       "not found", "C4-M1 (200 Hz)", "--eeg")

    existing = tmp_path / "taken.csv"
    existing.write_text("keep")
    assert_clean_error(run_cli("score", psg, "-o", existing, "--model", model), "already exists", "--force")
    assert existing.read_text() == "keep"

    assert_clean_error(run_cli("score", psg, "-o", tmp_path / "c.csv"), "no --model given", "sleepstage train")

    assert_clean_error(run_cli("score", psg, "-o", tmp_path / "e.csv", "--model", model, "--format", "csv,xls"),
                       "--format takes csv, tsv, edf", "'csv,xls'")
    assert not (tmp_path / "e.csv").exists()


def test_score_refuses_50_hz_foreign_file(trained, tmp_path: Path, foreign) -> None:
    model = trained["model"]
    dreams = foreign("dreams/excerpt3.edf")
    assert_clean_error(run_cli("score", dreams, "-o", tmp_path / "d.csv", "--model", model, "--eeg", "C3-A1",
                               "--eog", "EOG1-A1 - EOG2-A1", "--emg", "EMG1"), "excerpt3.edf", "50 Hz")
