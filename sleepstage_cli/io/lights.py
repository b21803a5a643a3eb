"""Lights off and lights on: from a recording's EDF+ annotations, or from clock times a user gives.

Labs write them in many spellings: ``Lights off``, ``LIGHTS OFF``, ``Lights out``, ``LightsOff``,
``lights_on``, and with the channel the event was marked on after ``@@`` (``Lights off@@EEG F4-A1``,
PhysioNet's HMC files). Matching ignores case, spaces, ``_`` and ``-`` and the ``@@`` suffix; any other
text (``Lights off for 5 min?``) is not a lights event.

Times are seconds from the recording's start, like every onset in the package.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sleepstage_cli.errors import InputError

_OFF = re.compile(r"lights?[\s_-]*(off|out)\.?", re.IGNORECASE)
_ON = re.compile(r"lights?[\s_-]*on\.?", re.IGNORECASE)
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


@dataclass(frozen=True)
class Lights:
    """Lights off and on in seconds from the recording's start (None: not known), and where they came from."""

    off_s: float | None = None
    on_s: float | None = None
    source: str = ""
    """``"EDF+ annotations"``, ``"command line"`` or ``""`` when neither is known."""

    @property
    def known(self) -> bool:
        return self.off_s is not None or self.on_s is not None


def lights_event(text: str) -> str | None:
    """``"off"``, ``"on"`` or None for one annotation text."""
    core = str(text).split("@@", 1)[0].strip()
    if _OFF.fullmatch(core):
        return "off"
    if _ON.fullmatch(core):
        return "on"
    return None


def find_lights(onsets: Sequence[float], texts: Sequence[str]) -> Lights:
    """Lights off and on among annotations: the first lights off, and the first lights on after it (the
    first lights on at all when there is no lights off)."""
    events = sorted((float(t), kind) for t, text in zip(onsets, texts) if (kind := lights_event(text)))
    off = next((t for t, kind in events if kind == "off"), None)
    on = next((t for t, kind in events if kind == "on" and (off is None or t > off)), None)
    if off is None and on is None:
        return Lights()
    return Lights(off, on, "EDF+ annotations")


def read_lights(path: str | Path, header=None) -> Lights:
    """Lights off/on from a recording's EDF+ annotations; nothing known when it has none (or they cannot be read:
    lights are a nicety, never a reason to refuse a night)."""
    from sleepstage_cli.io.edf import read_annotations, read_header

    try:
        header = header or read_header(path)
        if not header.annotation_indices:
            return Lights()
        onsets, _, texts = read_annotations(path, header)
    except InputError:
        return Lights()
    return find_lights(onsets, texts)


def parse_clock(text: str, option: str = "time") -> dt.time:
    """``"23:15"`` or ``"23:15:30"`` as a time of day; anything else is an error naming ``option``."""
    m = _CLOCK.fullmatch(str(text).strip())
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59 or int(m.group(3) or 0) > 59:
        raise InputError(f"{option} takes a clock time HH:MM (24-hour, e.g. 23:15), not {text!r}")
    return dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def clock_lights(start: dt.datetime | None, off: dt.time | None, on: dt.time | None,
                 tolerance_s: float = 3600.0) -> Lights:
    """Lights off/on given as clock times, in seconds from the recording's ``start``.

    Lights off is the first time the clock shows ``off`` from ``tolerance_s`` before the start on (a lights
    off just before the recording started gives a negative time; the caller starts at the recording then).
    Lights on is the first time the clock shows ``on`` after lights off (so 06:30 after 23:00 is the next
    morning), or after the same tolerance before the start when lights off is not given.
    """
    if off is None and on is None:
        return Lights()
    if start is None:
        raise InputError("--lights-off/--lights-on need the recording's start time, and this recording's header "
                         "has none")

    def after(t: dt.time, earliest: float) -> float:
        base = start.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
        s = (base - start).total_seconds()
        s -= 86400.0 * ((s - earliest) // 86400.0)  # the first time at or after ``earliest``
        return s

    off_s = after(off, -tolerance_s) if off is not None else None
    on_s = None
    if on is not None:
        on_s = after(on, off_s if off_s is not None else -tolerance_s)
        if off_s is not None and on_s <= off_s:
            on_s += 86400.0
    return Lights(off_s, on_s, "command line")


def merge_lights(given: Lights, recorded: Lights) -> Lights:
    """Lights given on the command line, each end completed from the recording's annotations when not given."""
    off = given.off_s if given.off_s is not None else recorded.off_s
    on = given.on_s if given.on_s is not None else recorded.on_s
    if off is not None and on is not None and on <= off:  # a recorded lights on before a given lights off
        on = given.on_s
    sources = [src for src, used in ((given.source, (given.off_s, given.on_s) != (None, None)),
                                     (recorded.source, (off, on) != (given.off_s, given.on_s))) if used and src]
    return Lights(off, on, " and ".join(sources)) if off is not None or on is not None else Lights()


__all__ = ["Lights", "clock_lights", "find_lights", "lights_event", "merge_lights", "parse_clock", "read_lights"]
