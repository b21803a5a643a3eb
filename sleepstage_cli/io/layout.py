"""Finding nights in what the user points at: MASS, Sleep-EDF, or generic signal/hypnogram pairs.

- MASS: ``01-03-0001 PSG.edf`` with ``01-03-0001 Base.edf`` beside it or in an ``annotations/``
  folder; subject = night = the code.
- Sleep-EDF: ``SC4001E0-PSG.edf`` with ``SC4001EC-Hypnogram.edf``, paired by their first 6
  characters (the 7th is the scorer's letter); night = ``SC4001``, subject = ``SC400``.
- Generic: ``night.edf`` with a hypnogram of the same stem (``night.csv``, ``night.tsv``,
  ``night-Hypnogram.edf``, ``night_sleepscoring.edf``, ...), or stage annotations inside the EDF+
  itself; subject from ``--subject-pattern`` (default: the stem without a trailing night number).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sleepstage_cli.errors import InputError
from sleepstage_cli.io.edf import read_header
from sleepstage_cli.io.hypnogram import TABLE_SUFFIXES, has_stage_annotations

LAYOUTS = ("mass", "sleep-edf", "generic")

_MASS_PSG = re.compile(r"^(\d\d-\d\d-\d{4}) PSG\.edf$", re.IGNORECASE)
_MASS_BASE = re.compile(r"^(\d\d-\d\d-\d{4}) Base\.edf$", re.IGNORECASE)
_SEDF_PSG = re.compile(r"^(S[CT]\d{4})\w{2}-PSG\.edf$", re.IGNORECASE)
_SEDF_HYP = re.compile(r"^(S[CT]\d{4})\w{2}-Hypnogram\.edf$", re.IGNORECASE)
_SIGNAL_SUFFIXES = (".edf", ".bdf", ".rec")
_HYP_SUFFIX = re.compile(r"([ ._-]?(psg|hypnogram|hypno|sleepscoring|scoring|stages|staging|annotations|"
                         r"base|labels|events))+$", re.IGNORECASE)
DEFAULT_SUBJECT_PATTERN = r"^(.*?)(?:[ ._-]*(?:night|n)[ ._-]?\d+)?$"


@dataclass(frozen=True)
class NightSource:
    """One night to prepare: its signals, its hypnogram, and who it belongs to."""

    night_id: str
    subject: str
    psg: Path
    hypnogram: Path | None
    missing_hypnogram: str = "no hypnogram found for it"


@dataclass(frozen=True)
class Skip:
    """A file left out, and why."""

    path: Path
    reason: str


def folder_files(folder: Path) -> list[Path]:
    """The files under ``folder`` (recursively, sorted) that every command reads: hidden files and folders
    (names starting with ``.``: macOS's ``._*`` AppleDouble companions, ``.Trash``, editors' temporaries,
    our own temporary files) are never recordings or hypnograms."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _collect(sources: list[Path]) -> list[Path]:
    """The files under ``sources``, by the names the user sees (a symlink keeps its own name, which is what
    pairs it), absolute; one file reached twice (a folder and a file in it, two links) counts once."""
    files: list[Path] = []
    for src in sources:
        if not src.exists():
            raise InputError("not found", src)
        if src.is_dir():
            found = folder_files(src)
            if not found:
                raise InputError("folder is empty", src)
            files.extend(found)
        else:
            files.append(src)
    unique: dict[Path, Path] = {}
    for p in files:
        unique.setdefault(p.resolve(), Path(os.path.abspath(p)))
    return list(unique.values())


def detect_layout(files: list[Path]) -> str:
    """'mass' or 'sleep-edf' when such files are present, else 'generic'; both at once is refused."""
    mass = any(_MASS_PSG.match(p.name) for p in files)
    sedf = any(_SEDF_PSG.match(p.name) for p in files)
    if mass and sedf:
        raise InputError("found both MASS and Sleep-EDF files; prepare them into separate datasets "
                         "or pass --layout")
    return "mass" if mass else "sleep-edf" if sedf else "generic"


