"""One join for every command: per-record columns from a CSV (``--join FILE``, ``--join-on COL``).

``convert --join`` and ``label --join`` read a CSV the same way:

* **Header**: a CSV whose first two rows have the same shape in every cell
  (CinC 2017's ``REFERENCE.csv``: ``A00001,N`` / ``A00002,A``), or whose first
  cell is one of the records' ids, has no header; its columns are named
  ``record_id``, ``label`` (two columns) or ``record_id``, ``col2``, ``col3``...
* **Values**: text as the file has it (a multi-line cell keeps its newlines);
  an empty cell is null. A column of whole numbers (``15709.0``) is coded as
  whole numbers: int64, or text without ``.0`` for id columns (``patient_id``,
  ``record_id``, ...); a column of other numbers is float64; PTB-XL's ``sex``
  (0 = male, 1 = female) becomes M/F like other databases' headers.
* **Key**: ``--join-on`` when given; else, of ``record_id``, ``record``,
  ``ecg_id``, ``id``/``ID``, ``filename_hr``/``filename_lr`` (both together),
  ``record_name`` and the first column, the one that matches most of the first
  records. A key matches a record when one of its spellings does: the value as
  is, its file name, without extension, without leading zeros and ``_hr``/
  ``_lr`` (PTB-XL's ``ecg_id`` 1 = record ``00001_hr``), or the record's source
  path with its folders.
* **Report**: how many records were joined, and the first few that were not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa

from ecgtool.errors import InputError, UsageError

ID_COLUMNS = ("record_id", "record", "ecg_id", "id", "ID", "filename_hr", "filename_lr", "record_name")
PAIRED_KEYS = ("filename_hr", "filename_lr")
TEXT_ID_COLUMNS = ("patient_id", "subject_id", "study_id")
_SHAPE = re.compile(r"\d+|[A-Za-z]+")
_WHOLE = re.compile(r"\s*([+-]?\d+)(?:\.0*)?\s*")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def id_keys(value: Any) -> list[str]:
    """Ways a record id may be spelt: as is, file name, without extension, as a number without leading
    zeros and PTB-XL's ``_hr``/``_lr`` (``#1`` for ``00001_hr`` and for ``1``)."""
    if value is None:
        return []
    if isinstance(value, float):
        if value != value:
            return []
        if value.is_integer():
            value = int(value)
    s = str(value).strip().replace("\\", "/").strip("/")
    if not s:
        return []
    keys = [s]
    base = s.rsplit("/", 1)[-1]
    keys.append(base)
    stem = re.sub(r"\.(hea|dat|mat|xml|dcm|csv|npy|edf|scp|mwf)$", "", base, flags=re.IGNORECASE)
    keys.append(stem)
    full = re.sub(r"\.(hea|dat|mat|xml|dcm|csv|npy|edf|scp|mwf)$", "", s, flags=re.IGNORECASE)
    keys.append(full)
    m = re.fullmatch(r"0*(\d+)(?:_(?:hr|lr))?", stem)
    if m:
        keys.append("#" + m.group(1))
    return list(dict.fromkeys(keys))


def path_keys(source: str | None) -> list[str]:
    """A record's source path as keys: ``a/b/c.hea`` -> ``c``, ``b/c``, ``a/b/c``."""
    if not source:
        return []
    p = str(source).replace("\\", "/")
    stem = p.rsplit(".", 1)[0] if "." in p.rsplit("/", 1)[-1] else p
    parts = [x for x in stem.split("/") if x]
    return ["/".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]


def _shape(s: str) -> str:
    return _SHAPE.sub(lambda m: "9" if m.group(0)[0].isdigit() else "a", s)


