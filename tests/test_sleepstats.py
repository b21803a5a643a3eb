"""Sleep statistics on hand-scored hypnograms, against a plain reference computation, and their agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sleepstage_cli.evaluation.sleepstats import STAT_FIELDS, sleep_statistics, statistics_agreement

W, N1, N2, N3, R, U = 0, 1, 2, 3, 4, -1
NAN = math.nan


def hyp(*runs: tuple[int, int]) -> np.ndarray:
    """A hypnogram from (stage, number of epochs) runs."""
    return np.concatenate([np.full(k, s, dtype=np.int64) for s, k in runs])


def check(stats: dict, expected: dict) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(stats[key]), key
        else:
            assert stats[key] == pytest.approx(value, abs=1e-9), key


# 10 min W, then sleep with two awakenings (one split by an unscored epoch), an unscored run, REM, final wake.
NIGHT = hyp((W, 20), (N1, 4), (N2, 20), (W, 2), (N2, 10), (N3, 20), (U, 2), (N2, 6), (R, 10), (W, 1), (U, 1),
            (W, 1), (N2, 4), (W, 6))


def test_fields_and_order() -> None:
    stats = sleep_statistics(NIGHT)
    assert list(stats) == [f.name for f in STAT_FIELDS]
    assert len({f.name for f in STAT_FIELDS}) == len(STAT_FIELDS)
    assert {f.unit for f in STAT_FIELDS} <= {"min", "%", "count"}
    assert all(f.description and f.group in ("summary", "stage") for f in STAT_FIELDS)
    assert all(isinstance(v, float) for v in stats.values())


def test_hand_scored_night() -> None:
    # 107 epochs; sleep onset at epoch 20, last sleep epoch 100 -> SPT 81 epochs
    tst = 4 + 40 + 20 + 10  # N1, N2 (20+10+6+4), N3, REM epochs
    check(sleep_statistics(NIGHT), {
        "TIB": 107 / 2, "SPT": 81 / 2, "TST": tst / 2, "SOL": 10.0,
        "WASO": 4 / 2,  # W2 + W1 + W1 inside the SPT
        "SE": 100 * 74 / 107, "SME": 100 * 74 / 81,
        "Lat_REM": (20 + 4 + 20 + 2 + 10 + 20 + 2 + 6 - 20) / 2,
        "N_awakenings": 2,  # W2, and W ? W counted once
        "N_stage_shifts": 10,  # W N1 N2 W N2 N3 N2 REM W (W) N2 W
        "Unscored": 3 / 2, "Unscored_SPT": 3 / 2,
        "W": 30 / 2, "N1": 2.0, "N2": 20.0, "N3": 10.0, "REM": 5.0, "NREM": 32.0,
        "%N1": 100 * 4 / 74, "%N2": 100 * 40 / 74, "%N3": 100 * 20 / 74, "%REM": 100 * 10 / 74,
        "%NREM": 100 * 64 / 74,
    })


def test_twenty_second_epochs() -> None:
    check(sleep_statistics(hyp((W, 3), (N1, 1), (W, 1), (N2, 3), (R, 2), (W, 2)), epoch_length=20.0), {
        "TIB": 12 * 20 / 60, "SPT": 7 * 20 / 60, "TST": 6 * 20 / 60, "SOL": 1.0, "WASO": 20 / 60,
        "SE": 50.0, "SME": 100 * 6 / 7, "Lat_REM": 5 * 20 / 60, "N_awakenings": 1, "N_stage_shifts": 5,
        "W": 1.0 + 20 / 60 + 40 / 60, "N1": 20 / 60, "N2": 1.0, "REM": 40 / 60, "%N2": 50.0,
    })
    # Same night in 20-s epochs: minutes scale by 2/3, shares and counts do not.
    s30, s20 = sleep_statistics(NIGHT, 30.0), sleep_statistics(NIGHT, 20.0)
    for f in STAT_FIELDS:
        factor = 2 / 3 if f.unit == "min" else 1.0
        assert s20[f.name] == pytest.approx(s30[f.name] * factor), f.name


def test_no_sleep_at_all() -> None:
    check(sleep_statistics(hyp((W, 10), (U, 2), (W, 3))), {
        "TIB": 7.5, "TST": 0.0, "SE": 0.0, "W": 6.5, "Unscored": 1.0, "N1": 0.0, "REM": 0.0,
        "N_stage_shifts": 0, "SPT": NAN, "SOL": NAN, "WASO": NAN, "SME": NAN, "Lat_REM": NAN, "%N2": NAN,
        "%REM": NAN, "N_awakenings": NAN, "Unscored_SPT": NAN,
    })
    check(sleep_statistics(hyp((U, 4))), {"TIB": 2.0, "Unscored": 2.0, "SE": 0.0, "N_stage_shifts": 0})
    empty = sleep_statistics(np.array([], dtype=int))
    check(empty, {"TIB": 0.0, "TST": 0.0, "SE": NAN, "SOL": NAN, "N_stage_shifts": 0})


def test_no_rem_and_sleep_from_first_epoch() -> None:
    check(sleep_statistics(hyp((N2, 5), (N3, 3), (W, 2))), {
        "SOL": 0.0, "SPT": 4.0, "TST": 4.0, "WASO": 0.0, "Lat_REM": NAN, "%REM": 0.0, "%N3": 37.5,
        "N_awakenings": 0, "N_stage_shifts": 2, "SE": 80.0, "SME": 100.0,
    })


def test_unscored_codes_and_bad_input() -> None:
    # -2 (YASA "unscored") and NaN in a float array are unscored too
    a = sleep_statistics(np.array([W, N2, -2, N2, R]))
    b = sleep_statistics(np.array([W, N2, np.nan, N2, R]))
    assert a == b and a["Unscored"] == 0.5 and a["N_stage_shifts"] == 2
    with pytest.raises(ValueError, match="unknown stage code 5"):
        sleep_statistics(np.array([0, 5]))
    with pytest.raises(ValueError):
        sleep_statistics(np.array([0.5, 1.0]))
    with pytest.raises(ValueError):
        sleep_statistics(NIGHT, epoch_length=0)


def random_hypnogram(rng: np.random.Generator) -> np.ndarray:
    """Runs of random length and stage, some unscored, occasionally no sleep."""
    codes = [W, U] if rng.random() < 0.1 else [W, N1, N2, N3, R, U]
    p = [0.8, 0.2] if len(codes) == 2 else [0.25, 0.1, 0.35, 0.12, 0.15, 0.03]
    runs = [(int(rng.choice(codes, p=p)), int(rng.integers(1, 15))) for _ in range(rng.integers(1, 60))]
    return hyp(*runs)


def plain_reference(h: list[int], ep: float) -> dict:
    """TST, SE, WASO, SOL written out the long way."""
    sleep_epochs = [i for i, s in enumerate(h) if s in (1, 2, 3, 4)]
    tib = len(h) * ep / 60
    tst = len(sleep_epochs) * ep / 60
    se = 100 * tst / tib if tib else NAN
    if not sleep_epochs:
        return {"TST": tst, "SE": se, "WASO": NAN, "SOL": NAN}
    first, last = sleep_epochs[0], sleep_epochs[-1]
    waso = 0
    for i in range(first, last + 1):
        if h[i] == 0:
            waso += 1
    return {"TST": tst, "SE": se, "WASO": waso * ep / 60, "SOL": first * ep / 60}


def test_random_hypnograms_against_plain_computation() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        h = random_hypnogram(rng)
        ep = float(rng.choice([20.0, 30.0]))
        stats = sleep_statistics(h, ep)
        check(stats, plain_reference(h.tolist(), ep))
        # identities that tie the fields together
        assert stats["TIB"] == pytest.approx(stats["W"] + stats["TST"] + stats["Unscored"])
        if stats["TST"] > 0:
            assert stats["SPT"] == pytest.approx(stats["TST"] + stats["WASO"] + stats["Unscored_SPT"])
            assert sum(stats[k] for k in ("%N1", "%N2", "%N3", "%REM")) == pytest.approx(100.0)
            assert stats["SOL"] + stats["SPT"] <= stats["TIB"] + 1e-9


def test_statistics_agreement_against_numpy() -> None:
    rng = np.random.default_rng(3)
    nights = 25
    ref = [{"TST": float(rng.normal(400, 40)), "SOL": float(rng.exponential(15)), "SE": 90.0}
           for _ in range(nights)]
    pred = [{"TST": r["TST"] + float(rng.normal(-5, 12)), "SOL": r["SOL"] * float(rng.uniform(0.5, 1.5)),
             "SE": 90.0} for r in ref]
    ref[4]["SOL"] = NAN  # a night without sleep onset drops out of that field only
    out = statistics_agreement(pred, ref, ["TST", "SOL", "SE"])
    for field in ("TST", "SOL"):
        p = np.array([d[field] for d in pred])
        r = np.array([d[field] for d in ref])
        keep = ~np.isnan(r)
        p, r = p[keep], r[keep]
        d = p - r
        a = out[field]
        assert a["n"] == keep.sum()
        assert a["mean_ref"] == pytest.approx(np.mean(r))
        assert a["mean_pred"] == pytest.approx(np.mean(p))
        assert a["bias"] == pytest.approx(np.mean(d))
        assert a["sd"] == pytest.approx(np.std(d, ddof=1))
        assert a["loa_low"] == pytest.approx(np.mean(d) - 1.96 * np.std(d, ddof=1))
        assert a["loa_high"] == pytest.approx(np.mean(d) + 1.96 * np.std(d, ddof=1))
        assert a["r"] == pytest.approx(np.corrcoef(p, r)[0, 1])
        assert a["pred_values"] == pytest.approx(p.tolist()) and a["ref_values"] == pytest.approx(r.tolist())
    assert out["SE"]["bias"] == 0.0 and math.isnan(out["SE"]["r"])  # constant: r undefined
    one = statistics_agreement(pred[:1], ref[:1], ["TST"])["TST"]
    assert one["n"] == 1 and math.isnan(one["sd"]) and math.isnan(one["r"])
    assert set(statistics_agreement([sleep_statistics(NIGHT)], [sleep_statistics(NIGHT)])) == {
        f.name for f in STAT_FIELDS}
    with pytest.raises(ValueError):
        statistics_agreement(pred, ref[:-1], ["TST"])
