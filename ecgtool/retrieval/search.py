"""``ecgtool search``: the k nearest indexed records of each query, a patient's own history, kNN votes.

Queries are an embedding table of the index's model, or records (a table or raw ECG files) that
are embedded here with that model (same pooling and layer as the index's embeddings). Queries
stream through in batches: memory is bounded by the index and one batch of queries.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ecgtool.errors import InputError, UsageError
from ecgtool.io import arrays as A
from ecgtool.retrieval.index import Index, check_same_model, embedding_batches, report_skipped, row_keys

log = logging.getLogger("ecgtool")


@dataclass
class SearchOptions:
    k: int = 10
    same_patient: bool = False
    exclude_self: bool = False
    ef: int | None = None
    vote: list[str] | None = None
    weighted: bool = False


@dataclass
class SearchStats:
    queries: int = 0
    rows_out: int = 0
    skipped: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- queries


@dataclass
class QueryBatch:
    X: np.ndarray  # (m, d) raw vectors
    meta: object  # pa.Table: record_id, segment?, patient_id?, ...
    probs: np.ndarray | None = None  # (m, L) the model's probabilities (records as queries, model with a head)
    skipped: list[str] = field(default_factory=list)


def is_embedding_table(reader) -> bool:
    return getattr(reader, "meta", None) is not None and (
        reader.meta.kind == "embeddings" or "embedding" in reader.schema.names)


def query_batches(reader, index: Index, index_name: str, src_name: str, *, model=None, device=None,
                  batch_size: int = 64, errors=None, with_probs: bool = False, precision: str = "fp32",
                  workdir: str | None = None) -> Iterator[QueryBatch]:
    """Query vectors and metadata, batch by batch; records are embedded with ``model`` first."""
    if is_embedding_table(reader):
        tm = reader.meta
        emb_dim = reader.schema.field("embedding").type
        dim = getattr(emb_dim, "list_size", None) or tm.dim or index.dim
        check_same_model(index, tm.model, int(dim), tm.contract,
                         f"{src_name}: query embeddings", index_name)
        for b in embedding_batches(reader, src_name):
            if b.X.size and b.X.shape[1] != index.dim:
                check_same_model(index, tm.model, b.X.shape[1], None, f"{src_name}: query embeddings",
                                 index_name)
            yield QueryBatch(b.X, b.meta, None, b.skipped)
        return
    if model is None:
        raise UsageError(f"{src_name}: records as queries need the index's model ({index.model!r}) to embed them",
                         "give -m MODEL, or embed the queries first with 'ecgtool embed'")
    yield from _embedded_records(reader, index, index_name, src_name, model, device, batch_size, errors,
                                 with_probs, precision, workdir)


def _embedded_records(reader, index, index_name, src_name, model, device, batch_size, errors, with_probs,
                      precision, workdir):
    from ecgtool.io import open_table
    from ecgtool.io.stream import TableWriter
    from ecgtool.models.apply import embed_table, label_settings, model_name, predict_table

    name = model_name(model)
    check_same_model(index, name, int(model.feature_dim((index.header.get("embedding") or {}).get("layer"))),
                     None, "record queries embedded here", index_name)
    emb = index.header.get("embedding") or {}
    pool = emb.get("pool") or "mean"
    layer = emb.get("layer")
    has_head = model.get_classifier() is not None
    with tempfile.TemporaryDirectory(prefix="ecgtool-search-", dir=workdir) as tmp:
        src = reader
        if with_probs and has_head:
            # the records are read twice (embed, predict): spool them once
            rec_path = f"{tmp}/records.arrow"
            w = None
            for batch in reader:
                if w is None:
                    w = TableWriter(rec_path, batch.schema, reader.meta, fmt="arrow")
                w.write(batch)
            if w is None:
                return
            w.close()
            src = open_table(rec_path, batch_size=batch_size)
        emb_path = f"{tmp}/emb.arrow"
        mb = min(batch_size, 32)  # windows per forward pass
        embed_table(src, emb_path, model, device=device, precision=precision, batch_size=mb, pool=pool,
                    layer=layer, errors=errors, fmt="arrow", argv=["ecgtool", "search"])
        probs_by_key = None
        names = None
        if with_probs and has_head:
            src.close()
            src = open_table(rec_path, batch_size=batch_size)
            pred_path = f"{tmp}/pred.arrow"
            predict_table(src, pred_path, model, device=device, precision=precision, batch_size=mb,
                          aggregate=pool if pool in ("mean", "max", "none") else "mean", errors=errors,
                          fmt="arrow", argv=["ecgtool", "search"])
            src.close()
            names = label_settings(model)[0]
            with open_table(pred_path) as pr:
                pt = pr.read_all()
            keys = row_keys(pt)
            P = np.column_stack([np.asarray(pt.column(n).to_numpy(zero_copy_only=False), dtype=np.float64)
                                 for n in names])
            probs_by_key = dict(zip(keys, P))
        with open_table(emb_path, batch_size=batch_size) as er:
            for b in embedding_batches(er, src_name):
                probs = None
                if probs_by_key is not None:
                    probs = np.stack([probs_by_key.get(k, np.full(len(names), np.nan)) for k in row_keys(b.meta)]) \
                        if b.meta.num_rows else np.zeros((0, len(names)))
                yield QueryBatch(b.X, b.meta, probs, b.skipped)


# --------------------------------------------------------------------------- patients and dates


def parse_dates(values) -> np.ndarray:
    """datetime64[s] per value (NaT where missing or unreadable); strings, dates and timestamps."""
    import pandas as pd

    s = pd.to_datetime(pd.Series(list(values), dtype=object), errors="coerce", utc=True, format="mixed")
    return s.dt.tz_localize(None).to_numpy(dtype="datetime64[s]")


class PatientLookup:
    """Rows of the index by patient, and their dates."""

    def __init__(self, index: Index):
        self.index = index
        col = index.patient_column
        if col is None:
            raise UsageError("--same-patient: the index has no patient column "
                             f"({index.header.get('patient_column') or 'patient_id'!r})",
                             "rebuild it from embeddings that carry patient_id (convert --join the database CSV), "
                             "or name the column with 'ecgtool index --patient-column'")
        self.col = col
        pids = index.meta.column(col).to_pylist()
        self.patients = np.array([None if v is None else str(v) for v in pids], dtype=object)
        self.by_patient: dict[str, np.ndarray] = {}
        order = np.argsort(self.patients.astype(str), kind="stable")
        vals = self.patients[order]
        if len(vals):
            starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
            ends = np.r_[starts[1:], len(vals)]
            for s, e in zip(starts, ends):
                if vals[s] is not None:
                    self.by_patient[str(vals[s])] = order[s:e]
        dc = index.date_column
        self.dates = parse_dates(index.meta.column(dc).to_pylist()) if dc else np.full(index.rows, "NaT",
                                                                                         dtype="datetime64[s]")
        self.rid = np.array([str(v) for v in index.meta.column("record_id").to_pylist()], dtype=object)
        self._row_of: dict[str, int] | None = None

    def rows_of_record(self, record_id: str) -> np.ndarray:
        return np.flatnonzero(self.rid == record_id)

    def patient_of(self, query_meta: dict) -> str | None:
        v = query_meta.get(self.col)
        if v is not None and str(v) != "":
            return str(v)
        rows = self.rows_of_record(str(query_meta.get("record_id")))
        for r in rows:
            if self.patients[r] is not None:
                return str(self.patients[r])
        return None

    def date_of(self, query_meta: dict) -> np.datetime64:
        dc = self.index.date_column
        if dc and query_meta.get(dc) is not None:
            d = parse_dates([query_meta.get(dc)])[0]
            if not np.isnat(d):
                return d
        rows = self.rows_of_record(str(query_meta.get("record_id")))
        for r in rows:
            if not np.isnat(self.dates[r]):
                return self.dates[r]
        return np.datetime64("NaT")


# --------------------------------------------------------------------------- searching


def _self_mask_fn(index: Index, qkeys: list[str], q_has_segment: bool):
    """Per query, the set of index rows that are the query itself (the lookup is built once per index)."""
    cache = index.__dict__.setdefault("_where", {})
    where = cache.get(q_has_segment)
    if where is None:
        where = {}
        keys = index.keys if q_has_segment else [str(v) for v in index.meta.column("record_id").to_pylist()]
        for i, k in enumerate(keys):
            where.setdefault(k, []).append(i)
        cache[q_has_segment] = where
    return [set(where.get(k, ())) for k in qkeys]


def neighbours(index: Index, qb: QueryBatch, opts: SearchOptions, lookup: PatientLookup | None,
               stats: SearchStats) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per query row j: (j, index rows, distances), nearest first (date order with --same-patient)."""
    m = qb.X.shape[0]
    if m == 0:
        return []
    q_has_segment = "segment" in qb.meta.column_names and "segment" in index.meta.column_names
    qkeys = row_keys(qb.meta) if q_has_segment else [str(v) for v in qb.meta.column("record_id").to_pylist()]
    selves = _self_mask_fn(index, qkeys, q_has_segment) if opts.exclude_self else [set()] * m
    Qp = index.prepare(qb.X)
    out = []
    if opts.same_patient:
        metas = qb.meta.to_pylist()
        for j in range(m):
            pid = lookup.patient_of(metas[j])
            rows = lookup.by_patient.get(pid, np.zeros(0, np.int64)) if pid is not None else np.zeros(0, np.int64)
            rows = np.array([r for r in rows if r not in selves[j]], dtype=np.int64)
            if rows.size == 0:
                why = "has no patient id (none in the query, its record not in the index)" if pid is None else \
                    f"patient {pid} has no other ECG in the index"
                stats.empty.append(f"{qkeys[j]}: {why}")
                out.append((j, rows, np.zeros(0, np.float32)))
                continue
            d = index.distances(Qp[j], rows)
            order = np.argsort(d, kind="stable")[: opts.k]
            rows, d = rows[order], d[order]
            dates = lookup.dates[rows]
            key = np.where(np.isnat(dates), np.iinfo(np.int64).max, dates.astype("datetime64[s]").astype(np.int64))
            by_date = np.lexsort((d, key))
            out.append((j, rows[by_date], d[by_date]))
        return out
    extra = max((len(s) for s in selves), default=0)
    kk = min(opts.k + extra, index.rows)
    D, I = index.search(Qp, kk, ef=opts.ef, prepared=True)
    for j in range(m):
        ok = (I[j] >= 0) & np.isfinite(D[j])
        if selves[j]:
            ok &= ~np.isin(I[j], list(selves[j]))
        rows, d = I[j][ok][: opts.k], D[j][ok][: opts.k]
        if rows.size == 0:
            stats.empty.append(f"{qkeys[j]}: no other row in the index")
        out.append((j, rows, d))
    return out


