"""Classification metrics with bootstrap confidence intervals.

Every metric is written for *weighted* samples: a bootstrap resample is a row
of counts (how many times each test sample was drawn), so one call evaluates
hundreds of resamples at once with a few sorted cumulative sums instead of a
Python loop. With unit weights the values equal scikit-learn's
``roc_auc_score``, ``average_precision_score``, ``f1_score``,
``recall_score`` (tests check this).

A metric that cannot be computed is ``nan``: AUROC and AUPRC without a
positive or without a negative sample, F1 and sensitivity without a positive,
specificity without a negative; :func:`summarise` turns it into ``{"value": None, "reason": ...}``.

Interval hygiene: every interval is checked to contain its point estimate.
The percentile interval can exclude it when the bootstrap distribution is
skewed or biased (small test sets, AUPRC of a rare label, a macro average
whose resamples lose a label). Then the bias-corrected and accelerated (BCa)
interval is tried (Efron 1987: bias correction ``z0`` from the share of
resamples below the estimate, acceleration ``a`` from jackknife values over
records). Because the jackknife acceleration obeys ``|a| <= 1/6``, BCa holds
the estimate exactly when the percentile interval does (up to ties), so
where both exclude it the interval reported is the normal one, estimate ±
z·SD of the resamples, which holds it by construction. The summary names the
method (``ci_method``: percentile, bca or normal) and why (``ci_note``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RANKING = ("auroc", "auprc")
THRESHOLDED = ("f1", "sensitivity", "specificity")
ALL_METRICS = RANKING + THRESHOLDED


# --------------------------------------------------------------------------- ranking metrics


def _tie_groups(s_sorted: np.ndarray) -> np.ndarray:
    """Start index of each run of equal scores in a sorted array."""
    if s_sorted.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])


def _weights(w) -> np.ndarray:
    """(B, n) weights; float32 bootstrap counts stay float32 (exact up to 2**24)."""
    w = np.atleast_2d(np.asarray(w))
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float64)
    return w


def _group_sum(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum the columns of ``a`` within each run of tied scores (a no-op without ties)."""
    if starts.size == a.shape[1]:
        return a
    return np.add.reduceat(a, starts, axis=1)


