"""The records of a probe: embeddings pooled per record and joined with their labels.

* :class:`ProbeData`: one row per record (pooled embedding, labels, metadata,
  optionally the per-token features of ``embed --local``).
* :func:`load_probe_data`: an embedding table (and a label table) to
  :class:`ProbeData`; :func:`embedding_matrix` and :func:`token_rows` read the
  embedding and per-token columns.
* :func:`subset` and :func:`align_records`: records of one probe, and two
  probes (model and baseline) on the records they share.
* ``_label_matrix``: the 0/1 targets and known-mask the metrics take.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgtool.errors import InputError, UsageError
from ecgtool.io import arrays as A
from ecgtool.evaluation import labels as el
from ecgtool.io.arrays import float_matrix, float_values

log = logging.getLogger("ecgtool")

# Columns that are never labels or subgroup keys.
STRUCTURAL = {"record_id", "embedding", "signal", "leads", "lead_mask", "fs", "segment"}
BINARY_HINT = f"{el.LABEL_HINT}; use --multiclass for a single column of class names"


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
    return float_matrix(col, name,
                        "the embedding column must be fixed_size_list<float32, D> (as `ecgtool embed` writes)")


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
    flat = float_values(arr.flatten().flatten()).reshape(-1, d)
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
        lab_tab = A.take(labels, sel)
        src_tab = lab_tab
    else:
        src_tab = None

    if not names:
        raise UsageError("no label columns given",
                         "use -l/--label-table LABELS (a label table) or --label-names A,B with label columns in the table")

    def label_column(name: str) -> pa.ChunkedArray:
        if src_tab is not None and name in src_tab.column_names:
            return src_tab.column(name)
        if name in emb.column_names:
            raise UsageError(f"label column {name!r} is in the embedding table, not the label table",
                             "drop -l/--label-table to read labels from the embedding table")
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
