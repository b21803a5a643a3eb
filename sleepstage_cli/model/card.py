"""Model cards: what a model is, what it was trained and validated on, and what it is for, in JSON and Markdown.

``train`` writes ``NAME.card.json`` and ``NAME.card.md`` beside ``NAME.pt``; ``crossval`` writes
``RUN/card.json`` and ``RUN/card.md`` with the cross-validated metrics (pooled, and mean ± SD over the
folds); ``sleepstage models install FILE --crossval RUN`` joins the two in the installed model's card.
A card is built from the model file's metadata alone (never a path of the machine that trained it) and
names the model file by its sha256 (``content_sha256``). ``parent`` is the model a fine-tuned model
started from (the metadata's ``training.init``: ``{"name", "sha256"}``), else null.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from sleepstage_cli import __version__
from sleepstage_cli.digests import SHORT, file_sha256
from sleepstage_cli.fsutil import atomic_write_json, atomic_write_text

CARD_FORMAT = "sleepstage-model-card"
CARD_VERSION = 1
METRICS = ("accuracy", "macro_f1", "kappa")
_METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "kappa": "Cohen's kappa"}

# The training data's licence, known per dataset layout (prepare --layout); anything else must be filled in.
LICENCES = {
    "sleep-edf": "Open Data Commons Attribution License v1.0 (ODC-By 1.0), Sleep-EDF Expanded on PhysioNet: "
                 "cite Kemp et al. 2000 and Goldberger et al. 2000",
    "mass": "restricted: the Montreal Archive of Sleep Studies is shared under a data use agreement; a model "
            "trained on it may be shared only as that agreement allows",
}
LICENCE_UNKNOWN = "not stated — fill in the licence of the training data before sharing this model"

INTENDED_USE = ("Automatic sleep staging (W, N1, N2, N3, REM; AASM 30-s epochs) of overnight adult "
                "polysomnography recorded with the channels this card lists, as a first pass that a qualified scorer "
                "reviews. Not a medical device; not for diagnosis without review.")


def card_paths(model_path: str | Path) -> tuple[Path, Path]:
    """``NAME.card.json`` and ``NAME.card.md`` beside the model file ``NAME.pt``."""
    path = Path(model_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(stem + ".card.json"), path.with_name(stem + ".card.md")


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def licence_of(layout: object) -> dict:
    """The training data's licence as far as the dataset layout tells it."""
    if isinstance(layout, str) and layout in LICENCES:
        return {"training_data": LICENCES[layout], "basis": f"dataset layout {layout!r}"}
    return {"training_data": LICENCE_UNKNOWN, "basis": "unknown dataset layout"}


def _limits(kinds: list[str], fit: object, cond: dict) -> list[str]:
    """The model's limits: what it needs, what it was not shown, what checks it at scoring time."""
    scale = "standardised per night" if cond.get("standardise", True) else "in microvolts (not standardised)"
    out = [f"Needs the channel kinds it was trained with: {', '.join(k.upper() for k in kinds) or '?'} "
           "(other derivations can be named with score --eeg/--eog/--emg, at the user's risk).",
           f"Signals are filtered and resampled as it was trained ({cond.get('filters', 'sleepstage')} filters, "
           f"{cond.get('rate', 100.0):g} Hz, {scale}).",
           "Trained on adult polysomnography: children, other species and daytime naps are outside what it saw.",
           "Its accuracy on another lab's recordings can be lower than the figures in this card."]
    if fit:
        out.append("score compares every night with the training nights (channels, amplitudes, spectra) and "
                   "warns when a night does not fit; --strict refuses such nights.")
    else:
        out.append("This model file has no fit record: score cannot check whether a night fits it.")
    return out


def _data_section(training: dict) -> dict:
    dataset = training.get("dataset")
    datasets = [dataset] if isinstance(dataset, dict) else ([{"name": str(dataset), "sha256": None}]
                                                             if dataset else [])
    return {"datasets": datasets, "layout": training.get("layout"),
            "subjects": {"train": len(training.get("train_subjects") or []),
                         "validation": len(training.get("val_subjects") or [])},
            "nights": {"train": len(training.get("train_nights") or []),
                       "validation": len(training.get("val_nights") or [])},
            "train_epochs_per_stage": training.get("train_epochs_per_stage")}


