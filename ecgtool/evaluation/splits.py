"""Train / validation / test splits: by lists of folds, or at random with whole groups per split.

* :func:`fold_split`: a fold column and the folds for validation and test
  (``"8,9"``, ``["8", "9"]``, ``9`` or ``9.0`` alike: fold values are compared
  as :func:`ecgtool.evaluation.values.value_text` writes them); train is every
  other fold; rows without a fold are in no split.
* :func:`assign_groups`: each group (patient; a row without a group id is its
  own group, or its record's) goes whole to one part; parts are filled
  largest group first (random order among equal sizes, seeded) into the part
  furthest below its share of rows, so part sizes come as close to the
  fractions as whole groups allow. With ``strata`` (e.g. a class per row)
  each group counts in its most common stratum and every stratum is shared
  out by the fractions on its own. :func:`grouped_split` (train / val /
  test fractions) and :func:`group_folds` (k equal folds) are the two uses.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ecgtool.errors import InputError, UsageError
from ecgtool.evaluation.values import value_text, value_texts

PATIENT_ID = "patient_id"
RECORD_ID = "record_id"


# --------------------------------------------------------------------------- folds


def parse_folds(spec: Any) -> list[str]:
    """Fold values from ``"8,9"``, a list of values, or one value; normalised, in order, without repeats."""
    if spec is None:
        return []
    items: Iterable[Any] = [spec] if isinstance(spec, str) or np.ndim(spec) == 0 else list(spec)
    out: list[str] = []
    for item in items:
        parts = item.split(",") if isinstance(item, str) else [item]
        for p in parts:
            v = value_text(p)
            if v is not None and v not in out:
                out.append(v)
    return out


def fold_order(v: str):
    """Sort key for fold values: numbers by value, then text."""
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def fold_split(folds: Sequence, val: Any, test: Any = (), column: str = "fold", val_option: str = "--val-folds",
               test_option: str = "--test-folds", require_test: bool = False, unit: str = "row"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test) from a fold column; ``val`` / ``test`` are fold lists (:func:`parse_folds`).

    A validation or test split that no row falls in, validation and test sharing a fold, or nothing left to
    train on is a ``UsageError`` (naming ``column``, the options and the folds present).
    """
    vals = value_texts(folds)
    vs, ts = parse_folds(val), parse_folds(test)
    both = sorted(set(vs) & set(ts), key=fold_order)
    if both:
        raise UsageError(f"fold {', '.join(both)} is in both {test_option} and {val_option}", "they must differ")
    if not vs:
        raise UsageError("no validation fold given", f"name one with {val_option}")
    if require_test and not ts:
        raise UsageError("no test fold given", f"name one with {test_option}")
    in_val = np.array([v in vs for v in vals], dtype=bool)
    in_test = np.array([v in ts for v in vals], dtype=bool)
    has = np.array([v is not None for v in vals], dtype=bool)
    present = sorted({v for v in vals if v is not None}, key=fold_order)
    hint = f"folds present: {', '.join(present[:20])}" if present else f"the column {column!r} is empty"
    for what, sel, want in (("validation", in_val, vs), ("test", in_test, ts)):
        if want and not sel.any():
            raise UsageError(f"{column}: no {unit} is in {what} fold {', '.join(want)}", hint)
    train = np.flatnonzero(has & ~in_val & ~in_test)
    if train.size == 0:
        raise UsageError(f"{column}: no {unit} is left for training", hint)
    return train, np.flatnonzero(in_val), np.flatnonzero(in_test)


# --------------------------------------------------------------------------- groups


def default_group_column(columns: Iterable[str]) -> str:
    """The column a random split is grouped by when none is named: patient_id if there is one, else record_id."""
    return PATIENT_ID if PATIENT_ID in set(columns) else RECORD_ID


def group_keys(values: Sequence, fallback: Sequence | None = None) -> np.ndarray:
    """One text key per row; a row without a group id is its own group (its record's, with ``fallback``)."""
    keys = value_texts(values)
    for i in np.flatnonzero([k is None for k in keys]):
        keys[i] = f"\x00record:{fallback[i]}" if fallback is not None else f"\x00row{i}"
    return keys


