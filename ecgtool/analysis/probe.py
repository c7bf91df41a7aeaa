"""Linear probes on embeddings, with an honest report.

A probe is L2-regularised logistic regression on standardised embeddings (one
binary model per label, or one softmax model when the labels are exclusive).
All labels are fitted at once with L-BFGS: the objective is the sum of the
independent per-label objectives (each exactly scikit-learn's
``LogisticRegression(C=C)``), so one pass over the data serves every label.

Protocol (nothing is tuned on the test split):

* splits: a fold column (train = every other fold, ``val_fold`` for choices,
  ``test_fold`` for the report; PTB-XL's ``strat_fold`` 1–10 with 9/10), or
  k-fold cross-validation grouped by a column (patient): the groups of each
  fold are disjoint from the others; fold ``i`` is the test split, fold
  ``i+1`` the validation split, the rest train; test predictions of all folds
  are pooled for the report.
* on validation: the regularisation strength (per label, from a grid, by
  validation log-loss), the decision threshold (max F1 or Youden's J), and the
  temperature for calibration.
* on test: AUROC, AUPRC, F1, sensitivity, specificity with percentile
  bootstrap CIs (the same resamples for every label, so the macro average has
  a CI too), ECE / Brier / NLL before and after temperature scaling,
  subgroup tables and a data-scaling curve.

Several embeddings per record (segments) are averaged per record before
anything else, so that a record never sits in two splits.

Label values, a record_id repeated in the label table, fold values, grouped
folds and temperature scaling follow the rules of :mod:`ecgtool.evaluation`,
which ``finetune`` shares.

Heads (``--head``): ``linear`` (above); ``attention``: a learnable-query
attention pooling and a linear layer over the per-token features of
``embed --local`` (:mod:`ecgtool.analysis.attention_probe`), the frozen
mode of the ICLR-2026 benchmark; ``knn``: the vote of the k nearest training
records (:mod:`ecgtool.retrieval.knn`), smoothed to log-odds. Every head gets
the same splits, thresholds, temperature, CIs, conformal calibration and
report.

Conformal prediction (:mod:`ecgtool.analysis.conformal`) is calibrated on the
validation split at ``alpha`` and its empirical coverage reported on the test
split with a CI; the risk–coverage curve (selective prediction) and its area
are reported too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, logsumexp, softmax

from ecgtool.analysis import calibration as cal
from ecgtool.analysis import metrics as mt
from ecgtool.errors import InputError, UsageError
from ecgtool.evaluation import calibration as ecal
from ecgtool.evaluation import labels as el
from ecgtool.evaluation import splits as es
from ecgtool.evaluation.values import value_text

log = logging.getLogger("ecgtool")

DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0)
AGE_BANDS = (40.0, 60.0, 80.0)
# Columns that are never labels or subgroup keys.
STRUCTURAL = {"record_id", "embedding", "signal", "leads", "lead_mask", "fs", "segment"}
BINARY_HINT = f"{el.LABEL_HINT}; use --multiclass for a single column of class names"


# =========================================================================== data


@dataclass
class ProbeData:
    """One row per record: pooled embedding, labels, metadata."""

    record_ids: np.ndarray  # (R,) str
    X: np.ndarray  # (R, D) float32
    Y: np.ndarray  # binary: (R, L) float with nan = unknown; multiclass: (R,) int, -1 = unknown
    label_names: list[str]
    meta: dict[str, np.ndarray]  # column -> (R,) object
    multiclass: bool = False
    counts: dict[str, Any] = field(default_factory=dict)
    tokens: list[np.ndarray] | None = None  # per record (frames, D) per-token features, for --head attention

    @property
    def mask(self) -> np.ndarray:
        if self.multiclass:
            return self.Y >= 0
        return np.isfinite(self.Y)


def embedding_matrix(col: pa.ChunkedArray | pa.Array, name: str = "embedding") -> np.ndarray:
    """(N, D) float32 from a fixed-size or variable list column; null rows are nan."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    typ = arr.type
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_fixed_size_list(typ):
        d = typ.list_size
        vals = arr.values.slice(arr.offset * d, n * d)
        out = _float_numpy(vals).reshape(n, d)
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        lens = np.unique(lengths[valid]) if valid.any() else np.array([0])
        if lens.size > 1:
            raise InputError(f"{name}: embeddings differ in length ({', '.join(map(str, lens[:5]))} values)",
                             "every row of an embedding table needs the same dimension")
        d = int(lens[0])
        flat = _float_numpy(arr.flatten())
        out = np.full((n, d), np.nan, dtype=np.float32)
        out[valid & (lengths == d)] = flat.reshape(-1, d)
    else:
        raise InputError(f"{name}: column type {typ} is not a list of floats",
                         "the embedding column must be fixed_size_list<float32, D> (as `ecgtool embed` writes)")
    if not valid.all():
        out = out.copy()
        out[~valid] = np.nan
    return out


def _float_numpy(values: pa.Array) -> np.ndarray:
    if values.null_count:
        values = pc.fill_null(values.cast(pa.float32()), float("nan"))
    out = values.to_numpy(zero_copy_only=False)
    return out.astype(np.float32, copy=False)


def _column_as_objects(col: pa.ChunkedArray) -> np.ndarray:
    return np.array(col.to_pylist(), dtype=object)


def _is_flat(typ: pa.DataType) -> bool:
    return not (pa.types.is_nested(typ) or pa.types.is_binary(typ) or pa.types.is_large_binary(typ))