def _calibration_section(meta: dict) -> dict:
    cal = meta.get("calibration") or {}
    return {"temperature": _num(meta.get("temperature")) or 1.0, "ece_before": _num(cal.get("ece_before")),
            "ece_after": _num(cal.get("ece_after")), "nights": cal.get("nights"), "note": cal.get("note")}


def build_card(meta: dict, content_sha256: str | None, name: str | None = None,
               crossval: dict | None = None) -> dict:
    """The card (a JSON-ready dict) of a model from its metadata, its file's sha256 and optionally the
    ``cross_validation`` section of a crossval run's card."""
    training = meta.get("training") or {}
    arch = meta.get("architecture") or {}
    spec = meta.get("channel_spec") or {}
    cond = meta.get("conditioning") or {}
    validation = meta.get("validation") or None
    kinds = list(spec.get("kinds") or [])
    init = training.get("init")
    return {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "kind": "model", "name": name,
        "content_sha256": content_sha256, "sleepstage_version": meta.get("sleepstage_version"),
        "card_written_by": f"sleepstage {__version__}", "created": meta.get("created"),
        "parent": init if isinstance(init, dict) else None,
        "data": _data_section(training),
        "channels": {"kinds": kinds, "preset": spec.get("preset"),
                     "derivations": {k: list((spec.get("candidates") or {}).get(k) or []) for k in kinds}},
        "conditioning": cond,
        "network": {"name": arch.get("net"), "seq_len": arch.get("seq_len"), "hyperparameters": arch.get("hparams"),
                    "training_options": training.get("options"), "selection": training.get("selection"),
                    "steps": training.get("steps"), "best_step": training.get("best_step")},
        "validation": ({**{k: _num(validation.get(k)) for k in METRICS},
                        "nights": len(training.get("val_nights") or [])} if isinstance(validation, dict) else None),
        "cross_validation": crossval,
        "calibration": _calibration_section(meta),
        "intended_use": INTENDED_USE,
        "limits": _limits(kinds, meta.get("fit"), cond),
        "licence": licence_of(training.get("layout")),
    }


def card_of_model_file(path: str | Path, name: str | None = None, crossval: dict | None = None) -> dict:
    """The card of a model file (its metadata read without the weights)."""
    from sleepstage_cli.model.modelfile import load_model
    from sleepstage_cli.model.modelmeta import peek_metadata

    path = Path(path)
    meta = peek_metadata(path)
    if meta is None:
        meta = load_model(path).meta  # says in one line what is wrong with the file
    return build_card(meta, file_sha256(path), name or path.stem, crossval)


def spread(values: list[float | None]) -> dict:
    """Mean, SD (sample; 0 with one value), min and max of the finite values, and how many there were."""
    vals = [v for v in (_num(x) for x in values) if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "sd": sd, "min": min(vals), "max": max(vals), "n": len(vals)}


def crossval_section(folds: list[dict], pooled: dict, split: object, run_digest: str | None) -> dict:
    """A crossval run's metrics: pooled over every test night, and per fold with their spread."""
    return {"folds": len(folds), "split": split, "run_digest": run_digest,
            "pooled": {k: _num(pooled.get(k)) for k in METRICS},
            "over_folds": {k: spread([f.get(k) for f in folds]) for k in METRICS},
            "per_fold": [{"fold": f.get("fold"), **{k: _num(f.get(k)) for k in METRICS},
                          "test_nights": f.get("test_nights")} for f in folds]}


def build_crossval_card(identity: dict, folds: list[dict], pooled: dict, split: object, run_name: str,
                        run_digest: str | None) -> dict:
    """The card of a crossval run (``identity`` is its plan's: dataset, setup, nights, options)."""
    setup = identity.get("dataset_setup") or {}
    options = identity.get("options") or {}
    subjects = sorted({s for f in identity.get("folds") or [] for key in ("test", "val", "train")
                       for s in (f.get(key) or [])})
    meta = {"sleepstage_version": __version__, "channel_spec": _used_channels(setup.get("channel_spec"), options),
            "conditioning": setup.get("conditioning") or {},
            "architecture": {"net": options.get("net"), "seq_len": options.get("seq_len"),
                             "hparams": options.get("hparams")},
            "training": {"dataset": identity.get("dataset"), "layout": (setup.get("options") or {}).get("layout"),
                         "train_subjects": subjects, "train_nights": identity.get("nights") or [],
                         "options": options}, "fit": True}
    card = build_card(meta, None, run_name, crossval_section(folds, pooled, split, run_digest))
    card["kind"] = "crossval"
    card["calibration"] = {"temperature_per_fold": spread([f.get("temperature") for f in folds]),
                           "test_ece_per_fold": spread([f.get("ece") for f in folds])}
    return card