def discover(sources: list[Path], layout: str = "auto",
             subject_pattern: str = DEFAULT_SUBJECT_PATTERN) -> tuple[str, list[NightSource], list[Skip]]:
    """Pair signal files with hypnograms under ``sources`` (folders are searched recursively)."""
    files = _collect(sources)
    if not any(p.suffix.lower() in _SIGNAL_SUFFIXES for p in files):
        where = ", ".join(str(s) for s in sources)
        raise InputError(f"no EDF files found in {where}")
    if layout == "auto":
        layout = detect_layout(files)
    if layout == "mass":
        nights, skips = _pair_by_code(files, _MASS_PSG, _MASS_BASE, "Base.edf", subject_chars=None)
    elif layout == "sleep-edf":
        nights, skips = _pair_by_code(files, _SEDF_PSG, _SEDF_HYP, "-Hypnogram.edf", subject_chars=5)
    elif layout == "generic":
        nights, skips = _pair_generic(files, subject_pattern)
    else:
        raise InputError(f"unknown layout {layout!r} (use auto, {', '.join(LAYOUTS)})")
    ids = [n.night_id for n in nights]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        paths = [str(n.psg) for n in nights if n.night_id == dup[0]]
        raise InputError(f"night {dup[0]!r} is found twice ({' and '.join(paths)}); point at one copy")
    return layout, nights, skips


def _pair_by_code(files: list[Path], psg_re: re.Pattern, hyp_re: re.Pattern, hyp_hint: str,
                  subject_chars: int | None) -> tuple[list[NightSource], list[Skip]]:
    hyps: dict[str, list[Path]] = {}
    for p in files:
        m = hyp_re.match(p.name)
        if m:
            hyps.setdefault(m.group(1).upper(), []).append(p)
    nights, skips = [], []
    used: set[str] = set()
    for p in files:
        m = psg_re.match(p.name)
        if not m:
            continue
        code = m.group(1).upper()
        found = hyps.get(code, [])
        if not found:
            skips.append(Skip(p, f"no hypnogram ({code}…{hyp_hint}) found beside it or in annotations/"))
            continue
        # Prefer the hypnogram next to the PSG, then one in an annotations/ subfolder.
        found = sorted(found, key=lambda h: (h.parent != p.parent, h.parent != p.parent / "annotations", str(h)))
        if len(found) > 1 and found[0].parent == found[1].parent:
            skips.append(Skip(p, f"several hypnograms match it: {found[0].name}, {found[1].name}"))
            continue
        used.add(code)
        subject = code[:subject_chars] if subject_chars else code
        nights.append(NightSource(night_id=code, subject=subject, psg=p, hypnogram=found[0]))
    for code, paths in hyps.items():
        if code not in used:
            skips.extend(Skip(h, "hypnogram without a matching PSG file") for h in paths)
    return nights, skips


def _stem_key(path: Path) -> str:
    return _HYP_SUFFIX.sub("", path.stem).lower()


_MASS_CODE = re.compile(r"^(\d\d-\d\d-\d{4})(?!\d)")
_SEDF_CODE = re.compile(r"^(S[CT]\d{4})(?:[A-Z0-9]{2})?(?=$|[ ._-])", re.IGNORECASE)
_FILE_EXT = re.compile(r"\.(edf|bdf|rec|csv|tsv|txt)$", re.IGNORECASE)