def _query_columns(qb: QueryBatch, idx: np.ndarray) -> dict:
    import pyarrow as pa

    cols = {"query_record_id": qb.meta.column("record_id").take(pa.array(idx, pa.int64())).cast(pa.string())}
    if "segment" in qb.meta.column_names:
        cols["query_segment"] = qb.meta.column("segment").take(pa.array(idx, pa.int64()))
    return cols


def neighbour_table(index: Index, qb: QueryBatch, found) -> "object":
    """Long table: one row per (query, neighbour): query id, rank, distance, the neighbour's metadata."""
    import pyarrow as pa

    qi = np.concatenate([np.full(len(r), j, np.int64) for j, r, _ in found]) if found else np.zeros(0, np.int64)
    rows = np.concatenate([r for _, r, _ in found]) if found else np.zeros(0, np.int64)
    dist = np.concatenate([d for _, _, d in found]) if found else np.zeros(0, np.float32)
    rank = np.concatenate([np.argsort(np.argsort(d, kind="stable"), kind="stable") + 1 for _, _, d in found]) \
        if found else np.zeros(0, np.int64)
    cols = _query_columns(qb, qi)
    cols["rank"] = pa.array(rank.astype(np.int32))
    cols["distance"] = pa.array(dist.astype(np.float32))
    nb = A.take(index.meta, rows)
    names = list(cols) + nb.column_names
    return pa.table(list(cols.values()) + [nb.column(c) for c in nb.column_names], names=names)