class JoinTable:
    """A CSV of per-record columns, looked up by record id (see the module docstring)."""

    def __init__(self, path: str, on: str | Sequence[str] | None = None, sample_ids: Iterable[str] = ()):
        import pandas as pd

        p = Path(path)
        self.path = str(path)
        self.name = p.name
        if not p.is_file():
            raise InputError(f"--join {path}: no such file")
        try:
            head = pd.read_csv(p, dtype=str, nrows=2, header=None, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001 - pandas raises many types on a bad CSV
            raise InputError(f"--join {path}: cannot read as CSV ({exc})") from None
        if head.shape[1] == 0:
            raise InputError(f"--join {path}: the CSV has no columns")
        known = {k for s in sample_ids for k in id_keys(s)}
        first = [str(x) for x in head.iloc[0]]
        headerless = bool(known) and bool(set(id_keys(first[0])) & known)
        if len(head) == 2 and not headerless:
            second = [str(x) for x in head.iloc[1]]
            headerless = all(x and _shape(x) == _shape(y) for x, y in zip(first, second))
        try:
            if headerless:
                n = head.shape[1]
                names = ["record_id", "label"] if n == 2 else ["record_id"] + [f"col{i}" for i in range(2, n + 1)]
                df = pd.read_csv(p, dtype=str, header=None, names=names[:n], keep_default_na=False)
            else:
                df = pd.read_csv(p, dtype=str, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"--join {path}: cannot read as CSV ({exc})") from None
        df.columns = [str(c).strip() for c in df.columns]
        self.headerless = headerless
        self.columns = list(df.columns)
        raw = {c: [None if not str(v).strip() else str(v) for v in df[c].tolist()] for c in self.columns}
        if isinstance(on, str):
            on = [on]
        if on:
            missing = [k for k in on if k not in self.columns]
            if missing:
                raise UsageError(f"--join-on {', '.join(missing)}: not a column of {path}",
                                 f"columns: {', '.join(self.columns[:20])}")
        self.on: list[str] | None = list(on) if on else None
        self.table = self._typed(raw)
        self.rows = self.table.to_pylist()
        self._index: dict[tuple, dict[str, int]] = {}
        self.matched = 0
        self.unmatched: list[str] = []
        self.used: set[int] = set()

    # -- reading -------------------------------------------------------------------

    def _typed(self, raw: dict[str, list]) -> pa.Table:
        cols = {}
        ptbxl = {"scp_codes", "filename_hr", "sex"} <= set(raw)
        for name, vals in raw.items():
            present = [v for v in vals if v is not None]
            ident = name in TEXT_ID_COLUMNS or name in ("record_id", "record", "record_name")
            if name == "sex" and ptbxl and present and set(v.strip() for v in present) <= {"0", "1", "0.0", "1.0"}:
                cols[name] = pa.array([None if v is None else ("M" if float(v) == 0 else "F") for v in vals],
                                      pa.string())
            elif present and all(_WHOLE.fullmatch(v) for v in present):
                whole = [None if v is None else _WHOLE.fullmatch(v).group(1) for v in vals]
                cols[name] = (pa.array(whole, pa.string()) if ident or any(len(w.lstrip("+-")) > 15
                                                                            for w in whole if w)
                              else pa.array([None if w is None else int(w) for w in whole], pa.int64()))
            elif present and not ident and all(_FLOAT.fullmatch(v) for v in present):
                cols[name] = pa.array([None if v is None else float(v) for v in vals], pa.float64())
            else:
                cols[name] = pa.array(vals, pa.string())
        return pa.table(cols)

    @classmethod
    def from_arrow(cls, name: str, table: pa.Table, keys: Sequence[str]) -> "JoinTable":
        """A join over an Arrow table already read (an archive's CSV), keyed by ``keys``."""
        self = cls.__new__(cls)
        self.path = self.name = name
        self.headerless = False
        self.columns = list(table.schema.names)
        cols = {}
        for f in table.schema:
            col = table.column(f.name).combine_chunks()
            if pa.types.is_large_string(col.type):
                col = col.cast(pa.string())
            cols[f.name] = col
        self.table = pa.table(cols)
        self.rows = self.table.to_pylist()
        self.on = list(keys)
        self._index = {}
        self.matched = 0
        self.unmatched = []
        self.used = set()
        return self

    # -- keys ----------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return list(self.on or [])

    def _build(self, cols: Sequence[str]) -> dict[str, int]:
        key = tuple(cols)
        if key not in self._index:
            idx: dict[str, int] = {}
            for c in cols:
                for i, v in enumerate(self.table.column(c).to_pylist()):
                    for k in id_keys(v):
                        idx.setdefault(k, i)
            self._index[key] = idx
        return self._index[key]

    def candidates(self) -> list[list[str]]:
        out: list[list[str]] = []
        paired = [c for c in PAIRED_KEYS if c in self.columns]
        for c in ID_COLUMNS:
            if c in paired:
                if paired not in out:
                    out.append(paired)
            elif c in self.columns:
                out.append([c])
        if [self.columns[0]] not in out and self.columns[0] not in paired:
            out.append([self.columns[0]])
        return out

    def choose_key(self, sample_ids: Sequence[str], sources: Sequence[str | None] = ()) -> list[str]:
        """The key column(s): ``--join-on``, else the candidate matching most of these records."""
        if self.on:
            return self.on
        sources = list(sources) or [None] * len(sample_ids)
        best, best_n = None, -1
        for cols in self.candidates():
            idx = self._build(cols)
            n = sum(1 for r, s in zip(sample_ids, sources) if self._find(idx, r, s) is not None)
            if n > best_n:
                best, best_n = cols, n
        self.on = best
        return best

    @staticmethod
    def _find(idx: dict[str, int], record_id: str | None, source: str | None) -> int | None:
        for k in [*id_keys(record_id), *path_keys(source)]:
            i = idx.get(k)
            if i is not None:
                return i
        return None

    # -- lookups -------------------------------------------------------------------

    def lookup_index(self, record_id: str | None, source: str | None = None) -> int | None:
        if self.on is None:
            self.choose_key([record_id] if record_id else [], [source])
        i = self._find(self._build(self.on), record_id, source)
        if i is None:
            if len(self.unmatched) < 5 and record_id is not None:
                self.unmatched.append(str(record_id))
        else:
            self.matched += 1
            self.used.add(i)
        return i

    def lookup(self, record_id: str | None, source: str | None = None) -> dict[str, Any] | None:
        """The CSV row of a record (a dict of typed values), or None."""
        i = self.lookup_index(record_id, source)
        return None if i is None else self.rows[i]

    @property
    def fields(self) -> list[pa.Field]:
        """The columns a join adds (the key columns of a headerless CSV's ``record_id`` excepted)."""
        return [f for f in self.table.schema if f.name != "record_id"]

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` with the joined columns (a value the batch already has is kept)."""
        import pyarrow.compute as pc

        from ecgtool.io import arrays as A
        from ecgtool.io import schema as S

        names = batch.schema.names
        ids = batch.column(names.index(S.RECORD_ID)).to_pylist()
        src = batch.column(names.index(S.SOURCE)).to_pylist() if S.SOURCE in names else [None] * len(ids)
        if self.on is None:
            self.choose_key(ids, src)
        idx = [self.lookup_index(r, s) for r, s in zip(ids, src)]
        taken = A.take(self.table, idx)
        for f in self.fields:
            col = taken.column(f.name).combine_chunks()
            if f.name in batch.schema.names:
                own = batch.column(batch.schema.get_field_index(f.name))
                try:
                    col = col.cast(own.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    continue
                col = pc.coalesce(own, col)
            batch = S.replace_column(batch, f.name, col)
        return batch

    def report(self, n_records: int) -> str:
        """``joined REFERENCE.csv to 8 of 10 records (key record_id); not joined: A, B``."""
        msg = f"joined {self.name} to {self.matched} of {n_records} records (key {', '.join(self.keys) or '?'})"
        if self.unmatched and self.matched < n_records:
            msg += "; not joined: " + ", ".join(self.unmatched) + (", ..." if n_records - self.matched > 5 else "")
        return msg
