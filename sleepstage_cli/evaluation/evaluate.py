"""Predicted hypnograms against reference ones: pairing, epoch matching, metrics.

Each step is usable alone (``sleepstage crossval`` starts at :func:`evaluate_pairs`):

1. :func:`pair_nights` finds which prediction goes with which reference (files, folders, or a
   prepared dataset as the reference) by :func:`~sleepstage_cli.io.layout.pairing_key`.
2. :func:`match_epochs` lines up the epochs of one pair by onset time within a tolerance, not by
   position, so a prediction that starts later or skips epochs is still compared epoch for epoch.
3. :func:`evaluate_pairs` computes the paper's metrics pooled over every matched epoch of every
   night and per night (mean and SD over nights), and the agreement of sleep statistics;
   :func:`sleepstage_cli.report.evaluation_files.write_evaluation` writes them out.

Unscored epochs (``?`` in a prediction, movement time in a reference...) never count, but how many
there were is reported: a model that declines the hard epochs must not look better unnoticed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sleepstage_cli import __version__
from sleepstage_cli.data.dataset import MANIFEST, PreparedDataset
from sleepstage_cli.errors import InputError, SleepstageError
from sleepstage_cli.evaluation.calibration import evaluation_calibration
from sleepstage_cli.evaluation.metrics import agreement, scores, summarise_nights
from sleepstage_cli.evaluation.sleepstats import sleep_statistics, statistics_agreement
from sleepstage_cli.io.edf import read_header
from sleepstage_cli.io.hypnogram import (
    TABLE_SUFFIXES,
    Hypnogram,
    has_stage_annotations,
    read_hypnogram,
    refuse_other_recording,
)
from sleepstage_cli.io.layout import folder_files, pairing_key
from sleepstage_cli.stages import N_CLASSES, STAGES

DEFAULT_TOLERANCE = 1.0
"""Seconds two epoch onsets may differ and still be the same epoch."""

NIGHT_METRICS = ("accuracy", "kappa", "macro_f1", "mean_sensitivity", "mean_specificity")
CLASS_METRICS = ("support", "sensitivity", "specificity", "precision", "f1")
SUMMARY_KEYS = NIGHT_METRICS + tuple(f"{s}_{m}" for s in STAGES for m in CLASS_METRICS)
"""Per-night figures summarised as mean and SD (ddof = 1) over nights; per-class ones as ``<STAGE>_<metric>``."""

COUNT_KEYS = ("ref_epochs", "pred_epochs", "matched", "ref_unmatched", "ref_unmatched_scored", "pred_unmatched",
              "unscored_ref", "unscored_pred", "ref_scored_not_compared", "n")
"""Epoch counts of a night: in each hypnogram, matched by onset, in one only (reference ones: also how
many of those are scored), matched but unscored in the reference / the prediction, scored reference
epochs that count nowhere (no prediction, or an unscored one), and ``n`` compared (matched and
scored in both)."""

OUTPUT_FILES = ("metrics.json", "per_night.csv", "per_class.csv", "confusion.csv", "confusion_normalised.csv",
                "sleep_statistics.csv", "stats_agreement.csv", "report.html")
"""The files :func:`sleepstage_cli.report.evaluation_files.write_evaluation` writes (never paired as predictions)."""

_HYPNOGRAM_SUFFIXES = TABLE_SUFFIXES + (".edf", ".bdf")


# --------------------------------------------------------------------------- pairing

@dataclass(frozen=True)
class NightPair:
    """A prediction file and its reference: a hypnogram file, or night ``ref_night`` of a prepared dataset."""

    night: str
    pred: Path
    ref: Path
    ref_night: str | None = None


@dataclass
class Pairing:
    """Pairs found, and what was left without a partner (paths, or dataset night ids)."""

    pairs: list[NightPair]
    pred_only: list[str] = field(default_factory=list)
    ref_only: list[str] = field(default_factory=list)
    dataset: PreparedDataset | None = None


def _is_signal_edf(path: Path) -> bool:
    return path.suffix.lower() in (".edf", ".bdf") and not read_header(path).is_annotations_only


# Tables sleepstage itself writes that are not hypnograms (score, prepare, evaluate), and the copies of
# <night>.csv that score writes beside it in other formats.
_NOT_HYPNOGRAMS = frozenset({"summary.csv", "nights.csv", "folds.csv",
                             *(n for n in OUTPUT_FILES if n.endswith(".csv"))})
_NOT_HYPNOGRAM_ENDINGS = (".attention.csv",)
_SCORE_COPIES = (".events.tsv", ".annotations.edf")


def _candidate(p: Path) -> bool:
    name = p.name.lower()
    if p.suffix.lower() not in _HYPNOGRAM_SUFFIXES:
        return False
    if name in _NOT_HYPNOGRAMS or name.endswith(_NOT_HYPNOGRAM_ENDINGS):
        return False
    copy_of = next((p.name[: -len(e)] for e in _SCORE_COPIES if name.endswith(e)), None)
    return copy_of is None or not (p.parent / f"{copy_of}.csv").exists()


def _folder_hypnograms(folder: Path, role: str) -> dict[str, Path]:
    """Night key -> hypnogram file, for every hypnogram under ``folder`` (searched recursively).

    Left out: hidden files, evaluation outputs and datasets inside it, tables sleepstage writes that
    are not hypnograms (``summary.csv``, ``*.attention.csv``...), score's ``.events.tsv`` and
    ``.annotations.edf`` copies of a ``<night>.csv`` beside them, recordings without stage
    annotations (a PSG beside its hypnogram). Any other two files of one night are an error.
    """
    skip = [d for d in folder.rglob("*") if d.is_dir() and ((d / "metrics.json").exists() or (d / MANIFEST).exists())]
    groups: dict[str, list[Path]] = {}
    for p in folder_files(folder):  # hidden files (macOS's ._* companions) are left out, as everywhere
        if _candidate(p) and not any(d in p.parents for d in skip):
            groups.setdefault(pairing_key(p.name), []).append(p)
    out: dict[str, Path] = {}
    for key, files in groups.items():
        if len(files) > 1:
            files = [f for f in files if not _is_signal_edf(f)] or files
        if len(files) > 1:
            raise InputError(f"{len(files)} {role} files for night {key!r}: {', '.join(str(f) for f in files)}; "
                             "keep one", folder)
        f = files[0]
        if _is_signal_edf(f) and not has_stage_annotations(f):
            continue
        out[key] = f
    return out


def _side(path: Path, role: str) -> dict[str, Path]:
    if not path.exists():
        raise InputError(f"{role} not found", path)
    if path.is_dir():
        found = _folder_hypnograms(path, role)
        if not found:
            raise InputError(f"no {role} hypnogram in this folder (looked for {', '.join(_HYPNOGRAM_SUFFIXES)} files)",
                             path)
        return found
    return {pairing_key(path.name): path}


def _names(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def pair_nights(pred: str | Path, ref: str | Path) -> Pairing:
    """Pair predictions with references by night key.

    ``pred`` and ``ref`` are each a hypnogram file or a folder of them (searched recursively, EDF
    recordings without stage annotations ignored); ``ref`` may also be a prepared dataset folder,
    whose nights are then the references. Two files are paired whatever their names. When one side
    is a single file, the other side's other nights are not reported as unpaired.
    """
    pred, ref = Path(pred), Path(ref)
    if pred.is_dir() and (pred / MANIFEST).exists():
        raise InputError("is a prepared dataset: it can be the reference (REF), not the predictions", pred)
    dataset = None
    if ref.is_dir() and (ref / MANIFEST).exists():
        dataset = PreparedDataset(ref)
        if not dataset.nights:
            raise InputError("prepared dataset holds no night", ref)
        refs: dict[str, tuple[str, Path, str | None]] = {}
        for n in dataset.nights:
            key = pairing_key(n.id)
            if key in refs:
                raise InputError(f"nights {refs[key][0]!r} and {n.id!r} of the prepared dataset have the same name "
                                 "once case and suffixes are ignored; predictions cannot be told apart", ref)
            refs[key] = (n.id, ref, n.id)
    else:
        refs = {k: (pairing_key(p.name, fold_case=False), p, None) for k, p in _side(ref, "reference").items()}
    preds = _side(pred, "prediction")

    if pred.is_file() and ref.is_file():
        ((_, p),), ((night, r, _),) = preds.items(), refs.values()
        return Pairing([NightPair(night, p, r)])
    common = sorted(set(preds) & set(refs))
    if not common:
        raise InputError(f"no prediction in {pred} has a reference in {ref}: predictions are for night(s) "
                         f"{_names(preds)}; references for {_names(refs)} (names are matched without "
                         "extensions and suffixes such as -PSG, -Hypnogram, Base; Sleep-EDF by their first "
                         "6 characters)")
    pairs = [NightPair(refs[k][0], preds[k], refs[k][1], refs[k][2]) for k in common]
    pred_only = [str(preds[k]) for k in sorted(set(preds) - set(refs))] if ref.is_dir() else []
    ref_only = [refs[k][2] or str(refs[k][1]) for k in sorted(set(refs) - set(preds))] if pred.is_dir() else []
    return Pairing(pairs, pred_only, ref_only, dataset)


def dataset_hypnogram(dataset: PreparedDataset, night_id: str) -> Hypnogram:
    """The reference hypnogram of one night of a prepared dataset (its labels on its epoch grid).

    Its ``source`` is the hypnogram file the night was prepared from (what a user can pass to
    ``score --epochs-from``), or the night file when the manifest does not say.
    """
    night = dataset.night(night_id)
    rec = dataset.open(night)
    source = Path(night.meta["hypnogram"]) if night.meta.get("hypnogram") else dataset.root / night.file
    return Hypnogram(onsets=np.array(rec["onset"], dtype=np.float64), stages=np.array(rec["label"], dtype=np.int8),
                     epoch_length=float(night.meta.get("epoch_length", 30.0)), source=source)


def load_pairs(pairing: Pairing, epoch_length: float | None = None,
               ignore_start: bool = False) -> Iterator[tuple[str, Hypnogram, Hypnogram]]:
    """Read each pair: ``(night, predicted, reference)``; ``epoch_length`` for tables without durations.

    A pair whose files start more than a day apart (when both say when they start: an EDF header, or
    the ``clock_time`` column of ``score``'s CSV) is refused unless ``ignore_start``.
    """
    for pair in pairing.pairs:
        predicted = read_hypnogram(pair.pred, epoch_length)
        if pair.ref_night is not None and pairing.dataset is not None:
            reference = dataset_hypnogram(pairing.dataset, pair.ref_night)
        else:
            reference = read_hypnogram(pair.ref, epoch_length)
        if not ignore_start:
            refuse_other_recording(pair.pred, predicted.start, pair.ref, reference.start)
        yield pair.night, predicted, reference


# --------------------------------------------------------------------------- epoch matching

@dataclass(frozen=True)
class EpochMatch:
    """Indexes of the epochs found in both hypnograms, in time order, and the sizes of each."""

    ref_index: np.ndarray
    pred_index: np.ndarray
    n_ref: int
    n_pred: int


def _label(h: Hypnogram, role: str) -> str:
    return f"{role} {h.source}" if h.source is not None else role


def _span(h: Hypnogram) -> str:
    return f"{h.onsets[0]:g}-{h.onsets[-1] + h.epoch_length:g} s"


def match_epochs(pred: Hypnogram, ref: Hypnogram, tolerance: float = DEFAULT_TOLERANCE) -> EpochMatch:
    """Pair epochs whose onsets differ by at most ``tolerance`` seconds.

    Raises InputError when the epoch lengths differ, when ``tolerance`` is not below half an epoch (a
    prediction could then match two reference epochs), or when no onset matches: with the two
    hypnograms overlapping in time the message gives the offset between their epoch grids.
    """
    ep = ref.epoch_length
    if abs(pred.epoch_length - ep) > 1e-6:
        raise InputError(f"{_label(pred, 'prediction')} has {pred.epoch_length:g}-s epochs but "
                         f"{_label(ref, 'reference')} has {ep:g}-s epochs; compare hypnograms scored with the "
                         "same epoch length")
    if not 0 <= tolerance < ep / 2:
        raise InputError(f"--tolerance must be at least 0 s and below half an epoch ({ep / 2:g} s), got {tolerance:g}")
    p, r = np.asarray(pred.onsets, np.float64), np.asarray(ref.onsets, np.float64)
    for h, onsets, role in ((pred, p, "prediction"), (ref, r, "reference")):
        if onsets.size > 1 and not np.all(np.diff(onsets) > 0):
            raise InputError(f"{_label(h, role)}: epoch onsets are not strictly increasing")
    if p.size == 0 or r.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return EpochMatch(empty, empty, int(r.size), int(p.size))
    nearest, dist = _nearest(p, r)
    ok = dist <= tolerance + 1e-9
    if not ok.any():
        _no_match(pred, ref, tolerance)
    ri, pi, d = np.flatnonzero(ok), nearest[ok], dist[ok]
    if np.unique(pi).size < pi.size:
        # Only onsets closer than an epoch (hand-made hypnograms) get here: the closest pair wins.
        order = np.lexsort((d, pi))
        first = np.r_[True, pi[order][1:] != pi[order][:-1]]
        keep = np.sort(order[first])
        ri, pi = ri[keep], pi[keep]
    return EpochMatch(ri, pi, int(r.size), int(p.size))


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each value of ``b``, the index of the nearest value of sorted ``a`` and their distance."""
    j = np.searchsorted(a, b)
    lo, hi = np.clip(j - 1, 0, a.size - 1), np.clip(j, 0, a.size - 1)
    idx = np.where(np.abs(b - a[hi]) < np.abs(b - a[lo]), hi, lo)
    return idx, np.abs(b - a[idx])


def _no_match(pred: Hypnogram, ref: Hypnogram, tolerance: float) -> None:
    ep = ref.epoch_length
    p, r = pred.onsets, ref.onsets
    if not (p[0] < r[-1] + ep and r[0] < p[-1] + ep):
        raise InputError(f"{_label(pred, 'prediction')} ({_span(pred)}) and {_label(ref, 'reference')} "
                         f"({_span(ref)}) do not overlap in time; are they the same night?")
    inside = p[(p >= r[0] - ep / 2) & (p <= r[-1] + ep / 2)]
    inside = inside if inside.size else p
    idx, _ = _nearest(r, inside)
    offset = float(np.median(inside - r[idx]))
    hint = f", or allow it with --tolerance {math.ceil(abs(offset)):g}" if abs(offset) < ep / 4 else ""
    raise InputError(f"no epoch of {_label(pred, 'prediction')} starts within {tolerance:g} s of an epoch of "
                     f"{_label(ref, 'reference')}, although they overlap in time: the prediction's epoch grid is "
                     f"offset by {offset:+.3g} s from the reference's. Score on the reference's epoch grid "
                     f"(sleepstage score --epochs-from {ref.source or 'REF'}; for several nights, --epochs-from takes "
                     f"their hypnograms' folder){hint}")


# --------------------------------------------------------------------------- metrics

@dataclass
class NightResult:
    """Agreement of one night: epoch counts, :func:`~.metrics.agreement` and sleep statistics."""

    night: str
    pred_source: str | None
    ref_source: str | None
    epoch_length: float
    counts: dict[str, int]
    metrics: dict
    pred_stats: dict[str, float]
    ref_stats: dict[str, float]
    onsets: np.ndarray
    """Reference onsets (s) of the matched epochs."""
    ref_codes: np.ndarray
    pred_codes: np.ndarray
    notes: list[str] = field(default_factory=list)
    pred_onsets: np.ndarray | None = None
    """Prediction onsets (s) of the matched epochs (where their probabilities are looked up)."""

    def row(self) -> dict:
        """Flat per-night figures: ``night``, counts, :data:`NIGHT_METRICS`, ``<STAGE>_<metric>``."""
        out: dict = {"night": self.night, **self.counts}
        out.update({k: self.metrics[k] for k in NIGHT_METRICS})
        if "ece" in self.metrics:  # the prediction carries probabilities (evaluation/calibration.py)
            out["ece"] = self.metrics["ece"]
        for s in STAGES:
            out.update({f"{s}_{m}": self.metrics["per_class"][s][m] for m in CLASS_METRICS})
        return out


def _stat_codes(pred: Hypnogram, ref: Hypnogram, m: EpochMatch) -> tuple[np.ndarray, np.ndarray]:
    """Both scorings on the reference grid from the first to the last matched epoch.

    Reference epochs inside that span without a prediction are unscored in both, so the two sets of
    statistics cover the same epochs and time keeps its place (SOL, latencies).
    """
    if m.ref_index.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(m.ref_index[0]), int(m.ref_index[-1]) + 1
    r = np.full(hi - lo, -1, dtype=np.int64)
    p = np.full(hi - lo, -1, dtype=np.int64)
    r[m.ref_index - lo] = ref.stages[m.ref_index]
    p[m.ref_index - lo] = pred.stages[m.pred_index]
    return p, r


def evaluate_night(night: str, pred: Hypnogram, ref: Hypnogram, tolerance: float = DEFAULT_TOLERANCE) -> NightResult:
    """Match the epochs of one pair and compute its figures."""
    m = match_epochs(pred, ref, tolerance)
    r = np.asarray(ref.stages, np.int64)[m.ref_index]
    p = np.asarray(pred.stages, np.int64)[m.pred_index]
    metrics = agreement(r, p)
    ref_unmatched = np.ones(m.n_ref, bool)
    ref_unmatched[m.ref_index] = False
    counts = {"ref_epochs": m.n_ref, "pred_epochs": m.n_pred, "matched": int(m.ref_index.size),
              "ref_unmatched": int(ref_unmatched.sum()),
              "ref_unmatched_scored": int((np.asarray(ref.stages)[ref_unmatched] >= 0).sum()),
              "pred_unmatched": m.n_pred - int(m.pred_index.size),
              "unscored_ref": int((r < 0).sum()), "unscored_pred": int((p < 0).sum()), "n": metrics["n"]}
    counts["ref_scored_not_compared"] = counts["ref_unmatched_scored"] + int(((r >= 0) & (p < 0)).sum())
    counts = {k: counts[k] for k in COUNT_KEYS}
    notes = [f"reference: {n}" for n in ref.notes] + [f"prediction: {n}" for n in pred.notes]
    if counts["ref_unmatched"]:
        notes.append(f"{counts['ref_unmatched']} reference epochs have no prediction "
                     f"({counts['ref_unmatched_scored']} of them scored)")
    if counts["pred_unmatched"]:
        notes.append(f"{counts['pred_unmatched']} predicted epochs have no reference epoch")
    if counts["n"] == 0:
        notes.append("no epoch scored in both: this night adds nothing to the metrics")
    ps, rs = _stat_codes(pred, ref, m)
    return NightResult(night=night, pred_source=str(pred.source) if pred.source else None,
                       ref_source=str(ref.source) if ref.source else None, epoch_length=float(ref.epoch_length),
                       counts=counts, metrics=metrics, pred_stats=sleep_statistics(ps, ref.epoch_length),
                       ref_stats=sleep_statistics(rs, ref.epoch_length), onsets=np.asarray(ref.onsets)[m.ref_index],
                       ref_codes=r.astype(np.int8), pred_codes=p.astype(np.int8), notes=notes,
                       pred_onsets=np.asarray(pred.onsets, np.float64)[m.pred_index])


@dataclass
class Evaluation:
    """Everything ``evaluate`` reports. ``meta`` is free provenance the caller adds (paths, model...)."""

    nights: list[NightResult]
    pooled: dict
    """:func:`~sleepstage_cli.evaluation.metrics.scores` of the summed confusion matrices, with ``confusion``
    (counts, reference rows) and ``confusion_normalised`` (each row divided by its total; NaN rows
    for stages absent from the reference)."""
    summary: dict
    """:data:`SUMMARY_KEYS` -> ``{"mean", "sd", "n"}`` over the nights where the figure is defined."""
    stats_agreement: dict
    tolerance: float
    unpaired_predictions: list[str] = field(default_factory=list)
    unpaired_references: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    title: str = "Evaluation against reference hypnograms"

    def to_dict(self) -> dict:
        """The content of ``metrics.json`` (NaN still NaN; :func:`jsonable` turns it into null)."""
        return {
            "sleepstage_version": __version__, "title": self.title, **self.meta, "tolerance_s": self.tolerance,
            "classes": list(STAGES), "n_nights": len(self.nights), "pooled": self.pooled, "summary": self.summary,
            "per_night": [{"night": n.night, "prediction": n.pred_source, "reference": n.ref_source,
                           "epoch_length": n.epoch_length, "counts": n.counts, "metrics": n.metrics,
                           "sleep_statistics": {"prediction": n.pred_stats, "reference": n.ref_stats},
                           "notes": n.notes} for n in self.nights],
            "stats_agreement": self.stats_agreement,
            "unpaired": {"predictions": self.unpaired_predictions, "references": self.unpaired_references},
            "notes": self.notes,
        }

    def report_dict(self) -> dict:
        """The dict :func:`sleepstage_cli.report.html.evaluation_report_html` takes."""
        return {"title": self.title, "pooled": self.pooled, "per_night": [n.row() for n in self.nights],
                "summary": self.summary, "stats_agreement": self.stats_agreement, "notes": self.notes,
                "hypnograms": [{"night": n.night, "onsets": n.onsets, "pred": n.pred_codes, "ref": n.ref_codes,
                                "epoch_length": n.epoch_length} for n in self.nights]}


def pooled_scores(nights: Iterable[NightResult]) -> dict:
    """The paper's figures over all matched epochs of all nights (the summed confusion matrices)."""
    cm = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    for n in nights:
        cm += np.asarray(n.metrics["confusion"], dtype=np.int64)
    out = scores(cm)
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, cm / np.maximum(totals, 1), np.nan)
    out["confusion"] = cm.tolist()
    out["confusion_normalised"] = norm.tolist()
    return out


