"""Sleep statistics of a hypnogram (YASA / AASM field names) and their agreement between two scorers.

A hypnogram here is one code per epoch (0 W, 1 N1, 2 N2, 3 N3, 4 REM, negative = unscored) covering the
recording's scored period, first to last epoch; nothing is trimmed. Epochs are counted, so every duration
is a whole number of epochs times ``epoch_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np


class StatField(NamedTuple):
    """One sleep statistic: its name (the dict key), unit and a one-line definition."""

    name: str
    unit: str
    """``"min"``, ``"%"`` or ``"count"``."""
    description: str
    group: str
    """``"summary"`` (the statistics table) or ``"stage"`` (the time-per-stage table)."""
    label: str = ""
    """What a report calls it, in plain words (``"Number of awakenings"``, not ``N_awakenings``)."""


_STAGE_CODES: dict[str, int] = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "REM": 4}

STAT_FIELDS: tuple[StatField, ...] = (
    StatField("TIB", "min", "Time in bed: the whole scored period, first to last epoch, unscored epochs included",
              "summary"),
    StatField("SPT", "min", "Sleep period time: first to last sleep epoch (N1, N2, N3, REM), both included",
              "summary"),
    StatField("TST", "min", "Total sleep time: N1 + N2 + N3 + REM", "summary"),
    StatField("SOL", "min", "Sleep onset latency: start of the scored period to the start of the first sleep epoch "
              "(any of N1, N2, N3, REM)", "summary"),
    StatField("WASO", "min", "Wake after sleep onset: W epochs within the sleep period (SPT)", "summary"),
    StatField("SE", "%", "Sleep efficiency: TST / TIB", "summary"),
    StatField("SME", "%", "Sleep maintenance efficiency: TST / SPT", "summary"),
    StatField("Lat_REM", "min", "REM latency: sleep onset to the start of the first REM epoch", "summary"),
    StatField("Lat_N1", "min", "Latency to N1: start of the scored period (lights off when known) to the start of "
              "the first N1 epoch", "summary"),
    StatField("Lat_N2", "min", "Latency to N2: start of the scored period (lights off when known) to the start of "
              "the first N2 epoch", "summary"),
    StatField("Lat_N3", "min", "Latency to N3: start of the scored period (lights off when known) to the start of "
              "the first N3 epoch", "summary"),
    StatField("Lat_REM_LO", "min", "Latency to REM: start of the scored period (lights off when known) to the "
              "start of the first REM epoch", "summary"),
    StatField("N_awakenings", "count", "Awakenings: runs of one or more consecutive W epochs within the SPT "
              "(unscored epochs skipped)", "summary"),
    StatField("N_stage_shifts", "count", "Stage shifts: changes of stage between consecutive scored epochs "
              "over the whole period (unscored epochs skipped)", "summary"),
    StatField("Unscored", "min", "Unscored epochs over the whole period", "summary"),
    StatField("Unscored_SPT", "min", "Unscored epochs within the SPT (so SPT = TST + WASO + this)",
              "summary"),
    StatField("W", "min", "Wake over the whole scored period (wake within the SPT is WASO)", "stage"),
    StatField("N1", "min", "Stage N1", "stage"),
    StatField("N2", "min", "Stage N2", "stage"),
    StatField("N3", "min", "Stage N3", "stage"),
    StatField("REM", "min", "Stage REM", "stage"),
    StatField("NREM", "min", "N1 + N2 + N3", "stage"),
    StatField("%N1", "%", "N1 as a share of TST", "stage"),
    StatField("%N2", "%", "N2 as a share of TST", "stage"),
    StatField("%N3", "%", "N3 as a share of TST", "stage"),
    StatField("%REM", "%", "REM as a share of TST", "stage"),
    StatField("%NREM", "%", "NREM as a share of TST", "stage"),
)
"""Every field :func:`sleep_statistics` returns, in display order."""

_LABELS: dict[str, str] = {
    "TIB": "Time in bed (TIB)", "SPT": "Sleep period time (SPT)", "TST": "Total sleep time (TST)",
    "SOL": "Sleep onset latency (SOL)", "WASO": "Wake after sleep onset (WASO)", "SE": "Sleep efficiency (SE)",
    "SME": "Sleep maintenance efficiency", "Lat_REM": "REM latency from sleep onset",
    "Lat_N1": "Latency to N1", "Lat_N2": "Latency to N2", "Lat_N3": "Latency to N3", "Lat_REM_LO": "Latency to REM",
    "N_awakenings": "Number of awakenings", "N_stage_shifts": "Number of stage shifts",
    "Unscored": "Time not scored", "Unscored_SPT": "Time not scored within the sleep period",
    "W": "Wake", "N1": "N1", "N2": "N2", "N3": "N3", "REM": "REM", "NREM": "NREM (N1 + N2 + N3)",
    "%N1": "N1, share of total sleep", "%N2": "N2, share of total sleep", "%N3": "N3, share of total sleep",
    "%REM": "REM, share of total sleep", "%NREM": "NREM, share of total sleep",
}
STAT_FIELDS = tuple(f._replace(label=_LABELS[f.name]) for f in STAT_FIELDS)

FIELD_BY_NAME: dict[str, StatField] = {f.name: f for f in STAT_FIELDS}
PLAIN_LABELS: dict[str, str] = {f.name: f.label for f in STAT_FIELDS}
"""Field name -> the words a report shows for it; the names themselves stay the keys of machine-readable files."""


def _as_codes(stages: np.ndarray) -> np.ndarray:
    arr = np.asarray(stages)
    if arr.dtype.kind == "f":
        # NaN is how a float array says "no stage here"
        arr = np.where(np.isnan(arr), -1.0, arr)
        if np.any(arr != np.round(arr)):
            raise ValueError("stage codes must be whole numbers")
    elif arr.size and arr.dtype.kind not in "iub":
        raise ValueError(f"stage codes must be integers, got dtype {arr.dtype}")
    codes = arr.astype(np.int64).ravel()
    if np.any(codes > 4):
        raise ValueError(f"unknown stage code {int(codes.max())}; codes are 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1")
    return np.where(codes < 0, -1, codes)


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else math.nan


def sleep_statistics(stages: np.ndarray, epoch_length: float = 30.0) -> dict[str, float]:
    """Sleep statistics of one night, in the order of :data:`STAT_FIELDS`.

    Parameters
    ----------
    stages : array of int, shape (n_epochs,)
        One code per epoch over the scored period: 0 W, 1 N1, 2 N2, 3 N3, 4 REM; any negative code
        (or NaN in a float array) is an unscored epoch, which keeps its place in time.
    epoch_length : float
        Epoch duration in seconds (30 for AASM, 20 for some R&K scorings).

    Returns
    -------
    dict of str to float
        Durations in minutes, efficiencies and stage shares in %, counts as floats. With sleep onset
        the first sleep epoch (N1, N2, N3 or REM) and the SPT its first to last sleep epoch:

        - ``TIB``: all epochs (unscored included); ``SPT``: epochs from first to last sleep epoch;
        - ``TST``: N1 + N2 + N3 + REM epochs; ``SOL``: epochs before the first sleep epoch (from the
          start of the scored period, not from lights-off; unscored epochs before onset count);
        - ``WASO``: W epochs within the SPT (= W within SPT); ``W``: W epochs over the whole period;
        - ``SE`` = 100 TST / TIB (unscored time stays in TIB); ``SME`` = 100 TST / SPT;
        - ``Lat_REM``: first REM epoch minus sleep onset (AASM; YASA's ``Lat_REM`` counts from the
          start instead), NaN without REM;
        - ``Lat_N1``, ``Lat_N2``, ``Lat_N3``, ``Lat_REM_LO``: the start of the scored period (lights off,
          when the caller cuts the hypnogram there) to the first epoch of that stage, NaN without one;
        - ``N1``..``REM``, ``NREM`` minutes and ``%N1``..``%NREM`` as % of TST;
        - ``N_awakenings``: runs of >= 1 consecutive W epoch within the SPT, after dropping unscored
          epochs (so W ? W is one awakening);
        - ``N_stage_shifts``: positions where a scored epoch's stage differs from the previous
          scored epoch's, over the whole period, unscored epochs dropped first;
        - ``Unscored`` and ``Unscored_SPT``: unscored minutes overall and within the SPT
          (SPT = TST + WASO + Unscored_SPT).

        Without any sleep epoch, TST and the stage minutes are 0, SE is 0, and SPT, SOL, WASO, SME,
        Lat_REM, the stage shares, N_awakenings and Unscored_SPT are NaN. An empty hypnogram has
        TIB 0 and SE NaN.
    """
    if not epoch_length > 0:
        raise ValueError(f"epoch_length must be positive seconds, got {epoch_length}")
    hyp = _as_codes(stages)
    ep_min = float(epoch_length) / 60.0
    out: dict[str, float] = {f.name: math.nan for f in STAT_FIELDS}

    minutes = {name: float(np.count_nonzero(hyp == code)) * ep_min for name, code in _STAGE_CODES.items()}
    out.update(minutes)
    tst = minutes["N1"] + minutes["N2"] + minutes["N3"] + minutes["REM"]
    out["TIB"] = hyp.size * ep_min
    out["TST"] = tst
    out["NREM"] = minutes["N1"] + minutes["N2"] + minutes["N3"]
    out["Unscored"] = float(np.count_nonzero(hyp < 0)) * ep_min
    out["SE"] = _pct(tst, out["TIB"])
    scored = hyp[hyp >= 0]
    out["N_stage_shifts"] = float(np.count_nonzero(scored[1:] != scored[:-1]))

    sleep_idx = np.flatnonzero(hyp >= 1)
    if sleep_idx.size == 0:
        return out
    onset, last = int(sleep_idx[0]), int(sleep_idx[-1])
    spt = hyp[onset:last + 1]
    out["SPT"] = spt.size * ep_min
    out["SOL"] = onset * ep_min
    out["WASO"] = float(np.count_nonzero(spt == 0)) * ep_min
    out["Unscored_SPT"] = float(np.count_nonzero(spt < 0)) * ep_min
    out["SME"] = _pct(tst, out["SPT"])
    for name in ("N1", "N2", "N3", "REM", "NREM"):
        out[f"%{name}"] = _pct(out[name], tst)
    rem_idx = np.flatnonzero(hyp == 4)
    out["Lat_REM"] = (int(rem_idx[0]) - onset) * ep_min if rem_idx.size else math.nan
    for name, key in (("N1", "Lat_N1"), ("N2", "Lat_N2"), ("N3", "Lat_N3"), ("REM", "Lat_REM_LO")):
        first = np.flatnonzero(hyp == _STAGE_CODES[name])
        out[key] = int(first[0]) * ep_min if first.size else math.nan
    # The SPT starts and ends with sleep, so every wake run inside it is bounded by sleep: count run starts.
    wake = spt[spt >= 0] == 0
    out["N_awakenings"] = float(np.count_nonzero(wake[1:] & ~wake[:-1]))
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else math.nan


def statistics_agreement(pred: Sequence[dict], ref: Sequence[dict],
                         fields: Iterable[str] | None = None) -> dict[str, dict]:
    """Bland-Altman agreement of sleep statistics over paired nights.

    Parameters
    ----------
    pred, ref : sequences of dict
        :func:`sleep_statistics` of the same nights, in the same order, from the prediction and the
        reference scoring.
    fields : iterable of str, optional
        Statistics to compare; all of :data:`STAT_FIELDS` by default.

    Returns
    -------
    dict
        Field name -> ``n`` (nights where both values are finite; only those are used),
        ``mean_ref``, ``mean_pred``, ``bias`` (mean of pred - ref), ``sd`` (sample SD of the
        differences, ddof = 1), ``loa_low`` / ``loa_high`` (bias -/+ 1.96 sd), ``r`` (Pearson
        correlation of pred and ref; NaN for fewer than 2 nights or a constant series), and the
        paired ``pred_values`` / ``ref_values`` used. Values are in the field's unit.
    """
    if len(pred) != len(ref):
        raise ValueError(f"{len(pred)} predicted nights but {len(ref)} reference nights")
    names = [f.name for f in STAT_FIELDS] if fields is None else list(fields)
    out: dict[str, dict] = {}
    for name in names:
        p = np.array([float(d.get(name, math.nan)) for d in pred], dtype=np.float64)
        r = np.array([float(d.get(name, math.nan)) for d in ref], dtype=np.float64)
        keep = np.isfinite(p) & np.isfinite(r)
        p, r = p[keep], r[keep]
        diff = p - r
        n = int(diff.size)
        bias = float(diff.mean()) if n else math.nan
        sd = float(diff.std(ddof=1)) if n >= 2 else math.nan
        out[name] = {
            "n": n,
            "mean_ref": float(r.mean()) if n else math.nan,
            "mean_pred": float(p.mean()) if n else math.nan,
            "bias": bias,
            "sd": sd,
            "loa_low": bias - 1.96 * sd,
            "loa_high": bias + 1.96 * sd,
            "r": _pearson(p, r),
            "pred_values": p.tolist(),
            "ref_values": r.tolist(),
        }
    return out
