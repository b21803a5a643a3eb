"""`sleepstage train DATA --init MODEL`: fine-tuning a trained model on a few nights of another montage.

The demonstration: the source model is the session's briefly trained SeqSleepNet (conftest ``trained``,
simulated MASS nights). The target lab records other subjects with another EEG derivation: its "C4"
electrode lies over the occipital cortex, is low-passed at 8 Hz, picks up the eye movements and has
a third of the amplitude (a pure amplitude change would be undone by per-night standardisation).
Fine-tuning on 2 target nights must beat both the source model as it is and a model trained from
scratch on the same 2 nights with the same number of steps, on 2 held-out target nights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyedflib
import pytest
import torch
from conftest import assert_clean_error, run_cli, write_edf
from scipy.signal import butter, sosfiltfilt

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.digests import file_sha256
from sleepstage_cli.model.modelfile import load_model
from sleepstage_cli.training.finetune import FINETUNE_LR, SCRATCH_LR
from sleepstage_cli.training.train import channel_index, evaluate

TRAIN_NIGHTS, TEST_NIGHTS = ("01-03-0001", "01-03-0002"), ("01-03-0003", "01-03-0004")
STEPS = ["--max-steps", "40", "--epochs", "50", "--eval-every", "40", "--batch-size", "16", "--seed", "3",
         "--val-fraction", "0", "--device", "cpu"]


def shift_montage(src: Path, dst: Path) -> None:
    """Rewrite a simulated MASS night as another lab would record it: EEG C4 replaced by 0.3 x low-passed
    (O1 - reference) plus 0.3 x the horizontal EOG, so that the prepared "C4-A1" derivation is another one."""
    reader = pyedflib.EdfReader(str(src))
    try:
        signals = {label: (reader.readSignal(i), reader.getSampleFrequency(i))
                   for i, label in enumerate(reader.getSignalLabels()) if label.startswith(("EEG", "EOG", "EMG"))}
    finally:
        reader.close()
    ref = "LER" if any(label.endswith("-LER") for label in signals) else "CLE"
    c4, o1, a1 = f"EEG C4-{ref}", f"EEG O1-{ref}", f"EEG A1-{ref}"
    rate = signals[c4][1]
    base = signals[a1][0] if a1 in signals else 0.0
    eog = signals["EOG Right Horiz"][0] - signals["EOG Left Horiz"][0]
    low_pass = butter(4, 8.0, fs=rate, output="sos")
    signals[c4] = (base + 0.3 * sosfiltfilt(low_pass, signals[o1][0] - base) + 0.3 * eog, rate)
    write_edf(dst, signals, plus=False)


@pytest.fixture(scope="module")
def target(tmp_path_factory, trained):
    """The target lab's nights, prepared: 2 to fine-tune on, 2 held out."""
    from sleepstage_cli.simulate import simulate

    root = tmp_path_factory.mktemp("finetune")
    sim = root / "sim"
    simulate(sim, nights=4, layout="mass", seed=29, hours=1.0)
    out = {}
    for part, nights in (("train", TRAIN_NIGHTS), ("test", TEST_NIGHTS)):
        raw = root / f"{part}-raw"
        raw.mkdir()
        for night in nights:
            shift_montage(sim / f"{night} PSG.edf", raw / f"{night} PSG.edf")
            shutil.copyfile(sim / f"{night} Base.edf", raw / f"{night} Base.edf")
        out[part] = root / f"{part}-data"
        proc = run_cli("prepare", raw, "-o", out[part], "--min-hours", "0", "-j", "2")
        assert proc.returncode == 0, proc.stderr
    out["root"] = root
    out["source"] = trained["model"]
    return out


def accuracy(model_path: Path, data: Path) -> float:
    """Accuracy on every night of a prepared dataset, with test-time aggregation (as scoring does)."""
    loaded = load_model(model_path)
    ds = PreparedDataset(data)
    _, index = channel_index(ds, loaded.kinds)
    return evaluate(loaded.model, ds, ds.nights, index, torch.device("cpu"), False)["accuracy"]


def train(data: Path, output: Path, *args: str) -> dict:
    proc = run_cli("train", data, "-o", output, *STEPS, *args)
    assert proc.returncode == 0, proc.stderr
    return load_model(output).meta


def test_finetuning_beats_the_unadapted_model_and_training_from_scratch(target) -> None:
    root = target["root"]
    unadapted = accuracy(target["source"], target["test"])
    train(target["train"], root / "scratch.pt", "--seq-len", "10", "--lr", "1e-3")
    scratch = accuracy(root / "scratch.pt", target["test"])
    meta = train(target["train"], root / "tuned.pt", "--init", target["source"], "--lr", "3e-4")
    tuned = accuracy(root / "tuned.pt", target["test"])
    print(f"\naccuracy on 2 held-out nights of the shifted montage: unadapted source model {unadapted:.3f}, "
          f"trained from scratch on 2 nights {scratch:.3f}, fine-tuned on the same 2 nights {tuned:.3f}")
    assert meta["training"]["options"]["seq_len"] == 10  # the parent's L, --seq-len left out
    assert tuned > unadapted
    assert tuned > scratch


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_model(path).model.state_dict().items()}


@pytest.mark.parametrize("freeze, prefix", [("filterbank", "net.encoder.filterbank."),
                                            ("epoch-encoder", "net.encoder.")])
