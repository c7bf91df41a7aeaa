"""numpy <-> Arrow conversions that work on the buffers directly.

pyarrow imports pandas, when it is installed, the first time a process calls
``Array.to_numpy()``, ``np.asarray(array)``, ``pa.array()`` on numpy or Python
data, or ``pa.scalar()``: about 0.3 s, spent again in every command and worker
process that does. The record-table paths of ecgtool (convert, preprocess,
embed, predict, info) go through these helpers instead, so no command pays for
pandas unless it reads a CSV.

* :func:`to_numpy`: a primitive or boolean array as numpy (a zero-copy view
  when it has no nulls); nulls become ``fill``.
* :func:`valid`: the validity of each row as a boolean array.
* :func:`offsets`: the offsets of a list array (its slice offset applied).
* :func:`from_numpy`, :func:`indices`, :func:`strings`, :func:`string_lists`,
  :func:`column`: Arrow arrays built from numpy or Python values.
* :func:`float_matrix` (with :func:`float_values`): an embedding column as an
  (n, d) float32 matrix. These two go through pyarrow's own ``to_numpy``
  (the embedding readers of ``probe`` and ``index`` use them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ecgtool.errors import InputError

_EPOCH = dt.datetime(1970, 1, 1)


def _chunk(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little", count=offset + n)[offset:].astype(bool)


def _dtype(type_: pa.DataType) -> np.dtype:
    if pa.types.is_timestamp(type_) or pa.types.is_date64(type_) or pa.types.is_duration(type_):
        return np.dtype(np.int64)
    if pa.types.is_date32(type_):
        return np.dtype(np.int32)
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return np.dtype(type_.to_pandas_dtype())
    raise TypeError(f"no numpy view of Arrow type {type_}")


def valid(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n,) bool: True where the row is not null."""
    arr = _chunk(arr)
    n = len(arr)
    if pa.types.is_null(arr.type):
        return np.zeros(n, dtype=bool)
    buf = arr.buffers()[0]
    if arr.null_count == 0 or buf is None:
        return np.ones(n, dtype=bool)
    return _bits(buf, arr.offset, n)


def to_numpy(arr: pa.Array | pa.ChunkedArray, fill: Any = None) -> np.ndarray:
    """Values of a numeric, timestamp or boolean array as numpy.

    Without nulls the result is a read-only view of the Arrow buffer (booleans
    are unpacked into a new array). Null rows become ``fill``; the default
    fill is NaN for floating types, and an integer array with nulls and no
    fill is returned as float64 with NaN.
    """
    arr = _chunk(arr)
    n = len(arr)
    buf = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        data = _bits(buf, arr.offset, n) if n and buf is not None else np.zeros(n, dtype=bool)
    else:
        dtype = _dtype(arr.type)
        data = (np.frombuffer(buf, dtype=dtype, count=n, offset=arr.offset * dtype.itemsize)
                if n and buf is not None else np.zeros(n, dtype=dtype))
    if arr.null_count == 0:
        return data
    ok = valid(arr)
    if fill is None:
        if data.dtype.kind == "b":
            raise ValueError("a boolean array with nulls needs a fill value")
        data = data.astype(np.float64) if data.dtype.kind in "iu" else data.copy()
        fill = np.nan
    else:
        data = data.copy()
    data[~ok] = fill
    return data


