"""Sleep-EDF Expanded's file list (its ``SHA256SUMS.txt``) and the choice of nights to fetch.

PhysioNet's ``sleep-edfx`` 1.0.0 lists every file with its sha256, one ``<sha256> <path>`` line each
(``sha256sum`` format: one or two spaces, or `` *`` before a binary file's path). The recordings are
``sleep-cassette/SC4ssNE0-PSG.edf`` with ``SC4ssNxx-Hypnogram.edf`` and ``sleep-telemetry/ST7ssNJ0-PSG.edf``
with ``ST7ssNJx-Hypnogram.edf``: study, two-digit subject, night; a night is named by its first 6 characters
(``SC4001``), as ``io/layout.py`` pairs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sleepstage_cli.errors import InputError

STUDIES = {"SC": "sleep-cassette", "ST": "sleep-telemetry"}
"""Study code -> the dataset's folder of its recordings."""

_LINE = re.compile(r"^(?P<sha>[0-9a-fA-F]{64}) [ *]?(?P<path>\S.*?)\s*$")
_FILE = re.compile(r"^(?P<folder>sleep-cassette|sleep-telemetry)/"
                   r"(?P<night>(?P<study>SC|ST)[47](?P<subject>\d\d)(?P<n>\d))[A-Z][A-Z0-9]-(?P<kind>PSG|Hypnogram)\.edf$")


@dataclass(frozen=True)
class ListedFile:
    """One recording file of the dataset's list: where it goes and what its bytes hash to."""

    path: str  # relative to the dataset's root, with '/' (sleep-cassette/SC4001E0-PSG.edf)
    sha256: str
    study: str  # SC or ST
    subject: int
    night: int
    night_id: str  # SC4001: what `prepare` calls the night

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def parse_sums(text: str, source: str) -> list[ListedFile]:
    """The Sleep-EDF recordings listed in a ``SHA256SUMS.txt``; other files of the list are left out.

    ``source`` (the URL or file read) names the list in the error raised when it lists no recording.
    """
    files = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        f = _FILE.match(m.group("path").removeprefix("./")) if m else None
        if f:
            files.append(ListedFile(f.group(0), m.group("sha").lower(), f.group("study"), int(f.group("subject")),
                                    int(f.group("n")), f.group("night")))
    if not files:
        raise InputError("lists no Sleep-EDF recording (lines '<sha256> sleep-cassette/SC4...-PSG.edf'); "
                         "is it the SHA256SUMS.txt of sleep-edfx?", source)
    return files


def parse_numbers(spec: str, what: str, low: int, high: int) -> set[int]:
    """``0-19`` or ``1,2`` or ``0-4,7,10-12`` -> the set of numbers, each within [low, high]."""
    numbers: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise InputError(f"{what} {spec!r} is not a list of numbers and ranges such as 0-19 or 1,2")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or a < low or b > high:
            raise InputError(f"{what} {spec!r}: {part.strip()} is outside {low}-{high}")
        numbers.update(range(a, b + 1))
    return numbers


def select(files: list[ListedFile], study: str, subjects: set[int] | None = None, nights: set[int] | None = None,
           night_ids: list[str] | None = None) -> tuple[list[ListedFile], list[str]]:
    """The files of the chosen nights, and the nights asked for by id (``night_ids``) the list lacks.

    ``night_ids`` (a reference split's nights, such as ``SC4001``) replaces the study and subject choice;
    ``nights`` still applies.
    """
    chosen = [f for f in files
              if (f.night_id in night_ids if night_ids is not None else
                  f.study == study and (subjects is None or f.subject in subjects))
              and (nights is None or f.night in nights)]
    listed = {f.night_id for f in chosen}
    missing = sorted(n for n in (night_ids or []) if n not in listed and (nights is None or int(n[-1]) in nights))
    return sorted(chosen, key=lambda f: f.path), missing


def unpaired(files: list[ListedFile]) -> list[str]:
    """Nights among ``files`` that have a recording without a hypnogram or the other way round."""
    kinds: dict[str, set[str]] = {}
    for f in files:
        kinds.setdefault(f.night_id, set()).add("PSG" if f.name.endswith("-PSG.edf") else "Hypnogram")
    return sorted(n for n, k in kinds.items() if len(k) < 2)


def describe(study: str, subjects: str | None, nights: str | None) -> str:
    """The files a choice stands for, as patterns (for the message when the list cannot be read)."""
    code = "SC4" if study == "SC" else "ST7"
    letter = "E" if study == "SC" else "J"
    who = f"subjects {subjects}" if subjects else "all subjects"
    return (f"{STUDIES[study]}/{code}ssN{letter}0-PSG.edf and {STUDIES[study]}/{code}ssN{letter}?-Hypnogram.edf "
            f"for {who}, nights {nights or '1,2'}")
