"""Which stretch of a recording the sleep statistics of a scored night cover, and the night's clock times.

Three answers, in this order:

1. **Lights off to lights on**, when they are known (EDF+ annotations such as ``Lights off``, or
   ``score --lights-off HH:MM --lights-on HH:MM``). An epoch belongs to the period when most of it lies
   between the two (its midpoint), so time in bed, sleep onset latency and the latencies to each stage
   are measured from lights off, to the nearest epoch. Only one of the two known: the other end is the
   recording's.
2. **The main sleep period** (``--sleep-period auto``; also the default for a recording over
   :data:`LONG_RECORDING_HOURS` without lights off/on, with a warning). The rule: an epoch is *mostly
   asleep* when at least half of the :data:`MAIN_PERIOD_WINDOW_MIN` minutes centred on it are sleep
   (N1, N2, N3, REM), so that stray sleep epochs of a day awake do not count; stretches of such epochs
   less than :data:`MAIN_PERIOD_MAX_WAKE_MIN` minutes apart are joined into bouts (the bridging of van
   Hees et al. 2018's sleep period detection); the bout with the most sleep, widened by half the window on
   each side, is the main sleep period, from its first to its last sleep epoch. (A recording without any
   such stretch uses its sleep epochs themselves.) Without lights off the time in bed, the sleep onset
   latency and the sleep efficiency are unknown (NaN) and the latencies to each stage count from sleep
   onset.
3. **The whole recording** otherwise (``--sleep-period all``): latencies from its start.

So a 24-h recording does not add the day's naps and wake to the night's awakenings.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np

from sleepstage_cli.errors import InputError
from sleepstage_cli.evaluation.sleepstats import sleep_statistics
from sleepstage_cli.io.lights import Lights

LONG_RECORDING_HOURS = 18.0
"""A recording longer than this is not one night in bed: without lights off/on, the main sleep period is used."""
MAIN_PERIOD_MAX_WAKE_MIN = 60.0
"""Wake (or unscored) stretches shorter than this do not end a sleep bout when looking for the main sleep period."""
MAIN_PERIOD_WINDOW_MIN = 30.0
"""An epoch is mostly asleep when at least half of this many minutes centred on it are sleep."""
PERIOD_MODES = ("auto", "all")

_FROM = {"lights": "lights off", "main": "sleep onset", "all": "the start of the recording"}


@dataclass(frozen=True)
class StatsPeriod:
    """The epochs ``first`` to ``stop`` (exclusive) the statistics cover, and why."""

    kind: str
    """``"lights"`` (lights off to lights on), ``"main"`` (the main sleep period) or ``"all"``."""
    first: int
    stop: int
    lights: Lights = field(default_factory=Lights)
    notes: tuple[str, ...] = ()
    """Lines to show the user (warnings), already worded."""

    @property
    def latencies_from(self) -> str:
        """What the latencies count from, in words: ``lights off``, ``sleep onset``, ``the start of the recording``."""
        if self.kind == "lights" and self.lights.off_s is None:
            return "the start of the recording"
        return _FROM[self.kind]

    def describe(self, onsets: np.ndarray, epoch_length: float, start: dt.datetime | None) -> str:
        """One sentence for a report: which period the statistics cover, with its clock times."""
        if self.stop <= self.first:
            return "The statistics cover no epoch."
        span = f"{clock(onsets[self.first], start)} to {clock(onsets[self.stop - 1] + epoch_length, start)}"
        if self.kind == "lights":
            return f"The statistics cover lights off to lights on ({span}; from the {self.lights.source})."
        if self.kind == "main":
            return (f"The statistics cover the main sleep period ({span}), found automatically: the longest stretch "
                    f"of sleep, wake of less than {MAIN_PERIOD_MAX_WAKE_MIN:g} min within it included. Lights off "
                    "and on are not known, so time in bed, sleep onset latency and sleep efficiency are not given.")
        return f"The statistics cover the whole recording ({span})."


def clock(seconds: float, start: dt.datetime | None, with_seconds: bool = False) -> str:
    """A time in seconds from the recording's start as a clock time (``HH:MM``, to the nearest minute), or
    ``+h:mm`` without a start; ``with_seconds``: ``HH:MM:SS``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = float(seconds) if with_seconds else float(seconds) + 30.0  # HH:MM rounds, never truncates
    if start is not None:
        return (start + dt.timedelta(seconds=seconds)).strftime("%H:%M:%S" if with_seconds else "%H:%M")
    sec = int(seconds) if not with_seconds else int(round(seconds))
    return f"+{sec // 3600}:{sec % 3600 // 60:02d}" + (f":{sec % 60:02d}" if with_seconds else "")