def pairing_key(name: str, fold_case: bool = True) -> str:
    """Key under which predictions, references and prepared-dataset night ids of the same night meet.

    More lenient than :func:`night_key` (any extension, ``SC4001E0-PSG.csv``, dataset ids).

    MASS names give their code (``01-03-0001 PSG.edf`` -> ``01-03-0001``); Sleep-EDF names their
    first 6 characters (``SC4001E0-PSG.edf``, ``SC4001EC-Hypnogram.edf`` -> ``SC4001``). Other names
    lose their file extensions and hypnogram/PSG suffixes (``night1.hypnogram.csv``,
    ``night1-PSG.edf``, ``night1 Base.edf``, ``night1_sleepscoring.edf`` -> ``night1``), runs of
    characters other than letters, digits, ``.``, ``-``, ``_`` become ``_`` (as in a prepared
    night's id), and the case is folded unless ``fold_case`` is false.
    """
    name = name.strip()
    m = _MASS_CODE.match(name)
    if m:
        return m.group(1)
    m = _SEDF_CODE.match(name)
    if m:
        return m.group(1).upper()
    stem, prev = name, None
    while stem != prev:  # "night1-PSG.edf.csv": extensions and suffixes interleave
        prev = stem
        stem = _HYP_SUFFIX.sub("", _FILE_EXT.sub("", stem))
    key = re.sub(r"[^\w.-]+", "_", stem).strip("_") or re.sub(r"[^\w.-]+", "_", _FILE_EXT.sub("", name))
    return key.lower() if fold_case else key


def night_key(path: str | Path) -> str:
    """The night id of a recording or hypnogram file: :func:`pairing_key` of its name, case kept."""
    return pairing_key(Path(path).name, fold_case=False)


def subject_of(stem: str, pattern: str) -> str:
    """Subject id of a night's file stem: the first group of ``pattern``, else the whole match."""
    try:
        m = re.match(pattern, stem)
    except re.error as exc:
        raise InputError(f"--subject-pattern is not a valid regular expression: {exc}") from None
    if not m:
        raise InputError(f"--subject-pattern {pattern!r} does not match the file name {stem!r}")
    value = m.group(1) if m.groups() else m.group(0)
    return value or stem


def _pair_generic(files: list[Path], subject_pattern: str) -> tuple[list[NightSource], list[Skip]]:
    signal_files, annotation_edfs, tables = [], [], []
    for p in files:
        suffix = p.suffix.lower()
        if suffix in _SIGNAL_SUFFIXES:
            try:
                header = read_header(p)
            except InputError as exc:
                signal_files.append((p, exc))
                continue
            (annotation_edfs if header.is_annotations_only else signal_files).append((p, header))
        elif suffix in TABLE_SUFFIXES:
            tables.append(p)
    candidates: dict[str, list[Path]] = {}
    for p in [a for a, _ in annotation_edfs] + tables:
        candidates.setdefault(_stem_key(p), []).append(p)
    nights, skips = [], []
    considered: set[Path] = set()
    for p, header in signal_files:
        if isinstance(header, InputError):
            skips.append(Skip(p, str(header).removeprefix(f"{p}: ")))
            continue
        found = candidates.get(_stem_key(p), [])
        considered.update(found)
        beside = [f for f in found if f.parent == p.parent]
        found = beside or found  # a hypnogram in the same folder wins; else one given elsewhere
        if len(found) > 1:
            skips.append(Skip(p, f"several hypnograms match it: {', '.join(f.name for f in found)}"))
            continue
        hyp = found[0] if found else (p if has_stage_annotations(p, header) else None)
        # A night without hypnogram is still handed on, so that its channels are checked first.
        night_id = night_key(p)
        nights.append(NightSource(
            night_id=night_id, subject=subject_of(p.stem, subject_pattern), psg=p, hypnogram=hyp,
            missing_hypnogram="no hypnogram: no sleep stage annotations inside it and no hypnogram file beside it "
                              f"({p.stem}.csv, {p.stem}.tsv, {p.stem}-Hypnogram.edf, ...)"))
    # An annotations-only EDF is a hypnogram for sure (unlike any .csv or .txt lying around): say why it
    # gives no night, instead of leaving the user with "0 night(s) found".
    skips.extend(Skip(a, "holds only annotations (a hypnogram) and no recording was found to pair it with "
                         f"(a recording named like it, e.g. {_HYP_SUFFIX.sub('', a.stem) or a.stem}.edf, beside it)")
                 for a, _ in annotation_edfs if a not in considered)
    return nights, skips