# --------------------------------------------------------------------------- votes


def vote_columns(index: Index, names: Sequence[str]) -> list[str]:
    out = []
    for n in names:
        if n not in index.meta.column_names:
            raise UsageError(f"--vote: the index has no column {n!r}",
                             "columns: " + ", ".join(index.meta.column_names))
        out.append(n)
    return out


def label_values(index: Index, name: str):
    """('binary', float array with NaN) or ('class', object array of strings / None)."""
    import pyarrow as pa

    col = index.meta.column(name)
    t = col.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        v = np.array([np.nan if x is None else float(x) for x in col.to_pylist()], dtype=np.float64)
        uniq = np.unique(v[np.isfinite(v)])
        if np.isin(uniq, [0.0, 1.0]).all():
            return "binary", v
        raise UsageError(f"--vote {name}: values other than 0/1 ({', '.join(map(str, uniq[:5]))})",
                         "vote on 0/1 label columns or on a text class column")
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "class", np.array([None if x is None else str(x) for x in col.to_pylist()], dtype=object)
    raise UsageError(f"--vote {name}: column type {t} is neither 0/1 nor text")


def vote_table(index: Index, qb: QueryBatch, found, labels: dict, weighted: bool, model_names, thresholds,
               agreement: dict) -> "object":
    """One row per query: knn_<label> (vote fraction, or winning class and its fraction), the model's
    probability model_<label> and agree_<label> where the model has that label."""
    import pyarrow as pa

    from ecgtool.retrieval.knn import vote_fractions

    m = len(found)
    cols = _query_columns(qb, np.array([j for j, _, _ in found], dtype=np.int64))
    cols["neighbours"] = pa.array(np.array([len(r) for _, r, _ in found], dtype=np.int32))
    for name, (kind, values) in labels.items():
        if kind == "binary":
            s = np.full(m, np.nan)
            prior = np.nanmean(values) if np.isfinite(values).any() else np.nan
            for i, (_, rows, d) in enumerate(found):
                if rows.size == 0:
                    continue
                w = 1.0 / (d.astype(np.float64) + 1e-6) if weighted else np.ones(rows.size)
                s[i] = vote_fractions(values[rows][None, :, None], w[None, :], np.array([prior]))[0, 0]
            cols[f"knn_{name}"] = pa.array(s, pa.float64(), mask=~np.isfinite(s))
            if model_names is not None and name in model_names and qb.probs is not None:
                k = model_names.index(name)
                p = qb.probs[[j for j, _, _ in found], k]
                thr = float(thresholds[k])
                agree = np.where(np.isfinite(s) & np.isfinite(p), (s >= 0.5) == (p >= thr), False)
                known = np.isfinite(s) & np.isfinite(p)
                cols[f"model_{name}"] = pa.array(p, pa.float64())
                cols[f"agree_{name}"] = pa.array(agree, mask=~known)
                a = agreement.setdefault(name, [0, 0])
                a[0] += int(agree[known].sum())
                a[1] += int(known.sum())
        else:
            win, frac = [], np.full(m, np.nan)
            for i, (_, rows, d) in enumerate(found):
                vals = [(values[r], (1.0 / (float(dd) + 1e-6)) if weighted else 1.0)
                        for r, dd in zip(rows, d) if values[r] is not None]
                if not vals:
                    win.append(None)
                    continue
                tally: dict[str, float] = {}
                for v, w in vals:
                    tally[v] = tally.get(v, 0.0) + w
                best = max(sorted(tally), key=lambda c: tally[c])
                win.append(best)
                frac[i] = tally[best] / sum(tally.values())
            cols[f"knn_{name}"] = pa.array(win, pa.string())
            cols[f"knn_{name}_fraction"] = pa.array(frac, pa.float64(), mask=~np.isfinite(frac))
    return pa.table(list(cols.values()), names=list(cols))


