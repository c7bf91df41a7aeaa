"""k-nearest-neighbour label votes: a non-parametric classifier over any model's embeddings.

:func:`knn_scores` (multi-label) and :func:`knn_class_scores` (multi-class) are what
``probe --head knn`` and ``search --vote`` use. The search is exact (NumPy, blocked matrix
products; see :mod:`ecgtool.retrieval.exact`), so a score does not depend on an index's
approximation.

The score of a label is the **unweighted fraction of the k nearest training rows that carry
it** (every neighbour one vote), among the neighbours whose value for that label is observed;
``weighted=True`` weights each vote by ``1 / (distance + 1e-6)`` instead, which breaks the ties
of a plain vote (k + 1 distinct values) and so ranks slightly finer.
"""

from __future__ import annotations

import logging

import numpy as np

from ecgtool.retrieval.exact import as_matrix, check_metric, exact_search

log = logging.getLogger("ecgtool")


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def _neighbours(train_emb, query_emb, k: int, metric: str):
    from ecgtool.errors import InputError, UsageError

    metric = check_metric(metric)
    train = as_matrix(train_emb, "training embeddings")
    query = as_matrix(query_emb, "query embeddings")
    if train.shape[1] != query.shape[1]:
        raise InputError(
            f"query embeddings have dimension {query.shape[1]}, training embeddings {train.shape[1]}",
            hint="embed both with the same model",
        )
    if int(k) < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    ok_train = _finite_rows(train)
    if not ok_train.all():
        log.warning("kNN: %d training rows with NaN/inf embeddings are left out", int((~ok_train).sum()))
    ok_query = _finite_rows(query)
    if not ok_query.all():
        log.warning("kNN: %d query rows with NaN/inf embeddings get no score (NaN)", int((~ok_query).sum()))
    train_idx = np.flatnonzero(ok_train)
    if train_idx.size == 0:
        raise InputError("kNN: no training row has a finite embedding")
    kk = min(int(k), train_idx.size)
    if kk < int(k):
        log.warning("kNN: k=%d is more than the %d training rows; using k=%d", int(k), train_idx.size, kk)
    dist = np.full((query.shape[0], kk), np.nan, dtype=np.float32)
    idx = np.full((query.shape[0], kk), -1, dtype=np.int64)
    if ok_query.any():
        d, i = exact_search(train[train_idx], query[ok_query], kk, metric)
        dist[ok_query] = d
        idx[ok_query] = train_idx[i]
    return dist, idx, ok_query


def _weights(dist: np.ndarray, weighted: bool) -> np.ndarray:
    if not weighted:
        return np.ones_like(dist, dtype=np.float64)
    return 1.0 / (np.nan_to_num(dist.astype(np.float64), nan=np.inf) + 1e-6)


def vote_fractions(neigh_labels: np.ndarray, weights: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Per-label (weighted) positive fraction among neighbours with an observed value.

    ``neigh_labels`` (m, k, L) with NaN = unobserved; ``weights`` (m, k); where no neighbour
    has the label observed the score is ``prior`` (the label's training prevalence).
    """
    obs = np.isfinite(neigh_labels)
    w = weights[:, :, None] * obs
    pos = np.where(obs, neigh_labels > 0.5, False)
    num = (w * pos).sum(axis=1)
    den = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = num / den
    s = np.where(den > 0, s, np.broadcast_to(prior, s.shape))
    return s


def knn_scores(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    query_emb: np.ndarray,
    k: int = 10,
    metric: str = "cosine",
    *,
    weighted: bool = False,
) -> np.ndarray:
    """Multi-label kNN vote: (m, L) scores in [0, 1].

    ``train_labels`` is (n, L) with 1 = present, 0 = absent, NaN = unobserved. A score is the
    fraction of the k nearest training rows (exact search, ``metric`` cosine or l2) carrying the
    label, among those where it is observed; with none observed it is the label's training
    prevalence. A label never observed in training scores NaN, and so does a query row whose
    embedding is not finite (both said on stderr).
    """
    from ecgtool.errors import InputError

    y = np.asarray(train_labels, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    train = as_matrix(train_emb, "training embeddings")
    if y.shape[0] != train.shape[0]:
        raise InputError(f"{y.shape[0]} label rows for {train.shape[0]} training embeddings")
    dist, idx, ok = _neighbours(train, query_emb, k, metric)
    obs = np.isfinite(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = np.where(obs.any(axis=0), np.nansum(y > 0.5, axis=0) / obs.sum(axis=0), np.nan)
    never = ~obs.any(axis=0)
    if never.any():
        log.warning("kNN: %d label(s) never observed in training score NaN", int(never.sum()))
    out = np.full((idx.shape[0], y.shape[1]), np.nan, dtype=np.float64)
    if ok.any():
        neigh = y[idx[ok]]  # (m_ok, k, L)
        out[ok] = vote_fractions(neigh, _weights(dist[ok], weighted), prior)
    return out


def knn_class_scores(
    train_emb: np.ndarray,
    train_class: np.ndarray,
    n_classes: int,
    query_emb: np.ndarray,
    k: int = 10,
    metric: str = "cosine",
    *,
    weighted: bool = False,
) -> np.ndarray:
    """Multi-class kNN vote: (m, n_classes) class fractions among the k nearest (rows sum to 1).

    ``train_class`` holds integer classes in [0, n_classes); a negative value means unlabelled
    and that row is left out of the search. Votes are unweighted unless ``weighted``.
    """
    from ecgtool.errors import InputError

    c = np.asarray(train_class)
    train = as_matrix(train_emb, "training embeddings")
    if c.shape[0] != train.shape[0]:
        raise InputError(f"{c.shape[0]} classes for {train.shape[0]} training embeddings")
    c = c.astype(np.int64)
    if (c >= n_classes).any():
        raise InputError(f"training classes go up to {int(c.max())}, more than n_classes={n_classes}")
    keep = c >= 0
    if not keep.all():
        log.info("kNN: %d unlabelled training rows left out", int((~keep).sum()))
    train, c = train[keep], c[keep]
    dist, idx, ok = _neighbours(train, query_emb, k, metric)
    out = np.full((idx.shape[0], int(n_classes)), np.nan, dtype=np.float64)
    if ok.any():
        w = _weights(dist[ok], weighted)
        onehot = np.zeros((idx[ok].shape[0], idx.shape[1], int(n_classes)))
        np.put_along_axis(onehot, c[idx[ok]][:, :, None], 1.0, axis=2)
        s = (onehot * w[:, :, None]).sum(axis=1)
        out[ok] = s / s.sum(axis=1, keepdims=True)
    return out