def evaluate_pairs(pairs: Iterable[tuple[str, Hypnogram, Hypnogram]],
                   tolerance: float = DEFAULT_TOLERANCE) -> Evaluation:
    """Evaluate ``(night, predicted, reference)`` pairs: pooled and per-night metrics, sleep statistics."""
    nights = [evaluate_night(night, p, r, tolerance) for night, p, r in pairs]
    if not nights:
        raise SleepstageError("no night to evaluate")
    ids = [n.night for n in nights]
    if len(set(ids)) != len(ids):
        raise SleepstageError(f"night {next(i for i in ids if ids.count(i) > 1)!r} is given twice")
    pooled = pooled_scores(nights)
    notes = [f"{n.night}: {note}" for n in nights for note in n.notes]
    matched = sum(n.counts["matched"] for n in nights)
    u_ref, u_pred = (sum(n.counts[k] for n in nights) for k in ("unscored_ref", "unscored_pred"))
    if matched > pooled["n"]:
        notes.append(f"{matched - pooled['n']} of {matched} matched epochs do not count: {u_ref} unscored in the "
                     f"reference, {u_pred} unscored in the prediction ('?')")
    calibration, calibration_notes = evaluation_calibration(nights)  # predictions with p_W..p_REM: ece
    notes += calibration_notes
    if calibration is not None:
        pooled["ece"], pooled["calibration"] = calibration["ece"], calibration
    keys = SUMMARY_KEYS + (("ece",) if calibration is not None else ())
    return Evaluation(nights=nights, pooled=pooled, summary=summarise_nights([n.row() for n in nights], keys),
                      stats_agreement=statistics_agreement([n.pred_stats for n in nights],
                                                           [n.ref_stats for n in nights]),
                      tolerance=float(tolerance), notes=notes)


