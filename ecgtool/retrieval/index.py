"""Nearest-neighbour indexes over embedding tables: build, append, load, search.

Two kinds:

* ``exact``: the vectors themselves (memory-mapped from the index file) searched with blocked
  matrix products (:mod:`ecgtool.retrieval.exact`); no extra dependency.
* ``hnsw``: a faiss HNSW graph (``IndexHNSWFlat``; ``pip install 'ecgtool[retrieval]'``) for large
  tables: approximate, sub-linear search. New vectors are inserted into the graph (no rebuild).

``auto`` picks ``exact`` up to :data:`EXACT_MAX_ROWS` rows and ``hnsw`` above. The metric is
``cosine`` (vectors stored unit-normalised, inner product) or ``l2``; distances reported are
``1 - cos`` and the Euclidean distance.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ecgtool.errors import InputError, UsageError
from ecgtool.io import arrays as A
from ecgtool.retrieval import fileformat as F
from ecgtool.retrieval.exact import check_metric, normalise_rows, search_prepared

log = logging.getLogger("ecgtool")

KINDS = ("auto", "exact", "hnsw")
EXACT_MAX_ROWS = 50_000
HNSW_DEFAULTS = {"M": 32, "ef_construction": 80, "ef_search": 128}
# columns of an embedding table that are not metadata (big, or structural for signals)
NOT_METADATA = {"embedding", "local", "signal", "lead_mask", "leads", "fs", "units"}
DATE_COLUMNS = ("recording_date", "acquisition_date", "acquisition_time", "date", "datetime",
                "study_date", "base_datetime", "timestamp")
EXTRA_HINT = "install the approximate-search extra: pip install 'ecgtool[retrieval]' (faiss-cpu), or use --kind exact"


def faiss_module():
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise UsageError("approximate (HNSW) indexes need faiss, which is not installed", EXTRA_HINT) from None
    return faiss


def set_threads(threads: int | None) -> None:
    """Threads for faiss (and, through it, OpenMP); NumPy's BLAS follows its own settings."""
    if not threads:
        return
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(int(threads))


def card_metric(model: str | None) -> str | None:
    """The metric a model card names for its embeddings (``embedding_metric``), if any."""
    if not model:
        return None
    try:
        from ecgtool.models.card import card
    except Exception:  # pragma: no cover - the card module is part of the package
        return None
    c = card(str(model))
    if c is None:
        return None
    m = getattr(c, "embedding_metric", None) or (c.config or {}).get("embedding_metric")
    return str(m) if m else None


# --------------------------------------------------------------------------- reading embedding tables


def _is_kept(field) -> bool:
    import pyarrow as pa

    t = field.type
    if field.name in NOT_METADATA:
        return False
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
    return not (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or pa.types.is_fixed_size_binary(t))


@dataclass
class EmbeddingBatch:
    X: np.ndarray  # (n, d) float32, finite rows only
    meta: "object"  # pa.Table of the kept metadata columns, same rows
    skipped: list[str] = field(default_factory=list)  # keys of rows with NaN/inf embeddings


def row_keys(meta) -> list[str]:
    """'record_id' or 'record_id#segment' per row (what --exclude-self compares)."""
    ids = [str(v) for v in meta.column("record_id").to_pylist()]
    if "segment" in meta.column_names:
        segs = meta.column("segment").to_pylist()
        return [f"{i}#{s}" if s is not None else i for i, s in zip(ids, segs)]
    return ids


def embedding_matrix(col, name: str = "embeddings") -> np.ndarray:
    """(n, d) float32 from an embedding column (fixed-size or plain lists of one length); null rows NaN."""
    from ecgtool.io.arrays import float_matrix

    return float_matrix(col, name,
                        "the embedding column must be fixed_size_list<float32, D> (as 'ecgtool embed' writes)")


