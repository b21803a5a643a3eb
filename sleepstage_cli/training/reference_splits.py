"""The authors' cross-validation splits, shipped with the package and used by name (``--split sleepedf-20``).

Phan et al. (SeqSleepNet, IEEE TNSRE 2019) published their folds; the files in
``reference_split_files/`` are those of their xsleepnet repository (the commit is in each file's
``source``, the citation in its ``credit``), with each night's epoch count after their preprocessing:

- ``mass-paper``: MASS SS1-SS5, 200 subjects (one night each), 20 folds of 180 / 10 / 10 subjects;
- ``sleepedf-20``: Sleep-EDF SC subjects 0-19, 39 nights, 20 folds;
- ``sleepedf-78``: all of Sleep-EDF SC, 78 subjects, 153 nights, 10 folds.

Their folds list nights. A MASS night is named by its code (``01-03-0001``), which is also our night
and subject id. A Sleep-EDF night ``nKK_N`` is night N of the KK-th SC subject counted in ascending
order over the subjects that exist (SC subject numbers 39, 68, 69, 78 and 79 do not): ``n01_1`` is
our night ``SC4001`` (subject ``SC400``), ``n68_1`` is ``SC4701``. The folds are turned into the
dataset's subjects (what RUN/split.json lists); the nights of a subject must fall on one side of a fold.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

from sleepstage_cli.data.dataset import PreparedDataset
from sleepstage_cli.errors import InputError
from sleepstage_cli.training.split import CVSplit, Fold

FILES = "reference_split_files"
"""The folder (inside this package folder) of the shipped split files."""

REFERENCE_SPLITS = {"mass-paper": "mass-paper.json", "sleepedf-20": "sleepedf-20.json",
                    "sleepedf-78": "sleepedf-78.json"}

SIDES = (("test", "test"), ("val", "validation"), ("train", "training"))

_SEDF_ABSENT = frozenset({39, 68, 69, 78, 79})
SEDF_SUBJECTS = tuple(n for n in range(83) if n not in _SEDF_ABSENT)
"""Sleep-EDF SC subject numbers in ascending order: the KK-th is ``SEDF_SUBJECTS[KK - 1]`` (78 of them)."""

_SEDF_NAME = re.compile(r"^n(\d\d)_(\d)$")
_FOR = {"mass": "MASS nights prepared with --layout mass (night ids such as 01-03-0001)",
        "sleepedf": "Sleep-EDF SC nights prepared with --layout sleep-edf (night ids such as SC4001)"}


def is_reference_name(spec: str | Path | None) -> bool:
    """Whether ``--split`` names a shipped split: one of :data:`REFERENCE_SPLITS`, and no such path exists."""
    return spec is not None and str(spec) in REFERENCE_SPLITS and not Path(spec).exists()


def reference_bytes(name: str) -> bytes:
    """The shipped file of split ``name``, as bytes (read through importlib.resources)."""
    if name not in REFERENCE_SPLITS:
        raise InputError(f"unknown reference split {name!r} (there are: {', '.join(REFERENCE_SPLITS)})")
    return resources.files(__package__).joinpath(FILES, REFERENCE_SPLITS[name]).read_bytes()


def read_reference(name: str) -> tuple[dict, str]:
    """The shipped split ``name`` (its JSON) and the sha256 of its file."""
    raw = reference_bytes(name)
    return json.loads(raw.decode("utf-8")), hashlib.sha256(raw).hexdigest()


def sleepedf_night_id(name: str) -> str:
    """Our Sleep-EDF night id of the authors' night name: ``n01_1`` -> ``SC4001``, ``n68_1`` -> ``SC4701``."""
    m = _SEDF_NAME.match(name)
    if not m or not 1 <= int(m.group(1)) <= len(SEDF_SUBJECTS) or m.group(2) not in "12":
        raise InputError(f"{name!r} is not a Sleep-EDF night of the authors' splits (n01_1 ... n78_2)")
    return f"SC4{SEDF_SUBJECTS[int(m.group(1)) - 1]:02d}{m.group(2)}"


def night_id(split_dataset: str, name: str) -> str:
    """Our night id of a night of a split made for ``split_dataset`` (``mass``, ``sleepedf-20``...)."""
    return name if split_dataset == "mass" else sleepedf_night_id(name)


def reference_night_ids(name: str) -> list[str]:
    """Our ids of every night of the shipped split ``name``, sorted (``sleepedf-20`` -> SC4001, SC4002, ...)."""
    data, _ = read_reference(name)
    return sorted({night_id(data["dataset"], n) for n in data["epochs"]})


def _listing(names: list[str], limit: int = 8) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _shown(names: list[str], ids: dict[str, str], limit: int = 8) -> str:
    """Nights by the split's name, with ours when they differ (n14_2 = SC4132)."""
    return _listing([n if ids[n] == n else f"{n} = {ids[n]}" for n in names], limit)


def epoch_comparison(data: dict, ids: dict[str, str], ds: PreparedDataset) -> list[dict]:
    """Per night of the split found in the dataset: its epoch count in the split and ours."""
    ours = {n.id: n.n_epochs for n in ds.nights}
    return [{"night": name, "id": ids[name], "split": int(count), "ours": ours[ids[name]],
             "difference": ours[ids[name]] - int(count)}
            for name, count in sorted(data["epochs"].items()) if ids[name] in ours]


