"""What each stretch of the recording looks like: a timeline of segments and their feature levels.

Every segment (a scored epoch, or a stretch of padding before or after the scored period) gets
amplitudes (µV RMS) and event rates (per minute) drawn around its stage's typical values. Two
things keep staging learnable but not trivial, as on real nights: each epoch is a blend of its
stage with a neighbouring or look-alike stage (some N1 epochs keep their alpha, N2 next to N3 is
rich in delta), and every feature is jittered from epoch to epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepstage_cli.simulate.hypnogram import N1, N2, N3, REM, W
from sleepstage_cli.simulate.subject import SubjectProfile

# Typical levels per stage, columns W, N1, N2, N3, REM, and the log-normal epoch-to-epoch spread.
# Amplitudes are µV RMS at a central site against an ideal reference; rates are events per minute.
STAGE_TABLE: dict[str, tuple[tuple[float, float, float, float, float], float]] = {
    "delta": ((6.0, 8.0, 12.0, 30.0, 7.0), 0.25),       # replaced by slow-wave depth in NREM
    "theta": ((4.0, 9.5, 8.0, 8.0, 9.0), 0.25),
    "alpha": ((9.0, 2.4, 1.5, 1.2, 2.3), 0.3),
    "beta": ((4.5, 2.8, 2.0, 1.5, 3.2), 0.25),
    "spindle_rate": ((0.0, 0.4, 4.5, 1.6, 0.05), 0.6),
    "kc_rate": ((0.0, 0.2, 1.1, 0.5, 0.0), 0.6),
    "vertex_rate": ((0.05, 2.5, 0.3, 0.0, 0.1), 0.6),
    "sawtooth_rate": ((0.0, 0.1, 0.0, 0.0, 1.6), 0.7),
    "blink_rate": ((12.0, 1.5, 0.05, 0.0, 0.0), 0.5),
    "saccade_rate": ((18.0, 1.5, 0.0, 0.0, 0.0), 0.5),
    "rem_rate": ((0.0, 0.0, 0.0, 0.0, 2.8), 0.9),      # bursts of rapid eye movements
    "sem": ((6.0, 45.0, 8.0, 2.0, 6.0), 0.5),          # slow eye movements, µV on each lead
    "emg": ((13.0, 7.0, 4.6, 4.0, 1.5), 0.3),          # chin EMG, µV RMS
    "twitch_rate": ((1.0, 0.5, 0.3, 0.2, 4.0), 0.7),
    "move_rate": ((0.4, 0.1, 0.03, 0.01, 0.05), 0.5),
    "hr_offset": ((6.0, 2.0, 0.0, -3.0, 3.0), 0.0),    # bpm added to the subject's rate
    "resp_amp": ((1.0, 0.9, 0.85, 0.9, 0.7), 0.15),
    "resp_irregularity": ((0.25, 0.15, 0.08, 0.04, 0.3), 0.3),
}

_N2_DEFINING = ("spindle_rate", "kc_rate")

# A look-alike stage each stage is blended with when its neighbours do not decide it.
_LOOKALIKE: dict[int, tuple[tuple[int, float], ...]] = {
    W: ((N1, 1.0),),
    N1: ((W, 0.55), (N2, 0.25), (REM, 0.2)),
    N2: ((N1, 0.6), (N3, 0.4)),
    N3: ((N2, 1.0),),
    REM: ((N1, 0.8), (W, 0.2)),
}


@dataclass(frozen=True)
class Timeline:
    """Contiguous segments covering a recording, seconds from its start.

    Attributes
    ----------
    start, end : float64 bounds, seconds.
    stage : int8 state of the sleeper (0-4).
    depth : float slow-wave depth 0-1.
    movement : bool, a body movement in the segment.
    day : bool, daytime wake (eyes open, active) rather than lights-off wake.
    """

    start: np.ndarray
    end: np.ndarray
    stage: np.ndarray
    depth: np.ndarray
    movement: np.ndarray
    day: np.ndarray

    @property
    def duration(self) -> float:
        return float(self.end[-1])

    def __len__(self) -> int:
        return int(self.start.shape[0])


def build_timeline(first_onset: float, epoch_length: float, stage: np.ndarray, depth: np.ndarray,
                   movement: np.ndarray, day: np.ndarray, duration: float,
                   pad_day: tuple[bool, bool] = (False, False)) -> Timeline:
    """Segments for scored epochs from ``first_onset`` s, padded with wake up to ``duration`` s.

    Padding (before the first and after the last epoch) is cut in pieces of at most 30 s so it
    varies like scored wake does; ``pad_day`` says whether each side is daytime wake.
    """
    n = stage.shape[0]
    starts = [first_onset + epoch_length * np.arange(n)]
    ends = [starts[0] + epoch_length]
    cols = {"stage": [np.asarray(stage, np.int8)], "depth": [np.asarray(depth, float)],
            "movement": [np.asarray(movement, bool)], "day": [np.asarray(day, bool)]}

    def pad(lo: float, hi: float, is_day: bool, front: bool) -> None:
        if hi - lo <= 1e-9:
            return
        edges = np.unique(np.concatenate([np.arange(lo, hi, 30.0), [hi]]))
        k = edges.shape[0] - 1
        where = 0 if front else len(starts)
        starts.insert(where, edges[:-1])
        ends.insert(where, edges[1:])
        for name, value in (("stage", np.full(k, W, np.int8)), ("depth", np.zeros(k)),
                            ("movement", np.zeros(k, bool)), ("day", np.full(k, is_day))):
            cols[name].insert(where, value)

    last_end = first_onset + epoch_length * n
    pad(last_end, duration, pad_day[1], front=False)
    pad(0.0, first_onset, pad_day[0], front=True)
    return Timeline(start=np.concatenate(starts), end=np.concatenate(ends),
                    stage=np.concatenate(cols["stage"]), depth=np.concatenate(cols["depth"]),
                    movement=np.concatenate(cols["movement"]), day=np.concatenate(cols["day"]))


def _blend_partners(rng: np.random.Generator, stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each segment a partner stage and a blend weight (0 = pure own stage)."""
    n = stage.shape[0]
    partner = stage.copy()
    for st, options in _LOOKALIKE.items():
        idx = np.nonzero(stage == st)[0]
        if idx.size:
            choices = np.array([o[0] for o in options])
            probs = np.array([o[1] for o in options])
            partner[idx] = rng.choice(choices, size=idx.size, p=probs / probs.sum())
    weight = 0.55 * rng.beta(1.1, 3.0, n)
    # At a stage change the epoch carries some of its neighbour: transitions blur.
    prev = np.r_[stage[:1], stage[:-1]]
    nxt = np.r_[stage[1:], stage[-1:]]
    for other in (prev, nxt):
        border = (other != stage) & (rng.random(n) < 0.7)
        partner[border] = other[border]
        weight[border] = np.maximum(weight[border], rng.uniform(0.15, 0.5, int(border.sum())))
    return partner, weight


