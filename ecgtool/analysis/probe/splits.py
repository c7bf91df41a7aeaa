"""The splits of a probe: one by a fold column, or grouped k-fold cross-validation.

The fold and group rules are :mod:`ecgtool.evaluation.splits`' (which
``finetune`` shares); this module names each split and, for
cross-validation, takes fold ``i`` as test and fold ``i+1`` as validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgtool.errors import UsageError
from ecgtool.evaluation import splits as es
from ecgtool.evaluation.splits import group_folds

__all__ = ["Split", "fold_splits", "group_folds", "group_cv_splits"]


@dataclass
class Split:
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def fold_splits(folds: np.ndarray, test_fold: str, val_fold: str, col: str = "fold") -> list[Split]:
    """One split: test = the ``test_fold`` folds (comma-separated), validation = ``val_fold``'s, train = the rest
    (:func:`ecgtool.evaluation.splits.fold_split`: 9 and 9.0 are one fold)."""
    train, val, test = es.fold_split(folds, val_fold, test_fold, column=col, require_test=True, unit="record")
    test_set = es.parse_folds(test_fold)
    label = ",".join(sorted(test_set, key=es.fold_order))
    return [Split(f"test fold{'s' if len(test_set) > 1 else ''} {label}", train, val, test)]


def group_cv_splits(groups: np.ndarray, k: int, seed: int = 0) -> list[Split]:
    if k < 3:
        raise UsageError(f"--cv {k}: grouped cross-validation needs 3 folds or more",
                         "one fold tests, the next validates, the rest train")
    fold = group_folds(groups, k, seed)
    out = []
    for i in range(k):
        v = (i + 1) % k
        out.append(Split(f"cv fold {i + 1}/{k}", np.flatnonzero((fold != i) & (fold != v)),
                         np.flatnonzero(fold == v), np.flatnonzero(fold == i)))
    return out