# --------------------------------------------------------------------------- the command's library call


def search(reader, index: Index, dest: str, *, index_name: str, src_name: str, opts: SearchOptions,
           model=None, device=None, batch_size: int = 64, errors=None, fmt: str | None = None,
           argv: Sequence[str] | None = None, precision: str = "fp32") -> SearchStats:
    """Search every query of ``reader`` and write the neighbours (or, with ``opts.vote``, the votes)."""
    from ecgtool.io.schema import TableMeta
    from ecgtool.io.stream import TableWriter

    if opts.k < 1:
        raise UsageError(f"-k must be at least 1, got {opts.k}")
    if opts.k > index.rows and not opts.same_patient:
        log.warning("-k %d is more than the %d rows of the index: every row is returned", opts.k, index.rows)
    lookup = PatientLookup(index) if opts.same_patient else None
    labels = None
    model_names = thresholds = None
    if opts.vote:
        labels = {n: label_values(index, n) for n in vote_columns(index, opts.vote)}
        if model is not None and model.get_classifier() is not None:
            from ecgtool.models.apply import label_settings

            model_names, thresholds = label_settings(model)[:2]
            model_names = list(model_names)
    stats = SearchStats()
    writer = None
    meta = TableMeta.create("neighbours" if not opts.vote else "votes", index=index_name, model=index.model,
                            metric=index.metric, k=opts.k, same_patient=opts.same_patient,
                            exclude_self=opts.exclude_self, vote=opts.vote, index_kind=index.kind).add_step(argv)
    try:
        for qb in query_batches(reader, index, index_name, src_name, model=model, device=device,
                                batch_size=batch_size, errors=errors, with_probs=bool(opts.vote),
                                precision=precision):
            stats.skipped.extend(qb.skipped)
            stats.queries += qb.X.shape[0]
            found = neighbours(index, qb, opts, lookup, stats)
            if opts.vote:
                table = vote_table(index, qb, found, labels, opts.weighted, model_names, thresholds,
                                   stats.agreement)
            else:
                table = neighbour_table(index, qb, found)
            if writer is None:
                writer = TableWriter(dest, table.schema, meta, fmt=fmt)
            if table.num_rows:
                writer.write(table)
            stats.rows_out += table.num_rows
        if writer is None:
            raise InputError(f"{src_name}: no query", "the input holds no record")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    report_skipped(stats.skipped, src_name)
    for note in stats.empty[:20]:
        log.info("%s", note)
    if len(stats.empty) > 20:
        log.info("... and %d more queries without a neighbour", len(stats.empty) - 20)
    for name, (agree, n) in stats.agreement.items():
        if n:
            log.info("kNN vote and model agree on %s for %d of %d queries (%.1f%%)", name, agree, n, 100 * agree / n)
    return stats