def _bouts(marked: np.ndarray, max_gap: float) -> list[tuple[int, int]]:
    """(first, last) of the marked epochs joined across gaps shorter than ``max_gap`` epochs."""
    idx = np.flatnonzero(marked)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) - 1 >= max_gap)
    return [(int(idx[a]), int(idx[b])) for a, b in zip(np.concatenate([[0], breaks + 1]),
                                                        np.concatenate([breaks, [idx.size - 1]]))]


def main_sleep_period(stages: np.ndarray, epoch_length: float = 30.0, max_wake_min: float = MAIN_PERIOD_MAX_WAKE_MIN,
                      window_min: float = MAIN_PERIOD_WINDOW_MIN) -> tuple[int, int] | None:
    """(first, stop) epochs of the main sleep period (see the module's docstring), None without sleep.

    ``stop`` is one past the period's last sleep epoch. Ties between bouts go to the earlier one.
    """
    codes = np.asarray(stages, dtype=np.int64).ravel()
    sleep = codes >= 1
    if not sleep.any():
        return None
    ep = float(epoch_length)
    half = max(int(round(window_min * 60.0 / ep / 2)), 0)
    csum = np.concatenate([[0], np.cumsum(sleep)])
    lo = np.clip(np.arange(codes.size) - half, 0, codes.size)
    hi = np.clip(np.arange(codes.size) + half + 1, 0, codes.size)
    mostly = (csum[hi] - csum[lo]) * 2 >= 2 * half + 1  # the window counts as full even at the recording's ends
    max_gap = max_wake_min * 60.0 / ep
    bouts = [(max(a - half, 0), min(b + half, codes.size - 1)) for a, b in _bouts(mostly, max_gap)]
    if not bouts:  # never mostly asleep (a nap, a fragmented night): the sleep epochs themselves
        bouts = _bouts(sleep, max_gap)
    amount = [int(csum[b + 1] - csum[a]) for a, b in bouts]
    first, last = bouts[int(np.argmax(amount))]
    inside = first + np.flatnonzero(sleep[first:last + 1])
    return int(inside[0]), int(inside[-1]) + 1


def _lights_period(onsets: np.ndarray, ep: float, lights: Lights, start: dt.datetime | None,
                   notes: list[str]) -> tuple[int, int]:
    mid = onsets + ep / 2.0
    end = float(onsets[-1] + ep)
    off = lights.off_s if lights.off_s is not None else float(onsets[0])
    on = lights.on_s if lights.on_s is not None else end
    where = f"({lights.source})"
    if lights.off_s is not None and lights.off_s < onsets[0] - 1:
        notes.append(f"lights off ({clock(off, start)}) is before the recording starts: the statistics start with it "
                     f"{where}")
    if lights.on_s is not None and lights.on_s > end + 1:
        notes.append(f"lights on ({clock(on, start)}) is after the recording ends: the statistics end with it "
                     f"{where}")
    inside = np.flatnonzero((mid >= off) & (mid <= on))
    if inside.size == 0:
        raise InputError(f"lights off {clock(off, start)} to lights on {clock(on, start)} {where} leaves no epoch of "
                         f"the recording ({clock(onsets[0], start)} to {clock(end, start)})")
    return int(inside[0]), int(inside[-1]) + 1


def choose_period(onsets: np.ndarray, stages: np.ndarray, epoch_length: float, lights: Lights | None = None,
                  mode: str | None = None, start: dt.datetime | None = None) -> StatsPeriod:
    """The period the statistics cover (see the module's docstring).

    ``mode``: ``"auto"`` (the main sleep period when lights are not known), ``"all"`` (the whole
    recording when lights are not known), or None: ``"all"`` up to :data:`LONG_RECORDING_HOURS`,
    ``"auto"`` beyond, with a note.
    """
    if mode is not None and mode not in PERIOD_MODES:
        raise InputError(f"--sleep-period takes {' or '.join(PERIOD_MODES)}, not {mode!r}")
    onsets = np.asarray(onsets, dtype=np.float64).ravel()
    codes = np.asarray(stages, dtype=np.int64).ravel()
    lights = lights or Lights()
    n = codes.size
    notes: list[str] = []
    if n == 0:
        return StatsPeriod("all", 0, 0, lights)
    if lights.known:
        first, stop = _lights_period(onsets, epoch_length, lights, start, notes)
        if mode == "auto":
            notes.append(f"lights off/on are known ({lights.source}): they bound the statistics, not the main sleep "
                         "period")
        return StatsPeriod("lights", first, stop, lights, tuple(notes))
    hours = float(onsets[-1] + epoch_length - onsets[0]) / 3600.0
    long = hours > LONG_RECORDING_HOURS
    if mode == "auto" or (mode is None and long):
        found = main_sleep_period(codes, epoch_length)
        if found is not None:
            if mode is None:
                notes.append(f"the recording lasts {hours:.1f} h, over {LONG_RECORDING_HOURS:g} h, and lights off/on "
                             "are not known: the statistics cover the main sleep period, "
                             f"{clock(onsets[found[0]], start)} to {clock(onsets[found[1] - 1] + epoch_length, start)} "
                             "(give --lights-off/--lights-on, or --sleep-period all for the whole recording)")
            return StatsPeriod("main", found[0], found[1], lights, tuple(notes))
        notes.append("no sleep was scored: the statistics cover the whole recording")
    elif long:
        notes.append(f"the recording lasts {hours:.1f} h, over {LONG_RECORDING_HOURS:g} h: the statistics cover all "
                     "of it, naps and daytime wake included (--sleep-period auto: the main sleep period only)")
    return StatsPeriod("all", 0, n, lights, tuple(notes))


