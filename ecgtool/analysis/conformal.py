"""Split-conformal prediction and selective prediction (numpy only).

Calibrated on a held-out split (the validation split of ``probe`` and
``finetune``), applied to new records, with a finite-sample guarantee that
holds for any model as long as calibration and new records are exchangeable:

* **Exclusive classes: adaptive prediction sets** (APS; Romano, Sesia &
  Candès, NeurIPS 2020), in the non-randomised form. The score of a record is
  the probability mass of the classes ranked above its true class; ``qhat`` is
  the ``ceil((n + 1)(1 - alpha))``-th smallest calibration score. A new
  record's set holds the classes, most probable first, whose mass ranked above
  them is at most ``qhat``: the top class is always in it (sets are never
  empty) and the set grows where the model spreads its probability.
  Coverage ``P(true class in set) >= 1 - alpha`` (at most ``1 - alpha + 1 / (n
  + 1)`` when scores have no ties; more when the model is right on more than
  ``1 - alpha`` of the calibration records, because the score is then 0 for
  too many of them to split).
* **Multi-label: one decision per label** (class-conditional, "Mondrian",
  split conformal; Vovk et al. 2005). Per label, positives and negatives of
  the calibration split are calibrated separately: ``t_pos`` is the
  ``alpha``-level conformal lower bound of the positives' probabilities and
  ``t_neg`` the upper bound of the negatives'. The set of a new record holds 1
  if ``p >= t_pos`` and 0 if ``p <= t_neg``: {1} is *positive*, {0}
  *negative*, anything else *abstain* (both classes plausible, or neither).
  So a positive record is decided *negative* with probability at most
  ``alpha``, and a negative one *positive* at most ``alpha``, whatever the
  prevalence. A label with no positive (or no negative) record in the
  calibration split cannot be calibrated: it is reported as not computable,
  with the reason.

Selective prediction: the risk–coverage curve orders the records by the
model's confidence (multi-class: the top probability; multi-label: the
distance of the logit from the decision threshold) and gives, for every
fraction of records kept, the error rate among them; its area (AURC, the mean
risk over all coverages) summarises it (lower is better).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ecgtool.errors import UsageError

POSITIVE, NEGATIVE, ABSTAIN = 1, 0, -1
DECISIONS = {POSITIVE: "positive", NEGATIVE: "negative", ABSTAIN: "abstain"}


def check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"--alpha {alpha!r}: not a number", "e.g. --alpha 0.1 for 90% coverage") from None
    if not 0.0 < a < 1.0 or math.isnan(a):
        raise UsageError(f"--alpha {alpha}: must be between 0 and 1 (exclusive)",
                         "the miscoverage level: 0.1 asks for sets that hold the true class 90% of the time")
    return a


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ``k = ceil((n + 1)(1 - alpha))`` of the conformal quantile among ``n`` scores."""
    return int(math.ceil((n + 1) * (1.0 - alpha) - 1e-9))


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``k``-th smallest score (``k`` from :func:`conformal_rank`); ``inf`` when ``k > n``."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = conformal_rank(s.size, alpha)
    if k > s.size or s.size == 0:
        return math.inf
    return float(s[max(k, 1) - 1])


def min_calibration(alpha: float) -> int:
    """Smallest calibration set for which the conformal quantile is finite."""
    n = 1
    while conformal_rank(n, alpha) > n:
        n += 1
    return n


# --------------------------------------------------------------------------- exclusive classes (APS)