def _used_channels(spec: object, options: dict) -> dict:
    spec = spec if isinstance(spec, dict) else {}
    kinds = options.get("channels") or spec.get("kinds") or []
    return {"kinds": list(kinds), "preset": spec.get("preset"),
            "candidates": {k: (spec.get("candidates") or {}).get(k, []) for k in kinds}}


def write_card(card: dict, json_path: str | Path, md_path: str | Path) -> None:
    """Write a card's JSON and Markdown, each atomically."""
    atomic_write_json(json_path, card)
    atomic_write_text(md_path, card_markdown(card))


def write_model_card(model_path: str | Path, crossval: dict | None = None) -> tuple[Path, Path]:
    """Write the card of a model file beside it (``NAME.card.json``, ``NAME.card.md``)."""
    json_path, md_path = card_paths(model_path)
    write_card(card_of_model_file(model_path, crossval=crossval), json_path, md_path)
    return json_path, md_path


def _pct(value: object) -> str:
    v = _num(value)
    return "—" if v is None else f"{100 * v:.1f} %"


def _fixed(value: object, digits: int = 3) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.{digits}f}"


def _metric(key: str, value: object) -> str:
    return _fixed(value) if key == "kappa" else _pct(value)


def _metric_spread(key: str, s: dict) -> str:
    if s.get("mean") is None:
        return "—"
    if key == "kappa":
        return f"{s['mean']:.3f} ± {s['sd']:.3f} (range {s['min']:.3f}–{s['max']:.3f})"
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f} % (range {100 * s['min']:.1f}–{100 * s['max']:.1f} %)"


def dataset_text(d: dict) -> str:
    sha = d.get("sha256")
    return f"{d.get('name', '?')} (sha256 {sha[:SHORT]})" if isinstance(sha, str) else str(d.get("name", "?"))


def _md_data(card: dict) -> list[str]:
    data = card.get("data") or {}
    subj, nights = data.get("subjects") or {}, data.get("nights") or {}
    lines = ["## Data", ""]
    lines += [f"- Dataset: {dataset_text(d)}" for d in data.get("datasets") or []] or ["- Dataset: ?"]
    lines += [f"- Layout: {data.get('layout') or '?'}",
              f"- Subjects: {subj.get('train', 0)} for training, {subj.get('validation', 0)} for validation",
              f"- Nights: {nights.get('train', 0)} for training, {nights.get('validation', 0)} for validation"]
    per_stage = data.get("train_epochs_per_stage")
    if isinstance(per_stage, dict):
        lines.append("- Training epochs per stage: " + ", ".join(f"{k} {v}" for k, v in per_stage.items()))
    ch = card.get("channels") or {}
    lines += ["", "## Channels and derivations", ""]
    for kind in ch.get("kinds") or []:
        names = (ch.get("derivations") or {}).get(kind) or ["?"]
        lines.append(f"- {kind.upper()}: {', '.join(f'`{n}`' for n in names)}")
    if ch.get("preset"):
        lines.append(f"- Preset: {ch['preset']}")
    cond = card.get("conditioning") or {}
    band = cond.get("band") or ("?", "?")
    lines += ["", "## Conditioning", "",
              f"- Filters: {cond.get('filters', 'sleepstage')} (band {band[0]}–{band[1]} Hz, EMG high-pass "
              f"{cond.get('emg_highpass', '?')} Hz, notches {', '.join(map(str, cond.get('notches') or []))} Hz)",
              f"- Resampled to {cond.get('rate', 100.0)} Hz; "
              f"{'standardised per night' if cond.get('standardise', True) else 'not standardised (microvolts)'}"]
    return lines


