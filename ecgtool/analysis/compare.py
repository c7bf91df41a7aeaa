"""Paired comparison of models on the same records and labels.

Given the scores of two or more models on the same test records, this module
gives, per label and for the macro average, each model's AUROC, AUPRC and F1
(at the model's own validation threshold) and the difference of every model
from a reference model, each with a **paired bootstrap** interval: every
resample draws records once and all models are evaluated on it, so the
interval of a difference reflects the correlation between the models (a
difference can be certain while the two single intervals overlap). AUROC
differences also get **DeLong's test** (DeLong, DeLong & Clarke-Pearson 1988,
in the fast form of Sun & Xu 2014): the z statistic and two-sided p value of
the difference of two correlated AUROCs.

Speed: the resamples are multinomial count vectors, ``chunk`` at a time, laid
out records × resamples. For each label and model the positives and the
negatives are sorted once; per block of resamples, AUROC is one cumulative sum
of the negatives' counts read at the positives' ranks (ties count one half),
AUPRC the same sums plus one over the positives (scikit-learn's step-wise
average precision), and F1 one matrix product of the counts with indicator
columns. Point estimates use :mod:`ecgtool.analysis.metrics` directly, so
they are exactly those of ``probe``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ecgtool.analysis import metrics as mt
from ecgtool.errors import InputError, UsageError
from ecgtool.io.schema import TableMeta

log = logging.getLogger("ecgtool")

COMPARED = ("auroc", "auprc", "f1")


# =========================================================================== the paired bootstrap


@dataclass
class _Plan:
    """One (label, model) pair: the positives in ascending score order, and the negatives grouped by
    how many positives score at or below them (so that a sparse product sums a resample's negative
    counts below each positive without sorting them)."""

    pos: np.ndarray        # record rows of the positives, ascending score
    plo: np.ndarray        # per positive: positives strictly below
    below: object          # csr (m + 1, n): row g sums the negatives with exactly g positives at or below
    below_eq: object       # the same with "strictly below" (None without ties between the classes)


def _plan(y: np.ndarray, s: np.ndarray, rows: np.ndarray, n: int) -> tuple[_Plan, np.ndarray]:
    """The bootstrap plan of one (label, model) and its DeLong placement values, from one sort.

    Returns the plan and, for the known ``rows`` in their order, the placement value of each record
    (DeLong's structural components): for a positive the share of negatives below it, for a negative
    the share of positives above it (ties count one half)."""
    import scipy.sparse as sp

    ys = y[rows]
    o = np.argsort(s[rows], kind="mergesort")
    so, yo = s[rows][o], ys[o]
    m_tot = int(yo.sum())
    first = np.r_[True, so[1:] != so[:-1]] if so.size else np.zeros(0, dtype=bool)
    gid = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], so.size]                 # group end, exclusive
    cpos = np.r_[0, np.cumsum(yo)]                     # positives before position i
    cneg = np.r_[0, np.cumsum(~yo)]
    pos_lt, pos_le = cpos[starts][gid], cpos[ends][gid]  # positives strictly below / at or below each score
    neg_lt, neg_le = cneg[starts][gid], cneg[ends][gid]
    n_neg = so.size - m_tot
    # placement values (sorted order), scattered back to the order of ``rows``
    place = np.empty(so.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        place[yo] = (neg_lt[yo] + 0.5 * (neg_le[yo] - neg_lt[yo])) / n_neg
        place[~yo] = (m_tot - pos_le[~yo] + 0.5 * (pos_le[~yo] - pos_lt[~yo])) / m_tot
    v = np.empty(so.size)
    v[o] = place
    pr = rows[o[yo]]
    nr = rows[o[~yo]]
    ones = np.ones(nr.size, dtype=np.float32)
    c, c2 = pos_le[~yo], pos_lt[~yo]
    below = sp.csr_matrix((ones, (c, nr)), shape=(m_tot + 1, n))
    below_eq = sp.csr_matrix((ones, (c2, nr)), shape=(m_tot + 1, n)) if np.any(c2 != c) else None
    plo = pos_lt[yo]
    return _Plan(pr, plo, below, below_eq), v


_TRIL: dict[int, np.ndarray] = {}


def prefix_sums(X: np.ndarray, block: int = 16) -> np.ndarray:
    """(m + 1, b) running sums down the rows of ``X`` (m, b), starting with a row of zeros.

    numpy's cumulative sum down the rows of a row-major array walks each column with a stride;
    in blocks of ``block`` rows the sums within a block are one matrix product with a lower
    triangle of ones (BLAS), and the blocks' totals are carried over in a short loop (exact for
    counts below 2**24 in float32)."""
    m, b = X.shape
    out = np.empty((m + 1, b), dtype=np.float32)
    out[0] = 0.0
    nb = m // block
    m0 = nb * block
    if nb:
        Lt = _TRIL.get(block)
        if Lt is None:
            Lt = _TRIL[block] = np.tril(np.ones((block, block), dtype=np.float32))
        Y = np.matmul(Lt, X[:m0].reshape(nb, block, b))
        tot = Y[:, -1, :]
        off = np.cumsum(tot, axis=0) - tot
        Y += off[:, None, :]
        out[1:m0 + 1] = Y.reshape(m0, b)
    if m0 < m:
        out[m0 + 1:] = out[m0] + np.cumsum(X[m0:], axis=0)
    return out


def _ranking_boot(plan: _Plan, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AUPRC of one (label, model) for each column of ``W`` (n, b) of record counts."""
    m = plan.pos.size
    Cn = prefix_sums(np.asarray(plan.below @ W, dtype=np.float32))  # (m + 2, b): row i = negatives below positive i
    below = Cn[1:m + 1]
    N = Cn[-1]
    G = below if plan.below_eq is None else \
        0.5 * (below + prefix_sums(np.asarray(plan.below_eq @ W, dtype=np.float32))[1:m + 1])
    Wp = W[plan.pos]
    Cp = prefix_sums(Wp)
    P = Cp[-1]
    num = np.einsum("ib,ib->b", Wp, G, dtype=np.float64)
    tp = Cp[plan.plo]
    np.subtract(P, tp, out=tp)               # positives at or above each positive
    den = np.subtract(N, below)              # negatives at or above
    den += tp
    np.maximum(den, 1e-30, out=den)
    np.divide(tp, den, out=den)              # precision at each positive's score
    ap_num = np.einsum("ib,ib->b", Wp, den, dtype=np.float64)
    P64, N64 = P.astype(np.float64), N.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = num / (P64 * N64)
        ap = ap_num / P64
    bad = (P64 <= 0) | (N64 <= 0)
    auc[bad] = np.nan
    ap[bad] = np.nan
    return auc, ap


