"""Change from baseline: a new ECG against the same patient's previous one.

For each query record (records, not embeddings: the picture needs the tracings) the baseline is
the latest ECG of the same patient in the index dated before the query (without dates: the
nearest other ECG of the patient in embedding space). Reported: the embedding distance (pooled
over the records' windows), each label's probability in both and its change (when the model has a
classifier head), and a PNG of both tracings overlaid lead by lead on ECG grid paper.

The baseline's signal comes from ``records`` (a table or raw files holding it, by record_id) or,
without it, from the index's ``source`` column (the file it was converted from).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ecgtool.errors import InputError, UsageError
from ecgtool.retrieval.index import Index
from ecgtool.retrieval.search import PatientLookup, parse_dates

log = logging.getLogger("ecgtool")


@dataclass
class CompareStats:
    queries: int = 0
    compared: int = 0
    notes: list[str] = field(default_factory=list)
    pngs: list[str] = field(default_factory=list)


def open_records(src: str, batch_size: int = 64, errors=None):
    """A reader over a record table or raw ECG files (converted on the fly)."""
    from ecgtool.io import open_table
    from ecgtool.io.stream import sniff

    p = Path(src)
    if src != "-" and (p.is_dir() or (p.is_file() and sniff(p.read_bytes()[:8]) in (None, "npy"))):
        from ecgtool.convert import RecordsReader

        return RecordsReader([src], batch_size, errors)
    return open_table(src, batch_size=batch_size)


def _spool(reader, path: str) -> int:
    from ecgtool.io.stream import TableWriter

    w = None
    n = 0
    for batch in reader:
        if w is None:
            w = TableWriter(path, batch.schema, reader.meta, fmt="arrow")
        w.write(batch)
        n += batch.num_rows
    if w is not None:
        w.close()
    return n


def _signals_by_id(path: str, ids: set[str] | None = None) -> dict[str, dict]:
    """record_id -> {signal (leads, samples), fs, leads, units} of a spooled records table."""
    from ecgtool.io import open_table
    from ecgtool.io import schema as S

    out: dict[str, dict] = {}
    with open_table(path) as r:
        pre = r.meta.preprocessing
        units = "mV" if pre is None or pre.physical_units else pre.normalisation
        for batch in r:
            rids = [str(v) for v in batch.column("record_id").to_pylist()]
            want = [i for i, rid in enumerate(rids) if (ids is None or rid in ids) and rid not in out]
            if not want:
                continue
            sigs = S.batch_signals(batch)
            fs = batch.column("fs").to_pylist()
            leads = batch.column("leads").to_pylist()
            segs = batch.column("segment").to_pylist() if "segment" in batch.schema.names else [None] * len(rids)
            for i in want:
                if segs[i] not in (None, 0):
                    continue  # a segmented table: the first segment stands for the record
                out[rids[i]] = {"signal": np.asarray(sigs[i], dtype=np.float32), "fs": float(fs[i]),
                                "leads": list(leads[i]), "units": units}
    return out


def _pooled(index: Index, rows: np.ndarray) -> np.ndarray:
    v = index.vectors(rows).astype(np.float64).mean(axis=0)
    if index.metric == "cosine":
        n = np.linalg.norm(v)
        v = v / n if n > 0 else v
    return v.astype(np.float32)


def _distance(index: Index, a: np.ndarray, b: np.ndarray) -> float:
    if index.metric == "cosine":
        return float(1.0 - np.dot(a, b))
    return float(np.linalg.norm(a.astype(np.float64) - b))


def choose_baseline(lookup: PatientLookup, index: Index, record_id: str, pid: str | None, qdate, qvec):
    """(baseline record_id, its rows, why) or (None, None, note)."""
    if pid is None:
        return None, None, f"{record_id}: no patient id (none in the query, its record not in the index)"
    rows = lookup.by_patient.get(pid)
    if rows is None:
        return None, None, f"{record_id}: patient {pid} has no ECG in the index"
    rows = np.array([r for r in rows if lookup.rid[r] != record_id], dtype=np.int64)
    if rows.size == 0:
        return None, None, f"{record_id}: patient {pid} has no other ECG in the index"
    recs: dict[str, list[int]] = {}
    for r in rows:
        recs.setdefault(str(lookup.rid[r]), []).append(int(r))
    dates = {rid: lookup.dates[rr[0]] for rid, rr in recs.items()}
    if not np.isnat(qdate) and any(not np.isnat(d) for d in dates.values()):
        earlier = {rid: d for rid, d in dates.items() if not np.isnat(d) and d < qdate}
        if not earlier:
            return None, None, f"{record_id}: patient {pid} has no ECG dated before this one ({qdate})"
        best = max(earlier, key=lambda rid: (earlier[rid], rid))
        return best, np.array(recs[best]), "latest earlier ECG"
    dist = {rid: _distance(index, qvec, _pooled(index, np.array(rr))) for rid, rr in recs.items()}
    best = min(dist, key=lambda rid: (dist[rid], rid))
    return best, np.array(recs[best]), "nearest ECG of the patient (no dates to order by)"


def _predict(model, device, path: str, tmp: str, name: str, batch_size: int, errors) -> dict[str, np.ndarray]:
    from ecgtool.io import open_table
    from ecgtool.models.apply import label_settings, predict_table

    names = label_settings(model)[0]
    out = f"{tmp}/{name}.pred.arrow"
    with open_table(path, batch_size=batch_size) as r:
        predict_table(r, out, model, device=device, batch_size=batch_size, errors=errors, fmt="arrow",
                      argv=["ecgtool", "search"])
    with open_table(out) as r:
        t = r.read_all()
    P = np.column_stack([np.asarray(t.column(n).to_numpy(zero_copy_only=False), dtype=np.float64) for n in names])
    return {str(rid): P[i] for i, rid in enumerate(t.column("record_id").to_pylist())}


def _embed_pooled(index: Index, model, device, path: str, tmp: str, batch_size: int, errors) -> dict[str, np.ndarray]:
    """record_id -> the query's vector, pooled over its windows as the index's rows are."""
    from ecgtool.io import open_table
    from ecgtool.models.apply import embed_table
    from ecgtool.retrieval.index import embedding_batches

    emb = index.header.get("embedding") or {}
    out = f"{tmp}/query.emb.arrow"
    with open_table(path, batch_size=batch_size) as r:
        embed_table(r, out, model, device=device, batch_size=batch_size, pool=emb.get("pool") or "mean",
                    layer=emb.get("layer"), errors=errors, fmt="arrow", argv=["ecgtool", "search"])
    acc: dict[str, list[np.ndarray]] = {}
    with open_table(out) as r:
        for b in embedding_batches(r, "queries"):
            P = index.prepare(b.X)
            for rid, v in zip(b.meta.column("record_id").to_pylist(), P):
                acc.setdefault(str(rid), []).append(v)
    res = {}
    for rid, vs in acc.items():
        v = np.mean(vs, axis=0)
        if index.metric == "cosine":
            v = v / max(np.linalg.norm(v), 1e-12)
        res[rid] = v.astype(np.float32)
    return res


def _baseline_signal(index: Index, rows: np.ndarray, record_id: str, records: dict | None, tmp: str, errors):
    if records is not None and record_id in records:
        return records[record_id]
    if "source" in index.meta.column_names:
        src = _find_source(index, index.meta.column("source")[int(rows[0])].as_py())
        if src:
            from ecgtool.convert import RecordsReader

            path = f"{tmp}/baseline.{re.sub(r'[^A-Za-z0-9_.-]', '_', record_id)}.arrow"
            _spool(RecordsReader([src], 8, errors), path)
            got = _signals_by_id(path)
            if got:
                return next(iter(got.values()))
    return None


def _find_source(index: Index, src: str | None) -> str | None:
    """The file a record was converted from: as written, else relative to where the embedding tables
    or the index are (``convert`` writes the paths it was given, often relative)."""
    if not src:
        return None
    p = Path(src)
    if p.exists() or p.is_absolute():
        return str(p) if p.exists() else None
    bases = [Path(s["path"]).parent for s in index.header.get("sources", []) if s.get("path") not in (None, "-")]
    if getattr(index, "path", None):
        bases.append(Path(os.path.abspath(index.path)).parent)
    for base in bases:
        if (base / p).exists():
            return str(base / p)
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def compare(query_reader, index: Index, dest: str, *, index_name: str, src_name: str, model, device,
            records_src: str | None = None, png_dir: str | None = None, batch_size: int = 32, errors=None,
            fmt: str | None = None, argv: Sequence[str] | None = None) -> CompareStats:
    """Compare each query record with its baseline; write one row per query that has one."""
    import pyarrow as pa

    from ecgtool.io.schema import TableMeta
    from ecgtool.io.stream import TableWriter
    from ecgtool.models.apply import label_settings, model_name
    from ecgtool.retrieval.index import check_same_model
    from ecgtool.retrieval.search import is_embedding_table

    if is_embedding_table(query_reader):
        raise UsageError("--compare needs records as queries (their tracings are drawn), not embeddings",
                         "give the record table or the raw ECG files")
    name = model_name(model)
    check_same_model(index, name, int(model.feature_dim((index.header.get("embedding") or {}).get("layer"))),
                     None, "record queries embedded here", index_name)
    lookup = PatientLookup(index)
    has_head = model.get_classifier() is not None
    label_names = list(label_settings(model)[0]) if has_head else []
    if not has_head:
        log.info("model %s has no classifier head: no probability change is reported", name)
    stats = CompareStats()
    if png_dir:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ecgtool-compare-") as tmp:
        qpath = f"{tmp}/query.records.arrow"
        if _spool(query_reader, qpath) == 0:
            raise InputError(f"{src_name}: no query", "the input holds no record")
        qsig = _signals_by_id(qpath)
        qmeta = {}
        from ecgtool.io import open_table

        with open_table(qpath) as r:
            for b in r:
                for row in pa.Table.from_batches([b]).drop_columns(
                        [c for c in ("signal",) if c in b.schema.names]).to_pylist():
                    qmeta.setdefault(str(row["record_id"]), row)
        qvec = _embed_pooled(index, model, device, qpath, tmp, batch_size, errors)
        qprob = _predict(model, device, qpath, tmp, "query", batch_size, errors) if has_head else {}
        records = None
        if records_src:
            rpath = f"{tmp}/records.arrow"
            _spool(open_records(records_src, batch_size, errors), rpath)
            records = _signals_by_id(rpath)
        rows_out = []
        base_sigs = {}
        for rid, meta in qmeta.items():
            stats.queries += 1
            if rid not in qvec:
                continue
            pid = lookup.patient_of(meta)
            qdate = lookup.date_of(meta)
            brid, brows, why = choose_baseline(lookup, index, rid, pid, qdate, qvec[rid])
            if brid is None:
                stats.notes.append(why)
                continue
            bvec = _pooled(index, brows)
            dist = _distance(index, qvec[rid], bvec)
            bsig = _baseline_signal(index, brows, brid, records, tmp, errors)
            bdate = lookup.dates[brows[0]]
            row = {"query_record_id": rid, "baseline_record_id": brid, "patient_id": pid,
                   "query_date": None if np.isnat(qdate) else str(qdate),
                   "baseline_date": None if np.isnat(bdate) else str(bdate),
                   "days_between": None if np.isnat(qdate) or np.isnat(bdate)
                   else float((qdate - bdate) / np.timedelta64(1, "D")),
                   "baseline_rule": why, "distance": dist}
            if bsig is not None:
                base_sigs[brid] = bsig
            else:
                stats.notes.append(f"{rid}: the baseline {brid}'s tracing was not found "
                                   "(give --records, or keep a readable 'source' column in the index)")
            rows_out.append((row, rid, brid))
        bprob: dict[str, np.ndarray] = {}
        if has_head and base_sigs:
            bprob = _predict_signals(model, device, base_sigs, tmp, batch_size, errors)
        table_rows = []
        for row, rid, brid in rows_out:
            for k, n in enumerate(label_names):
                qp = qprob.get(rid)
                bp = bprob.get(brid)
                row[f"query_{n}"] = None if qp is None else float(qp[k])
                row[f"baseline_{n}"] = None if bp is None else float(bp[k])
                row[f"change_{n}"] = None if qp is None or bp is None else float(qp[k] - bp[k])
            if png_dir and rid in qsig and brid in base_sigs:
                png = Path(png_dir) / f"{_safe(rid)}_vs_{_safe(brid)}.png"
                from ecgtool.retrieval.overlay import plot_overlay

                plot_overlay(qsig[rid], base_sigs[brid], png,
                             title=f"{rid} against baseline {brid} (patient {row['patient_id']})",
                             subtitle=f"black: {rid} {row['query_date'] or ''}   blue: {brid} "
                                      f"{row['baseline_date'] or ''}   embedding distance {row['distance']:.3f}")
                row["png"] = str(png)
                stats.pngs.append(str(png))
            table_rows.append(row)
        stats.compared = len(table_rows)
        for note in stats.notes:
            log.info("%s", note)
        fields = [pa.field("query_record_id", pa.string()), pa.field("baseline_record_id", pa.string()),
                  pa.field("patient_id", pa.string()), pa.field("query_date", pa.string()),
                  pa.field("baseline_date", pa.string()), pa.field("days_between", pa.float64()),
                  pa.field("baseline_rule", pa.string()), pa.field("distance", pa.float64())]
        for n in label_names:
            fields += [pa.field(f"query_{n}", pa.float64()), pa.field(f"baseline_{n}", pa.float64()),
                       pa.field(f"change_{n}", pa.float64())]
        if png_dir:
            fields.append(pa.field("png", pa.string()))
        schema = pa.schema(fields)
        table = pa.Table.from_pylist(table_rows, schema=schema)
        meta = TableMeta.create("comparison", index=index_name, model=index.model, metric=index.metric,
                                label_names=label_names).add_step(argv)
        with TableWriter(dest, schema, meta, fmt=fmt) as w:
            w.write(table)
    return stats


def _predict_signals(model, device, sigs: dict, tmp: str, batch_size: int, errors) -> dict[str, np.ndarray]:
    """Probabilities of records given as signals (the baselines)."""
    import pyarrow as pa

    from ecgtool.io import schema as S
    from ecgtool.io.stream import TableWriter

    units = {v["units"] for v in sigs.values()}
    path = f"{tmp}/baselines.arrow"
    ids = list(sigs)
    batch = pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array([sigs[i]["fs"] for i in ids], pa.float64()),
         pa.array([sigs[i]["leads"] for i in ids], pa.list_(pa.string())),
         S.signals_to_arrow([sigs[i]["signal"] for i in ids])],
        names=[S.RECORD_ID, S.FS, S.LEADS, S.SIGNAL])
    if units != {"mV"}:
        log.warning("baseline tracings are not in physical units (%s): their probabilities may be off",
                    ", ".join(sorted(units)))
    with TableWriter(path, batch.schema, S.TableMeta(kind="records"), fmt="arrow") as w:
        w.write(batch)
    return _predict(model, device, path, tmp, "baseline", batch_size, errors)