def test_freeze_keeps_the_frozen_weights_bit_identical(target, freeze: str, prefix: str) -> None:
    out = target["root"] / f"frozen-{freeze}.pt"
    meta = train(target["train"], out, "--init", target["source"], "--freeze", freeze, "--lr", "1e-3",
                 "--max-steps", "5")
    parent, child = _weights(target["source"]), _weights(out)
    frozen = [k for k in parent if k.startswith(prefix)]
    assert frozen and all(torch.equal(parent[k], child[k]) for k in frozen if "running" not in k)
    learned = [k for k in parent if k.startswith("net.") and not k.startswith("net.encoder.")]
    assert any(not torch.equal(parent[k], child[k]) for k in learned)
    assert meta["training"]["freeze"] == freeze


def test_the_model_file_names_its_parent_by_name_and_hash(target) -> None:
    source = target["source"]
    out = target["root"] / "named.pt"
    meta = train(target["train"], out, "--init", source, "--max-steps", "2")
    training = meta["training"]
    assert training["init"] == {"name": source.name, "sha256": file_sha256(source)}
    assert training["normalisation"] == "re-estimated"
    assert training["freeze"] == "none"
    assert training["options"]["lr"] == FINETUNE_LR  # the lower default without --lr
    assert training["options"]["init"] == training["init"]
    text = json.dumps(training)
    assert str(source.parent) not in text and str(source) not in text
    # re-estimated: the new nights' statistics, not the parent's
    parent, child = _weights(source), _weights(out)
    assert not torch.equal(parent["normalizer.mean"], child["normalizer.mean"])


def test_keep_normalisation_keeps_the_parents_statistics(target) -> None:
    out = target["root"] / "kept.pt"
    meta = train(target["train"], out, "--init", target["source"], "--keep-normalisation", "--max-steps", "2")
    parent, child = _weights(target["source"]), _weights(out)
    assert torch.equal(parent["normalizer.mean"], child["normalizer.mean"])
    assert torch.equal(parent["normalizer.std"], child["normalizer.std"])
    assert meta["training"]["normalisation"] == "kept"


def test_learning_rate_defaults(trained) -> None:
    from sleepstage_cli.cli.options import train_options

    def lr(value, init):
        return train_options("seqsleepnet", None, None, None, 32, value, 1e-3, None, 0, "cpu", False, None, None,
                             None, None, None, init=init).lr

    assert lr(None, trained["model"]) == FINETUNE_LR == 1e-5
    assert lr(None, None) == SCRATCH_LR == 1e-4
    assert lr(3e-3, trained["model"]) == 3e-3


def test_a_model_trained_from_scratch_records_no_parent(trained) -> None:
    training = load_model(trained["model"]).meta["training"]
    assert "init" not in training and "init" not in training["options"]
    assert training["options"]["lr"] == 1e-3


def test_mismatches_are_refused(target, tmp_path: Path) -> None:
    source, data, out = target["source"], target["train"], tmp_path / "m.pt"
    assert_clean_error(run_cli("train", data, "-o", out, "--init", source, "--model", "e2e-arnn"),
                       str(source), "seqsleepnet", "--model")
    assert_clean_error(run_cli("train", data, "-o", out, "--init", source, "--seq-len", "5"), str(source), "L=10")
    assert_clean_error(run_cli("train", data, "-o", out, "--init", source, "--rnn", "lstm"), str(source), "rnn")
    assert_clean_error(run_cli("train", data, "-o", out, "--init", source, "--channels", "eeg,eog"),
                       str(source), "eeg,eog,emg")
    assert_clean_error(run_cli("train", data, "-o", out, "--init", tmp_path / "none.pt"), "none.pt", "not found")
    notes = tmp_path / "notes.pt"
    notes.write_text("not a model\n")
    assert_clean_error(run_cli("train", data, "-o", out, "--init", notes), "notes.pt", "not a sleepstage model")
    assert_clean_error(run_cli("train", data, "-o", out, "--freeze", "filterbank"), "--freeze", "--init")
    assert_clean_error(run_cli("train", data, "-o", out, "--init", source, "--freeze", "decoder"), "--freeze",
                       "epoch-encoder")
    assert not out.exists()


def test_a_dataset_without_the_parents_channels_is_refused(target, trained, tmp_path: Path) -> None:
    eeg_only = tmp_path / "eeg-only"
    raw = tmp_path / "raw"
    raw.mkdir()
    for night in TRAIN_NIGHTS[:1]:
        for part in ("PSG", "Base"):
            (raw / f"{night} {part}.edf").symlink_to(trained["sim"] / f"{night} {part}.edf")
    proc = run_cli("prepare", raw, "-o", eeg_only, "--min-hours", "0", "--channels", "eeg,eog")
    assert proc.returncode == 0, proc.stderr
    assert_clean_error(run_cli("train", eeg_only, "-o", tmp_path / "m.pt", "--init", target["source"]),
                       "eeg-only", "emg")


def test_fine_tuning_a_network_without_a_filterbank_cannot_freeze_it(trained, tmp_path: Path) -> None:
    parent = tmp_path / "dsn.pt"
    proc = run_cli("train", trained["data"], "-o", parent, "--model", "deepsleepnet", "--max-steps", "1",
                   "--val-fraction", "0", "--seq-len", "3", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert_clean_error(run_cli("train", trained["data"], "-o", tmp_path / "m.pt", "--init", parent, "--model",
                               "deepsleepnet", "--freeze", "filterbank"), "deepsleepnet", "--freeze none")
    out = tmp_path / "dsn-tuned.pt"
    proc = run_cli("train", trained["data"], "-o", out, "--init", parent, "--model", "deepsleepnet", "--max-steps",
                   "1", "--val-fraction", "0", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert load_model(out).meta["training"]["normalisation"] == "none"
    assert np.isfinite(accuracy(out, trained["data"]))