def offsets(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n + 1,) int64 offsets of a list array into ``arr.values``; fixed-size lists included."""
    arr = _chunk(arr)
    if pa.types.is_fixed_size_list(arr.type):
        k = arr.type.list_size
        return (np.arange(len(arr) + 1, dtype=np.int64) + arr.offset) * k
    return to_numpy(arr.offsets).astype(np.int64)


def _validity_buffer(ok: np.ndarray | None) -> tuple[pa.Buffer | None, int]:
    if ok is None or ok.all():
        return None, 0
    return pa.py_buffer(np.packbits(ok, bitorder="little")), int((~ok).sum())


def from_numpy(values: np.ndarray, type_: pa.DataType | None = None, ok: np.ndarray | None = None) -> pa.Array:
    """1-D numpy values -> Arrow array of ``type_`` (by default the values' own type), nulls where not ``ok``.

    Numeric values share memory with the result where no cast is needed.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        values = values.reshape(-1)
    if type_ is None:
        type_ = pa.from_numpy_dtype(values.dtype)
    vbuf, nulls = _validity_buffer(None if ok is None else np.asarray(ok, dtype=bool))
    if pa.types.is_boolean(type_):
        data = pa.py_buffer(np.packbits(values.astype(bool), bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values, dtype=_dtype(type_)))
    return pa.Array.from_buffers(type_, len(values), [vbuf, data], null_count=nulls)


def indices(idx: Sequence[int | None] | np.ndarray) -> pa.Array:
    """Row positions for ``take``; a None position takes a null row."""
    if isinstance(idx, np.ndarray):
        return from_numpy(idx.astype(np.int64, copy=False), pa.int64())
    return column(list(idx), pa.int64())


def _nested_fixed(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and pa.types.is_fixed_size_list(t.value_type)


def _unsliced(arr: pa.Array) -> pa.Array:
    # pyarrow 26 takes and filters the wrong rows of a *sliced* fixed-size list of fixed-size lists
    # (the slice's offset is applied twice: a fixed-shape signal column; garbage or a crash past the
    # buffer's end); a copy at offset 0 is taken correctly
    return pa.concat_arrays([arr]) if arr.offset and _nested_fixed(arr.type) else arr


def take(data, positions):
    """``data.take(positions)`` for an Arrow array, chunked array, record batch or table (positions:
    row numbers, an Arrow integer array or what :func:`indices` takes), with fixed-shape signal columns
    taken correctly even from a slice of a batch."""
    if not isinstance(positions, (pa.Array, pa.ChunkedArray)):
        positions = indices(positions)
    if isinstance(data, pa.RecordBatch):
        if any(c.offset and _nested_fixed(c.type) for c in data.columns):
            data = pa.RecordBatch.from_arrays([_unsliced(c) for c in data.columns], schema=data.schema)
    elif isinstance(data, pa.Table):
        if any(_nested_fixed(f.type) for f in data.schema):
            data = pa.Table.from_arrays([pa.chunked_array([_unsliced(c) for c in col.chunks], type=col.type)
                                         for col in data.columns], schema=data.schema)
    elif isinstance(data, pa.ChunkedArray):
        data = pa.chunked_array([_unsliced(c) for c in data.chunks], type=data.type)
    else:
        data = _unsliced(data)
    return data.take(positions)


def filter_rows(data, mask):
    """``data.filter(mask)`` (a boolean mask) with the same care as :func:`take`."""
    return take(data, np.flatnonzero(np.asarray(mask, dtype=bool)))


def strings(values: Sequence[str | None]) -> pa.Array:
    """Python strings (None = null) -> Arrow string array."""
    ok = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    data = [v.encode("utf-8") if v is not None else b"" for v in values]
    offs = np.zeros(len(data) + 1, dtype=np.int64)
    if data:
        np.cumsum([len(b) for b in data], out=offs[1:])
    type_ = pa.string() if offs[-1] < 2**31 else pa.large_string()
    offs = offs.astype(np.int32) if type_ == pa.string() else offs
    vbuf, nulls = _validity_buffer(ok)
    return pa.Array.from_buffers(type_, len(data), [vbuf, pa.py_buffer(offs), pa.py_buffer(b"".join(data))],
                                 null_count=nulls)


def string_lists(values: Sequence[Sequence[str] | None]) -> pa.Array:
    """Lists of strings (None = null list) -> Arrow list<string>."""
    ok = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    offs = np.zeros(len(values) + 1, dtype=np.int32)
    if len(values):
        np.cumsum([len(v) if v is not None else 0 for v in values], out=offs[1:])
    child = strings([str(x) for v in values if v is not None for x in v])
    vbuf, nulls = _validity_buffer(ok)
    return pa.Array.from_buffers(pa.list_(pa.string()), len(values), [vbuf, pa.py_buffer(offs)],
                                 null_count=nulls, children=[child])


def _micros(value: dt.datetime) -> int:
    """Microseconds since 1970 of a naive datetime (taken as it is, no time zone)."""
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def column(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """One column of ``type_`` from Python values (None = null).

    Strings, lists of strings, floats, integers, booleans and microsecond
    timestamps are built from buffers; any other type goes through
    ``pa.array``.
    """
    if pa.types.is_string(type_):
        return strings([None if v is None else str(v) for v in values])
    if pa.types.is_list(type_) and pa.types.is_string(type_.value_type):
        return string_lists(values)
    ok = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    if pa.types.is_floating(type_) or pa.types.is_integer(type_) or pa.types.is_boolean(type_):
        dtype = bool if pa.types.is_boolean(type_) else _dtype(type_)
        arr = np.array([v if v is not None else 0 for v in values], dtype=dtype)
        return from_numpy(arr, type_, ok)
    if pa.types.is_timestamp(type_) and type_.unit == "us":
        arr = np.array([_micros(v) if v is not None else 0 for v in values], dtype=np.int64)
        return from_numpy(arr, type_, ok)
    return pa.array(values, type=type_)


def float_values(values: pa.Array) -> np.ndarray:
    """A flat float array as float32 numpy; nulls become NaN (pyarrow's ``to_numpy``)."""
    import pyarrow.compute as pc

    if values.null_count:
        values = pc.fill_null(values.cast(pa.float32()), float("nan"))
    out = values.to_numpy(zero_copy_only=False)
    return out.astype(np.float32, copy=False)


def float_matrix(col: pa.ChunkedArray | pa.Array, name: str, hint: str) -> np.ndarray:
    """(n, d) float32 from a fixed-size list column, or a plain list column whose rows share one length d.

    Null rows are NaN. Valid rows of different lengths are an :class:`~ecgtool.errors.InputError` naming
    ``name``; so is a column that is not a list (with ``hint``, which says what the column should be).
    """
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    typ = arr.type
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_fixed_size_list(typ):
        d = typ.list_size
        vals = arr.values.slice(arr.offset * d, n * d)
        out = float_values(vals).reshape(n, d)
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        lens = np.unique(lengths[valid]) if valid.any() else np.array([0])
        if lens.size > 1:
            raise InputError(f"{name}: embeddings differ in length ({', '.join(map(str, lens[:5]))} values)",
                             "every row of an embedding table needs the same dimension")
        d = int(lens[0])
        flat = float_values(arr.flatten())
        out = np.full((n, d), np.nan, dtype=np.float32)
        out[valid & (lengths == d)] = flat.reshape(-1, d)
    else:
        raise InputError(f"{name}: column type {typ} is not a list of floats", hint)
    if not valid.all():
        out = out.copy()
        out[~valid] = np.nan
    return out