def auroc_weighted(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Area under the ROC curve for each row of weights ``w`` (B, n).

    Ties count one half (Mann–Whitney). ``nan`` where a row has no positive
    or no negative weight.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    w = _weights(w)
    order = np.argsort(s, kind="mergesort")
    starts = _tie_groups(s[order])
    wo = w[:, order]
    yo = y[order]
    pos = _group_sum(wo * yo, starts)
    neg = _group_sum(wo * ~yo, starts)
    below = np.cumsum(neg, axis=1) - neg
    num = np.sum(pos * (below + 0.5 * neg), axis=1, dtype=np.float64)
    p, n = pos.sum(axis=1, dtype=np.float64), neg.sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / (p * n)
    out[(p <= 0) | (n <= 0)] = np.nan
    return out


def auprc_weighted(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (step-wise area under the PR curve, as scikit-learn's
    ``average_precision_score``) for each row of weights ``w`` (B, n)."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    w = _weights(w)
    order = np.argsort(-s, kind="mergesort")
    starts = _tie_groups(s[order])
    wo = w[:, order]
    yo = y[order]
    tp_g = _group_sum(wo * yo, starts)
    fp_g = _group_sum(wo * ~yo, starts)
    tp = np.cumsum(tp_g, axis=1)
    fp = np.cumsum(fp_g, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        p = tp[:, -1].astype(np.float64) if tp.shape[1] else np.zeros(w.shape[0])
        out = np.sum(tp_g * prec, axis=1, dtype=np.float64) / p
    n = fp[:, -1] if fp.shape[1] else np.zeros(w.shape[0])
    out[(p <= 0) | (n <= 0)] = np.nan
    return out


def confusion_weighted(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and F1 of binary predictions per weight row."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    w = _weights(w)
    cells = np.column_stack([y & pred, y & ~pred, ~y & pred, ~y & ~pred]).astype(w.dtype)
    tp, fn, fp, tn = (w @ cells).astype(np.float64).T
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
    # F1 and sensitivity need positives; specificity needs negatives.
    f1[tp + fn <= 0] = np.nan
    sens[tp + fn <= 0] = np.nan
    spec[tn + fp <= 0] = np.nan
    return {"f1": f1, "sensitivity": sens, "specificity": spec}


def auroc(y, s) -> float:
    return float(auroc_weighted(y, s, np.ones((1, len(y))))[0])


def auprc(y, s) -> float:
    return float(auprc_weighted(y, s, np.ones((1, len(y))))[0])


def at_threshold(y, s, threshold: float) -> dict[str, float]:
    c = confusion_weighted(y, np.asarray(s) >= threshold, np.ones((1, len(y))))
    return {k: float(v[0]) for k, v in c.items()}


# --------------------------------------------------------------------------- thresholds


def choose_threshold(y: np.ndarray, s: np.ndarray, rule: str = "f1") -> float | None:
    """The score threshold (predict positive when ``s >= t``) that maximises
    F1 (``rule='f1'``) or Youden's J = sensitivity + specificity − 1
    (``rule='youden'``) on this (validation) set. ``None`` when the set has
    no positive or no negative sample."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    p = int(y.sum())
    n = y.size - p
    if p == 0 or n == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    so, yo = s[order], y[order]
    # Candidate thresholds: each distinct score (predict positive for all >= it).
    last = np.r_[so[1:] != so[:-1], True]
    tp = np.cumsum(yo)[last]
    fp = np.cumsum(~yo)[last]
    cand = so[last]
    if rule == "f1":
        obj = 2 * tp / (2 * tp + fp + (p - tp))
    elif rule == "youden":
        obj = tp / p - fp / n
    else:
        raise ValueError(f"unknown threshold rule {rule!r} (f1 or youden)")
    i = int(np.argmax(obj))
    if i + 1 < cand.size:
        # Half way to the next lower score: robust to tiny shifts in test scores.
        return float(0.5 * (cand[i] + cand[i + 1]))
    return float(cand[i])


# --------------------------------------------------------------------------- bootstrap


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator, chunk: int) -> "iter":
    """Yield (b, n) count matrices of multinomial resamples, ``chunk`` rows at a time."""
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        idx += (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)
        done += b


def evaluate(
    Y: np.ndarray,
    S: np.ndarray,
    M: np.ndarray | None = None,
    thresholds: Sequence[float | None] | None = None,
    preds: np.ndarray | None = None,
    has_pred: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict:
    """Point estimates and percentile-bootstrap CIs for several labels at once.

    ``Y`` (n, L) 0/1 truth, ``S`` (n, L) scores, ``M`` (n, L) mask of known
    labels. Thresholded metrics use ``preds`` (n, L) booleans if given, else
    ``S >= thresholds[l]`` (skipped where the threshold is ``None``, or where
    ``has_pred[l]`` is false). The same
    resamples serve every label, so the macro average gets a CI too.

    Returns ``{"point": {metric: (L,)}, "boot": {metric: (B, L)}}`` plus the
    macro versions under ``"macro_point"``/``"macro_boot"``.
    """
    Y = np.asarray(Y).astype(bool)
    S = np.asarray(S, dtype=np.float64)
    n, L = Y.shape
    M = np.ones_like(Y, dtype=bool) if M is None else np.asarray(M, dtype=bool)
    if preds is None:
        preds = np.zeros_like(Y)
        has_pred = np.zeros(L, dtype=bool)
        if thresholds is not None:
            for j, t in enumerate(thresholds):
                if t is not None:
                    preds[:, j] = S[:, j] >= t
                    has_pred[j] = True
    else:
        preds = np.asarray(preds, dtype=bool)
        has_pred = np.ones(L, dtype=bool) if has_pred is None else np.asarray(has_pred, dtype=bool)

    def metrics_for(w: np.ndarray) -> dict[str, np.ndarray]:
        out = {m: np.full((w.shape[0], L), np.nan) for m in ALL_METRICS}
        for j in range(L):
            wj = w if M[:, j].all() else w * M[:, j].astype(w.dtype)
            out["auroc"][:, j] = auroc_weighted(Y[:, j], S[:, j], wj)
            out["auprc"][:, j] = auprc_weighted(Y[:, j], S[:, j], wj)
            if has_pred[j]:
                for k, v in confusion_weighted(Y[:, j], preds[:, j], wj).items():
                    out[k][:, j] = v
        return out

    point = {k: v[0] for k, v in metrics_for(np.ones((1, n))).items()}
    boot: dict[str, list] = {m: [] for m in ALL_METRICS}
    if n_boot > 0 and n > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, int(max_cells // max(n, 1)))
        for w in bootstrap_weights(n, n_boot, rng, chunk):
            for k, v in metrics_for(w).items():
                boot[k].append(v)
    bootarr = {k: (np.concatenate(v) if v else np.zeros((0, L))) for k, v in boot.items()}
    macro_point, macro_boot = {}, {}
    for k in ALL_METRICS:
        ok = np.isfinite(point[k])
        macro_point[k] = float(point[k][ok].mean()) if ok.any() else np.nan
        # A resample where a computable label becomes uncomputable gives no macro value.
        macro_boot[k] = bootarr[k][:, ok].mean(axis=1) if ok.any() else np.full(bootarr[k].shape[0], np.nan)
    out = {"point": point, "boot": bootarr, "macro_point": macro_point, "macro_boot": macro_boot,
           "level": level, "jack": None, "macro_jack": None}
    # Jackknife values (for BCa) only when some percentile interval excludes its point estimate.
    if n_boot > 0 and n > 1 and _any_excluded(out, level):
        jw = jackknife_weights(n, seed)
        jack = metrics_for(jw)
        out["jack"] = jack
        out["macro_jack"] = {k: (jack[k][:, np.isfinite(point[k])].mean(axis=1) if np.isfinite(point[k]).any()
                                 else np.full(jw.shape[0], np.nan)) for k in ALL_METRICS}
    return out


def _any_excluded(ev: dict, level: float) -> bool:
    for k in ALL_METRICS:
        cols = [(ev["point"][k][j], ev["boot"][k][:, j]) for j in range(ev["point"][k].size)]
        cols.append((ev["macro_point"][k], ev["macro_boot"][k]))
        for v, b in cols:
            if np.isfinite(v):
                ci = percentile_ci(b, level)
                if ci is not None and not (ci[0] <= v <= ci[1]):
                    return True
    return False


def jackknife_weights(n: int, seed: int = 0, max_groups: int = 200) -> np.ndarray:
    """(G, n) weights leaving out one record (n <= max_groups) or one of ``max_groups`` random groups."""
    if n <= max_groups:
        w = np.ones((n, n), dtype=np.float32)
        np.fill_diagonal(w, 0.0)
        return w
    groups = np.random.default_rng(seed + 7919).permutation(n) % max_groups
    w = np.ones((max_groups, n), dtype=np.float32)
    w[groups, np.arange(n)] = 0.0
    return w


def ev_summary(ev: dict, metric: str, j: int | None, reason: str | None = None) -> dict:
    """:func:`summarise` of one label (``j``) or of the macro average (``j=None``) of an :func:`evaluate` result."""
    if j is None:
        jack = ev["macro_jack"][metric] if ev.get("macro_jack") else None
        return summarise(ev["macro_point"][metric], ev["macro_boot"][metric], ev["level"], reason, jack)
    jack = ev["jack"][metric][:, j] if ev.get("jack") else None
    return summarise(ev["point"][metric][j], ev["boot"][metric][:, j], ev["level"], reason, jack)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    a = (1 - level) / 2
    lo, hi = np.quantile(x, [a, 1 - a])
    return float(lo), float(hi)


def bca_ci(samples: np.ndarray, value: float, jack: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Bias-corrected and accelerated bootstrap interval (Efron 1987).

    ``samples``: bootstrap values; ``value``: the point estimate; ``jack``:
    jackknife (leave-one-out or leave-one-group-out) values of the statistic.
    ``None`` when it is not defined (every resample on one side of the
    estimate, or fewer than two finite values)."""
    from scipy.special import ndtr, ndtri

    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    j = np.asarray(jack, dtype=np.float64) if jack is not None else np.zeros(0)
    j = j[np.isfinite(j)]
    if x.size < 2 or j.size < 2:
        return None
    frac = (np.sum(x < value) + 0.5 * np.sum(x == value)) / x.size
    if not 0.0 < frac < 1.0:
        return None
    z0 = float(ndtri(frac))
    d = j.mean() - j
    den = 6.0 * float(np.sum(d ** 2)) ** 1.5
    a = float(np.sum(d ** 3)) / den if den > 0 else 0.0
    alpha = (1 - level) / 2
    qs = []
    for z in (ndtri(alpha), ndtri(1 - alpha)):
        t = z0 + z
        denom = 1 - a * t
        if denom <= 0:
            return None
        qs.append(float(ndtr(z0 + t / denom)))
    lo, hi = np.quantile(x, qs)
    return float(lo), float(hi)


def normal_ci(samples: np.ndarray, value: float, level: float = 0.95) -> tuple[float, float] | None:
    """``value ± z * SD(bootstrap values)``, clipped to the range the values live in ([0, 1] for a metric,
    [-1, 1] for a difference of metrics): contains ``value`` by construction."""
    from scipy.special import ndtri

    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    half = float(ndtri(1 - (1 - level) / 2)) * float(x.std(ddof=1))
    lo, hi = value - half, value + half
    allv = np.r_[x, value]
    floor = 0.0 if allv.min() >= 0 else -1.0 if allv.min() >= -1 else -np.inf
    ceil = 1.0 if allv.max() <= 1 else np.inf
    return float(max(lo, floor)), float(min(hi, ceil))


def summarise(value: float, samples: np.ndarray, level: float = 0.95, reason: str | None = None,
              jack: np.ndarray | None = None) -> dict:
    """``{"value", "ci", "n_boot", "ci_method"}``; value ``None`` plus ``reason`` when not computable.

    The interval is the percentile interval, checked to contain the point estimate. Where it does
    not, the BCa interval (from the jackknife values ``jack``) is tried; BCa moves its limits by the
    bias correction ``z0`` and the acceleration ``a``, and since ``|a| <= 1/6`` it contains the
    estimate exactly when the percentile interval does (up to ties), so where it too excludes it the
    interval is the normal one, estimate ± z·SD of the bootstrap values (clipped to [0, 1] or [-1, 1]).
    ``ci_method`` says which, ``ci_note`` why (with the intervals that excluded the estimate)."""
    if value is None or not np.isfinite(value):
        return {"value": None, "ci": None, "reason": reason or "not computable"}
    value = float(value)
    ci = percentile_ci(samples, level)
    finite = int(np.isfinite(samples).sum()) if samples is not None else 0
    out: dict = {"value": value, "ci": list(ci) if ci else None, "n_boot": finite}
    if samples is not None and len(samples) and finite < len(samples):
        out["n_boot_undefined"] = int(len(samples) - finite)
    if ci is None:
        return out
    out["ci_method"] = "percentile"
    if ci[0] <= value <= ci[1]:
        return out
    note = f"the percentile interval [{ci[0]:.4g}, {ci[1]:.4g}] excluded the point estimate"
    alt = bca_ci(samples, value, jack, level) if jack is not None else None
    if alt is not None and alt[0] <= value <= alt[1]:
        out.update(ci=list(alt), ci_method="bca", ci_note=note + "; BCa interval")
        return out
    if alt is not None:
        note += f", and so did the BCa interval [{alt[0]:.4g}, {alt[1]:.4g}]"
    elif jack is not None:
        note += " (BCa not defined: the resamples lie on one side of it)"
    nrm = normal_ci(samples, value, level)
    out.update(ci=list(nrm), ci_method="normal",
               ci_note=note + "; normal interval: estimate ± z·SD of the bootstrap values")
    return out


def ci_methods(summaries) -> dict:
    """Counts of interval methods over nested summaries (for the report's protocol block)."""
    counts = {"percentile": 0, "bca": 0, "normal": 0}

    def walk(x):
        if isinstance(x, dict):
            if "ci_method" in x and "value" in x:
                counts[x["ci_method"]] = counts.get(x["ci_method"], 0) + 1
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(summaries)
    return counts


def bootstrap_mean(values: np.ndarray, n_boot: int, seed: int = 0, level: float = 0.95,
                   mask: np.ndarray | None = None) -> dict:
    """Mean of ``values`` (e.g. 0/1 coverage indicators) with its bootstrap interval over records."""
    v = np.asarray(values, dtype=np.float64)
    m = np.isfinite(v) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(v))
    v = v[m]
    if v.size == 0:
        return {"value": None, "ci": None, "reason": "no records"}
    point = float(v.mean())
    boot = np.zeros(0)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, int(4_000_000 // v.size))
        boot = np.concatenate([w @ v / v.size for w in bootstrap_weights(v.size, n_boot, rng, chunk)])
    jack = (v.sum() - v) / max(v.size - 1, 1) if v.size > 1 else None
    out = summarise(point, boot, level, None, jack)
    out["n"] = int(v.size)
    return out


def metric_reason(metric: str, n_pos: int, n_neg: int, has_threshold: bool = True) -> str | None:
    """Why a metric is not computable on a split, or ``None`` if it is."""
    if n_pos == 0 and n_neg == 0:
        return "no labelled records in the test split"
    needs_pos = metric != "specificity"  # AUROC/AUPRC need both classes, F1 and sensitivity positives
    needs_neg = metric in RANKING or metric == "specificity"
    if needs_pos and n_pos == 0:
        return "no positive records in the test split"
    if needs_neg and n_neg == 0:
        return "no negative records in the test split"
    if metric in THRESHOLDED and not has_threshold:
        return "no threshold: the validation split has no positive or no negative records"
    return None


# --------------------------------------------------------------------------- calibration metrics


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 15):
    """(count, sum of confidence, sum of hits) per equal-width bin, and n.

    Binary: ``p`` (n,) probability of the positive class against ``y`` (n,).
    Multi-class: ``p`` (n, K) probabilities, ``y`` (n,) class indices; the
    top-label confidence against accuracy.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    if p.ndim == 2:
        conf = p.max(axis=1)
        hit = (p.argmax(axis=1) == y).astype(np.float64)
    else:
        conf, hit = p, y.astype(np.float64)
    b = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    return (np.bincount(b, minlength=n_bins), np.bincount(b, conf, minlength=n_bins),
            np.bincount(b, hit, minlength=n_bins), conf.size)


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins (see :func:`calibration_bins`)."""
    _, sc, sh, n = calibration_bins(y, p, n_bins)
    if n == 0:
        return float("nan")
    return float(np.abs(sc - sh).sum() / n)


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities (multi-class: summed over classes)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    if p.size == 0:
        return float("nan")
    if p.ndim == 2:
        onehot = np.zeros_like(p)
        onehot[np.arange(len(y)), y.astype(int)] = 1
        return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return float(np.mean((p - y) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-12) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y)
    if p.ndim == 2:
        return float(-np.mean(np.log(p[np.arange(len(y)), y.astype(int)])))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def bootstrap_loop(y, s, fn: Callable, n_boot: int, seed: int = 0) -> np.ndarray:
    """The plain Python-loop bootstrap (a reference for tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    y, s = np.asarray(y), np.asarray(s)
    out = np.full(n_boot, np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        out[b] = fn(yb, s[idx])
    return out