def _fold(i: int, entry: dict, ids: dict[str, str], subject_of: dict[str, str]) -> tuple[Fold | None, str | None]:
    """One of the authors' folds by our subjects (None when it cannot run) and a note on its missing nights."""
    sides, missing = {}, {}
    for key, _ in SIDES:
        names = entry.get(key) or []
        present = [ids[n] for n in names if ids[n] in subject_of]
        missing[key] = (len(names) - len(present), len(names))
        sides[key] = {subject_of[n] for n in present}
    for (a, what_a), (b, what_b) in [(SIDES[0], SIDES[1]), (SIDES[0], SIDES[2]), (SIDES[1], SIDES[2])]:
        both = sorted(sides[a] & sides[b])
        if both:
            raise InputError(f"fold {i} of the split puts nights of subject {both[0]} on both its {what_a} and "
                             f"{what_b} side; the folds are made by subject, so it cannot be used with this dataset")
    counts = ", ".join(f"{m} of {n} {what}" for (key, what) in SIDES for m, n in [missing[key]])
    if not sides["test"] or not sides["train"]:
        lost = "test" if not sides["test"] else "training"
        return None, f"fold {i} skipped: none of its {lost} nights is in the dataset ({counts} nights missing)"
    note = f"fold {i}: {counts} nights of the split missing" if any(m for m, _ in missing.values()) else None
    return Fold(i, *(tuple(sorted(sides[key])) for key, _ in SIDES)), note


def _refuse_missing(name: str, data: dict, ids: dict[str, str], missing: list[str], allow_missing: bool) -> None:
    total = len(ids)
    kind = "mass" if data.get("dataset") == "mass" else "sleepedf"
    if len(missing) == total:
        raise InputError(f"the dataset holds none of the {total} nights of the {name} split (such as "
                         f"{_shown(missing[:2], ids)}): it is made for {_FOR[kind]}")
    if missing and not allow_missing:
        raise InputError(f"the dataset lacks {len(missing)} of the {total} nights of the {name} split: "
                         f"{_shown(missing, ids)}; prepare them too, or pass --allow-missing to run without them")


def _unused_notes(name: str, ds: PreparedDataset, ids: dict[str, str], folds: list[Fold]) -> list[str]:
    in_split = set(ids.values())
    used = {s for f in folds for s in (*f.test, *f.val, *f.train)}
    outside = [n for n in ds.nights if n.id not in in_split]
    alone = [n.id for n in outside if n.subject not in used]
    along = [f"{n.id} (subject {n.subject})" for n in outside if n.subject in used]
    notes = []
    if alone:
        notes.append(f"{len(alone)} night(s) of the dataset are in no fold of the {name} split and are not used: "
                     f"{_listing(alone)}")
    if along:
        notes.append(f"{len(along)} night(s) of the dataset are in no fold of the {name} split, but their subject "
                     f"is and they go with it (the folds are by subject): {_listing(along)}")
    return notes


def reference_split(name: str, ds: PreparedDataset, allow_missing: bool = False) -> CVSplit:
    """The shipped split ``name`` on the subjects of ``ds``, with its epoch-count comparison (``reference``).

    Nights of the split the dataset lacks are refused unless ``allow_missing``; then each fold says how
    many of its nights are missing, and a fold left without a test or training night is skipped (the
    others keep the authors' fold numbers).
    """
    data, sha = read_reference(name)
    ids = {n: night_id(data["dataset"], n) for n in data["epochs"]}
    subject_of = {n.id: n.subject for n in ds.nights}
    missing = [n for n in sorted(ids) if ids[n] not in subject_of]
    _refuse_missing(name, data, ids, missing, allow_missing)
    folds, notes, skipped = [], [], []
    for i, entry in enumerate(data["folds"], 1):
        fold, note = _fold(i, entry, ids, subject_of)
        if fold is None:
            skipped.append(i)
        else:
            folds.append(fold)
        if note:
            notes.append(note)
    if not folds:
        raise InputError(f"no fold of the {name} split is left with both a test and a training night in the dataset")
    notes.extend(_unused_notes(name, ds, ids, folds))
    rows = epoch_comparison(data, ids, ds)
    reference = {"name": name, "dataset": data["dataset"], "source": data["source"], "credit": data["credit"],
                 "sha256": sha, "nights": len(ids), "nights_missing": missing, "folds_skipped": skipped,
                 "nights_not_in_split": sorted(set(subject_of) - set(ids.values())),
                 "epochs": {"nights": len(rows), "nights_matching": sum(r["difference"] == 0 for r in rows),
                            "ours": sum(r["ours"] for r in rows), "split": sum(r["split"] for r in rows),
                            "split_all_nights": sum(int(v) for v in data["epochs"].values())},
                 "epoch_counts": rows}
    return CVSplit(folds, {"reference": name, "sha256": sha}, notes, reference=reference)


def epoch_summary(reference: dict) -> str:
    """One line: how many nights' epoch counts match the split's, and the totals."""
    e = reference["epochs"]
    line = (f"epoch counts: {e['nights_matching']} of {e['nights']} night(s) match the {reference['name']} split "
            f"exactly; total epochs ours {e['ours']:,} vs theirs {e['split']:,}")
    if e["nights"] < reference["nights"]:
        line += f" (over these nights; all {reference['nights']} of the split: {e['split_all_nights']:,})"
    return line