def period_statistics(stages: np.ndarray, epoch_length: float, period: StatsPeriod) -> dict[str, float]:
    """:func:`~sleepstage_cli.evaluation.sleepstats.sleep_statistics` of the period's epochs.

    For the main sleep period (lights off unknown) ``TIB``, ``SOL`` and ``SE`` are NaN: the period starts at
    sleep onset by construction, and the time in bed is not known.
    """
    codes = np.asarray(stages, dtype=np.int64).ravel()
    stats = sleep_statistics(codes[period.first:period.stop], epoch_length)
    if period.kind == "main":
        for key in ("TIB", "SOL", "SE"):
            stats[key] = math.nan
    return stats


def key_times(onsets: np.ndarray, stages: np.ndarray, epoch_length: float, period: StatsPeriod) -> dict[str, float]:
    """Seconds from the recording's start (NaN when not known): ``lights_off``, ``lights_on``, ``period_start``,
    ``period_end``, ``sleep_onset`` (start of the period's first sleep epoch) and ``final_awakening`` (end of
    its last sleep epoch)."""
    onsets = np.asarray(onsets, dtype=np.float64).ravel()
    codes = np.asarray(stages, dtype=np.int64).ravel()
    nan = math.nan
    out = {"lights_off": period.lights.off_s if period.lights.off_s is not None else nan,
           "lights_on": period.lights.on_s if period.lights.on_s is not None else nan,
           "period_start": nan, "period_end": nan, "sleep_onset": nan, "final_awakening": nan}
    if period.stop <= period.first:
        return out
    out["period_start"] = float(onsets[period.first])
    out["period_end"] = float(onsets[period.stop - 1] + epoch_length)
    sleep = period.first + np.flatnonzero(codes[period.first:period.stop] >= 1)
    if sleep.size:
        out["sleep_onset"] = float(onsets[sleep[0]])
        out["final_awakening"] = float(onsets[sleep[-1]] + epoch_length)
    return out


@dataclass(frozen=True)
class NightAnalysis:
    """A scored night's statistics over its period, the period, and its clock times (see :func:`key_times`)."""

    period: StatsPeriod
    statistics: dict
    times: dict

    def report_fields(self, onsets: np.ndarray, epoch_length: float, start: dt.datetime | None) -> dict:
        """What the staging report takes about the period (``period`` dict, ``times``, ``statistics``)."""
        p = self.period
        return {"statistics": self.statistics, "times": self.times,
                "period": {"kind": p.kind, "first": p.first, "stop": p.stop, "latencies_from": p.latencies_from,
                           "lights_source": p.lights.source,
                           "description": p.describe(np.asarray(onsets, float), epoch_length, start)}}


def analyse_night(onsets: np.ndarray, stages: np.ndarray, epoch_length: float, lights: Lights | None = None,
                  mode: str | None = None, start: dt.datetime | None = None) -> NightAnalysis:
    """:func:`choose_period`, then :func:`period_statistics` and :func:`key_times` over it."""
    period = choose_period(onsets, stages, epoch_length, lights, mode, start)
    return NightAnalysis(period, period_statistics(stages, epoch_length, period),
                         key_times(onsets, stages, epoch_length, period))


__all__ = ["LONG_RECORDING_HOURS", "MAIN_PERIOD_MAX_WAKE_MIN", "MAIN_PERIOD_WINDOW_MIN", "NightAnalysis",
           "PERIOD_MODES", "StatsPeriod", "analyse_night", "choose_period", "clock", "key_times", "main_sleep_period",
           "period_statistics"]
