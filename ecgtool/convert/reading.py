"""Reading for ``ecgtool convert``: discovered items -> Arrow record batches of the base schema.

:func:`read_chunk` reads one chunk of items (in a worker process or in this one) into a
:class:`ChunkResult` (batches, per-record errors, warnings, unknown lead names);
:func:`read_batches` runs the chunks, in input order, in up to ``workers`` processes (a worker
hands its batches over in an Arrow IPC spool file); :func:`chunk_batches` turns the results into
the stream of batches, reporting errors and warnings."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ecgtool.convert.columns import base_schema
from ecgtool.convert.discovery import Item
from ecgtool.errors import EcgtoolError, RecordError, RecordErrors, UsageError
from ecgtool.io import arrays as A
from ecgtool.io import schema as S

log = logging.getLogger("ecgtool")

# Values per signal column chunk before a batch is split (Arrow's 32-bit list offsets).
_MAX_VALUES = 1 << 28


@dataclass
class ChunkResult:
    batches: list[pa.RecordBatch]
    errors: list[tuple[str, str, str | None]]  # (record id, cause, hint)
    warnings: list[str]
    unknown_leads: dict[str, list]  # lead name -> [first record id carrying it, number of records]
    fatal: tuple[str, str, str | None, int] | None = None  # (class name, message, hint, exit code)
    spool: str | None = None  # Arrow IPC file holding the batches (from a worker process)

    def spill(self, folder: str) -> "ChunkResult":
        """Move the batches into an Arrow IPC file in ``folder`` (cheaper to hand over than pickling)."""
        if not self.batches:
            return self
        import tempfile

        fd, path = tempfile.mkstemp(prefix="ecgtool-convert-", suffix=".arrow", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh, pa.ipc.new_file(fh, self.batches[0].schema) as w:
                for b in self.batches:
                    w.write_batch(b)
        except BaseException:
            os.unlink(path)
            raise
        self.batches, self.spool = [], path
        return self

    def load(self) -> "ChunkResult":
        """Map the spooled batches back (zero-copy) and remove the file."""
        if self.spool:
            path, self.spool = self.spool, None
            try:
                reader = pa.ipc.open_file(pa.memory_map(path))
                self.batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            finally:
                os.unlink(path)
        return self

    def discard(self) -> None:
        if self.spool and os.path.exists(self.spool):
            os.unlink(self.spool)
        self.spool = None


# Columns are built from buffers (ecgtool.io.arrays): pyarrow's pa.array() on Python or numpy data
# imports pandas, about a second in every worker process, which a convert run does not otherwise need.


def _signal_array(sigs: list[Any]) -> pa.Array:
    """list<list<float32>> from (L, T) arrays or lists of 1-D arrays (ragged leads)."""
    outer = np.zeros(len(sigs) + 1, dtype=np.int32)
    lengths: list[np.ndarray] = []
    flats: list[np.ndarray] = []
    for i, s in enumerate(sigs):
        if isinstance(s, np.ndarray):
            outer[i + 1] = outer[i] + s.shape[0]
            lengths.append(np.full(s.shape[0], s.shape[1], dtype=np.int64))
            flats.append(s.reshape(-1))
        else:
            outer[i + 1] = outer[i] + len(s)
            lengths.append(np.array([len(x) for x in s], dtype=np.int64))
            flats.extend(np.asarray(x, dtype=np.float32) for x in s)
    inner = np.zeros(int(outer[-1]) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=inner[1:])
    flat = np.concatenate(flats).astype(np.float32, copy=False) if flats else np.zeros(0, dtype=np.float32)
    values = A.from_numpy(flat, pa.float32())
    inner_arr = pa.Array.from_buffers(pa.list_(pa.float32()), len(inner) - 1,
                                      [None, pa.py_buffer(inner.astype(np.int32))], children=[values])
    return pa.Array.from_buffers(S.signal_type(), len(sigs), [None, pa.py_buffer(outer)], children=[inner_arr])


def _build_batch(rows: list[dict], schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for f in schema:
        if f.name == S.SIGNAL:
            arrays.append(_signal_array([r[S.SIGNAL] for r in rows]))
        else:
            arrays.append(A.column([r.get(f.name) for r in rows], f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _size(sig: Any) -> int:
    return int(sig.size) if isinstance(sig, np.ndarray) else int(sum(len(x) for x in sig))


def _spill_chunk(items: Sequence[Item], options: dict | None, folder: str, formats: Sequence[str] = ()) -> ChunkResult:
    return read_chunk(items, options, formats).spill(folder)


def _spool_folder() -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    import tempfile

    return tempfile.gettempdir()


def read_chunk(items: Sequence[Item], options: dict | None = None, formats: Sequence[str] = ()) -> ChunkResult:
    """Read a chunk of records into batches of the base schema for ``formats`` (runs in a worker)."""
    from ecgtool.formats import read_file
    from ecgtool.signal.leads import KNOWN, normalize_lead

    options = options or {}
    schema = base_schema(formats)
    rows: list[dict] = []
    res = ChunkResult([], [], [], {})
    values = 0
    for item in items:
        try:
            recs = read_file(item.path, fmt=item.fmt, **({"part": item.part} if item.part is not None else {}),
                             **options)
        except RecordError as exc:
            res.errors.append((item.record_id, exc.cause, exc.hint))
            continue
        except EcgtoolError as exc:  # not about one record (e.g. a missing option): stops the run
            res.fatal = (type(exc).__name__, exc.message, exc.hint, exc.exit_code)
            break
        except MemoryError:
            res.errors.append((item.record_id, "out of memory while reading it", None))
            continue
        except Exception as exc:  # a reader library failing on a malformed file
            res.errors.append((item.record_id, f"{type(exc).__name__}: {exc}", None))
            continue
        for k, rec in enumerate(recs):
            if rec.record_id:
                rid = rec.record_id
            elif rec.id_suffix:
                rid = item.record_id + rec.id_suffix
            else:
                rid = item.record_id if len(recs) == 1 else f"{item.record_id}#{k}"
            leads = [normalize_lead(name) for name in rec.leads]
            for canon in dict.fromkeys(x for x in leads if x not in KNOWN):
                res.unknown_leads.setdefault(canon, [rid, 0])[1] += 1
            res.warnings.extend(rec.warnings)
            row = {
                S.RECORD_ID: rid,
                S.FS: float(rec.fs),
                S.LEADS: leads,
                S.SIGNAL: rec.signal,
                S.SOURCE: rec.source,
                S.UNITS: rec.units,
            }
            row.update(rec.meta)
            n = _size(rec.signal)
            if rows and values + n > _MAX_VALUES:
                res.batches.append(_build_batch(rows, schema))
                rows, values = [], 0
            rows.append(row)
            values += n
    if rows:
        res.batches.append(_build_batch(rows, schema))
    return res


def _chunks(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def read_batches(
    items: Sequence[Item], workers: int = 1, batch_size: int = 64, options: dict | None = None,
    formats: Sequence[str] | None = None,
) -> Iterator[ChunkResult]:
    """Read records in input order; ``workers`` > 1 reads chunks in that many processes.

    At most ``2 * workers`` chunks are in flight, so memory stays bounded.
    """
    chunks = _chunks(items, batch_size)
    formats = sorted({it.fmt for it in items if it.fmt}) if formats is None else list(formats)
    if workers <= 1:
        for chunk in chunks:
            yield read_chunk(chunk, options, formats)
        return
    import multiprocessing as mp

    # imported here once, so that forked workers start with them loaded
    import ecgtool.formats.wfdb  # noqa: F401
    import ecgtool.signal.leads  # noqa: F401

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    folder = _spool_folder()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending = []
        try:
            for chunk in chunks:
                pending.append(pool.submit(_spill_chunk, chunk, options, folder, formats))
                if len(pending) >= 2 * workers:
                    yield pending.pop(0).result().load()
            while pending:
                yield pending.pop(0).result().load()
        finally:
            for f in pending:
                if not f.cancel():
                    try:
                        f.result().discard()
                    except Exception:
                        pass


def chunk_batches(chunks: Iterable[ChunkResult], errors: RecordErrors,
                  unknown: dict[str, list] | None = None) -> Iterator[pa.RecordBatch]:
    """The record batches of :func:`read_batches` results: per-record errors go to ``errors``, a fatal
    error is raised, warnings are logged, unknown lead names are tallied into ``unknown``
    (name -> [first record, count])."""
    for res in chunks:
        for rid, cause, hint in res.errors:
            errors(RecordError(rid, cause, hint))
        if res.fatal:
            _, msg, hint, code = res.fatal
            raise UsageError(msg, hint) if code == 2 else EcgtoolError(msg, hint)
        for w in res.warnings:
            log.warning(w)
        if unknown is not None:
            for name, (rid, n) in res.unknown_leads.items():
                unknown.setdefault(name, [rid, 0])[1] += n
        yield from res.batches
