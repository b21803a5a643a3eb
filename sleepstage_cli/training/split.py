"""Subject-wise folds for cross-validation: made from a seed, or read from a split file.

Every subject is tested in exactly one fold (a split file may leave some untested, which is
reported); within a fold the validation subjects (model selection) and the training subjects are
drawn from the others, so the nights of one subject are never on two sides.

SeqSleepNet's paper (Phan et al. 2019) used all 200 MASS subjects (SS1-SS5) in 20 folds of 180 training,
10 validation and 10 test subjects. To reproduce it, use the authors' own split, shipped with the package
(``--split mass-paper``; also ``sleepedf-20`` and ``sleepedf-78`` for Sleep-EDF):
:mod:`sleepstage_cli.training.reference_splits` turns it into this module's folds. The splits made here
from a seed (``--folds``) keep their defaults: a few of the non-test subjects of each fold validate,
4, or on small datasets a tenth of the non-test subjects (at least 1), so that most subjects still train.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sleepstage_cli import __version__
from sleepstage_cli.digests import file_sha256
from sleepstage_cli.errors import InputError
from sleepstage_cli.fsutil import read_json

SPLIT_FORMAT = "sleepstage-crossval-split"
DEFAULT_VAL_SUBJECTS = 4


@dataclass(frozen=True)
class Fold:
    """One fold: its 1-based number and its test, validation and training subjects."""

    index: int
    test: tuple[str, ...]
    val: tuple[str, ...]
    train: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"fold-{self.index:02d}"

    def to_json(self) -> dict:
        return {"fold": self.index, "test": list(self.test), "val": list(self.val), "train": list(self.train)}


@dataclass
class CVSplit:
    """The folds, how they were made (``made_by``: the options, or the split file) and remarks.

    A split file is named in ``made_by`` by its file name and sha256 (``made_by`` is written into the
    run folder); ``path`` says where it lies, for this process only. A shipped reference split is named
    by its name and sha256; ``reference`` (its source, credit and epoch-count comparison) goes into
    RUN/split.json.
    """

    folds: list[Fold]
    made_by: dict
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    reference: dict | None = None

    def to_json(self, dataset: dict | str = "") -> dict:
        """The content of RUN/split.json (what ``--split`` reads back); ``dataset`` as
        :meth:`~sleepstage_cli.data.dataset.PreparedDataset.identity` names it."""
        subjects = sorted({s for f in self.folds for s in (*f.test, *f.val, *f.train)})
        out = {"format": SPLIT_FORMAT, "format_version": 1, "sleepstage_version": __version__, "dataset": dataset,
               "made_by": self.made_by, "subjects": subjects, "folds": [f.to_json() for f in self.folds]}
        if self.reference is not None:
            out["reference"] = self.reference
        return out


def _listing(names: list[str], limit: int = 12) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _validation(rest: list[str], n_val: int, seed: int, index: int) -> list[str]:
    # One random stream per fold: a fold's validation subjects do not depend on the other folds.
    pick = np.random.default_rng([seed, index]).permutation(len(rest))[:n_val]
    return sorted(rest[i] for i in pick)


def default_val_subjects(n_subjects: int, largest_test: int) -> int:
    """4 (the original MASS setup), or a tenth of the non-test subjects when that is fewer (at least 1)."""
    return min(DEFAULT_VAL_SUBJECTS, max(1, (n_subjects - largest_test) // 10))


def make_split(subjects: list[str], folds: int, val_per_fold: int | None = None, seed: int = 0,
               test_fraction: float | None = None) -> CVSplit:
    """Shuffle ``subjects`` with ``seed`` and cut them into ``folds`` near-equal test groups.

    ``folds=1`` with ``test_fraction`` makes a single holdout split instead. Each fold's
    ``val_per_fold`` validation subjects (default: :func:`default_val_subjects`) are drawn from the
    subjects it does not test; the rest train.
    """
    subjects = sorted(subjects)
    n = len(subjects)
    if folds < 1:
        raise InputError("--folds must be at least 1")
    if val_per_fold is not None and val_per_fold < 0:
        raise InputError("--val-subjects-per-fold must be 0 or more")
    if seed < 0:
        raise InputError("--seed must be 0 or more")
    if test_fraction is not None:
        if folds != 1:
            raise InputError("--test-fraction makes one holdout split: use it with --folds 1")
        if not 0 < test_fraction < 1:
            raise InputError(f"--test-fraction must be between 0 and 1, got {test_fraction:g}")
    elif folds == 1:
        raise InputError("--folds 1 needs --test-fraction (e.g. --folds 1 --test-fraction 0.2 for a quick holdout)")
    if folds > n:
        raise InputError(f"--folds {folds} is more than the {n} subject(s) of the dataset: every fold needs its own "
                         "test subject")
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(n)]
    if folds == 1:
        groups = [order[:max(1, round(test_fraction * n))]]
    else:
        sizes = [n // folds + (1 if i < n % folds else 0) for i in range(folds)]
        starts = np.cumsum([0, *sizes]).tolist()
        groups = [order[a:b] for a, b in itertools.pairwise(starts)]
    largest = max(len(g) for g in groups)
    if val_per_fold is None:
        val_per_fold = default_val_subjects(n, largest)
    if n - largest - val_per_fold < 1:
        what = "a holdout split" if folds == 1 else f"{folds} folds"
        raise InputError(f"the dataset's {n} subject(s) are too few for {what}: a fold tests up to {largest} and "
                         f"validates on {val_per_fold} (--val-subjects-per-fold), leaving "
                         f"{n - largest - val_per_fold} to train on; use more folds or fewer validation subjects")
    out = []
    for i, test in enumerate(groups, 1):
        rest = [s for s in subjects if s not in set(test)]
        val = _validation(rest, val_per_fold, seed, i)
        out.append(Fold(i, tuple(sorted(test)), tuple(val), tuple(s for s in rest if s not in set(val))))
    made_by = {"folds": folds, "val_subjects_per_fold": val_per_fold, "test_fraction": test_fraction, "seed": seed}
    return CVSplit(out, made_by)


def _names(entry: dict, keys: tuple[str, ...], what: str, i: int, path: Path) -> list[str] | None:
    for key in keys:
        if key in entry and entry[key] is not None:
            value = entry[key]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
                raise InputError(f"fold {i}: {key!r} must be a list of subject names", path)
            return [str(v) for v in value]
    return None


def load_split(path: str | Path, subjects: list[str]) -> CVSplit:
    """Read a split file: ``{"folds": [{"test": [...], "val": [...], "train": [...]}, ...]}``.

    ``val`` (or ``validation``) may be left out (no validation: the last weights are kept) and
    ``train`` too (every other subject). RUN/split.json of an earlier run is such a file; the folds keep
    its ``fold`` numbers when every fold has a distinct one (a reference split's skipped folds leave gaps),
    else they are numbered from 1.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "split.json"  # a run folder: its split
    data = read_json(path, "split file")
    entries = data.get("folds") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise InputError("split file holds no folds (expected {\"folds\": [{\"test\": [...], \"val\": [...]}, ...]})",
                         path)
    known = set(subjects)
    tested: dict[str, int] = {}
    folds = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise InputError(f"fold {i} is not an object with 'test' and 'val' lists", path)
        test = _names(entry, ("test",), "test", i, path)
        val = _names(entry, ("val", "validation"), "validation", i, path) or []
        train = _names(entry, ("train",), "training", i, path)
        if not test:
            raise InputError(f"fold {i} has no test subjects", path)
        unknown = sorted({*test, *val, *(train or [])} - known)
        if unknown:
            raise InputError(f"fold {i} names subject(s) not in the dataset: {', '.join(unknown)} "
                             f"(it has: {_listing(sorted(known))})", path)
        for s in test:
            if s in tested:
                raise InputError(f"subject {s} is tested in folds {tested[s]} and {i}; a subject is tested once", path)
            tested[s] = i
        if set(test) & set(val):
            raise InputError(f"fold {i}: {', '.join(sorted(set(test) & set(val)))} both tested and validated on", path)
        if train is None:
            train = [s for s in sorted(known) if s not in set(test) | set(val)]
        elif set(train) & (set(test) | set(val)):
            raise InputError(f"fold {i}: {', '.join(sorted(set(train) & (set(test) | set(val))))} both trained on "
                             "and tested or validated on", path)
        if not train:
            raise InputError(f"fold {i} leaves no subject to train on", path)
        folds.append(Fold(i, tuple(sorted(test)), tuple(sorted(val)), tuple(sorted(train))))
    numbers = [e.get("fold") for e in entries]
    if all(type(n) is int and n >= 1 for n in numbers) and len(set(numbers)) == len(numbers):
        folds = [Fold(n, f.test, f.val, f.train) for n, f in zip(numbers, folds)]
    notes = []
    untested = sorted(known - set(tested))
    if untested:
        notes.append(f"{len(untested)} subject(s) of the dataset are in no test set of the split: {_listing(untested)}")
    return CVSplit(folds, {"file": path.name, "sha256": file_sha256(path)}, notes, path=path)
