"""Exact nearest-neighbour search in NumPy: blocked matrix products, not a loop over rows.

Distances are what every part of ``ecgtool.retrieval`` reports:

* ``cosine``: ``1 - cos(q, x)`` in [0, 2] (0 = same direction);
* ``l2``: the Euclidean distance ``||q - x||`` (not its square).

Memory is bounded by ``block`` query rows times the number of stored rows.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "l2")


def check_metric(metric: str) -> str:
    from ecgtool.errors import UsageError

    m = str(metric).lower()
    if m in ("euclidean", "l2sq"):
        m = "l2"
    if m not in METRICS:
        raise UsageError(f"unknown metric {metric!r}", hint="use cosine or l2")
    return m


def as_matrix(x, name: str = "embeddings") -> np.ndarray:
    """A 2-D float32 C-contiguous array (a 1-D vector becomes one row)."""
    from ecgtool.errors import InputError

    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (rows x dimension), got shape {a.shape}")
    return np.ascontiguousarray(a)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return np.ascontiguousarray(x / n)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """What is stored for a metric: unit rows for cosine, the rows themselves for l2."""
    x = as_matrix(x)
    return normalise_rows(x) if metric == "cosine" else x


def search_prepared(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    *,
    base_sqnorm: np.ndarray | None = None,
    block: int = 1024,
    chunk_entries: int = 1 << 24,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of ``base`` (already :func:`prepare`-d) for each query (prepared the same way).

    Returns ``(distances, indices)``, both (m, k), nearest first; where fewer than k rows exist the
    tail holds ``inf`` / ``-1``. Queries go ``block`` at a time against chunks of the stored rows
    (a block's distance matrix holds about ``chunk_entries`` values), so the stored rows are read
    once per block and memory stays bounded whatever the sizes.
    """
    m = queries.shape[0]
    n = base.shape[0]
    kk = min(k, n)
    dist_out = np.full((m, k), np.inf, dtype=np.float32)
    idx_out = np.full((m, k), -1, dtype=np.int64)
    if n == 0 or m == 0 or k <= 0:
        return dist_out, idx_out
    if metric == "l2" and base_sqnorm is None:
        base_sqnorm = np.einsum("ij,ij->i", base, base)
    block = max(1, min(int(block), m))
    rows = max(kk, int(chunk_entries) // block)
    for i0 in range(0, m, block):
        q = queries[i0 : i0 + block]
        qn = np.einsum("ij,ij->i", q, q) if metric == "l2" else None
        cand_d, cand_i = [], []
        for j0 in range(0, n, rows):
            chunk = base[j0 : j0 + rows]
            d = q @ chunk.T  # (b, c) similarities
            if metric == "cosine":
                np.subtract(1.0, d, out=d)
            else:
                d *= -2.0
                d += qn[:, None]
                d += base_sqnorm[None, j0 : j0 + rows]
            np.maximum(d, 0.0, out=d)
            c = chunk.shape[0]
            kc = min(kk, c)
            part = np.argpartition(d, kc - 1, axis=1)[:, :kc] if kc < c else \
                np.broadcast_to(np.arange(c), (q.shape[0], c))
            cand_d.append(np.take_along_axis(d, part, axis=1))
            cand_i.append(part + j0)
        cd = np.concatenate(cand_d, axis=1) if len(cand_d) > 1 else cand_d[0]
        ci = np.concatenate(cand_i, axis=1) if len(cand_i) > 1 else cand_i[0]
        if cd.shape[1] > kk:
            sel = np.argpartition(cd, kk - 1, axis=1)[:, :kk]
            cd, ci = np.take_along_axis(cd, sel, axis=1), np.take_along_axis(ci, sel, axis=1)
        if metric == "l2":
            # the expanded form loses precision near 0 (float32 cancellation): the chosen ones directly
            diff = q[:, None, :].astype(np.float32) - base[ci]
            cd = np.einsum("ijk,ijk->ij", diff, diff)
        order = np.lexsort((ci, cd), axis=1)  # by distance, ties by row
        dd = np.take_along_axis(cd, order, axis=1)
        idx = np.take_along_axis(ci, order, axis=1)
        if metric == "l2":
            dd = np.sqrt(dd)
        dist_out[i0 : i0 + q.shape[0], :kk] = dd
        idx_out[i0 : i0 + q.shape[0], :kk] = idx
    return dist_out, idx_out


def exact_search(
    base, queries, k: int = 10, metric: str = "cosine", *, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query row among the rows of ``base``."""
    metric = check_metric(metric)
    b = prepare(base, metric)
    q = prepare(queries, metric)
    if b.shape[1] != q.shape[1]:
        from ecgtool.errors import InputError

        raise InputError(
            f"query dimension {q.shape[1]} differs from the stored dimension {b.shape[1]}",
            hint="embed the queries with the same model as the stored embeddings",
        )
    return search_prepared(b, q, k, metric, block=block)
