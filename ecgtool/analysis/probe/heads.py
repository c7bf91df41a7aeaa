"""The heads of a probe (linear, attention, kNN) and the options of a probe run.

:class:`ProbeOptions` holds every choice of ``ecgtool probe``; :func:`fit_head`
fits ``opts.head`` on the training records (its choices made on validation)
and returns the validation and test logits as a :class:`HeadFit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ecgtool.analysis.probe.data import ProbeData
from ecgtool.analysis.probe.linear import DEFAULT_C_GRID, LinearModel, fit_logistic, fit_probe, fit_stats, standardise
from ecgtool.errors import UsageError

HEADS = ("linear", "attention", "knn")


@dataclass
class ProbeOptions:
    C: float | None = None
    c_grid: Sequence[float] = DEFAULT_C_GRID
    threshold_rule: str = "f1"
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    n_bins: int = 15
    subgroups: Sequence[str] = ()
    scaling: Sequence[int] = ()
    scaling_seeds: int = 3
    max_iter: int = 500
    max_subgroup_values: int = 20
    head: str = "linear"
    k: int = 10
    knn_metric: str = "cosine"
    alpha: float | None = 0.1
    attention: Any = None  # AttentionOptions (None: defaults, seeded with ``seed``)


@dataclass
class HeadFit:
    """Validation and test logits of one split, and what was chosen on validation."""

    zv: np.ndarray
    zt: np.ndarray
    C: list | None = None
    info: dict = field(default_factory=dict)


def _knn_logits(frac: np.ndarray, k: int, multiclass: bool) -> np.ndarray:
    """Vote fractions of k neighbours -> smoothed log-odds (binary) or log-probabilities (classes)."""
    f = np.nan_to_num(np.asarray(frac, dtype=np.float64), nan=0.5)
    if multiclass:
        K = f.shape[1]
        return np.log((f * k + 1.0 / K) / (k + 1.0))
    return np.log((f * k + 0.5) / ((1.0 - f) * k + 0.5))


def fit_head(data: ProbeData, tr: np.ndarray, val: np.ndarray, test: np.ndarray, opts: ProbeOptions,
             C: float | np.ndarray | None = None, c_grid: Sequence[float] | None = None) -> HeadFit:
    """Fit ``opts.head`` on the records ``tr`` (choices on ``val``); logits of ``val`` and ``test``."""
    K = len(data.label_names) if data.multiclass else None
    if opts.head == "linear":
        if C is not None and np.ndim(C) > 0 and not data.multiclass:
            mean, scale = fit_stats(data.X[tr])
            W, b = fit_logistic(standardise(data.X[tr], mean, scale), data.Y[tr], data.mask[tr],
                                np.asarray(C, dtype=np.float64), False, max_iter=opts.max_iter)
            model = LinearModel(mean, scale, W, b, np.asarray(C, dtype=np.float64), False)
        else:
            c1 = None if C is None else float(np.asarray(C).ravel()[0])
            model = fit_probe(data.X[tr], data.Y[tr], data.mask[tr], data.X[val], data.Y[val], data.mask[val],
                              data.multiclass, K, c1 if c1 is not None else opts.C,
                              c_grid if c_grid is not None else opts.c_grid, opts.max_iter)
        return HeadFit(model.logits(data.X[val]), model.logits(data.X[test]), model.C.tolist())
    if opts.head == "knn":
        try:
            from ecgtool.retrieval.knn import knn_class_scores, knn_scores
        except ImportError:  # pragma: no cover - the retrieval package ships with ecgtool
            raise UsageError("--head knn needs ecgtool.retrieval.knn, which this installation lacks") from None
        q = np.concatenate([val, test])
        if data.multiclass:
            f = knn_class_scores(data.X[tr], data.Y[tr], len(data.label_names), data.X[q], k=opts.k,
                                 metric=opts.knn_metric)
        else:
            f = knn_scores(data.X[tr], data.Y[tr], data.X[q], k=opts.k, metric=opts.knn_metric)
        z = _knn_logits(f, opts.k, data.multiclass)
        return HeadFit(z[: val.size], z[val.size:], None, {"k": opts.k, "metric": opts.knn_metric})
    if opts.head == "attention":
        from ecgtool.analysis.attention_probe import AttentionOptions, fit_attention

        if data.tokens is None:
            raise UsageError("--head attention needs per-token features",
                             "embed with 'ecgtool embed --local' and probe that table")
        ao = opts.attention or AttentionOptions(seed=opts.seed)
        n_out = len(data.label_names)
        tok = data.tokens
        model = fit_attention([tok[i] for i in tr], data.Y[tr], data.mask[tr], [tok[i] for i in val],
                              data.Y[val], data.mask[val], data.multiclass, n_out, ao)
        return HeadFit(model.logits([tok[i] for i in val]), model.logits([tok[i] for i in test]), None,
                       dict(model.info))
    raise UsageError(f"--head {opts.head!r}: expected one of {', '.join(HEADS)}")


def _head_description(opts: ProbeOptions, multiclass: bool) -> str:
    if opts.head == "attention":
        return ("learnable-query attention pooling (bias-free q/k/v/out projections) + linear layer over the "
                "standardised per-token features; AdamW, epoch chosen on validation loss")
    if opts.head == "knn":
        return (f"k-nearest-neighbour vote (k={opts.k}, {opts.knn_metric}) over the training records, "
                "smoothed to log-odds")
    return "L2 logistic regression on standardised embeddings" + (" (softmax)" if multiclass else " (one per label)")