def embedding_batches(reader, name: str) -> Iterable[EmbeddingBatch]:
    """Stream an embedding table as (finite vectors, metadata) batches; NaN rows are left out."""
    import pyarrow as pa

    names = reader.schema.names
    if "embedding" not in names:
        raise InputError(f"{name}: no embedding column",
                         "give a table written by 'ecgtool embed' (columns record_id, embedding)")
    if "record_id" not in names:
        raise InputError(f"{name}: no record_id column", "an embedding table needs record_id")
    keep = [f.name for f in reader.schema if _is_kept(f)]
    for batch in reader:
        X = embedding_matrix(batch.column("embedding"), name)
        meta = pa.Table.from_batches([batch.select(keep)])
        ok = np.isfinite(X).all(axis=1)
        skipped: list[str] = []
        if not ok.all():
            keys = row_keys(meta)
            skipped = [keys[i] for i in np.flatnonzero(~ok)]
            X = X[ok]
            meta = A.filter_rows(meta, ok)
        yield EmbeddingBatch(np.ascontiguousarray(X, dtype=np.float32), meta, skipped)


def report_skipped(skipped: Sequence[str], name: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        log.warning("%s: %d row(s) with NaN/inf embeddings skipped: %s", name, len(skipped), shown)


def join_labels(meta, labels, labels_name: str):
    """Left join of a label table's columns (by record_id) onto the metadata."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "record_id" not in labels.column_names:
        raise InputError(f"{labels_name}: no record_id column", "a label table needs record_id")
    lab_ids = labels.column("record_id").cast(pa.string())
    pos = pc.index_in(meta.column("record_id").cast(pa.string()), value_set=lab_ids)
    hit = int(pc.sum(pc.is_valid(pos)).as_py() or 0)
    cols = [c for c in labels.column_names if c != "record_id" and c not in meta.column_names]
    taken = A.take(labels.select(cols), pos)
    for c in cols:
        meta = meta.append_column(c, taken.column(c))
    return meta, hit


# --------------------------------------------------------------------------- the index


class Index:
    """An index in memory (vectors memory-mapped for ``exact``); see :func:`load_index`."""

    def __init__(self, header: dict, meta, vectors: np.ndarray | None = None, ann=None, container=None):
        self.header = header
        self.meta = meta  # pa.Table, one row per stored vector
        self._vectors = vectors  # exact: (n, d) float32 (prepared for the metric)
        self._extra: list[np.ndarray] = []  # exact: appended, not yet concatenated
        self.ann = ann  # hnsw: a faiss index
        self._container = container
        self._keys: list[str] | None = None
        self.path: str | None = None

    # -- facts -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def metric(self) -> str:
        return self.header["metric"]

    @property
    def dim(self) -> int:
        return int(self.header["dim"])

    @property
    def model(self) -> str | None:
        return self.header.get("model")

    @property
    def rows(self) -> int:
        return self.meta.num_rows

    def __len__(self) -> int:
        return self.rows

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = row_keys(self.meta)
        return self._keys

    @property
    def patient_column(self) -> str | None:
        c = self.header.get("patient_column")
        return c if c and c in self.meta.column_names else None

    @property
    def date_column(self) -> str | None:
        c = self.header.get("date_column")
        return c if c and c in self.meta.column_names else None

    @property
    def label_names(self) -> list[str]:
        return [n for n in self.header.get("label_names") or [] if n in self.meta.column_names]

    # -- vectors -----------------------------------------------------------------
    def prepare(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        return normalise_rows(X) if self.metric == "cosine" else X

    def _exact_vectors(self) -> np.ndarray:
        if self._extra:
            parts = ([self._vectors] if self._vectors is not None and len(self._vectors) else []) + self._extra
            self._vectors = np.ascontiguousarray(np.concatenate(parts)) if parts else None
            self._extra = []
        if self._vectors is None:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._vectors

    def vectors(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The stored (prepared) vectors of these rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "exact":
            return np.asarray(self._exact_vectors()[rows], dtype=np.float32)
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        for j, r in enumerate(rows):
            out[j] = self.ann.reconstruct(int(r))
        return out

    def distances(self, q_prepared: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact distances from one prepared query to the given rows."""
        V = self.vectors(rows)
        if self.metric == "cosine":
            return (1.0 - V @ q_prepared).astype(np.float32)
        return np.sqrt(np.maximum(((V - q_prepared) ** 2).sum(axis=1), 0.0)).astype(np.float32)

    # -- search ------------------------------------------------------------------
    def search(self, Q: np.ndarray, k: int, *, ef: int | None = None, prepared: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows), each (m, k), nearest first; -1 / inf where fewer than k rows exist."""
        if Q.shape[1] != self.dim:
            raise InputError(f"query embeddings have dimension {Q.shape[1]}, the index {self.dim}",
                             "embed the queries with the index's model")
        q = Q if prepared else self.prepare(Q)
        if self.kind == "exact":
            return search_prepared(self._exact_vectors(), q, k, self.metric)
        faiss = faiss_module()
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(int(ef or self.header.get("params", {}).get("ef_search", 128)), k)
        D, I = self.ann.search(q, k, params=params)
        D = D.astype(np.float32)
        if self.metric == "cosine":
            D = np.maximum(1.0 - D, 0.0)
        else:
            D = np.sqrt(np.maximum(D, 0.0))
        D[I < 0] = np.inf
        return D, I.astype(np.int64)

    # -- growing -----------------------------------------------------------------
    def add(self, X: np.ndarray, meta) -> None:
        """Append vectors (raw, not yet prepared) and their metadata rows."""
        import pyarrow as pa

        if X.shape[0] == 0:
            return
        if X.shape[1] != self.dim:
            raise InputError(f"embeddings have dimension {X.shape[1]}, the index {self.dim}")
        q = self.prepare(X)
        if self.kind == "exact":
            self._extra.append(q)
        else:
            self.ann.add(q)
        if self.meta.num_rows == 0:
            self.meta = meta
        else:
            self.meta = pa.concat_tables([self.meta, meta], promote_options="permissive")
        self._keys = None
        self.__dict__.pop("_where", None)
        self.header["rows"] = self.meta.num_rows

    # -- saving ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, self.meta.schema) as w:
            w.write_table(self.meta)
        sections: dict[str, object] = {"meta": sink.getvalue()}
        if self.kind == "exact":
            sections["vectors"] = self._exact_vectors()
        else:
            faiss = faiss_module()
            sections["faiss"] = faiss.serialize_index(self.ann)
        self.header["rows"] = self.meta.num_rows
        F.write_container(path, {k: v for k, v in self.header.items() if k != "sections"}, sections)


def new_index(kind: str, metric: str, dim: int, header: dict, params: dict | None = None) -> Index:
    import pyarrow as pa

    ann = None
    p = dict(params or {})
    if kind == "hnsw":
        faiss = faiss_module()
        p = {**HNSW_DEFAULTS, **{k: v for k, v in p.items() if v is not None}}
        mt = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        ann = faiss.IndexHNSWFlat(int(dim), int(p["M"]), mt)
        ann.hnsw.efConstruction = int(p["ef_construction"])
        ann.hnsw.efSearch = int(p["ef_search"])
        import faiss as _f

        header["faiss_version"] = getattr(_f, "__version__", None)
    else:
        p = {}
    header.update(kind=kind, metric=metric, dim=int(dim), rows=0, params=p)
    return Index(header, pa.table({}), None, ann)


def load_index(path: str | os.PathLike, verify: bool = True) -> Index:
    """Open an index file (checked: magic, version, size, CRC-32 of each section)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    cont = F.read_container(path, verify=verify)
    h = cont.header
    if h.get("format") != F.FORMAT_NAME:
        raise InputError(f"{path}: not an ecgtool index (format {h.get('format')!r})")
    try:
        meta = ipc.open_file(pa.py_buffer(cont.section("meta"))).read_all()
    except (pa.ArrowInvalid, TypeError) as exc:
        raise InputError(f"{path}: the index's metadata section does not read ({exc})", "rebuild the index") from None
    n, d = int(h["rows"]), int(h["dim"])
    if meta.num_rows != n:
        raise InputError(f"{path}: the index holds {meta.num_rows} metadata rows for {n} vectors", "rebuild the index")
    if h["kind"] == "exact":
        buf = cont.section("vectors")
        if buf is None or len(buf) != n * d * 4:
            raise InputError(f"{path}: the index's vectors section has the wrong size", "rebuild the index")
        V = np.frombuffer(buf, dtype="<f4").reshape(n, d) if n else np.zeros((0, d), np.float32)
        out = Index(h, meta, V, None, cont)
        out.path = str(path)
        return out
    if h["kind"] == "hnsw":
        faiss = faiss_module()
        buf = cont.section("faiss")
        ann = faiss.deserialize_index(np.frombuffer(buf, dtype=np.uint8).copy())
        if ann.ntotal != n or ann.d != d:
            raise InputError(f"{path}: the faiss index holds {ann.ntotal} x {ann.d}, the header says {n} x {d}",
                             "rebuild the index")
        cont.close()
        out = Index(h, meta, None, ann, None)
        out.path = str(path)
        return out
    raise InputError(f"{path}: unknown index kind {h['kind']!r}", "upgrade ecgtool, or rebuild the index")


# --------------------------------------------------------------------------- building


@dataclass
class BuildStats:
    rows: int = 0
    skipped: int = 0
    kind: str = ""
    metric: str = ""
    labels_joined: int | None = None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _source_entry(reader, path: str, rows: int, skipped: int) -> dict:
    return {"path": os.path.abspath(path) if path != "-" else "-", "rows": rows, "rows_skipped": skipped,
            "kind": reader.meta.kind, "model": reader.meta.model, "history": reader.meta.history,
            "added": _now()}


def check_same_model(index: Index, model: str | None, dim: int, contract: dict | None, what: str,
                     index_name: str) -> None:
    """Refuse embeddings of another model or dimension than the index's (naming both)."""
    if (model or None) != (index.model or None) or dim != index.dim:
        raise InputError(
            f"{what} are from model {model!r} (dimension {dim}); the index {index_name} holds model "
            f"{index.model!r} (dimension {index.dim})",
            "embed with the index's model, or build a separate index for this model")
    if contract and index.header.get("contract") and contract != index.header["contract"]:
        log.warning("%s: model %r was run with another input contract than the index's embeddings", what, model)


def build_index(
    reader,
    dest: str,
    *,
    src_name: str,
    kind: str = "auto",
    metric: str | None = None,
    labels=None,
    labels_name: str = "labels",
    label_names: Sequence[str] | None = None,
    patient_column: str = "patient_id",
    date_column: str | None = None,
    append: bool = False,
    params: dict | None = None,
    threads: int | None = None,
    argv: Sequence[str] | None = None,
) -> BuildStats:
    """Build (or, with ``append``, grow) the index file ``dest`` from an embedding table reader."""
    from ecgtool.io.schema import TableMeta

    set_threads(threads)
    tm = reader.meta
    if tm.kind not in ("embeddings",) and "embedding" not in reader.schema.names:
        raise InputError(f"{src_name}: a {tm.kind} table, not embeddings",
                         "make embeddings first: ecgtool embed RECORDS -o emb.parquet")
    model, emb_info, contract = tm.model, tm.embedding or {}, tm.contract
    lab_table, lab_names = labels if labels is not None else (None, None)
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    stats = BuildStats()
    batches = iter(embedding_batches(reader, src_name))
    if append:
        index = load_index(dest)
        if metric and check_metric(metric) != index.metric:
            raise UsageError(f"--metric {metric}: the index {dest} uses {index.metric}",
                             "appended embeddings are searched with the index's metric")
        first = None
        t = reader.schema.field("embedding").type if "embedding" in reader.schema.names else None
        table_dim = getattr(t, "list_size", None) or tm.dim
        check_same_model(index, model, int(table_dim) if table_dim else index.dim, contract,
                         f"{src_name}: embeddings", dest)
    else:
        first = next(batches, None)
        dim = (first.X.shape[1] if first is not None and first.X.size
               else int(tm.dim or reader.schema.field("embedding").type.list_size))
        chosen = check_metric(metric) if metric else check_metric(card_metric(model) or "cosine")
        n_rows = getattr(reader, "num_rows", None)
        if kind == "auto":
            kind = "hnsw" if (n_rows or 0) > EXACT_MAX_ROWS else "exact"
            log.info("index kind: %s (%s rows; exact up to %d)", kind, n_rows if n_rows is not None else "unknown",
                     EXACT_MAX_ROWS)
        header = {"model": model, "contract": contract, "embedding": emb_info,
                  "label_names": list(label_names or lab_names or []),
                  "patient_column": patient_column, "date_column": date_column,
                  "created": _now(), "sources": [], "history": []}
        index = new_index(kind, chosen, dim, header, params)
    dim_hint = None
    rows_before = index.rows
    skipped: list[str] = []
    joined = 0

    def chunks():
        if first is not None:
            yield first
        yield from batches

    pending = []
    pending_rows = 0
    known = set(index.keys) if append else set()
    duplicates: list[str] = []
    for b in chunks():
        skipped.extend(b.skipped)
        if append and b.X.shape[0]:
            import pyarrow as pa

            keys = row_keys(b.meta)
            new = np.array([k not in known for k in keys], dtype=bool)
            if not new.all():
                duplicates.extend(k for k, n in zip(keys, new) if not n)
                b = EmbeddingBatch(b.X[new], A.filter_rows(b.meta, new), b.skipped)
            known.update(k for k, n in zip(keys, new) if n)
        if b.X.shape[0] == 0:
            continue
        if dim_hint is None:
            dim_hint = b.X.shape[1]
            if append:
                check_same_model(index, model, dim_hint, None, f"{src_name}: embeddings", dest)
        meta = b.meta
        if lab_table is not None:
            meta, hit = join_labels(meta, lab_table, labels_name)
            joined += hit
        pending.append((b.X, meta))
        pending_rows += b.X.shape[0]
        if pending_rows >= 8192:
            _flush(index, pending)
            pending, pending_rows = [], 0
    _flush(index, pending)
    report_skipped(skipped, src_name)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
        log.warning("%s: %d row(s) already in the index left out: %s", src_name, len(duplicates), shown)
    if lab_table is not None:
        added = index.rows - rows_before
        if joined < added:
            log.warning("%s: %d of %d embedding rows have no row in %s (their labels are null)", src_name,
                        added - joined, added, labels_name)
        stats.labels_joined = joined
    if index.rows == rows_before and append:
        raise InputError(f"{src_name}: nothing new to add to {dest}",
                         "every row was already in the index or had NaN/inf embeddings")
    if index.rows == 0:
        raise InputError(f"{src_name}: no embedding row to index",
                         "every row was empty or had NaN/inf values" if skipped else "the table is empty")
    # where not named, find the date column among the metadata (first known name present)
    if not index.header.get("date_column"):
        found = next((c for c in DATE_COLUMNS if c in index.meta.column_names), None)
        if found:
            index.header["date_column"] = found
            log.info("dates for --same-patient from column %r", found)
    if index.header.get("patient_column") not in index.meta.column_names:
        log.info("no %r column: --same-patient will not be available", index.header.get("patient_column"))
    index.header.setdefault("sources", []).append(_source_entry(reader, src_name, index.rows - rows_before,
                                                                len(skipped)))
    index.header.setdefault("history", [])
    TableMeta(history=index.header["history"]).add_step(argv)
    index.save(dest)
    stats.rows = index.rows - rows_before
    stats.skipped = len(skipped)
    stats.kind, stats.metric = index.kind, index.metric
    return stats


def _flush(index: Index, pending: list) -> None:
    import pyarrow as pa

    if not pending:
        return
    X = np.concatenate([p[0] for p in pending]) if len(pending) > 1 else pending[0][0]
    meta = pa.concat_tables([p[1] for p in pending], promote_options="permissive") if len(pending) > 1 \
        else pending[0][1]
    index.add(X, meta)