def _under(path: str | None, given: Path) -> str | None:
    """A prediction or reference file as the results name it: relative to the folder given, else its file name."""
    if path is None:
        return None
    p = Path(path)
    if given.is_dir():
        for base in (given, Path(os.path.abspath(given))):
            if p.is_relative_to(base):
                return p.relative_to(base).as_posix()
    return p.name


def name_sources(ev: Evaluation, pred: str | Path, ref: str | Path) -> None:
    """Name each night's prediction and reference files relative to the ``pred`` and ``ref`` folders they were
    found in (else by file name): the results never say where files lie (paths carry user and patient names)."""
    for n in ev.nights:
        n.pred_source, n.ref_source = _under(n.pred_source, Path(pred)), _under(n.ref_source, Path(ref))


def evaluate_paths(pred: str | Path, ref: str | Path, tolerance: float = DEFAULT_TOLERANCE,
                   epoch_length: float | None = None,
                   on_night: Callable[[NightPair], None] | None = None, ignore_start: bool = False) -> Evaluation:
    """Pair, read and evaluate (what ``sleepstage evaluate PRED REF`` does before writing).

    ``on_night`` is called after each pair is read (progress display); ``ignore_start`` pairs files that
    start more than a day apart (see :func:`load_pairs`).
    """
    pairing = pair_nights(pred, ref)

    def loaded() -> Iterator[tuple[str, Hypnogram, Hypnogram]]:
        for pair, item in zip(pairing.pairs, load_pairs(pairing, epoch_length, ignore_start)):
            yield item
            if on_night:
                on_night(pair)

    ev = evaluate_pairs(loaded(), tolerance)
    name_sources(ev, pred, ref)
    ev.unpaired_predictions = [_under(p, Path(pred)) for p in pairing.pred_only]
    ev.unpaired_references = [_under(r, Path(ref)) for r in pairing.ref_only]
    if pairing.pred_only:
        ev.notes.insert(0, f"{len(pairing.pred_only)} prediction(s) without a reference, not evaluated: "
                           f"{_names(Path(p).name for p in pairing.pred_only)}")
    if pairing.ref_only:
        ev.notes.insert(0, f"{len(pairing.ref_only)} reference night(s) without a prediction, not evaluated: "
                           f"{_names(Path(r).name for r in pairing.ref_only)}")
    ev.meta = {"prediction": Path(os.path.abspath(pred)).name,
               "reference": pairing.dataset.identity() if pairing.dataset else Path(os.path.abspath(ref)).name,
               "reference_is_dataset": pairing.dataset is not None}
    ev.title = f"Evaluation of {Path(pred).name} against {Path(ref).name}"
    return ev


# --------------------------------------------------------------------------- JSON

def jsonable(obj: object) -> object:
    """``obj`` with NaN/inf as None and numpy/Path values as plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
