"""Label values as every command reads them: 1 / 0 / null, class names, duplicate record ids.

* A label cell is **1**, **0** or **null**. Null (None, NaN, blank text or
  ``nan`` / ``na`` / ``n/a`` / ``null`` / ``none``; see
  :data:`ecgtool.evaluation.values.MISSING_TEXT`) means *unobserved*: the
  record is left out of that label only. 1 and 0 may be numbers, booleans or
  text (``1``, ``1.0``, ``true``, ``yes``, ``y``; ``0``, ``0.0``, ``false``,
  ``no``, ``n``); anything else is an error naming the label and the value.
* A column of class names (CinC 2017's ``N`` / ``A`` / ``O`` / ``~``) gives
  one class per distinct name (as :func:`ecgtool.evaluation.values.value_text`
  writes it, so ``1`` and ``1.0`` are one class); null is no class.
* Exclusive classes from several 1/0 columns (:func:`class_targets`): a row
  belongs to a class when exactly one column holds 1; a row with observed
  values but not exactly one 1 is left out, with a warning.
* A record_id listed more than once in a label table
  (:func:`unique_label_rows`): when its rows agree on every label column in
  use, one row is kept and a warning names the ids; when they disagree, that
  is an error naming the first such ids, since no row can be preferred.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from ecgtool.errors import InputError
from ecgtool.evaluation.values import is_missing, value_text

log = logging.getLogger("ecgtool")

LABEL_HINT = "label values are 1, 0 or null (unobserved)"
_TRUE = frozenset({"1", "true", "yes", "y"})
_FALSE = frozenset({"0", "false", "no", "n"})


def label_value(v: Any) -> float:
    """1.0, 0.0 or NaN (null = unobserved) for one label cell; ``ValueError`` for anything else."""
    if is_missing(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        return float(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
    else:
        s = str(v).strip().lower()
        if s in _TRUE:
            return 1.0
        if s in _FALSE:
            return 0.0
        try:
            f = float(s)
        except ValueError:
            raise ValueError(f"value {v!r} is not 1, 0 or null") from None
    if f not in (0.0, 1.0):
        raise ValueError(f"value {v!r} is not 1, 0 or null")
    return f


def binary_values(name: str, values: Sequence, source: str | None = None, hint: str = LABEL_HINT) -> np.ndarray:
    """A label column as float64 1.0 / 0.0 / NaN (null); an ``InputError`` names the label and a bad value."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = label_value(v)
        except ValueError as exc:
            where = f"{source}: " if source else ""
            raise InputError(f"{where}label column '{name}': {exc}", hint) from None
    return out


def label_matrix(columns: Mapping[str, Sequence], names: Sequence[str], source: str | None = None,
                 hint: str = LABEL_HINT) -> np.ndarray:
    """(n, K) float32 with 1 / 0 and NaN for null, from label columns (see :func:`binary_values`)."""
    n = len(next(iter(columns.values()))) if columns else 0
    out = np.empty((n, len(names)), dtype=np.float32)
    for k, name in enumerate(names):
        out[:, k] = binary_values(name, columns[name], source, hint)
    return out


def is_class_column(values: Sequence) -> bool:
    """True when a column holds class names rather than 1 / 0 / null."""
    try:
        for v in values:
            label_value(v)
    except ValueError:
        return True
    return False


def class_names(values: Sequence) -> list[str | None]:
    """Each cell's class name (:func:`~ecgtool.evaluation.values.value_text`; ``None`` = no class)."""
    return [value_text(v) for v in values]


def class_columns(values: Sequence) -> tuple[list[str], dict[str, list]]:
    """A column of class names -> (sorted class names, one 1 / 0 / null column per class)."""
    names = class_names(values)
    classes = sorted({v for v in names if v is not None})
    return classes, {c: [None if v is None else int(v == c) for v in names] for c in classes}


def class_index(values: Sequence) -> tuple[np.ndarray, list[str]]:
    """A column of class names -> (class index per row, -1 where null; sorted class names)."""
    names = class_names(values)
    classes = sorted({v for v in names if v is not None})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([-1 if v is None else index[v] for v in names], dtype=np.int64), classes


