"""The files of an evaluation (``sleepstage evaluate``, ``crossval``): metrics.json, CSV tables, report.html.

:mod:`sleepstage_cli.evaluation.evaluate` computes an :class:`~sleepstage_cli.evaluation.evaluate.Evaluation`;
:func:`write_evaluation` renders every one of :data:`~sleepstage_cli.evaluation.evaluate.OUTPUT_FILES` and
writes them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sleepstage_cli.errors import OutputExistsError, SleepstageError
from sleepstage_cli.evaluation.evaluate import (
    CLASS_METRICS,
    COUNT_KEYS,
    OUTPUT_FILES,
    SUMMARY_KEYS,
    Evaluation,
    jsonable,
)
from sleepstage_cli.evaluation.sleepstats import FIELD_BY_NAME, STAT_FIELDS
from sleepstage_cli.fsutil import atomic_write_text
from sleepstage_cli.report.html import evaluation_report_html
from sleepstage_cli.stages import STAGES


def _cell(v: object) -> object:
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else ""
    return "" if v is None else v


def _csv(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def _csv_texts(ev: Evaluation) -> dict[str, str]:
    rows = [n.row() for n in ev.nights]
    head = ["night", "prediction", "reference", "epoch_length", *COUNT_KEYS, *SUMMARY_KEYS]
    head += ["ece"] if "ece" in ev.pooled else []  # predictions with probabilities; empty for a night without
    extra = {n.night: (n.pred_source, n.ref_source, n.epoch_length) for n in ev.nights}
    out = {"per_night.csv": _csv(head, ([r["night"], *extra[r["night"]], *(r.get(k) for k in head[4:])]
                                        for r in rows))}

    pc = ev.pooled["per_class"]
    cm = np.asarray(ev.pooled["confusion"])
    night_cols = [f"night_{a}_{m}" for m in CLASS_METRICS[1:] for a in ("mean", "sd")]
    out["per_class.csv"] = _csv(["stage", *CLASS_METRICS, "predicted", *night_cols], (
        [s, *(pc[s][m] for m in CLASS_METRICS), int(cm[:, i].sum()),
         *(ev.summary[f"{s}_{m}"][a] for m in CLASS_METRICS[1:] for a in ("mean", "sd"))]
        for i, s in enumerate(STAGES)))
    for name, key in (("confusion.csv", "confusion"), ("confusion_normalised.csv", "confusion_normalised")):
        out[name] = _csv(["reference", *STAGES], ([s, *ev.pooled[key][i]] for i, s in enumerate(STAGES)))

    fields = [f.name for f in STAT_FIELDS]
    out["sleep_statistics.csv"] = _csv(["night", "scoring", *fields], (
        [n.night, who, *(stats[f] for f in fields)] for n in ev.nights
        for who, stats in (("reference", n.ref_stats), ("prediction", n.pred_stats))))
    keys = ["n", "mean_ref", "mean_pred", "bias", "sd", "loa_low", "loa_high", "r"]
    out["stats_agreement.csv"] = _csv(["field", "unit", *keys], (
        [f, FIELD_BY_NAME[f].unit if f in FIELD_BY_NAME else "", *(a[k] for k in keys)]
        for f, a in ev.stats_agreement.items()))
    return out


def write_evaluation(out_dir: str | Path, ev: Evaluation, force: bool = False) -> list[Path]:
    """Write :data:`OUTPUT_FILES` into ``out_dir``, each atomically; returns their paths.

    Refuses (OutputExistsError, nothing written) when any of them is already there, unless ``force``.
    Every file is rendered before the first is written, so a failure leaves the folder as it was.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SleepstageError("evaluation output is a file, not a folder", out_dir)
    if not force and any((out_dir / name).exists() for name in OUTPUT_FILES):
        raise OutputExistsError(out_dir, "evaluation output")
    probe = out_dir
    while not probe.exists():  # the first existing ancestor is where the folder will be made
        probe = probe.parent
    if not probe.is_dir():
        raise SleepstageError(f"cannot write the evaluation output {out_dir}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SleepstageError(f"cannot write the evaluation output {out_dir}: folder {probe} is not writable")

    texts = {"metrics.json": json.dumps(jsonable(ev.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"}
    texts.update(_csv_texts(ev))
    texts["report.html"] = evaluation_report_html(ev.report_dict())
    paths = []
    for name in OUTPUT_FILES:
        atomic_write_text(out_dir / name, texts[name])
        paths.append(out_dir / name)
    return paths


__all__ = ["write_evaluation"]
