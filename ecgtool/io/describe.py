"""Summaries of a table for ``ecgtool info``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from ecgtool.io import arrays as A
from ecgtool.io import schema as S
from ecgtool.io.stream import TableReader


def _lengths(col: pa.Array) -> np.ndarray:
    """Samples per row (of the first lead), without copying the signal values."""
    shape = S.fixed_shape(col.type)
    if shape is not None:
        return np.full(len(col), shape[1], dtype=np.int64)
    outer = A.offsets(col)
    inner = A.offsets(col.values)
    out = np.zeros(len(col), dtype=np.int64)
    has = outer[1:] > outer[:-1]
    first = outer[:-1][has]
    out[has] = inner[first + 1] - inner[first]
    return out


def describe(reader: TableReader) -> dict[str, Any]:
    """Kind, rows, columns, sampling rates, lead sets, lengths, labels, history; for several part files read
    as one table (a folder), all of them: rows over every part, and ``parts``, their number."""
    meta = reader.meta
    rows = 0
    fs_counts: Counter = Counter()
    lead_sets: Counter = Counter()
    seconds: list[np.ndarray] = []
    records: set = set()
    names = reader.schema.names
    for batch in reader:
        rows += batch.num_rows
        if S.RECORD_ID in names and S.SEGMENT in names:
            records.update(batch.column(names.index(S.RECORD_ID)).to_pylist())
        fs = S.numeric_column(batch, S.FS) if S.FS in names else None
        if fs is not None:
            fs_counts.update(float(x) for x in fs)
        if S.LEADS in names:
            lead_sets.update(tuple(x) if x is not None else () for x in batch.column(names.index(S.LEADS)).to_pylist())
        if S.SIGNAL in names and fs is not None:
            n = _lengths(batch.column(names.index(S.SIGNAL)))
            with np.errstate(divide="ignore", invalid="ignore"):
                seconds.append(n / fs)
    out: dict[str, Any] = {
        "kind": meta.kind,
        "format": reader.format,
        "format_version": meta.format_version,
        "rows": rows,
        "columns": {f.name: str(f.type) for f in reader.schema},
    }
    parts = getattr(reader, "parts", None)  # a folder, a glob or a list of part files read as one table
    if parts is not None:
        out["parts"] = len(parts)
    if records:
        out["records"] = len(records)
    if fs_counts:
        out["sampling_rates"] = {f"{k:g}": v for k, v in sorted(fs_counts.items())}
    if lead_sets:
        out["lead_sets"] = [{"leads": list(k), "rows": v} for k, v in lead_sets.most_common()]
    if seconds:
        s = np.concatenate(seconds)
        s = s[np.isfinite(s)]
        if len(s):
            out["duration_s"] = {
                "min": round(float(s.min()), 3),
                "median": round(float(np.median(s)), 3),
                "max": round(float(s.max()), 3),
            }
    sig = reader.schema.field(S.SIGNAL).type if S.SIGNAL in names else None
    if sig is not None:
        shape = S.fixed_shape(sig)
        out["signal_shape"] = list(shape) if shape else "variable"
    for key, value in meta.info.items():
        out[key] = value
    out["history"] = meta.history
    return out