def class_targets(onehot: np.ndarray, names: Sequence[str], source: str | None = None) -> tuple[np.ndarray, int]:
    """Exclusive classes from (n, K) 1 / 0 / NaN columns: the class index where exactly one column is 1, else -1.

    Returns (targets, number of rows with an observed value that are not in exactly one class); those rows
    are left out with a warning. Rows that are null throughout are simply unlabelled.
    """
    b = np.asarray(onehot, dtype=np.float64)
    ones = np.nansum(b, axis=1)
    one = ones == 1
    target = np.where(one, np.argmax(np.nan_to_num(b, nan=0.0), axis=1), -1).astype(np.int64)
    observed = ~np.isnan(b).all(axis=1) if b.shape[1] else np.zeros(len(b), dtype=bool)
    n_bad = int((observed & ~one).sum())
    if n_bad:
        n_many = int((ones > 1).sum())
        log.warning("%s%d row(s) are not in exactly one of the classes %s (%d in more than one, %d in none); "
                    "they are left out", f"{source}: " if source else "", n_bad, ", ".join(names), n_many,
                    n_bad - n_many)
    return target, n_bad


def _cell_key(v: Any):
    """What two duplicate rows are compared by: the label value, else the class name."""
    try:
        f = label_value(v)
    except ValueError:
        return value_text(v)
    return None if f != f else f


def unique_label_rows(ids: Sequence, columns: Mapping[str, Sequence], source: str = "labels"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique record ids, the label-table row kept for each), by the duplicate rule.

    A record_id on several rows that agree on every column of ``columns`` (the label columns in use) keeps
    its first row, with a warning naming such ids; rows that disagree are an ``InputError`` naming the first
    ids (in table order) whose rows differ, and a column where they do.
    """
    ids = np.array([str(v) for v in ids], dtype=object)
    if ids.size == 0:
        return ids, np.zeros(0, dtype=np.int64)
    uniq, first, inverse, counts = np.unique(ids.astype(str), return_index=True, return_inverse=True,
                                             return_counts=True)
    uniq = uniq.astype(object)
    dup = np.flatnonzero(counts > 1)
    if dup.size == 0:
        return uniq, first.astype(np.int64)
    order = np.argsort(inverse.ravel(), kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    conflicts: list[tuple[int, str, str, Any, Any]] = []
    for g in dup:
        rows = order[starts[g]:starts[g] + counts[g]]
        for name, col in columns.items():
            keys = [_cell_key(col[r]) for r in rows]
            if any(k != keys[0] for k in keys[1:]):
                other = next(col[r] for r, k in zip(rows, keys) if k != keys[0])
                conflicts.append((int(first[g]), str(uniq[g]), name, col[rows[0]], other))
                break
    if conflicts:
        conflicts.sort()
        shown = [c[1] for c in conflicts[:5]]
        _, rid, name, a, b = conflicts[0]
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise InputError(f"{source}: record_id {', '.join(repr(s) for s in shown)}{more} "
                         f"{'appears' if len(conflicts) == 1 else 'appear'} more than once with different labels "
                         f"(e.g. {rid!r}: '{name}' is {_show(a)} in one row and {_show(b)} in another)",
                         "keep one row per record_id in the label table")
    shown = [str(uniq[g]) for g in dup[np.argsort(first[dup])][:5]]
    log.warning("%s: %d record_id(s) appear more than once with the same labels (e.g. %s); one row of each "
                "is used", source, dup.size, ", ".join(repr(s) for s in shown))
    return uniq, first.astype(np.int64)


def _show(v: Any) -> str:
    k = _cell_key(v)
    if k is None:
        return "null"
    return str(int(k)) if isinstance(k, float) else repr(k)


def join_rows(record_ids: Sequence, label_ids: Sequence, columns: Mapping[str, Sequence],
              source: str = "labels") -> np.ndarray:
    """The label-table row of each record id (-1 where it has none), duplicates resolved by
    :func:`unique_label_rows`."""
    uniq, first = unique_label_rows(label_ids, columns, source)
    pos = dict(zip(uniq.tolist(), first.tolist()))
    return np.array([pos.get(str(r), -1) for r in record_ids], dtype=np.int64)