def assign_groups(groups: Sequence, fractions: Sequence[float], seed: int = 0, strata: Sequence | None = None,
                  hint: str | None = None) -> np.ndarray:
    """The part (index into ``fractions``) of every row; all rows of a group share one part.

    Every part with a fraction above 0 gets at least one group; parts with fraction 0 get none.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.ndim != 1 or frac.size == 0 or (frac < 0).any() or not frac.sum() > 0:
        raise ValueError(f"fractions {list(fractions)}: one or more values >= 0 with a positive sum")
    frac = frac / frac.sum()
    keys = group_keys(groups)
    uniq, inverse, sizes = np.unique(keys.astype(str), return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    n = uniq.size
    active = np.flatnonzero(frac > 0)
    if n < active.size:
        raise InputError(f"{n} group(s) cannot fill {active.size} splits",
                         hint or "give more patients/records, or split by a fold column")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(-sizes[perm], kind="stable")]  # large groups first, random among equals
    off = np.where(frac > 0, 0.0, -np.inf)
    part = np.empty(n, dtype=np.int64)
    target = frac * float(sizes.sum())
    load = np.zeros(frac.size)
    if strata is None:
        for gi in order:
            p = int(np.argmax(target - load + off))
            part[gi] = p
            load[p] += sizes[gi]
    else:
        s_keys = np.array(["\x00" if v is None else v for v in value_texts(strata)], dtype=str)
        s_uniq, s_inv = np.unique(s_keys, return_inverse=True)
        counts = np.zeros((n, s_uniq.size), dtype=np.int64)
        np.add.at(counts, (inverse, s_inv.ravel()), 1)
        g_stratum = counts.argmax(axis=1)  # most common stratum of the group (ties: the first)
        s_target = frac[None, :] * np.bincount(g_stratum, weights=sizes, minlength=s_uniq.size)[:, None]
        s_load = np.zeros_like(s_target)
        for gi in order:
            s = g_stratum[gi]
            d = s_target[s] - s_load[s] + off
            best = np.flatnonzero(d >= d.max() - 1e-9)
            p = int(best[np.argmax((target - load)[best])])
            part[gi] = p
            load[p] += sizes[gi]
            s_load[s, p] += sizes[gi]
    # a part left without a group (few groups, or one large group) takes the smallest group of the fullest part
    for p in active:
        if (part == p).any():
            continue
        n_per = np.bincount(part, minlength=frac.size)
        donor = int(np.argmax(n_per))
        mine = np.flatnonzero(part == donor)
        part[mine[np.argmin(sizes[mine])]] = p
    return part[inverse]


def check_fractions(val_fraction: float, test_fraction: float = 0.0, val_option: str = "--val-fraction",
                    test_option: str = "--test-fraction") -> None:
    if not (0.0 < val_fraction < 1.0) or not (0.0 <= test_fraction < 1.0) or val_fraction + test_fraction >= 1.0:
        raise UsageError(f"{val_option} {val_fraction} / {test_option} {test_fraction}: each in (0, 1) "
                         "and together below 1")


def grouped_split(groups: Sequence, val_fraction: float, test_fraction: float = 0.0, seed: int = 0,
                  strata: Sequence | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test): every group on one side, sizes by rows near the fractions."""
    check_fractions(val_fraction, test_fraction)
    part = assign_groups(groups, [1.0 - val_fraction - test_fraction, val_fraction, test_fraction], seed, strata,
                         "give more patients/records or use --fold-column")
    return np.flatnonzero(part == 0), np.flatnonzero(part == 1), np.flatnonzero(part == 2)


def group_folds(groups: Sequence, k: int, seed: int = 0, strata: Sequence | None = None) -> np.ndarray:
    """A fold number 0..k-1 per row; all rows of a group share one fold; folds balanced by rows."""
    if k < 2:
        raise UsageError(f"{k} fold(s): grouped folds need 2 or more")
    n = np.unique(group_keys(groups).astype(str)).size
    if n < k:
        raise UsageError(f"{n} groups cannot make {k} folds", "lower --cv")
    return assign_groups(groups, [1.0 / k] * k, seed, strata)