def _pool_first(inverse: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    groups, first = np.unique(inverse, return_index=True)  # first row of each group, groups 0..n-1
    assert groups.size == n_groups
    return values[first]


def token_rows(col: pa.ChunkedArray | pa.Array, name: str = "local") -> list[np.ndarray]:
    """Per row (frames, D) float32 arrays from a list<fixed_size_list<float32, D>> column (``embed --local``)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    typ = arr.type
    if not ((pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_fixed_size_list(typ.value_type)):
        raise InputError(f"{name}: column type {typ} is not a list of per-token vectors",
                         "write it with 'ecgtool embed --local' (list<fixed_size_list<float32, D>>)")
    d = typ.value_type.list_size
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = _float_numpy(arr.flatten().flatten()).reshape(-1, d)
    offs = np.r_[0, np.cumsum(lengths)]
    return [flat[offs[i]:offs[i + 1]] for i in range(len(lengths))]


def subset(data: ProbeData, idx: np.ndarray) -> ProbeData:
    """The records ``idx`` of ``data`` (in that order)."""
    idx = np.asarray(idx, dtype=np.int64)
    return ProbeData(record_ids=data.record_ids[idx], X=data.X[idx], Y=data.Y[idx], label_names=data.label_names,
                     meta={k: v[idx] for k, v in data.meta.items()}, multiclass=data.multiclass,
                     counts=dict(data.counts), tokens=[data.tokens[i] for i in idx] if data.tokens else None)


def load_probe_data(
    emb: pa.Table,
    labels: pa.Table | None = None,
    label_names: Sequence[str] | None = None,
    label_meta_names: Sequence[str] | None = None,
    multiclass: bool = False,
    emb_name: str = "embeddings",
    labels_name: str = "labels",
    tokens: bool = False,
) -> ProbeData:
    """Pool embeddings per record, drop non-finite rows, join the labels.

    ``labels`` is a label table joined by ``record_id``; without it, the label
    columns ``label_names`` are read from the embedding table itself.
    ``label_meta_names`` are the label names the label table's metadata lists
    (used when ``label_names`` is not given). ``tokens``: also read the
    per-token features (column ``local``, from ``embed --local``); the tokens
    of a record's segments are concatenated in row order.
    """
    counts: dict[str, Any] = {}
    if "record_id" not in emb.column_names:
        raise InputError(f"{emb_name}: no record_id column", "an embedding table needs record_id and embedding")
    if "embedding" not in emb.column_names:
        raise InputError(f"{emb_name}: no embedding column",
                         "give a table written by `ecgtool embed` (columns record_id, embedding)")
    X = embedding_matrix(emb.column("embedding"), emb_name)
    ids = np.array([str(v) for v in emb.column("record_id").to_pylist()], dtype=object)
    counts["embedding_rows"] = int(len(ids))
    finite = np.isfinite(X).all(axis=1)
    n_bad = int((~finite).sum())
    counts["rows_dropped_nonfinite"] = n_bad
    if n_bad:
        bad_ids = list(dict.fromkeys(ids[~finite]))[:5]
        log.warning("%s: dropped %d embedding row(s) with NaN/inf values (e.g. %s)", emb_name, n_bad,
                    ", ".join(bad_ids))
    emb_meta = {c: _column_as_objects(emb.column(c)) for c in emb.column_names
                if c not in STRUCTURAL and _is_flat(emb.schema.field(c).type)}
    tok_rows = None
    if tokens:
        if "local" not in emb.column_names:
            raise UsageError(f"{emb_name}: no per-token features (column 'local') for --head attention",
                             "embed with 'ecgtool embed --local' (it writes the pooled embedding and the tokens)")
        tok_rows = token_rows(emb.column("local"), f"{emb_name}: local")
        tok_rows = [t for t, ok in zip(tok_rows, finite) if ok]
    X, ids = X[finite], ids[finite]
    emb_meta = {k: v[finite] for k, v in emb_meta.items()}
    if ids.size == 0:
        raise InputError(f"{emb_name}: no usable embedding rows", "every row was empty or had NaN/inf values")

    # Pool segments per record (mean), keeping the order of first appearance.
    uniq, first_idx, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order_groups = np.argsort(first_idx, kind="stable")
    remap = np.empty_like(order_groups)
    remap[order_groups] = np.arange(order_groups.size)
    inverse = remap[inverse.ravel()]
    rec_ids = uniq[order_groups]
    R = rec_ids.size
    if R < ids.size:
        order = np.argsort(inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        sums = np.add.reduceat(X[order].astype(np.float64), starts, axis=0)
        n_per = np.diff(np.r_[starts, order.size])
        X = (sums / n_per[:, None]).astype(np.float32)
        emb_meta = {k: _pool_first(inverse, R, v) for k, v in emb_meta.items()}
        counts["segments_pooled"] = {"rows": int(ids.size), "records": int(R),
                                     "max_per_record": int(n_per.max())}
    counts["records"] = int(R)
    rec_tokens = None
    if tok_rows is not None:
        rec_tokens = [[] for _ in range(R)]
        for i, g in enumerate(inverse):
            rec_tokens[g].append(tok_rows[i])
        rec_tokens = [t[0] if len(t) == 1 else np.concatenate(t) for t in rec_tokens]

    meta = dict(emb_meta)
    names = list(label_names) if label_names else None
    if labels is not None:
        if "record_id" not in labels.column_names:
            raise InputError(f"{labels_name}: no record_id column", "a label table needs record_id")
        if names is None:
            names = list(label_meta_names or []) or _numeric_label_columns(labels)
        lab_ids = labels.column("record_id").to_pylist()
        in_use = {n_: labels.column(n_).to_pylist() for n_ in names if n_ in labels.column_names}
        lu, lfirst = el.unique_label_rows(lab_ids, in_use, labels_name)  # the duplicate rule
        pos = np.searchsorted(lu, rec_ids)
        pos = np.clip(pos, 0, max(lu.size - 1, 0))
        hit = (lu.size > 0) & (lu[pos] == rec_ids) if lu.size else np.zeros(R, dtype=bool)
        n_join = int(hit.sum())
        counts["label_rows"] = int(len(lab_ids))
        counts["joined"] = n_join
        counts["embeddings_without_labels"] = int(R - n_join)
        counts["labels_without_embeddings"] = int(lu.size - n_join)
        if n_join == 0:
            raise InputError(
                f"{emb_name} and {labels_name} share no record_id ({R} embedded records, {lu.size} labelled; "
                f"e.g. {rec_ids[0]!r} vs {lu[0] if lu.size else None!r})",
                "the label table must be made from the same records (ecgtool label) ",
            )
        if n_join < R or n_join < lu.size:
            log.warning("joined %d of %d embedded records with %d labelled records", n_join, R, lu.size)
        rows = lfirst[pos[hit]]
        X, rec_ids = X[hit], rec_ids[hit]
        if rec_tokens is not None:
            rec_tokens = [t for t, h in zip(rec_tokens, hit) if h]
        meta = {k: v[hit] for k, v in meta.items()}
        sel = pa.array(rows, type=pa.int64())
        lab_tab = labels.take(sel)
        src_tab = lab_tab
    else:
        src_tab = None

    if not names:
        raise UsageError("no label columns given",
                         "use --labels LABELS (a label table) or --label-cols A,B with label columns in the table")

    def label_column(name: str) -> pa.ChunkedArray:
        if src_tab is not None and name in src_tab.column_names:
            return src_tab.column(name)
        if name in emb.column_names:
            raise UsageError(f"label column {name!r} is in the embedding table, not the label table",
                             "drop --labels to read labels from the embedding table")
        where = labels_name if src_tab is not None else emb_name
        raise UsageError(f"{where}: no label column {name!r}",
                         f"columns there: {', '.join((src_tab or emb).column_names)}")

    if src_tab is None:
        cols = {}
        for n_ in names:
            if n_ not in meta:
                raise UsageError(f"{emb_name}: no label column {n_!r}",
                                 f"columns there: {', '.join(emb.column_names)}")
            cols[n_] = meta[n_]
    else:
        cols = {n_: np.array(label_column(n_).to_pylist(), dtype=object) for n_ in names}
        for c in src_tab.column_names:
            if c in names or c in STRUCTURAL or not _is_flat(src_tab.schema.field(c).type):
                continue
            # The embedding table's metadata wins, unless its column is empty throughout
            # (e.g. age/sex that a raw format does not carry but the label table does).
            if c not in meta or all(v is None for v in meta[c]):
                meta[c] = _column_as_objects(src_tab.column(c))
    for n_ in names:
        meta.pop(n_, None)

    source = labels_name if src_tab is not None else emb_name
    if multiclass:
        Y, classes, n_drop = _multiclass_targets(cols, source)
        counts["records_not_exactly_one_class"] = n_drop
        label_list = classes
    else:
        Y = el.label_matrix(cols, names, source, BINARY_HINT).astype(np.float64) if names \
            else np.zeros((len(X), 0))
        label_list = list(names)
    return ProbeData(record_ids=rec_ids, X=X, Y=Y, label_names=label_list, meta=meta,
                     multiclass=multiclass, counts=counts, tokens=rec_tokens)


def _numeric_label_columns(labels: pa.Table) -> list[str]:
    """Label columns of a label table whose metadata names none: its numeric and boolean columns."""
    return [c for c in labels.column_names if c not in STRUCTURAL and c != "patient_id"
            and (pa.types.is_integer(labels.schema.field(c).type)
                 or pa.types.is_boolean(labels.schema.field(c).type)
                 or pa.types.is_floating(labels.schema.field(c).type))
            and c not in ("strat_fold", "age", "sex")]


def _multiclass_targets(cols: dict[str, np.ndarray], source: str | None = None) -> tuple[np.ndarray, list[str], int]:
    """(class index per record, -1 = none; class names; records without exactly one class)."""
    names = list(cols)
    if len(names) == 1:
        Y, classes = el.class_index(cols[names[0]])
        if len(classes) < 2:
            raise InputError(f"label {names[0]!r} has {len(classes)} class(es); a multi-class probe needs 2 or more")
        return Y, classes, 0
    B = el.label_matrix(cols, names, source, BINARY_HINT)
    Y, _ = el.class_targets(B, names, source)
    return Y, names, int((Y < 0).sum())


# =========================================================================== splits


@dataclass
class Split:
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def fold_splits(folds: np.ndarray, test_fold: str, val_fold: str, col: str = "fold") -> list[Split]:
    """One split: test = the ``test_fold`` folds (comma-separated), validation = ``val_fold``'s, train = the rest
    (:func:`ecgtool.evaluation.splits.fold_split`: 9 and 9.0 are one fold)."""
    train, val, test = es.fold_split(folds, val_fold, test_fold, column=col, val_option="--val-fold",
                                     test_option="--test-fold", require_test=True, unit="record")
    test_set = es.parse_folds(test_fold)
    label = ",".join(sorted(test_set, key=es.fold_order))
    return [Split(f"test fold{'s' if len(test_set) > 1 else ''} {label}", train, val, test)]


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A fold number per row; all rows of a group share one fold (a record without a group id is its own
    group); folds balanced by rows (:func:`ecgtool.evaluation.splits.group_folds`)."""
    return es.group_folds(groups, k, seed)


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


# =========================================================================== the linear model


@dataclass
class LinearModel:
    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray  # (D, L or K)
    b: np.ndarray
    C: np.ndarray  # per label (binary) or a single value (multiclass)
    multiclass: bool

    def logits(self, X: np.ndarray) -> np.ndarray:
        Xs = standardise(X, self.mean, self.scale)
        return (Xs @ self.W.astype(np.float32)).astype(np.float64) + self.b


def standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((X - mean) / scale).astype(np.float32, copy=False)


def fit_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X.std(axis=0, dtype=np.float64).astype(np.float32)
    std[~(std > 1e-8)] = 1.0
    return mean, std


def fit_logistic(
    Xs: np.ndarray,
    Y: np.ndarray,
    M: np.ndarray | None,
    C: float | np.ndarray,
    multiclass: bool = False,
    n_classes: int | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised logistic regression for every label at once.

    Binary: ``Y`` (n, L) 0/1 with mask ``M`` (n, L); label ``l`` minimises
    ``0.5 |w_l|^2 + C_l * sum_i M_il * loss_il`` (scikit-learn's objective,
    intercept not penalised), divided by ``C_l * n_l`` for conditioning.
    Multi-class: ``Y`` (n,) class indices (rows with ``M`` false ignored),
    softmax (multinomial) loss with one ``C``. Returns ``(W (D, L|K), b)``.
    """
    n, D = Xs.shape
    Xs = np.ascontiguousarray(Xs, dtype=np.float32)
    if multiclass:
        K = int(n_classes or (Y.max() + 1))
        m = np.ones(n, dtype=bool) if M is None else np.asarray(M, dtype=bool)
        rows = np.flatnonzero(m)
        Xf, yf = Xs[rows], Y[rows].astype(np.int64)
        onehot = np.zeros((rows.size, K))
        onehot[np.arange(rows.size), yf] = 1.0
        nn = max(rows.size, 1)
        Cv = float(np.asarray(C).ravel()[0])
        L = K

        def fun(theta):
            W = theta[: D * K].reshape(D, K)
            b = theta[D * K:]
            Z = (Xf @ W.astype(np.float32)).astype(np.float64) + b
            lse = logsumexp(Z, axis=1)
            loss = np.sum(lse - np.sum(Z * onehot, axis=1)) / nn + np.sum(W * W) / (2 * Cv * nn)
            R = (np.exp(Z - lse[:, None]) - onehot) / nn
            gW = (Xf.T @ R.astype(np.float32)).astype(np.float64) + W / (Cv * nn)
            return loss, np.concatenate([gW.ravel(), R.sum(axis=0)])
    else:
        Y = np.asarray(Y, dtype=np.float64)
        L = Y.shape[1]
        Mf = np.isfinite(Y) if M is None else np.asarray(M, dtype=bool)
        Mf = Mf.astype(np.float64)
        Yz = np.nan_to_num(Y, nan=0.0)
        nl = np.maximum(Mf.sum(axis=0), 1.0)
        Cv = np.broadcast_to(np.asarray(C, dtype=np.float64), (L,)).copy()

        def fun(theta):
            W = theta[: D * L].reshape(D, L)
            b = theta[D * L:]
            Z = (Xs @ W.astype(np.float32)).astype(np.float64) + b
            loss = np.sum(Mf * (np.logaddexp(0.0, Z) - Yz * Z), axis=0) / nl
            loss = float(np.sum(loss) + np.sum(np.sum(W * W, axis=0) / (2 * Cv * nl)))
            R = Mf * (expit(Z) - Yz) / nl
            gW = (Xs.T @ R.astype(np.float32)).astype(np.float64) + W / (Cv * nl)
            return loss, np.concatenate([gW.ravel(), R.sum(axis=0)])

    theta0 = np.zeros(D * L + L) if init is None else np.concatenate([init[0].ravel(), init[1]])
    # SciPy's L-BFGS-B calls BLAS on vectors of a few thousand numbers per
    # iteration; with a multi-threaded BLAS on a busy machine those tiny calls
    # cost milliseconds each (thread wake-ups). Run the optimiser single-threaded
    # and give the large products in ``fun`` the threads back.
    try:
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        n_threads = max([i.get("num_threads", 1) for i in ctl.info() if i.get("user_api") == "blas"] or [1])
        fun_mt = fun
        if n_threads > 1 and Xs.shape[0] * D >= 1_000_000:
            def fun_threaded(theta):
                with ctl.limit(limits=n_threads, user_api="blas"):
                    return fun(theta)

            fun_mt = fun_threaded
        limit = ctl.limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        fun_mt = fun
        limit = contextlib.nullcontext()
    with limit:
        res = minimize(fun_mt, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12, "maxcor": 20})
    W = res.x[: D * L].reshape(D, L)
    b = res.x[D * L:].copy()
    return W, b


def fit_probe(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    M_train: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    M_val: np.ndarray,
    multiclass: bool,
    n_classes: int | None = None,
    C: float | None = None,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    max_iter: int = 500,
) -> LinearModel:
    """Fit on train; with ``C=None`` choose C per label (one C for multiclass)
    from ``c_grid`` by validation log-loss."""
    mean, scale = fit_stats(X_train)
    Xs = standardise(X_train, mean, scale)
    grid = [float(C)] if C is not None else sorted(float(c) for c in c_grid)
    Xv = standardise(X_val, mean, scale) if len(grid) > 1 else None
    best = None
    init = None
    for c in grid:
        W, b = fit_logistic(Xs, Y_train, M_train, c, multiclass, n_classes, init=init, max_iter=max_iter)
        init = (W, b)
        if len(grid) == 1:
            return LinearModel(mean, scale, W, b, np.full(W.shape[1] if not multiclass else 1, c), multiclass)
        Z = (Xv @ W.astype(np.float32)).astype(np.float64) + b
        if multiclass:
            rows = np.flatnonzero(M_val)
            nll = np.array([-np.mean(log_softmax(Z[rows], axis=1)[np.arange(rows.size), Y_val[rows]])])
            nll = np.nan_to_num(nll, nan=np.inf)
        else:
            Mv = M_val.astype(np.float64)
            Yv = np.nan_to_num(Y_val, nan=0.0)
            nll = np.sum(Mv * (np.logaddexp(0.0, Z) - Yv * Z), axis=0) / np.maximum(Mv.sum(axis=0), 1)
        if best is None:
            best = [W.copy(), b.copy(), np.full(nll.shape, c), nll]
        else:
            better = nll < best[3] - 1e-12
            if multiclass:
                if better[0]:
                    best = [W.copy(), b.copy(), np.array([c]), nll]
            else:
                best[0][:, better] = W[:, better]
                best[1][better] = b[better]
                best[2][better] = c
                best[3] = np.where(better, nll, best[3])
    return LinearModel(mean, scale, best[0], best[1], best[2], multiclass)


# =========================================================================== subgroups


def parse_subgroup(spec: str) -> tuple[str, list[float] | None]:
    """``col`` or ``col:bands`` (age bands <40, 40-60, 60-80, >=80) or ``col:bands=30,50,70``."""
    if ":" not in spec:
        return spec, None
    col, how = spec.split(":", 1)
    if how == "bands":
        return col, list(AGE_BANDS)
    if how.startswith("bands="):
        try:
            edges = sorted(float(x) for x in how[6:].split(",") if x.strip())
        except ValueError:
            raise UsageError(f"--subgroup {spec}: band edges must be numbers", "e.g. age:bands=40,60,80")
        if not edges:
            raise UsageError(f"--subgroup {spec}: no band edges", "e.g. age:bands=40,60,80")
        return col, edges
    raise UsageError(f"--subgroup {spec}: unknown form {how!r}", "use COLUMN, COLUMN:bands or COLUMN:bands=40,60,80")


def _fmt_edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def subgroup_values(values: np.ndarray, edges: list[float] | None) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        nv = value_text(v)
        if nv is None:
            out[i] = "missing"
            continue
        if edges is None:
            out[i] = nv
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            out[i] = "missing"
            continue
        if math.isnan(x):
            out[i] = "missing"
        elif x < edges[0]:
            out[i] = f"<{_fmt_edge(edges[0])}"
        elif x >= edges[-1]:
            out[i] = f">={_fmt_edge(edges[-1])}"
        else:
            j = int(np.searchsorted(edges, x, side="right"))
            out[i] = f"{_fmt_edge(edges[j - 1])}-{_fmt_edge(edges[j])}"
    return out


def _band_order(keys: list[str], edges: list[float] | None) -> list[str]:
    if edges is None:
        return sorted(keys, key=lambda k: (k == "missing", k))
    names = [f"<{_fmt_edge(edges[0])}"] + [f"{_fmt_edge(a)}-{_fmt_edge(b)}" for a, b in zip(edges, edges[1:])] \
        + [f">={_fmt_edge(edges[-1])}", "missing"]
    return [n for n in names if n in keys]


# =========================================================================== the probe


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


def _label_matrix(data: ProbeData) -> tuple[np.ndarray, np.ndarray]:
    """(Y (n, L) 0/1, M (n, L) known) for metrics; multi-class becomes one-vs-rest."""
    if data.multiclass:
        K = len(data.label_names)
        known = data.Y >= 0
        Y = np.zeros((len(data.Y), K), dtype=bool)
        Y[np.flatnonzero(known), data.Y[known]] = True
        return Y, np.repeat(known[:, None], K, axis=1)
    M = np.isfinite(data.Y)
    return np.nan_to_num(data.Y, nan=0.0).astype(bool), M


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


def run_probe(data: ProbeData, splits: list[Split], opts: ProbeOptions) -> tuple[dict, dict]:
    """Fit, predict, evaluate. Returns (JSON-ready report, arrays for figures)."""
    from ecgtool.analysis import conformal as cf

    if opts.threshold_rule not in ("f1", "youden"):
        raise UsageError(f"unknown threshold rule {opts.threshold_rule!r}", "use f1 or youden")
    if opts.head not in HEADS:
        raise UsageError(f"--head {opts.head!r}: expected one of {', '.join(HEADS)}")
    if opts.alpha is not None:
        cf.check_alpha(opts.alpha)
    names = data.label_names
    L = len(names)
    Yb, Mb = _label_matrix(data)
    n = len(data.record_ids)
    logits = np.full((n, L), np.nan)
    probs = np.full((n, L), np.nan)
    probs_cal = np.full((n, L), np.nan)
    preds = np.zeros((n, L), dtype=bool)
    thr_rec = np.full((n, L), np.nan)  # the validation threshold each test record was decided with
    in_test = np.zeros(n, dtype=bool)
    fold_info = []
    has_threshold = np.ones(L, dtype=bool)
    temps_all: list[list[float | None]] = []
    thr_all: list[list[float | None]] = []
    C_all: list = []
    head_info: list[dict] = []
    conf_cal: list[dict] = []
    sets = np.zeros((n, L), dtype=bool)          # multi-class: APS set membership
    has1 = np.ones((n, L), dtype=bool)           # multi-label: 1 in the set
    has0 = np.ones((n, L), dtype=bool)           # multi-label: 0 in the set
    conf_ok = np.ones(L, dtype=bool)
    clock = {"fit": 0.0, "evaluate": 0.0, "subgroups": 0.0, "scaling": 0.0}
    t0 = time.perf_counter()
    for sp in splits:
        tr = sp.train[data.mask[sp.train] if data.multiclass else Mb[sp.train].any(axis=1)]
        if tr.size == 0:
            raise InputError(f"{sp.name}: no labelled record in the training split")
        hf = fit_head(data, tr, sp.val, sp.test, opts)
        zv, zt = hf.zv, hf.zt
        if hf.C is not None:
            C_all.append(hf.C)
        head_info.append(hf.info)
        logits[sp.test] = zt
        in_test[sp.test] = True
        if data.multiclass:
            mv = data.mask[sp.val]
            T = ecal.fit_temperature(zv[mv], data.Y[sp.val][mv], multiclass=True)
            probs[sp.test] = softmax(zt, axis=1)
            probs_cal[sp.test] = ecal.apply_temperature(zt, T, multiclass=True)
            pred = np.zeros_like(zt, dtype=bool)
            pred[np.arange(len(zt)), zt.argmax(axis=1)] = True
            preds[sp.test] = pred
            temps_all.append([T])
            thr_all.append([])
            if opts.alpha is not None:
                c = cf.calibrate_aps(ecal.apply_temperature(zv, T, multiclass=True), data.Y[sp.val],
                                     opts.alpha, names)
                conf_cal.append(c)
                sets[sp.test] = cf.aps_sets(probs_cal[sp.test], c)
        else:
            ts, thr = [], []
            pv = expit(zv)
            pv_cal = np.full_like(pv, np.nan)
            for j in range(L):
                mv = Mb[sp.val, j]
                yv = Yb[sp.val, j][mv]
                t = mt.choose_threshold(yv, pv[mv, j], opts.threshold_rule)
                T = ecal.fit_temperature(zv[mv, j], yv)
                thr.append(t)
                ts.append(T)
                if t is None:
                    has_threshold[j] = False
                else:
                    preds[sp.test, j] = expit(zt[:, j]) >= t
                    thr_rec[sp.test, j] = t
                probs_cal[sp.test, j] = ecal.apply_temperature(zt[:, j], T)
                pv_cal[:, j] = ecal.apply_temperature(zv[:, j], T)
            probs[sp.test] = expit(zt)
            temps_all.append(ts)
            thr_all.append(thr)
            if opts.alpha is not None:
                c = cf.calibrate_labels(pv_cal, Yb[sp.val], Mb[sp.val], opts.alpha, names)
                conf_cal.append(c)
                h1, h0, ok = cf.label_sets(probs_cal[sp.test], c, names)
                has1[sp.test], has0[sp.test] = h1, h0
                conf_ok &= ok
        fold_info.append({"name": sp.name, "train": int(tr.size), "val": int(sp.val.size), "test": int(sp.test.size)})

    clock["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = np.flatnonzero(in_test)
    Yt, Mt, Pt = Yb[test], Mb[test], probs[test]
    ev = mt.evaluate(Yt, Pt, Mt, preds=preds[test], has_pred=has_threshold, n_boot=opts.n_boot, seed=opts.seed,
                     level=opts.level)
    per_label: dict[str, dict] = {}
    for j, name in enumerate(names):
        m = Mt[:, j]
        npos, nneg = int(Yt[m, j].sum()), int((~Yt[m, j]).sum())
        entry: dict[str, Any] = {"n_test": int(m.sum()), "n_pos": npos, "n_neg": nneg}
        if not data.multiclass:
            entry["threshold"] = [t[j] for t in thr_all] if len(splits) > 1 else thr_all[0][j]
            if C_all:
                entry["C"] = [c[j] for c in C_all] if len(splits) > 1 else C_all[0][j]
        for k in mt.ALL_METRICS:
            reason = mt.metric_reason(k, npos, nneg, bool(has_threshold[j]))
            entry[k] = mt.ev_summary(ev, k, j, reason)
        if not data.multiclass:
            entry["calibration"] = _calibration_binary(Yt[m, j], logits[test][m, j], probs_cal[test][m, j],
                                                       [t[j] for t in temps_all], opts.n_bins, npos, nneg)
        per_label[name] = entry
    macro = {k: mt.ev_summary(ev, k, None, "no label is computable on the test split") for k in mt.ALL_METRICS}
    macro["labels_computable"] = {k: int(np.isfinite(ev["point"][k]).sum()) for k in mt.ALL_METRICS}
    protocol: dict[str, Any] = {
        "pooling": "mean of segment embeddings per record" if opts.head != "attention"
        else "per-token features of every segment of a record, concatenated",
        "head": opts.head,
        "model": _head_description(opts, data.multiclass),
        "threshold": "argmax" if data.multiclass else f"max {'F1' if opts.threshold_rule == 'f1' else 'Youden J'} on validation",
        "temperature": "fitted on validation (NLL)",
        "bootstrap": {"n": opts.n_boot, "seed": opts.seed, "level": opts.level,
                      "method": "percentile, checked to contain the point estimate; where it does not, BCa, "
                                "else the normal interval (bootstrap SD)"},
        "splits": fold_info,
    }
    if opts.head == "linear":
        protocol["C"] = opts.C if opts.C is not None else {"chosen_on": "validation log-loss",
                                                           "grid": list(opts.c_grid)}
    else:
        protocol["head_fit"] = head_info if len(head_info) > 1 else head_info[0]
    report: dict[str, Any] = {
        "task": "multiclass" if data.multiclass else "multilabel",
        "head": opts.head,
        "labels": names,
        "records": data.counts,
        "embedding_dim": int(data.X.shape[1]),
        "protocol": protocol,
        "metrics": {"per_label": per_label, "macro": macro},
    }
    if data.multiclass:
        mk = data.mask[test]
        zt = logits[test][mk]
        yt = data.Y[test][mk]
        report["metrics"]["accuracy"] = float(np.mean(zt.argmax(axis=1) == yt)) if yt.size else None
        report["calibration"] = _calibration_multiclass(yt, zt, probs_cal[test][mk], [t[0] for t in temps_all],
                                                        opts.n_bins)
        if opts.head == "linear" and opts.C is None:
            report["protocol"]["C"] = {"chosen_on": "validation log-loss", "grid": list(opts.c_grid),
                                       "chosen": [c[0] for c in C_all]}
    # conformal prediction, calibrated on validation, coverage on test
    if opts.alpha is not None:
        report["conformal"] = _conformal_report(data, test, conf_cal, sets, has1, has0, conf_ok, Yt, Mt,
                                                probs_cal[test], opts)
    # selective prediction: the risk–coverage curve
    if data.multiclass:
        report["selective"] = cf.selective_multiclass(probs_cal[test], data.Y[test])
    else:
        report["selective"] = cf.selective_labels(Pt, Yt, Mt, thr_rec[test], names)
    clock["evaluate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.subgroups:
        report["subgroups"] = _subgroups(data, test, Yt, Mt, Pt, preds[test], has_threshold, opts)
    clock["subgroups"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opts.scaling:
        report["scaling"] = _scaling(data, splits[0], Yb, Mb, opts, C_all[0] if C_all else None)
    clock["scaling"] = time.perf_counter() - t0
    report["protocol"]["bootstrap"]["intervals"] = mt.ci_methods(report["metrics"])
    report["test_predictions"] = _test_predictions(data, test, Yt, Mt, Pt, preds[test], has_threshold)
    report["timings_s"] = {k: round(v, 3) for k, v in clock.items()}
    arrays = {"Y": Yt, "M": Mt, "P": Pt, "P_cal": probs_cal[test], "labels": names, "multiclass": data.multiclass,
              "y_class": data.Y[test] if data.multiclass else None, "preds": preds[test],
              "has_pred": has_threshold, "record_ids": data.record_ids[test]}
    return report, arrays


def _test_predictions(data, test, Yt, Mt, Pt, Pr, has_threshold) -> dict:
    """Per test record: truth (null = unknown), probabilities and decisions, for ``ecgtool compare``."""
    y = np.where(Mt, Yt.astype(np.float64), np.nan)
    return {"record_ids": [str(r) for r in data.record_ids[test]], "labels": list(data.label_names),
            "y": [[None if not np.isfinite(v) else int(v) for v in row] for row in y],
            "p": Pt.tolist(), "pred": Pr.astype(int).tolist(), "has_pred": [bool(v) for v in has_threshold]}


def _conformal_report(data, test, cals, sets, has1, has0, ok, Yt, Mt, Pt_cal, opts) -> dict:
    from ecgtool.analysis import conformal as cf

    names = data.label_names
    out: dict[str, Any] = {"alpha": opts.alpha, "target_coverage": 1 - opts.alpha,
                           "calibrated_on": "the validation split of each fold (the same records that chose "
                                            "the threshold and the temperature)"}
    if data.multiclass:
        out["method"] = ("adaptive prediction sets (APS, Romano et al. 2020), non-randomised: the classes, most "
                         "probable first, whose probability mass ranked above them is at most qhat")
        out["calibration"] = cals if len(cals) > 1 else cals[0]
        out["test"] = cf.evaluate_sets(sets[test], data.Y[test], names, opts.n_boot, opts.seed, opts.level)
        return out
    out["method"] = ("class-conditional split conformal per label: positive if p >= t_pos and p > t_neg, "
                     "negative if p <= t_neg and p < t_pos, abstain otherwise")
    per_fold = [c["labels"] for c in cals]
    cal_labels = {}
    for name in names:
        es = [f[name] for f in per_fold]
        cal_labels[name] = es[0] if len(es) == 1 else {"folds": es}
    out["calibration"] = cal_labels
    d = np.full(has1[test].shape, cf.ABSTAIN, dtype=np.int8)
    h1, h0 = has1[test], has0[test]
    d[h1 & ~h0] = cf.POSITIVE
    d[h0 & ~h1] = cf.NEGATIVE
    out["test"] = cf.evaluate_decisions(d, ok, Yt, Mt, names, h1, h0, opts.n_boot, opts.seed, opts.level)
    for name in names:
        if not ok[names.index(name)]:
            reasons = [f[name].get("reason") for f in per_fold if f[name].get("reason")]
            out["test"]["per_label"][name]["reason"] = reasons[0] if reasons else "not computable"
    return out


def _calib_block(y, p, n_bins, logits=None, T=None, multiclass=False) -> dict:
    return {
        "ece": mt.ece(y, p, n_bins),
        "brier": mt.brier(y, p),
        "nll": mt.log_loss(y, p),
        "reliability": cal.reliability_curve(y, p, n_bins),
    }


def _calibration_binary(y, z, p_cal, temps, n_bins, npos, nneg) -> dict:
    out: dict[str, Any] = {"temperature": temps[0] if len(temps) == 1 else temps}
    if y.size == 0:
        out["reason"] = "no labelled records in the test split"
        return out
    out["before"] = _calib_block(y, expit(z), n_bins)
    if any(t is None for t in temps):
        out["after"] = None
        out["reason_after"] = "no temperature: the validation split has no positive or no negative records"
    else:
        out["after"] = _calib_block(y, p_cal, n_bins)
    if npos == 0 or nneg == 0:
        out["note"] = "the test split has a single class; ECE and Brier measure only that class"
    return out


def _calibration_multiclass(y, z, p_cal, temps, n_bins) -> dict:
    out: dict[str, Any] = {"temperature": temps[0] if len(temps) == 1 else temps,
                           "before": _calib_block(y, softmax(z, axis=1), n_bins)}
    if any(t is None for t in temps):
        out["after"] = None
        out["reason_after"] = "no temperature: the validation split has a single class"
    else:
        out["after"] = _calib_block(y, p_cal, n_bins)
    return out


def _subgroups(data, test, Yt, Mt, Pt, Pr, has_threshold, opts) -> dict:
    out = {}
    for spec in opts.subgroups:
        col, edges = parse_subgroup(spec)
        if col not in data.meta:
            raise UsageError(f"--subgroup {spec}: no column {col!r}",
                             f"metadata columns: {', '.join(sorted(data.meta)) or '(none)'}")
        g = subgroup_values(data.meta[col][test], edges)
        keys, cnt = np.unique(g.astype(str), return_counts=True)
        keys = list(keys)
        if len(keys) > opts.max_subgroup_values:
            top = set(np.array(keys)[np.argsort(-cnt)[: opts.max_subgroup_values]])
            log.warning("--subgroup %s: %d values; the %d largest are reported", spec, len(keys),
                        opts.max_subgroup_values)
            keys = [k for k in keys if k in top]
        table = {}
        for key in _band_order(keys, edges):
            rows = np.flatnonzero(g == key)
            ev = mt.evaluate(Yt[rows], Pt[rows], Mt[rows], preds=Pr[rows], has_pred=has_threshold,
                             n_boot=opts.n_boot, seed=opts.seed, level=opts.level)
            per = {}
            for j, name in enumerate(data.label_names):
                m = Mt[rows, j]
                npos, nneg = int(Yt[rows][m, j].sum()), int((~Yt[rows][m, j]).sum())
                per[name] = {"n": int(m.sum()), "n_pos": npos}
                for k in mt.ALL_METRICS:
                    per[name][k] = mt.ev_summary(ev, k, j, mt.metric_reason(k, npos, nneg, bool(has_threshold[j])))
            macro = {k: mt.ev_summary(ev, k, None, "no label is computable in this subgroup")
                     for k in ("auroc", "auprc")}
            table[key] = {"n": int(rows.size), "per_label": per, "macro": macro}
        out[spec] = {"column": col, "bands": edges, "groups": table}
    return out


def _scaling(data: ProbeData, sp: Split, Yb, Mb, opts: ProbeOptions, C_chosen) -> dict:
    """Macro AUROC on the test split against the number of training records."""
    tr = sp.train[data.mask[sp.train] if data.multiclass else Mb[sp.train].any(axis=1)]
    Cs = np.asarray(C_chosen if C_chosen is not None else [np.nan], dtype=np.float64)
    points = []
    skipped = [int(s) for s in opts.scaling if int(s) > tr.size]
    sizes = sorted({int(s) for s in opts.scaling if 0 < int(s) <= tr.size})
    if skipped:
        log.warning("--scaling: %s exceed the %d training records; left out", ",".join(map(str, skipped)), tr.size)
    Xt = data.X[sp.test]
    Yt, Mt = Yb[sp.test], Mb[sp.test]
    for size in sizes:
        vals, per_label = [], []
        for s in range(opts.scaling_seeds):
            rng = np.random.default_rng(opts.seed + 1000 + s)
            sub = np.sort(rng.choice(tr, size=size, replace=False))
            if opts.head != "linear":
                # the head refitted on the subset, with its choices made on the same validation split
                z = fit_head(data, sub, sp.val, sp.test, opts).zt
                if data.multiclass:
                    ok = np.isin(np.arange(len(data.label_names)), np.unique(data.Y[sub][data.mask[sub]]))
                else:
                    ok = np.array([(data.Y[sub][Mb[sub][:, j], j] == 1).any()
                                   and (data.Y[sub][Mb[sub][:, j], j] == 0).any() for j in range(len(data.label_names))])
                au = np.array([mt.auroc(Yt[Mt[:, j], j], z[Mt[:, j], j]) if ok[j] else np.nan
                               for j in range(z.shape[1])])
                per_label.append(au)
                vals.append(float(np.nanmean(au)) if np.isfinite(au).any() else float("nan"))
                continue
            Xs_mean, Xs_scale = fit_stats(data.X[sub])
            Xs = standardise(data.X[sub], Xs_mean, Xs_scale)
            if data.multiclass:
                m = data.mask[sub]
                present = np.unique(data.Y[sub][m])
                W, b = fit_logistic(Xs, data.Y[sub], m, float(Cs[0]), True, len(data.label_names),
                                    max_iter=opts.max_iter)
                ok = np.isin(np.arange(len(data.label_names)), present)
            else:
                Ysub, Msub = data.Y[sub], Mb[sub]
                ok = np.array([(Ysub[Msub[:, j], j] == 1).any() and (Ysub[Msub[:, j], j] == 0).any()
                               for j in range(Ysub.shape[1])])
                Msub = Msub & ok[None, :]
                W, b = fit_logistic(Xs, Ysub, Msub, Cs, False, max_iter=opts.max_iter)
            z = (standardise(Xt, Xs_mean, Xs_scale) @ W.astype(np.float32)).astype(np.float64) + b
            au = np.array([mt.auroc(Yt[Mt[:, j], j], z[Mt[:, j], j]) if ok[j] else np.nan
                           for j in range(z.shape[1])])
            per_label.append(au)
            vals.append(float(np.nanmean(au)) if np.isfinite(au).any() else float("nan"))
        v = np.array(vals)
        fin = v[np.isfinite(v)]
        points.append({
            "n_train": size,
            "macro_auroc_mean": float(fin.mean()) if fin.size else None,
            "macro_auroc_sd": float(fin.std(ddof=1)) if fin.size > 1 else None,
            "macro_auroc_per_seed": [None if not math.isfinite(x) else x for x in vals],
            "per_label_auroc_mean": {
                name: (float(np.nanmean(col)) if np.isfinite(col).any() else None)
                for name, col in zip(data.label_names, np.array(per_label).T)
            },
        })
    return {"metric": "macro AUROC on the test split", "split": sp.name, "seeds": opts.scaling_seeds,
            "head": opts.head,
            "C" if opts.head == "linear" else "choices": "as chosen on validation with all training records"
            if opts.head == "linear" else "made on validation for each subset",
            "train_available": int(tr.size), "points": points}


# =========================================================================== baseline


def align_records(a: ProbeData, b: ProbeData, a_name: str, b_name: str) -> tuple[ProbeData, ProbeData]:
    """Both probes on the records they share, in ``a``'s order (said on stderr when they differ)."""
    pos = {r: i for i, r in enumerate(b.record_ids.tolist())}
    ia = np.array([i for i, r in enumerate(a.record_ids.tolist()) if r in pos], dtype=np.int64)
    if ia.size == 0:
        raise InputError(f"{a_name} and {b_name} share no record_id",
                         "embed the same records with the baseline model")
    if ia.size < len(a.record_ids) or ia.size < len(b.record_ids):
        log.warning("%s: %d records, %s: %d; both probes use the %d they share", a_name, len(a.record_ids),
                    b_name, len(b.record_ids), ia.size)
    ib = np.array([pos[r] for r in a.record_ids[ia].tolist()], dtype=np.int64)
    return subset(a, ia), subset(b, ib)


def paired_difference(arrays: dict, base_arrays: dict, name: str, base_name: str, opts: ProbeOptions) -> dict:
    """The probe minus the baseline probe on the same test records: per label and macro AUROC, AUPRC and
    F1 differences with paired bootstrap CIs (the resamples of the probe's own CIs) and DeLong's test."""
    from ecgtool.analysis.compare import ModelScores, compare_from, paired_bootstrap

    if list(arrays["record_ids"]) != list(base_arrays["record_ids"]):
        raise InputError("the probe and its baseline were tested on different records")
    Y, M = arrays["Y"], arrays["M"]
    labels = list(arrays["labels"])
    models = [ModelScores(name=n, source=n, kind="probe", record_ids=a["record_ids"], labels=labels, scores=a["P"],
                          preds=a["preds"], has_pred=a["has_pred"])
              for n, a in ((base_name, base_arrays), (name, arrays))]
    res = paired_bootstrap(Y, M, [m.scores for m in models], [m.preds for m in models],
                           [m.has_pred for m in models], opts.n_boot, opts.seed)
    c = compare_from(res, models, Y, M, labels, reference=0, level=opts.level)
    return {"model": name, "reference": base_name, "n_records": c["n_records"], "labels": labels,
            "bootstrap": c["bootstrap"], "models": c["models"], "differences": c["differences"]}