class PairedEngine:
    """AUROC, AUPRC and F1 of several models for any rows of record weights (resamples, jackknife)."""

    def __init__(self, Y: np.ndarray, M: np.ndarray, scores: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                 has_pred: Sequence[np.ndarray], threads: int | None = None):
        from ecgtool.io.threads import default_threads

        self.threads = default_threads() if threads is None else max(1, int(threads))
        self.Y = Y = np.asarray(Y, dtype=bool)
        self.M = M = np.asarray(M, dtype=bool)
        self.n, self.L = Y.shape
        self.K = len(scores)
        S = [np.asarray(s, dtype=np.float64) for s in scores]
        Pr = [np.asarray(p, dtype=bool) for p in preds]
        H = [np.asarray(h, dtype=bool) for h in has_pred]
        self.plans: dict[tuple[int, int], _Plan] = {}
        self.placements: dict[tuple[int, int], np.ndarray] = {}  # DeLong's components, known rows in order
        for j in range(self.L):
            rows = np.flatnonzero(M[:, j])
            y = Y[:, j]
            if not (y[rows].any() and (~y[rows]).any()):
                continue
            for k in range(self.K):
                self.plans[(j, k)], self.placements[(j, k)] = _plan(y, S[k][:, j], rows, self.n)
        # indicator columns for F1: tp and predicted positives per (label, model), positives per label
        cols, self.index = [], {}
        for j in range(self.L):
            known = M[:, j]
            self.index[("pos", j)] = len(cols)
            cols.append(Y[:, j] & known)
            for k in range(self.K):
                if H[k][j]:
                    self.index[("tp", j, k)] = len(cols)
                    cols.append(Y[:, j] & Pr[k][:, j] & known)
                    self.index[("pp", j, k)] = len(cols)
                    cols.append(Pr[k][:, j] & known)
        self.C = np.column_stack(cols).astype(np.float32)

    def __call__(self, Wt: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Metrics for each row of ``Wt`` (b, n)."""
        b = Wt.shape[0]
        out = [{m: np.full((b, self.L), np.nan) for m in COMPARED} for _ in range(self.K)]
        W = np.ascontiguousarray(Wt.T, dtype=np.float32)  # (n, b): rows are records
        keys = list(self.plans)
        if self.threads > 1 and len(keys) > 1:
            # numpy and scipy.sparse release the GIL in these loops: (label, model) pairs run in parallel
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.threads, thread_name_prefix="ecgtool-compare") as ex:
                results = list(ex.map(lambda key: _ranking_boot(self.plans[key], W), keys))
        else:
            results = [_ranking_boot(self.plans[key], W) for key in keys]
        for (j, k), (auc, ap) in zip(keys, results):
            out[k]["auroc"][:, j] = auc
            out[k]["auprc"][:, j] = ap
        counts = (np.asarray(Wt, dtype=np.float32) @ self.C).astype(np.float64)
        for j in range(self.L):
            pos = counts[:, self.index[("pos", j)]]
            for k in range(self.K):
                if ("tp", j, k) not in self.index:
                    continue
                tp = counts[:, self.index[("tp", j, k)]]
                pp = counts[:, self.index[("pp", j, k)]]
                with np.errstate(invalid="ignore", divide="ignore"):
                    f1 = 2 * tp / (pp + pos)
                f1[pos <= 0] = np.nan
                out[k]["f1"][:, j] = f1
        return out


def paired_bootstrap(Y: np.ndarray, M: np.ndarray, scores: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                     has_pred: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0,
                     max_cells: int = 4_000_000, threads: int | None = None) -> dict:
    """Point values and bootstrap values of AUROC, AUPRC and F1 for several models on the same resamples.

    ``Y`` (n, L) truth, ``M`` (n, L) known, ``scores[m]`` (n, L), ``preds[m]`` (n, L) booleans,
    ``has_pred[m]`` (L,) whether model m has a decision for the label.
    Returns ``{"point": [{metric: (L,)} per model], "boot": [{metric: (B, L)} per model], "engine"}``;
    ``engine(weights)`` evaluates any other weight rows (the jackknife for BCa).
    The resamples are those of :func:`ecgtool.analysis.metrics.evaluate` with the same ``seed``
    (and the same record order), so a single model's intervals equal ``probe``'s.
    """
    Y = np.asarray(Y, dtype=bool)
    M = np.asarray(M, dtype=bool)
    n, L = Y.shape
    K = len(scores)
    engine = PairedEngine(Y, M, scores, preds, has_pred, threads)
    # unit weights: AUROC and F1 are ratios of exact integer sums, so they equal metrics.evaluate's (probe's)
    # bit for bit; AUPRC (a sum of ratios) is computed by metrics itself for the same reason
    unit = engine(np.ones((1, n), dtype=np.float32)) if n else None
    point = []
    for k in range(K):
        S = np.asarray(scores[k], dtype=np.float64)
        pk = {m: (unit[k][m][0].copy() if unit is not None else np.full(L, np.nan)) for m in COMPARED}
        for j in range(L):
            if np.isfinite(pk["auroc"][j]):
                w = np.ones((1, n)) if M[:, j].all() else M[:, j][None].astype(np.float64)
                pk["auprc"][j] = mt.auprc_weighted(Y[:, j], S[:, j], w)[0]
            else:
                pk["auprc"][j] = np.nan
        point.append(pk)
    boot = [{m: np.full((max(n_boot, 0), L), np.nan) for m in COMPARED} for _ in range(K)]
    if n_boot > 0 and n > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, int(max_cells // max(n, 1)))
        done = 0
        for Wt in mt.bootstrap_weights(n, n_boot, rng, chunk):
            b = Wt.shape[0]
            res = engine(Wt)
            for k in range(K):
                for m in COMPARED:
                    boot[k][m][done:done + b] = res[k][m]
            done += b
    return {"point": point, "boot": boot, "engine": engine, "seed": seed}


# =========================================================================== DeLong


def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong(y: np.ndarray, scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (K,) and their covariance matrix (K, K) by DeLong's method (fast form, Sun & Xu 2014)."""
    y = np.asarray(y, dtype=bool)
    m, nn = int(y.sum()), int((~y).sum())
    if m == 0 or nn == 0:
        k = len(scores)
        return np.full(k, np.nan), np.full((k, k), np.nan)
    v10, v01, aucs = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        r = _midrank(s)
        rx = _midrank(s[y])
        ry = _midrank(s[~y])
        a = (r[y] - rx) / nn          # per positive: share of negatives below (ties 1/2)
        b = 1.0 - (r[~y] - ry) / m    # per negative: share of positives above (ties 1/2)
        v10.append(a)
        v01.append(b)
        aucs.append(a.mean())
    V10, V01 = np.array(v10), np.array(v01)
    S10 = np.atleast_2d(np.cov(V10)) if m > 1 else np.zeros((len(scores), len(scores)))
    S01 = np.atleast_2d(np.cov(V01)) if nn > 1 else np.zeros((len(scores), len(scores)))
    return np.array(aucs), S10 / m + S01 / nn


def delong_test(y: np.ndarray, s_a: np.ndarray, s_b: np.ndarray) -> dict:
    """DeLong's paired test of AUROC(a) − AUROC(b): difference, SE, z, two-sided p."""
    aucs, cov = delong(y, [s_a, s_b])
    return _delong_z(aucs, cov)


def delong_from(y: np.ndarray, place_a: np.ndarray, place_b: np.ndarray) -> dict:
    """:func:`delong_test` from the placement values of the two models (see ``_plan``)."""
    y = np.asarray(y, dtype=bool)
    m, nn = int(y.sum()), int((~y).sum())
    V10 = np.vstack([place_a[y], place_b[y]])
    V01 = np.vstack([place_a[~y], place_b[~y]])
    S10 = np.cov(V10) if m > 1 else np.zeros((2, 2))
    S01 = np.cov(V01) if nn > 1 else np.zeros((2, 2))
    return _delong_z(V10.mean(axis=1), S10 / m + S01 / nn)


def _delong_z(aucs: np.ndarray, cov: np.ndarray) -> dict:
    from scipy.special import ndtr

    if not np.isfinite(aucs).all():
        return {"z": None, "p": None, "se": None}
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not var > 1e-300:
        return {"z": None, "p": 1.0 if diff == 0 else None, "se": 0.0}
    se = math.sqrt(var)
    z = diff / se
    return {"z": z, "p": float(2 * ndtr(-abs(z))), "se": se}


# =========================================================================== comparing models


@dataclass
class ModelScores:
    """One model's test predictions, aligned to the comparison's records and labels."""

    name: str
    source: str
    kind: str                      # "predictions" (a table) or "probe-report"
    record_ids: np.ndarray         # (n,) str
    labels: list[str]
    scores: np.ndarray             # (n, L)
    preds: np.ndarray              # (n, L) bool
    has_pred: np.ndarray           # (L,) bool
    task: str = "multilabel"
    truth: np.ndarray | None = None  # (n, L) float with NaN (probe reports carry it)
    info: dict = field(default_factory=dict)


def compare(models: Sequence[ModelScores], Y: np.ndarray, M: np.ndarray, labels: Sequence[str],
            reference: int = 0, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The comparison report: per model metrics with CIs, differences from ``reference`` with paired
    CIs, DeLong's test per label."""
    if len(models) < 2:
        raise UsageError(f"{len(models)} model given; a comparison needs 2 or more")
    Y = np.asarray(Y, dtype=bool)
    M = np.asarray(M, dtype=bool)
    res = paired_bootstrap(Y, M, [m.scores for m in models], [m.preds for m in models],
                           [m.has_pred for m in models], n_boot, seed)
    return compare_from(res, models, Y, M, labels, reference, level)


def _macro(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return values[..., ok].mean(axis=-1) if ok.any() else np.full(values.shape[:-1], np.nan)


def compare_from(res: dict, models: Sequence[ModelScores], Y: np.ndarray, M: np.ndarray, labels: Sequence[str],
                 reference: int = 0, level: float = 0.95) -> dict:
    """:func:`compare` from the result of :func:`paired_bootstrap`."""
    n_boot = res["boot"][0]["auroc"].shape[0]
    counts = {name: {"n": int(M[:, j].sum()), "n_pos": int((Y[:, j] & M[:, j]).sum())}
              for j, name in enumerate(labels)}
    P, B = res["point"], res["boot"]
    K = len(models)

    def reason(metric: str, j: int, k: int) -> str:
        c = counts[labels[j]]
        r = mt.metric_reason(metric, c["n_pos"], c["n"] - c["n_pos"], bool(models[k].has_pred[j]))
        return r or "not computable"

    # (point, bootstrap values, jackknife selector) of every interval in the report
    items: list[tuple[float, np.ndarray]] = []
    ok_mac = {k: {m: np.isfinite(P[k][m]) for m in COMPARED} for k in range(K)}
    for k in range(K):
        for m in COMPARED:
            items += [(P[k][m][j], B[k][m][:, j]) for j in range(len(labels))]
            items.append((_macro(P[k][m], ok_mac[k][m]), _macro(B[k][m], ok_mac[k][m])))
            if k != reference:
                d = P[k][m] - P[reference][m]
                items += [(d[j], B[k][m][:, j] - B[reference][m][:, j]) for j in range(len(labels))]
                ok = ok_mac[k][m] & ok_mac[reference][m]
                items.append((_macro(P[k][m], ok) - _macro(P[reference][m], ok),
                              _macro(B[k][m], ok) - _macro(B[reference][m], ok)))
    J = None
    if n_boot and _needs_jack(items, level):
        J = res["engine"](mt.jackknife_weights(Y.shape[0], res.get("seed", 0)))

    def jk(k: int, m: str, j: int | None = None, ok=None, ref: int | None = None):
        if J is None:
            return None
        v = J[k][m] if ref is None else J[k][m] - J[ref][m]
        return v[:, j] if j is not None else _macro(v, ok)

    per_model = []
    for k, mdl in enumerate(models):
        per = {name: {m: mt.summarise(P[k][m][j], B[k][m][:, j], level, reason(m, j, k), jk(k, m, j))
                      for m in COMPARED} for j, name in enumerate(labels)}
        macro = {}
        for m in COMPARED:
            ok = ok_mac[k][m]
            macro[m] = mt.summarise(float(_macro(P[k][m], ok)), _macro(B[k][m], ok), level,
                                    "no label is computable", jk(k, m, ok=ok))
            macro[m]["labels"] = int(ok.sum())
        per_model.append({"name": mdl.name, "source": mdl.source, "kind": mdl.kind, "per_label": per,
                          "macro": macro})
    diffs = []
    for k, mdl in enumerate(models):
        if k == reference:
            continue
        pa, pb, ba, bb = P[k], P[reference], B[k], B[reference]
        per = {}
        for j, name in enumerate(labels):
            e = {}
            for m in COMPARED:
                why = reason(m, j, k) if not np.isfinite(pa[m][j]) else reason(m, j, reference)
                e[m] = mt.summarise(pa[m][j] - pb[m][j], ba[m][:, j] - bb[m][:, j], level, why,
                                    jk(k, m, j, ref=reference))
            if np.isfinite(pa["auroc"][j]) and (j, k) in res["engine"].placements:
                rows = M[:, j]
                eng = res["engine"]
                e["auroc"]["delong"] = delong_from(Y[rows, j], eng.placements[(j, k)],
                                                   eng.placements[(j, reference)])
            per[name] = e
        macro = {}
        for m in COMPARED:
            ok = np.isfinite(pa[m]) & np.isfinite(pb[m])
            macro[m] = mt.summarise(float(_macro(pa[m], ok) - _macro(pb[m], ok)) if ok.any() else np.nan,
                                    _macro(ba[m], ok) - _macro(bb[m], ok), level,
                                    "no label is computable for both models", jk(k, m, ok=ok, ref=reference))
            macro[m]["labels"] = int(ok.sum())
        diffs.append({"model": mdl.name, "reference": models[reference].name, "per_label": per, "macro": macro})
    return {
        "labels": list(labels),
        "n_records": int(Y.shape[0]),
        "label_counts": counts,
        "reference": models[reference].name,
        "bootstrap": {"n": n_boot, "seed": res.get("seed", 0), "level": level, "paired": True,
                      "method": "percentile; where it excludes the point estimate, BCa, else the normal "
                                "interval (bootstrap SD)"},
        "models": per_model,
        "differences": diffs,
    }


def _needs_jack(items, level) -> bool:
    for v, b in items:
        if np.isfinite(v):
            ci = mt.percentile_ci(b, level)
            if ci is not None and not (ci[0] <= v <= ci[1]):
                return True
    return False


# =========================================================================== inputs


def read_input(path: str) -> tuple[str, Any, Any]:
    """('report', dict, None) for a probe report (JSON), ('table', table, meta) for a prediction table."""
    p = Path(path)
    if path != "-" and p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(64).lstrip()
        if head[:1] == b"{":
            try:
                rep = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise InputError(f"{path}: not valid JSON ({exc})", "give a prediction table or a probe report "
                                 "written by 'ecgtool probe --report'") from None
            if "test_predictions" not in rep:
                raise InputError(f"{path}: a JSON file without test predictions",
                                 "write the report with this version of 'ecgtool probe --report'")
            return "report", rep, None
    from ecgtool.io import read_table

    table, meta = read_table(path)
    return "table", table, meta


def from_report(path: str, rep: dict) -> ModelScores:
    tp = rep["test_predictions"]
    labels = list(tp["labels"])
    ids = np.array([str(r) for r in tp["record_ids"]], dtype=object)
    P = np.array(tp["p"], dtype=np.float64).reshape(len(ids), len(labels))
    pred = np.array(tp["pred"], dtype=bool).reshape(len(ids), len(labels))
    has = np.array(tp.get("has_pred", [True] * len(labels)), dtype=bool)
    y = np.array([[np.nan if v is None else float(v) for v in row] for row in tp["y"]],
                 dtype=np.float64).reshape(len(ids), len(labels))
    name = rep.get("name") or _stem(path)
    return ModelScores(name=name, source=path, kind="probe-report", record_ids=ids, labels=labels, scores=P,
                       preds=pred, has_pred=has, task=rep.get("task", "multilabel"), truth=y,
                       info={"model": rep.get("model"), "pretraining_data": rep.get("pretraining_data"),
                             "data_sources": rep.get("data_sources"), "head": rep.get("head")})


def from_table(path: str, table, meta) -> ModelScores:
    meta = meta if meta is not None else TableMeta()
    names = meta.label_names or []
    if not names:
        raise InputError(f"{path}: no label_names in the table's metadata",
                         "give a table written by 'ecgtool predict' (or a probe report)")
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise InputError(f"{path}: label columns {', '.join(missing[:5])} are missing")
    if "record_id" not in table.column_names:
        raise InputError(f"{path}: no record_id column")
    ids = np.array([str(v) for v in table.column("record_id").to_pylist()], dtype=object)
    P = np.column_stack([np.asarray(table.column(n).to_numpy(zero_copy_only=False), dtype=np.float64)
                         for n in names])
    uniq, first, inv = np.unique(ids, return_index=True, return_inverse=True)
    if uniq.size < ids.size:
        log.info("%s: %d rows of %d records: probabilities averaged per record", path, ids.size, uniq.size)
        order = np.argsort(first)
        sums = np.zeros((uniq.size, len(names)))
        np.add.at(sums, inv.ravel(), P)
        P = (sums / np.bincount(inv.ravel())[:, None])[order]
        ids = uniq[order]
    task = meta.task or "multilabel"
    thr = meta.thresholds
    if task == "multiclass":
        pred = np.zeros_like(P, dtype=bool)
        pred[np.arange(len(P)), np.nanargmax(np.nan_to_num(P, nan=-1.0), axis=1)] = True
        has = np.ones(len(names), dtype=bool)
    elif thr is not None and len(thr) == len(names):
        t = np.array([np.nan if v is None else float(v) for v in thr])
        pred = P >= np.nan_to_num(t, nan=np.inf)[None, :]
        has = np.isfinite(t)
    else:
        log.warning("%s: the table carries no thresholds; F1 is not computed for it", path)
        pred = np.zeros_like(P, dtype=bool)
        has = np.zeros(len(names), dtype=bool)
    return ModelScores(name=meta.model or _stem(path), source=path, kind="predictions",
                       record_ids=ids, labels=names, scores=P, preds=pred, has_pred=has, task=task,
                       info={"model": meta.model, "architecture": meta.architecture,
                             "pretraining_data": meta.pretraining_data,
                             "data_sources": _table_sources(table, meta)})


def _table_sources(table, meta) -> list[str]:
    from ecgtool.analysis.leakage import detect_sources

    return detect_sources(table, meta)


def _stem(path: str) -> str:
    p = Path(path)
    name = p.name
    for suf in (".json", ".parquet", ".arrow", ".npz"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return p.stem or path


def load_model_scores(paths: Sequence[str], names: Sequence[str] | None = None) -> list[ModelScores]:
    if len(paths) < 2:
        raise UsageError(f"{len(paths)} input given; compare needs 2 or more prediction tables or probe reports",
                         "e.g. ecgtool compare pred.parquet probe.json -l labels.parquet")
    out = []
    for p in paths:
        kind, obj, meta = read_input(p)
        out.append(from_report(p, obj) if kind == "report" else from_table(p, obj, meta))
    if names:
        if len(names) != len(out):
            raise UsageError(f"--names: {len(names)} names for {len(out)} inputs", "give one name per input")
        for m, n in zip(out, names):
            m.name = n
    seen: dict[str, int] = {}
    for m in out:  # unique display names
        if m.name in seen:
            seen[m.name] += 1
            m.name = f"{m.name} ({seen[m.name]})"
        else:
            seen[m.name] = 1
    return out


def align(models: list[ModelScores], label_table=None, label_meta=None, labels_name: str = "labels",
          intersect: bool = False, only_labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                        list[str], dict]:
    """Restrict every model to the shared records and labels; the truth (Y, M); counts for the report."""
    info: dict[str, Any] = {}
    sets = [set(m.record_ids.tolist()) for m in models]
    shared = set.intersection(*sets)
    info["records_per_model"] = {m.name: len(s) for m, s in zip(models, sets)}
    if not shared:
        raise InputError("the inputs share no record_id: " + ", ".join(f"{m.name} {len(s)}"
                                                                        for m, s in zip(models, sets)),
                         "compare predictions made on the same records")
    if any(len(s) != len(shared) for s in sets):
        counts = "; ".join(f"{m.name}: {len(s)} records" for m, s in zip(models, sets))
        if not intersect:
            raise InputError(f"the inputs hold different records ({counts}; {len(shared)} shared)",
                             f"add --intersect to compare on the {len(shared)} shared records")
        log.warning("comparing on the %d records all inputs share (%s)", len(shared), counts)
    info["records_compared"] = len(shared)
    # records in the order of the first input
    order = [r for r in models[0].record_ids.tolist() if r in shared]
    # labels: the intersection
    common = [n for n in models[0].labels if all(n in m.labels for m in models[1:])]
    if only_labels:
        unknown = [n for n in only_labels if n not in common]
        if unknown:
            raise UsageError(f"--label-names {','.join(unknown)}: not predicted by every input",
                             f"labels all inputs share: {', '.join(common) or '(none)'}")
        common = list(only_labels)
    if not common:
        raise InputError("the inputs share no label name: " + "; ".join(f"{m.name}: {', '.join(m.labels[:8])}"
                                                                        for m in models),
                         "compare models that predict the same labels")
    left = {m.name: [n for n in m.labels if n not in common] for m in models}
    left = {k: v for k, v in left.items() if v}
    if left and not only_labels:
        log.warning("comparing on the %d labels every input has (%s); left out: %s", len(common),
                    ", ".join(common), "; ".join(f"{k}: {', '.join(v)}" for k, v in left.items()))
    info["labels_left_out"] = left
    for m in models:
        pos = {r: i for i, r in enumerate(m.record_ids.tolist())}
        rows = np.array([pos[r] for r in order], dtype=np.int64)
        cols = np.array([m.labels.index(n) for n in common], dtype=np.int64)
        m.record_ids = m.record_ids[rows]
        m.scores = m.scores[np.ix_(rows, cols)]
        m.preds = m.preds[np.ix_(rows, cols)]
        m.has_pred = m.has_pred[cols]
        if m.truth is not None:
            m.truth = m.truth[np.ix_(rows, cols)]
        m.labels = list(common)
    ids = np.array(order, dtype=object)
    if label_table is not None:
        Yf, missing = truth_from_labels(label_table, ids, common, labels_name)
        if missing:
            keep = [j for j, n in enumerate(common) if n not in missing]
            if not keep:
                raise InputError(f"{labels_name}: no column for any compared label ({', '.join(common[:8])})",
                                 f"columns there: {', '.join(label_table.column_names[:20])}")
            log.warning("%s has no truth for %s: left out", labels_name, ", ".join(missing))
            info["labels_without_truth"] = list(missing)
            common = [common[j] for j in keep]
            Yf = Yf[:, keep]
            for m in models:
                m.scores, m.preds, m.has_pred = m.scores[:, keep], m.preds[:, keep], m.has_pred[keep]
                if m.truth is not None:
                    m.truth = m.truth[:, keep]
                m.labels = list(common)
        info["truth"] = labels_name
    else:
        reps = [m for m in models if m.truth is not None]
        if not reps:
            raise UsageError("no labels: prediction tables carry no truth",
                             "give the label table with -l LABELS (as for probe)")
        Yf = reps[0].truth
        for m in reps[1:]:
            both = np.isfinite(Yf) & np.isfinite(m.truth)
            if np.any(Yf[both] != m.truth[both]):
                raise InputError(f"{reps[0].source} and {m.source} disagree on the labels of shared records",
                                 "give the label table with -l so that one truth is used")
            Yf = np.where(np.isfinite(Yf), Yf, m.truth)
        info["truth"] = reps[0].source
    M = np.isfinite(Yf)
    Y = np.nan_to_num(Yf, nan=0.0) > 0.5
    info["labelled"] = {n: int(M[:, j].sum()) for j, n in enumerate(common)}
    return Y, M, common, info


def truth_from_labels(label_table, ids: np.ndarray, names: Sequence[str],
                      labels_name: str) -> tuple[np.ndarray, list[str]]:
    """(n, L) 1/0/NaN for ``ids`` from a label table (one 1/0 column per label, or one column of class
    names whose values are the label names), and the names the table has no truth for."""
    from ecgtool.evaluation.labels import binary_values, join_rows

    if "record_id" not in label_table.column_names:
        raise InputError(f"{labels_name}: no record_id column")
    cols = label_table.column_names
    class_col = None
    missing = [n for n in names if n not in cols]
    if missing:
        for c in cols:
            if c == "record_id" or not pa.types.is_string(label_table.schema.field(c).type):
                continue
            vals = {str(v) for v in label_table.column(c).to_pylist() if v is not None}
            if len(vals) > 1 and vals <= set(names) | {""}:
                class_col = c
                break
    lab_ids = label_table.column("record_id").to_pylist()
    in_use = {c: label_table.column(c).to_pylist() for c in [*names, class_col] if c in cols}
    rows = join_rows(ids.tolist(), lab_ids, in_use, labels_name)  # a repeated record_id: the duplicate rule
    hit = rows >= 0
    if not hit.any():
        raise InputError(f"{labels_name} shares no record_id with the predictions "
                         f"(e.g. {ids[0]!r} vs {str(lab_ids[0]) if lab_ids else None!r})",
                         "label the same records (ecgtool label on the table that was predicted on)")
    if not hit.all():
        log.warning("%s: %d of %d compared records have no row in the label table (left out)", labels_name,
                    int((~hit).sum()), hit.size)
    out = np.full((ids.size, len(names)), np.nan)
    absent = []
    for j, n in enumerate(names):
        if n in cols:
            vals = binary_values(n, in_use[n], labels_name)
            out[hit, j] = vals[rows[hit]]
        elif class_col is not None:
            vals = label_table.column(class_col).to_pylist()
            out[hit, j] = [np.nan if vals[r] is None else float(str(vals[r]) == n) for r in rows[hit]]
        else:
            absent.append(n)
    return out, absent
