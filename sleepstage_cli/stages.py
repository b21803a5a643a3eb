"""Sleep stages: the five AASM classes, their codes, and every spelling we accept, mapped once."""

from __future__ import annotations

import re

STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
"""Class names in network order (as the paper orders them: W, N1, N2, N3, REM)."""

UNSCORED = -1
"""Code of an epoch that keeps its place in time but is never trained on or scored
(R&K `?`, movement time, artefact, unscored)."""

N_CLASSES = len(STAGES)

_STAGE_WORDS: dict[str, int] = {
    # wake
    "w": 0, "wake": 0, "awake": 0, "wk": 0, "0": 0,
    # N1 / R&K stage 1
    "1": 1, "n1": 1, "s1": 1, "nrem1": 1,
    # N2 / R&K stage 2
    "2": 2, "n2": 2, "s2": 2, "nrem2": 2,
    # N3 / R&K stages 3 and 4 (AASM merges them)
    "3": 3, "n3": 3, "s3": 3, "nrem3": 3, "sws": 3,
    "4": 3, "n4": 3, "s4": 3, "nrem4": 3,
    # REM
    "r": 4, "rem": 4, "5": 4,
    # kept in place, masked
    "?": UNSCORED, "u": UNSCORED, "unscored": UNSCORED, "unknown": UNSCORED, "m": UNSCORED,
    "mt": UNSCORED, "movement": UNSCORED, "movementtime": UNSCORED, "artefact": UNSCORED,
    "artifact": UNSCORED, "a": UNSCORED, "-1": UNSCORED, "x": UNSCORED,
}

_PREFIX = re.compile(r"^(sleep\s*stage|stage)\s*", re.IGNORECASE)


class UnknownStageError(ValueError):
    """A string looks like a stage annotation but names no stage we know."""


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text.strip().lower())


def stage_code(text: str) -> int:
    """Code (0-4, or UNSCORED) of a stage string such as ``"Sleep stage 4"``, ``"N2"`` or ``"R"``.

    R&K stages 3 and 4 map to N3. The bare digit "5" is not accepted here (ambiguous across
    conventions); integer tables go through :func:`stage_code_from_int`.
    Raises UnknownStageError for anything else.
    """
    raw = text.strip()
    body = _PREFIX.sub("", raw)
    key = _key(body)
    if key == "5":
        raise UnknownStageError(raw)
    if key in _STAGE_WORDS:
        return _STAGE_WORDS[key]
    raise UnknownStageError(raw)


def annotation_stage(description: str) -> int | None:
    """Stage code of an EDF+ annotation, or None when it is an event that is not a stage.

    Stage annotations are ``Sleep stage X`` (MASS, Sleep-EDF, HMC spellings) and ``Movement time``;
    anything else (``Lights off@@EEG F4-A1``, ``RECORD START``, arousals...) is not a stage.
    Raises UnknownStageError for ``Sleep stage <something unknown>``.
    """
    text = description.strip()
    if _key(text) in ("movementtime", "movement"):
        return UNSCORED
    if re.match(r"^sleep\s*stage\b", text, re.IGNORECASE):
        return stage_code(text)
    return None


def stage_code_from_int(value: int) -> int:
    """Code of an integer stage in YASA's convention: 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 (or -2) unscored."""
    if value in (0, 1, 2, 3, 4):
        return int(value)
    if value in (-1, -2):
        return UNSCORED
    raise UnknownStageError(str(value))


def stage_name(code: int) -> str:
    """Display name of a code: W, N1, N2, N3, REM, or ``?`` for unscored."""
    return STAGES[code] if 0 <= code < N_CLASSES else "?"