def _ranked(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class order by probability (descending; ties by class index) and the mass ranked above each rank."""
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(ps, axis=1) - ps
    return order, above


def aps_scores(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Probability mass of the classes ranked above the true class ``y`` (class indices)."""
    order, above = _ranked(probs)
    y = np.asarray(y, dtype=np.int64)
    rank = np.argmax(order == y[:, None], axis=1)
    return above[np.arange(len(y)), rank]


def calibrate_aps(probs: np.ndarray, y: np.ndarray, alpha: float, classes: Sequence[str]) -> dict:
    """APS calibration on (n, K) probabilities and true classes ``y`` (-1 = unknown, left out)."""
    alpha = check_alpha(alpha)
    y = np.asarray(y, dtype=np.int64)
    keep = y >= 0
    n = int(keep.sum())
    out: dict[str, Any] = {"method": "aps", "alpha": alpha, "classes": list(classes), "n_calibration": n}
    if n == 0:
        out.update(qhat=None, reason="no labelled record in the calibration split")
        return out
    q = conformal_quantile(aps_scores(np.asarray(probs)[keep], y[keep]), alpha)
    if math.isinf(q):
        out.update(qhat=None, trivial=True,
                   reason=f"{n} calibration records are too few for alpha={alpha:g} (at least "
                          f"{min_calibration(alpha)} needed): every set holds every class")
        return out
    out["qhat"] = q
    return out


def aps_sets(probs: np.ndarray, cal: dict) -> np.ndarray:
    """(n, K) booleans: class k is in the record's set. A trivial calibration gives every class."""
    p = np.asarray(probs, dtype=np.float64)
    if cal.get("qhat") is None:
        return np.ones_like(p, dtype=bool)
    order, above = _ranked(p)
    inside = above <= cal["qhat"] + 1e-12
    inside[:, 0] = True
    sets = np.zeros_like(inside)
    np.put_along_axis(sets, order, inside, axis=1)
    return sets


# --------------------------------------------------------------------------- per-label decisions


def calibrate_labels(probs: np.ndarray, Y: np.ndarray, M: np.ndarray | None, alpha: float,
                     names: Sequence[str]) -> dict:
    """Class-conditional split conformal per label: ``t_pos``, ``t_neg`` from (n, L) probabilities.

    ``Y`` (n, L) 0/1 with ``M`` (n, L) marking known labels (or NaN for unknown)."""
    alpha = check_alpha(alpha)
    P = np.asarray(probs, dtype=np.float64)
    Yf = np.asarray(Y, dtype=np.float64)
    M = np.isfinite(Yf) if M is None else np.asarray(M, dtype=bool)
    Yb = np.nan_to_num(Yf, nan=0.0) > 0.5
    labels: dict[str, dict] = {}
    need = min_calibration(alpha)
    for j, name in enumerate(names):
        m = M[:, j]
        pos, neg = P[m & Yb[:, j], j], P[m & ~Yb[:, j], j]
        e: dict[str, Any] = {"n_pos": int(pos.size), "n_neg": int(neg.size)}
        if pos.size == 0 or neg.size == 0:
            which = "positive" if pos.size == 0 else "negative"
            e.update(t_pos=None, t_neg=None, reason=f"not computable: no {which} record in the calibration split")
            labels[name] = e
            continue
        q1 = conformal_quantile(1.0 - pos, alpha)  # nonconformity of class 1: 1 - p
        q0 = conformal_quantile(neg, alpha)        # nonconformity of class 0: p
        e["t_pos"] = None if math.isinf(q1) else float(1.0 - q1)
        e["t_neg"] = None if math.isinf(q0) else float(q0)
        notes = []
        if e["t_pos"] is None:
            notes.append(f"{pos.size} positives are too few for alpha={alpha:g} (at least {need}): 1 is always "
                         "in the set, so the label is never decided negative")
        if e["t_neg"] is None:
            notes.append(f"{neg.size} negatives are too few for alpha={alpha:g} (at least {need}): 0 is always "
                         "in the set, so the label is never decided positive")
        if notes:
            e["note"] = "; ".join(notes)
        labels[name] = e
    return {"method": "class-conditional", "alpha": alpha, "labels": labels}


def label_computable(e: dict) -> bool:
    return "reason" not in e


def label_sets(probs: np.ndarray, cal: dict, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(has1, has0, computable): (n, L) booleans of the per-label sets, and (L,) computable labels."""
    P = np.asarray(probs, dtype=np.float64)
    n, L = P.shape
    has1 = np.ones((n, L), dtype=bool)
    has0 = np.ones((n, L), dtype=bool)
    ok = np.zeros(L, dtype=bool)
    for j, name in enumerate(names):
        e = cal["labels"].get(name)
        if e is None or not label_computable(e):
            continue
        ok[j] = True
        if e["t_pos"] is not None:
            has1[:, j] = P[:, j] >= e["t_pos"] - 1e-12
        if e["t_neg"] is not None:
            has0[:, j] = P[:, j] <= e["t_neg"] + 1e-12
    return has1, has0, ok


def label_decisions(probs: np.ndarray, cal: dict, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, L) int8 decisions (1 positive, 0 negative, -1 abstain) and (L,) computable labels."""
    has1, has0, ok = label_sets(probs, cal, names)
    d = np.full(has1.shape, ABSTAIN, dtype=np.int8)
    d[has1 & ~has0] = POSITIVE
    d[has0 & ~has1] = NEGATIVE
    return d, ok


def decision_names(d: np.ndarray, ok: np.ndarray) -> list[list[str | None]]:
    """Row-wise decision names; None for labels that are not computable."""
    out = []
    for row in d:
        out.append([DECISIONS[int(v)] if ok[j] else None for j, v in enumerate(row)])
    return out


# --------------------------------------------------------------------------- evaluation on a test split


def evaluate_sets(sets: np.ndarray, y: np.ndarray, classes: Sequence[str], n_boot: int, seed: int,
                  level: float) -> dict:
    """Coverage of APS sets on labelled test records, with a bootstrap CI; set sizes."""
    from ecgtool.analysis.metrics import bootstrap_mean

    y = np.asarray(y, dtype=np.int64)
    keep = y >= 0
    s, yk = sets[keep], y[keep]
    covered = s[np.arange(yk.size), yk].astype(np.float64)
    size = s.sum(axis=1)
    out: dict[str, Any] = {"n_test": int(yk.size),
                           "coverage": bootstrap_mean(covered, n_boot, seed, level)}
    if yk.size:
        out["mean_set_size"] = float(size.mean())
        out["set_size_counts"] = {str(k): int((size == k).sum()) for k in range(1, sets.shape[1] + 1)}
        out["singleton_accuracy"] = (float(covered[size == 1].mean()) if (size == 1).any() else None)
        out["coverage_per_class"] = {c: (float(covered[yk == k].mean()) if (yk == k).any() else None)
                                     for k, c in enumerate(classes)}
    return out


def evaluate_decisions(d: np.ndarray, ok: np.ndarray, Y: np.ndarray, M: np.ndarray, names: Sequence[str],
                       has1: np.ndarray, has0: np.ndarray, n_boot: int, seed: int, level: float) -> dict:
    """Per label: coverage (true class in the set) with CI, by class, decision rates and their accuracy."""
    from ecgtool.analysis.metrics import bootstrap_mean

    Yb = np.asarray(Y, dtype=bool)
    per: dict[str, dict] = {}
    cov_all = []
    for j, name in enumerate(names):
        m = np.asarray(M[:, j], dtype=bool)
        if not ok[j]:
            per[name] = {"computable": False}
            continue
        y = Yb[m, j]
        cov = np.where(y, has1[m, j], has0[m, j]).astype(np.float64)
        dj = d[m, j]
        e: dict[str, Any] = {"computable": True, "n_test": int(m.sum()),
                             "coverage": bootstrap_mean(cov, n_boot, seed, level),
                             "coverage_pos": float(cov[y].mean()) if y.any() else None,
                             "coverage_neg": float(cov[~y].mean()) if (~y).any() else None}
        if m.any():
            for key, v in (("positive", POSITIVE), ("negative", NEGATIVE), ("abstain", ABSTAIN)):
                e[f"rate_{key}"] = float((dj == v).mean())
            dec = dj != ABSTAIN
            e["decided_accuracy"] = (float(((dj[dec] == POSITIVE) == y[dec]).mean()) if dec.any() else None)
        per[name] = e
        c = np.full(len(m), np.nan)
        c[m] = cov
        cov_all.append(c)
    out: dict[str, Any] = {"per_label": per}
    if cov_all:
        C = np.column_stack(cov_all)
        cnt = np.isfinite(C).sum(axis=1)
        # per record: the share of its computable labels covered (NaN: none of them known)
        rec = np.where(cnt > 0, np.nansum(C, axis=1) / np.maximum(cnt, 1), np.nan)
        out["coverage_all_labels"] = bootstrap_mean(rec, n_boot, seed, level)
    return out


# --------------------------------------------------------------------------- selective prediction


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """The risk–coverage curve (most confident first; ties kept together) and its area (AURC)."""
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = c.size
    if n == 0:
        return {"n": 0, "aurc": None, "coverage": [], "risk": []}
    order = np.argsort(-c, kind="mergesort")
    err = np.cumsum(~ok[order])
    # at ties, only the end of each tie group is a point of the curve
    cs = c[order]
    last = np.r_[cs[1:] != cs[:-1], True]
    k = np.arange(1, n + 1)
    risk_k = err / k
    # AURC: mean over all n coverages, ties resolved to the risk at the end of their group
    grp_end = np.flatnonzero(last)
    idx = np.searchsorted(grp_end, np.arange(n))
    aurc = float(np.mean(risk_k[grp_end[idx]]))
    pts = grp_end
    if pts.size > 200:  # a compact curve for the report and the figure
        pick = np.unique(np.r_[np.linspace(0, pts.size - 1, 200).round().astype(int)])
        pts = pts[pick]
    return {"n": int(n), "aurc": aurc, "risk_at_full_coverage": float(risk_k[-1]),
            "coverage": (k[pts] / n).round(6).tolist(), "risk": risk_k[pts].round(6).tolist()}


def selective_multiclass(probs: np.ndarray, y: np.ndarray) -> dict:
    y = np.asarray(y, dtype=np.int64)
    keep = y >= 0
    p = np.asarray(probs, dtype=np.float64)[keep]
    rc = risk_coverage(p.max(axis=1), p.argmax(axis=1) == y[keep])
    rc["confidence"] = "top-class probability"
    return rc


def selective_labels(probs: np.ndarray, Y: np.ndarray, M: np.ndarray, thresholds,
                     names: Sequence[str]) -> dict:
    """Per label (decision ``p >= threshold``, confidence ``|logit p - logit threshold|``); macro AURC.

    ``thresholds``: (L,) values, or (n, L) per record (cross-validation folds); None/NaN = no threshold."""
    from scipy.special import logit

    P = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    Yb = np.asarray(Y, dtype=bool)
    T = np.array([[np.nan if v is None else float(v) for v in np.atleast_1d(thresholds)]]) \
        if np.ndim(thresholds) <= 1 else np.asarray(thresholds, dtype=np.float64)
    T = np.broadcast_to(T, P.shape)
    per, vals = {}, []
    for j, name in enumerate(names):
        m = np.asarray(M[:, j], dtype=bool) & np.isfinite(T[:, j])
        if not np.isfinite(T[:, j]).any() or not m.any():
            per[name] = {"aurc": None, "reason": "no threshold (the validation split has a single class)"
                         if not np.isfinite(T[:, j]).any() else "no labelled test record"}
            continue
        t = np.clip(T[m, j], 1e-12, 1 - 1e-12)
        p = P[m, j]
        rc = risk_coverage(np.abs(logit(p) - logit(t)), (p >= t) == Yb[m, j])
        per[name] = rc
        vals.append(rc["aurc"])
    return {"confidence": "distance of the logit from the validation threshold", "per_label": per,
            "macro_aurc": float(np.mean(vals)) if vals else None}