def _md_network(card: dict) -> list[str]:
    net = card.get("network") or {}
    lines = ["", "## Network and options", "", f"- Network: {net.get('name') or '?'}, sequences of "
             f"{net.get('seq_len') or '?'} epochs"]
    hp = net.get("hyperparameters") or {}
    if hp:
        lines.append("- Hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
    opts = net.get("training_options") or {}
    shown = {k: v for k, v in opts.items() if k in ("epochs", "batch_size", "lr", "l2", "seed", "select", "preset",
                                                   "max_steps", "freeze") and v is not None}
    if shown:
        lines.append("- Training options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if net.get("selection"):
        lines.append(f"- Weights selected by: {net['selection']}")
    parent = card.get("parent")
    if isinstance(parent, dict):
        lines.append(f"- Fine-tuned from: {dataset_text(parent)}")
    return lines


def _md_metrics(card: dict) -> list[str]:
    lines = ["", "## Metrics", ""]
    val = card.get("validation")
    if isinstance(val, dict):
        n_val = val.get("nights", 0)
        lines.append(f"- Validation ({n_val} held-out night{'s' * (n_val != 1)}): "
                     + ", ".join(f"{_METRIC_NAMES[k]} {_metric(k, val.get(k))}" for k in METRICS))
    cv = card.get("cross_validation")
    if isinstance(cv, dict):
        pooled = cv.get("pooled") or {}
        lines.append(f"- Cross-validation, {cv.get('folds', '?')} folds, pooled over every test night: "
                     + ", ".join(f"{_METRIC_NAMES[k]} {_metric(k, pooled.get(k))}" for k in METRICS))
        for k in METRICS:
            lines.append(f"- {_METRIC_NAMES[k]}, mean ± SD over folds: "
                         f"{_metric_spread(k, (cv.get('over_folds') or {}).get(k) or {})}")
    if len(lines) == 3:
        lines.append("- None recorded (no validation subjects).")
    cal = card.get("calibration") or {}
    lines += ["", "## Calibration", ""]
    if "temperature" in cal:
        lines.append(f"- Temperature T = {_fixed(cal.get('temperature'))}; expected calibration error on the "
                     f"validation nights {_pct(cal.get('ece_before'))} before, {_pct(cal.get('ece_after'))} after")
    for key, what in (("temperature_per_fold", "Temperature per fold"), ("test_ece_per_fold", "Test ECE per fold")):
        s = cal.get(key)
        if isinstance(s, dict) and s.get("mean") is not None:
            lines.append(f"- {what}: mean {s['mean']:.3f} ± {s['sd']:.3f}")
    return lines


def card_markdown(card: dict) -> str:
    """The card as Markdown (what ``sleepstage models show`` renders)."""
    what = "Cross-validation run" if card.get("kind") == "crossval" else "Model"
    lines = [f"# {what} card: {card.get('name') or '?'}", ""]
    lines += _md_data(card) + _md_network(card) + _md_metrics(card)
    lines += ["", "## Intended use", "", card.get("intended_use") or INTENDED_USE, "", "## Limits", ""]
    lines += [f"- {limit}" for limit in card.get("limits") or []]
    lic = card.get("licence") or {}
    lines += ["", "## Licence of the training data", "",
              f"{lic.get('training_data', LICENCE_UNKNOWN)} (from the {lic.get('basis', '?')})", "",
              "## Provenance", "",
              f"- Model written by sleepstage {card.get('sleepstage_version') or '?'} on {card.get('created') or '?'}",
              f"- Card written by {card.get('card_written_by') or '?'}"]
    if card.get("content_sha256"):
        lines.append(f"- Content hash (sha256 of the model file): `{card['content_sha256']}`")
    if card.get("kind") == "crossval" and (card.get("cross_validation") or {}).get("run_digest"):
        lines.append(f"- Run digest: `{card['cross_validation']['run_digest']}`")
    return "\n".join(lines) + "\n"


def report_rows(meta: dict, content_sha256: str | None) -> dict[str, str]:
    """The card in three lines for the staging report: licence, intended use, content hash."""
    lic = licence_of((meta.get("training") or {}).get("layout"))["training_data"]
    rows: dict[str, Any] = {"Training data licence": lic,
                            "Intended use": "adult overnight PSG; a first pass for a scorer to review"}
    if content_sha256:
        rows["Model sha256"] = content_sha256[:SHORT]
    return rows


__all__ = ["CARD_FORMAT", "INTENDED_USE", "LICENCES", "build_card", "build_crossval_card", "card_markdown",
           "card_of_model_file", "card_paths", "crossval_section", "licence_of", "report_rows", "spread",
           "write_card", "write_model_card"]
