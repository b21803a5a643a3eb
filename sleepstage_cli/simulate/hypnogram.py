"""Stage sequences of plausible nights: sleep-onset latency, ~90-min cycles, N3 early, REM late.

The night is first laid out as segments in minutes (wake, N1, N2, N3, N2, REM, brief awakening,
per cycle), stretched to the requested sleep period, cut into epochs, then roughened at the epoch
level (sleep-onset flicker, brief arousals, N2/N3 boundaries that come and go with slow-wave depth)
the way real hypnograms are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepstage_cli.stages import N_CLASSES

W, N1, N2, N3, REM = range(N_CLASSES)

RK_DEEP_DEPTH = 0.5
"""Slow-wave depth from which an N3 epoch is R&K stage 4 (more than half the epoch in delta waves)."""

N3_MIN_DEPTH = 0.2
"""Slow-wave depth below which an epoch is N2 (AASM: N3 needs 20 % of the epoch in slow waves)."""


@dataclass(frozen=True)
class Hypnogram:
    """The sleeper's true state, one entry per scoring epoch of the sleep period.

    Attributes
    ----------
    epoch_length : seconds per epoch (30, or 20 for R&K-era MASS subsets).
    stage : int8 AASM codes 0-4 (W, N1, N2, N3, REM); what the signals are made of.
    depth : float32 slow-wave depth 0-1 (NREM; drives delta amplitude; >= 0.5 is R&K stage 4).
    movement : bool, a body movement (artefact) happens in the epoch.
    """

    epoch_length: float
    stage: np.ndarray
    depth: np.ndarray
    movement: np.ndarray

    def __len__(self) -> int:
        return int(self.stage.shape[0])

    @property
    def rk_deep(self) -> np.ndarray:
        """Epochs an R&K scorer would call stage 4 rather than 3."""
        return (self.stage == N3) & (self.depth >= RK_DEEP_DEPTH)


def _cycle_segments(rng: np.random.Generator, hours: float, sws_factor: float
                    ) -> list[tuple[int, float, float]]:
    """Nominal segments (stage, minutes, peak slow-wave depth) of a night before stretching."""
    minutes = hours * 60.0
    n_cycles = max(2, int(round(minutes / 95.0)))
    segs: list[tuple[int, float, float]] = [(W, rng.uniform(12, 30), 0.0), (N1, rng.uniform(4, 9), 0.0)]
    waso_cycle = int(rng.integers(1, n_cycles)) if rng.random() < 0.6 else -1
    for k in range(n_cycles):
        x = k / (n_cycles - 1)  # position in the night, 0 = first cycle, 1 = last
        if k > 0:
            segs.append((N1, rng.uniform(1.5, 5), 0.0))
        segs.append((N2, rng.uniform(10, 18), 0.0))
        # Slow-wave sleep is front-loaded: long and deep in the first cycles, gone by morning.
        n3 = 40.0 * np.exp(-3.0 * x) * sws_factor * rng.uniform(0.8, 1.2) - 3.0
        if n3 >= 1.5:
            peak = float(np.clip(0.45 + 0.5 * np.exp(-2.5 * x) * rng.uniform(0.85, 1.1), 0.3, 0.98))
            segs.append((N3, n3, peak))
            segs.append((N2, rng.uniform(8, 16) + 25.0 * x, 0.0))
        else:
            segs.append((N2, rng.uniform(15, 25) + 25.0 * x, 0.0))
        # REM periods lengthen towards morning.
        segs.append((REM, (7.0 + 20.0 * x) * rng.uniform(0.8, 1.2), 0.0))
        if k < n_cycles - 1 and rng.random() < 0.75:
            segs.append((W, rng.uniform(1, 5), 0.0))
        if k == waso_cycle:
            segs.append((W, rng.uniform(6, 18), 0.0))
    segs.append((W, rng.uniform(6, 20), 0.0))
    return segs


def _to_epochs(lengths_min: np.ndarray, n_epochs: int) -> np.ndarray:
    """Whole-epoch lengths proportional to ``lengths_min`` summing to ``n_epochs``, none below 1."""
    exact = lengths_min * n_epochs / lengths_min.sum()
    out = np.maximum(1, np.round(exact)).astype(int)
    while out.sum() != n_epochs:
        err = out - exact
        if out.sum() > n_epochs:
            candidates = np.where(out > 1, err, -np.inf)
            out[int(np.argmax(candidates))] -= 1
        else:
            out[int(np.argmin(err))] += 1
    return out


def make_hypnogram(rng: np.random.Generator, hours: float, epoch_length: float,
                   sws_factor: float = 1.0) -> Hypnogram:
    """A sleep period of ``hours`` (lights off to lights on) scored in ``epoch_length``-s epochs.

    Parameters
    ----------
    rng : random generator of this night.
    hours : length of the sleep period, hours (at least 0.25).
    epoch_length : seconds per epoch (20 or 30).
    sws_factor : the subject's factor on time in N3.
    """
    n_epochs = int(round(hours * 3600.0 / epoch_length))
    segs = _cycle_segments(rng, hours, sws_factor)
    if len(segs) > n_epochs:
        raise ValueError(f"{hours} h is too short for a night of {len(segs)} segments")
    lengths = _to_epochs(np.array([s[1] for s in segs]), n_epochs)
    stage = np.repeat(np.array([s[0] for s in segs], dtype=np.int8), lengths)
    seg_id = np.repeat(np.arange(len(segs)), lengths)
    depth = _depth_profile(rng, segs, lengths, stage)
    per30 = epoch_length / 30.0  # event probabilities are per 30 s of sleep

    stage = _sleep_onset_flicker(rng, stage)
    stage = _brief_arousals(rng, stage, seg_id, per30)
    # Around and inside slow-wave periods the stage follows the depth: N3 comes and goes at the edges.
    nrem = (stage == N2) | (stage == N3)
    stage = np.where(nrem & (depth >= N3_MIN_DEPTH), N3, np.where(nrem, N2, stage)).astype(np.int8)
    movement = _movements(rng, stage, per30)
    return Hypnogram(epoch_length=float(epoch_length), stage=stage, depth=depth.astype(np.float32),
                     movement=movement)


def _depth_profile(rng: np.random.Generator, segs: list[tuple[int, float, float]], lengths: np.ndarray,
                   stage: np.ndarray) -> np.ndarray:
    """Slow-wave depth per epoch: an arch over each N3 period, low in N2, zero elsewhere."""
    n = stage.shape[0]
    depth = np.zeros(n)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    is_n2 = stage == N2
    depth[is_n2] = rng.uniform(0.0, 0.12, int(is_n2.sum()))
    for (st, _, peak), start, length in zip(segs, starts, lengths):
        if st != N3:
            continue
        pos = (np.arange(length) + 0.5) / length
        arch = peak * (0.3 + 0.7 * np.sin(np.pi * pos)) + rng.normal(0.0, 0.06, length)
        # The middle of a slow-wave period stays N3 whatever the noise.
        arch[length // 2] = max(arch[length // 2], N3_MIN_DEPTH + 0.05)
        depth[start:start + length] = arch
        # N2 next to slow-wave sleep is already rich in delta: the boundary blurs.
        for side in (np.arange(max(0, start - 4), start), np.arange(start + length, min(n, start + length + 4))):
            side = side[stage[side] == N2]
            depth[side] = np.maximum(depth[side], rng.uniform(0.08, 0.24, side.shape[0]))
    return np.clip(depth, 0.0, 1.0)


def _sleep_onset_flicker(rng: np.random.Generator, stage: np.ndarray) -> np.ndarray:
    """Drowsiness alternates W and N1 before sleep settles."""
    out = stage.copy()
    first_n2 = int(np.argmax(stage == N2)) if (stage == N2).any() else stage.shape[0]
    onset = np.arange(first_n2)
    sol_wake = onset[(stage[onset] == W)]
    if sol_wake.size:
        tail = sol_wake[sol_wake >= sol_wake[-1] - max(2, sol_wake.size // 3)]
        out[tail[rng.random(tail.size) < 0.25]] = N1
    n1 = onset[stage[onset] == N1]
    out[n1[rng.random(n1.size) < 0.15]] = W
    return out


def _brief_arousals(rng: np.random.Generator, stage: np.ndarray, seg_id: np.ndarray, per30: float
                    ) -> np.ndarray:
    """Short awakenings and lightenings inside N2 and REM, often followed by an N1 epoch."""
    out = stage.copy()
    n = stage.shape[0]
    inner = np.zeros(n, dtype=bool)
    inner[1:-1] = (seg_id[1:-1] == seg_id[:-2]) & (seg_id[1:-1] == seg_id[2:])
    cand = np.nonzero(inner & ((stage == N2) | (stage == REM)))[0]
    hit = cand[rng.random(cand.size) < 0.025 * per30]
    kind = rng.random(hit.size)
    out[hit] = np.where(kind < 0.45, W, N1)
    follow = hit[(rng.random(hit.size) < 0.6)] + 1
    follow = follow[(follow < n) & np.isin(stage[np.minimum(follow, n - 1)], (N2, REM))]
    out[follow] = N1
    return out


def _movements(rng: np.random.Generator, stage: np.ndarray, per30: float) -> np.ndarray:
    """Body movements: often at the start of an awakening from sleep, rarely within sleep."""
    n = stage.shape[0]
    move = np.zeros(n, dtype=bool)
    asleep_before = np.zeros(n, dtype=bool)
    asleep_before[1:] = stage[:-1] != W
    wake_start = np.nonzero((stage == W) & asleep_before)[0]
    move[wake_start[rng.random(wake_start.size) < 0.35]] = True
    move |= (stage != W) & (rng.random(n) < 0.003 * per30)
    if move.sum() < 2:
        # Every night has a few; take awakenings first, else any epoch after sleep onset.
        pool = wake_start if wake_start.size >= 2 else np.nonzero(np.cumsum(stage != W) > 0)[0]
        pool = pool[~move[pool]] if pool.size else np.arange(n)
        move[rng.choice(pool, size=min(2 - int(move.sum()), pool.size), replace=False)] = True
    return move