def draw_features(rng: np.random.Generator, timeline: Timeline, profile: SubjectProfile
                  ) -> dict[str, np.ndarray]:
    """Feature levels per segment (amplitudes in µV RMS, rates per minute, see STAGE_TABLE).

    Also returns ``eyes_open`` (wake with eyes open: little alpha, more blinks and saccades).
    """
    stage = timeline.stage
    n = stage.shape[0]
    partner, weight = _blend_partners(rng, stage)
    out: dict[str, np.ndarray] = {}
    # A spindle or K-complex makes a scorer call the epoch N2, so W, N1 and REM epochs borrow
    # little of them from an N2 neighbour (the other way round, N2 may well lack them).
    light = (stage == W) | (stage == N1) | (stage == REM)
    for name, (levels, spread) in STAGE_TABLE.items():
        table = np.asarray(levels)
        w = np.where(light, 0.15 * weight, weight) if name in _N2_DEFINING else weight
        value = (1 - w) * table[stage] + w * table[partner]
        out[name] = value * np.exp(rng.normal(0.0, spread, n)) if spread else value

    # Slow waves follow the epoch's depth in NREM (continuous across the N2/N3 boundary).
    nrem = (stage == N2) | (stage == N3)
    depth_delta = (10.0 + 58.0 * timeline.depth) * np.exp(rng.normal(0.0, 0.12, n))
    out["delta"] = np.where(nrem, depth_delta, out["delta"]) * profile.delta_gain

    # Wake with eyes open: alpha blocked, more beta, blinks and saccades. Daytime wake mostly so.
    p_open = np.where(timeline.day, 0.75, 0.3)
    eyes_open = (stage == W) & (rng.random(n) < p_open)
    out["alpha"] *= np.where(eyes_open, 0.3, 1.15) * profile.alpha_gain
    out["beta"] *= np.where(eyes_open, 1.3, 1.0)
    out["blink_rate"] *= np.where(eyes_open, 1.6, 0.7)
    out["saccade_rate"] *= np.where(eyes_open, 2.0, 0.4)
    out["emg"] *= np.where(timeline.day & (stage == W), 1.3, 1.0) * profile.emg_tone
    out["move_rate"] *= np.where(timeline.day, 2.0, 1.0)

    for name in ("delta", "theta", "alpha", "beta"):
        out[name] = out[name] * profile.eeg_scale
    out["spindle_rate"] = out["spindle_rate"] * profile.spindle_density
    out["kc_rate"] = out["kc_rate"] * profile.kc_density
    out["rem_rate"] = out["rem_rate"] * profile.rem_density
    out["eyes_open"] = eyes_open
    return out
