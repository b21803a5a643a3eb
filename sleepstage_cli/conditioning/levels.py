"""How many values a signal takes: a square wave or another test signal moves between two of them.

Measured on the samples as the file holds them (before filtering rounds the edges), while
:func:`~sleepstage_cli.conditioning.recording.load_conditioned` has them in memory; the fit check
(``scoring/fitcheck.py``) reads the result.
"""

from __future__ import annotations

import numpy as np

SAMPLES = 200_000
"""At most this many samples (evenly spaced) are looked at: enough to tell two values from hundreds."""
MIN_CHANGES = 100


def two_level_share(x: np.ndarray) -> float | None:
    """The share of the samples where ``x`` changes value that its two most common values hold (a square
    wave: 1, an EEG: a few %), or None with fewer than MIN_CHANGES changes. Flat stretches count once, so a
    disconnected electrode is not taken for a square wave; missing (NaN) samples are left out."""
    x = np.asarray(x)
    x = x[:: max(1, x.size // SAMPLES)]
    x = x[np.isfinite(x)]
    changed = x[1:][x[1:] != x[:-1]]
    if changed.size < MIN_CHANGES:
        return None
    _, counts = np.unique(changed, return_counts=True)
    return float(np.sort(counts)[-2:].sum() / changed.size)
