"""Reading and writing record tables: Parquet, Arrow IPC stream/file, NPZ.

* Input formats are detected from the first bytes, never from the name;
  gzip and zstd wrappers are removed transparently.
* ``-`` is stdin/stdout. Parquet and NPZ on stdin are spooled to a temporary
  file (their index sits at the end of the file).
* Batches stream through: memory is bounded by the batch size (NPZ output is
  the exception: numpy's format needs whole arrays, so it is meant for
  exports that fit in memory).
* Output files are written to a temporary file beside the target and renamed
  on success; a failed command leaves nothing behind. An output folder gets
  part files encoded in parallel (:mod:`ecgtool.io.parts`); several part files
  (a folder, a glob) are read as one table (:class:`PartsReader`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import logging
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ecgtool.errors import InputError, UsageError
from ecgtool.io import arrays as A
from ecgtool.io import schema as S
from ecgtool.io.encode import (  # noqa: F401  (re-exported: the writer's pieces live in ecgtool.io.encode)
    OUTPUT_FORMATS,
    PARQUET_ROW_GROUP,
    TABLE_EXTENSIONS,
    TABLE_SUFFIXES,
    CommitOnSuccess,
    Encoder,
    _leaf_paths,
    choose_format,
    nothing_written,
    refuse_terminal,
)
from ecgtool.io.files import AtomicOutput, no_interruption

log = logging.getLogger("ecgtool")

DEFAULT_BATCH_SIZE = 64
# row groups larger than this (tables written elsewhere) are read one at a time, in batches
PARALLEL_ROW_GROUP_BYTES = 64 << 20

MAGIC = {
    b"PAR1": "parquet",
    b"\xff\xff\xff\xff": "arrow",
    b"ARROW1": "arrow-file",
    b"PK\x03\x04": "npz",
    b"\x93NUMPY": "npy",
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def sniff(head: bytes) -> str | None:
    """Name of the format whose magic bytes start ``head`` (None if unknown)."""
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def _display(src) -> str:
    return "stdin" if str(src) == "-" else str(src)


class TableReader:
    """Iterate over the record batches of a table; ``schema`` and ``meta`` up front.

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, src: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE, threads: int = 1):
        self.name = _display(src)
        self.batch_size = batch_size
        # Parquet row groups decoded in parallel (``threads`` > 1) when the file can be reopened by path
        self.threads = max(1, int(threads))
        self._path: str | None = None
        self._cleanup: list = []
        self._iter: Iterator[pa.RecordBatch]
        try:
            self._open(src)
        except Exception:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------
    def _open(self, src) -> None:
        if str(src) == "-":
            raw = sys.stdin.buffer
            if raw.isatty():
                raise UsageError("no input: stdin is a terminal", "pipe a table in, or give a file name")
            fh: BinaryIO = io.BufferedReader(raw, buffer_size=1 << 20) if not hasattr(raw, "peek") else raw
            seekable = False
        else:
            path = Path(src)
            if not path.exists():
                raise InputError(f"{src}: no such file")
            if path.is_dir():
                raise InputError(
                    f"{src}: is a folder, not a table", "to read raw ECG files, use 'ecgtool convert'"
                )
            fh = open(path, "rb")
            self._cleanup.append(fh)
            seekable = True
            self._path = str(path)
        head = _peek(fh, 8)
        fmt = sniff(head)
        if fmt in ("gzip", "zstd"):
            fh = _decompress(fh, fmt)
            self._cleanup.append(fh)
            self._path = None
            seekable = False
            head = _peek(fh, 8)
            fmt = sniff(head)
        if fmt is None:
            if not head:
                raise InputError(f"{self.name}: empty input", "the previous command may have failed")
            raise InputError(
                f"{self.name}: not a record table (starts with {head[:8]!r})",
                "expected Parquet, Arrow IPC or NPZ; for raw ECG files use 'ecgtool convert'",
            )
        if fmt == "npy":
            raise InputError(
                f"{self.name}: a bare .npy array has no sampling rate or lead names",
                "convert it first: ecgtool convert FILE.npy --fs 500 --leads I,II,... -o table.parquet",
            )
        if fmt in ("parquet", "arrow-file", "npz") and not seekable:
            fh = self._spool(fh)
        try:
            if fmt == "arrow":
                self._open_stream(fh)
            elif fmt == "arrow-file":
                self._open_arrow_file(fh)
            elif fmt == "parquet":
                self._open_parquet(fh)
            else:
                self._open_npz(fh)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError, KeyError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{self.name}: cannot read {fmt} table ({exc})", "the file may be truncated") from None
        self.format = fmt
        self.meta = S.TableMeta.from_schema(self.schema, self.name)

    def _spool(self, fh: BinaryIO) -> BinaryIO:
        tmp = tempfile.NamedTemporaryFile(prefix="ecgtool-spool-")  # removed on close
        shutil.copyfileobj(fh, tmp, 1 << 20)
        tmp.flush()
        tmp.seek(0)
        self._cleanup.append(tmp)
        self._path = tmp.name
        return tmp

    def _open_stream(self, fh) -> None:
        reader = ipc.open_stream(fh)
        self.schema = reader.schema

        def gen():
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowInvalid, OSError) as exc:
                    raise InputError(f"{self.name}: the Arrow stream is cut short or corrupt ({exc})") from None
                yield from _split(batch, self.batch_size)

        self._iter = gen()

    def _open_arrow_file(self, fh) -> None:
        reader = ipc.open_file(fh)
        self.schema = reader.schema

        def gen():
            for i in range(reader.num_record_batches):
                yield from _split(reader.get_batch(i), self.batch_size)

        self._iter = gen()

    def _open_parquet(self, fh) -> None:
        pf = pq.ParquetFile(fh)
        self.schema = pf.schema_arrow
        self.num_rows = pf.metadata.num_rows

        def serial():
            # one row group at a time: iter_batches over the whole file pre-buffers every row group's
            # column chunks, so memory would grow with the file instead of the batch size
            for rg in range(pf.num_row_groups):
                yield from pf.iter_batches(batch_size=self.batch_size, row_groups=[rg])

        def parallel(path: str):
            # each thread decodes whole row groups through its own file handle; ``threads`` + 1 row
            # groups are in memory at most
            from ecgtool.io.threads import ordered_map

            local = threading.local()
            handles: list = []

            def read(rg: int) -> pa.Table:
                mine = getattr(local, "pf", None)
                if mine is None:
                    src = pa.OSFile(path)
                    handles.append(src)
                    mine = local.pf = pq.ParquetFile(src)
                return mine.read_row_group(rg)

            try:
                for table in ordered_map(read, range(pf.num_row_groups), self.threads, self.threads + 1):
                    for batch in table.to_batches():
                        yield from _split(batch, self.batch_size)
            finally:
                for src in handles:
                    src.close()

        def gen():
            try:
                small = all(pf.metadata.row_group(i).total_byte_size <= PARALLEL_ROW_GROUP_BYTES
                            for i in range(pf.num_row_groups))
                if self.threads > 1 and self._path is not None and pf.num_row_groups > 1 and small:
                    yield from parallel(self._path)
                else:
                    yield from serial()
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{self.name}: the Parquet file is corrupt ({exc})") from None

        self._iter = gen()

    def _open_npz(self, fh) -> None:
        table = npz_to_table(np.load(fh, allow_pickle=False), self.name)
        self.schema = table.schema
        self.num_rows = table.num_rows
        self._iter = iter(table.to_batches(max_chunksize=self.batch_size))

    # -- iteration ---------------------------------------------------------------
    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._iter

    def read_all(self) -> pa.Table:
        """The whole table in memory: only for tables known to be small (labels, embeddings)."""
        return pa.Table.from_batches(list(self._iter), schema=self.schema)

    def close(self) -> None:
        for obj in reversed(self._cleanup):
            try:
                obj.close()
            except Exception:
                pass
        self._cleanup = []

    def __enter__(self) -> "TableReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()




def table_parts(src) -> list[str] | None:
    """The part files ``src`` stands for when it is several tables read as one: a list of paths, a
    folder (its table files, sorted by name) or a glob pattern; None for one file or ``-``."""
    import glob

    if isinstance(src, (list, tuple)):
        paths: list[str] = []
        for item in src:
            paths.extend(table_parts(item) or [str(item)])
        return paths
    text = str(src)
    if text == "-":
        return None
    p = Path(text)
    if p.is_dir():
        parts = sorted(str(q) for q in p.iterdir() if q.is_file() and q.suffix.lower() in TABLE_SUFFIXES
                       and not q.name.startswith("."))
        if not parts:
            raise InputError(f"{src}: a folder without table files (.parquet, .arrow, .npz)",
                             "to read raw ECG files, use 'ecgtool convert'")
        return parts
    if not p.exists() and any(c in text for c in "*?["):
        parts = sorted(glob.glob(text))
        if not parts:
            raise InputError(f"{src}: no file matches this pattern")
        return parts
    return None


class PartsReader:
    """Several tables (shards, part files) read one after another as one table.

    Every part is opened when the reader is (a Parquet part's footer, an Arrow file's schema: metadata
    only), so that before any row is produced a part that is truncated or corrupt is named with its
    cause, and one of another kind of table, another format version, another normalisation or other
    columns is refused, naming both files and what differs. ``meta`` is the first part's;
    ``num_rows`` sums the parts' (None when a part does not say, e.g. an Arrow stream)."""

    # table metadata every part must share with the first (the history differs: e.g. --shard)
    SAME_META = (("kind", "a {} table"), ("format_version", "{}"), ("normalisation", "{}"))

    def __init__(self, parts: list[str], batch_size: int = DEFAULT_BATCH_SIZE, threads: int = 1):
        if not parts:
            raise InputError("no input tables")
        self.parts = list(parts)
        self.batch_size, self.threads = batch_size, threads
        self.name = f"{parts[0]} (+{len(parts) - 1} more)" if len(parts) > 1 else parts[0]
        first = TableReader(parts[0], batch_size=batch_size, threads=threads)
        self._current = first
        self.schema, self.meta, self.format = first.schema, first.meta, first.format
        self._plain = first.schema.remove_metadata()
        try:
            rows = [getattr(first, "num_rows", None)] + [self._check(path) for path in parts[1:]]
        except BaseException:
            first.close()
            raise
        self.num_rows = sum(rows) if all(n is not None for n in rows) else None
        if len(parts) > 1:
            log.info("reading %d tables as one (%s ... %s)", len(parts), parts[0], parts[-1])
        self._iter = self._batches()

    def _check(self, path: str) -> int | None:
        """Open part ``path`` (its metadata only) and compare it with the first; its row count if known."""
        with TableReader(path, batch_size=self.batch_size) as r:
            meta, plain, rows = r.meta, r.schema.remove_metadata(), getattr(r, "num_rows", None)
        fix = ("a folder or glob read as one table holds the parts of one table: move the other files out, "
               "or name the parts to read")
        for key, what in self.SAME_META:
            mine, theirs = getattr(self.meta, key), getattr(meta, key)
            if mine != theirs:
                shown = [what.format("unset" if v is None else v) for v in (theirs, mine)]
                raise InputError(f"{path} and {self.parts[0]} differ in {key.replace('_', ' ')}: "
                                 f"{shown[0]} and {shown[1]}", fix)
        if plain != self._plain:
            diff = sorted(set(map(str, plain)) ^ set(map(str, self._plain)))
            raise InputError(f"{path}: its columns differ from {self.parts[0]}'s ({'; '.join(diff[:4])})", fix)
        return rows

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for i, path in enumerate(self.parts):
            reader = self._current if i == 0 else TableReader(path, batch_size=self.batch_size, threads=self.threads)
            self._current = reader
            try:
                for batch in reader:
                    yield batch.replace_schema_metadata(self.schema.metadata) if i else batch
            finally:
                reader.close()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._iter

    def read_all(self) -> pa.Table:
        return pa.Table.from_batches(list(self._iter), schema=self.schema)

    def close(self) -> None:
        self._current.close()

    def __enter__(self) -> "PartsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_table(src, batch_size: int = DEFAULT_BATCH_SIZE, threads: int = 1) -> TableReader:
    """A reader for one table (a file or ``-``), or for several read as one (a list, a folder of part
    files, a glob pattern)."""
    parts = table_parts(src)
    if parts is not None:
        return PartsReader(parts, batch_size=batch_size, threads=threads)
    return TableReader(src, batch_size=batch_size, threads=threads)


def read_table(src: str | os.PathLike) -> tuple[pa.Table, S.TableMeta]:
    """Read a whole (small) table: labels, embeddings, predictions."""
    with open_table(src) as r:
        return r.read_all(), r.meta


def _split(batch: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    if batch.num_rows <= size:
        yield batch
        return
    for start in range(0, batch.num_rows, size):
        yield batch.slice(start, size)


def _peek(fh, n: int) -> bytes:
    if hasattr(fh, "peek"):
        data = fh.peek(n)
        return bytes(data[:n])
    pos = fh.tell()
    data = fh.read(n)
    fh.seek(pos)
    return data


def _decompress(fh, fmt: str):
    if fmt == "gzip":
        import gzip

        return io.BufferedReader(gzip.GzipFile(fileobj=fh, mode="rb"), buffer_size=1 << 20)
    stream = pa.CompressedInputStream(pa.PythonFile(fh, mode="r"), "zstd")
    return io.BufferedReader(_ArrowRaw(stream), buffer_size=1 << 20)


class _ArrowRaw(io.RawIOBase):
    def __init__(self, stream):
        self._s = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._s.read(len(b))
        n = len(data)
        b[:n] = data
        return n


# --------------------------------------------------------------------------- NPZ


def npz_to_table(npz, name: str = "input") -> pa.Table:
    """NPZ (as written by :class:`TableWriter`) to a table.

    Arrays: ``signal`` (N, L, T) or ``embedding`` (N, D), 1-D per-row columns,
    ``leads`` (L,) shared by all rows, ``__ecgtool__`` the JSON metadata.
    """
    files = set(npz.files)
    meta_json = None
    if "__ecgtool__" in files:
        meta_json = str(npz["__ecgtool__"])
    n = None
    data: dict[str, pa.Array] = {}
    for key in npz.files:
        if key in ("__ecgtool__", "leads"):
            continue
        arr = npz[key]
        if key == S.SIGNAL:
            if arr.ndim != 3:
                raise InputError(f"{name}: 'signal' must be (records, leads, samples), got shape {arr.shape}")
            data[key] = S.signals_to_arrow(list(arr.astype(np.float32, copy=False)), fixed=True)
        elif arr.ndim == 2:
            flat = _npz_column(np.ascontiguousarray(arr).reshape(-1))
            data[key] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1])
        elif arr.ndim == 1:
            data[key] = _npz_column(arr)
        else:
            raise InputError(f"{name}: array '{key}' has {arr.ndim} dimensions; expected 1 or 2")
        if n is None:
            n = len(data[key])
        elif len(data[key]) != n:
            raise InputError(f"{name}: array '{key}' has {len(data[key])} rows, others have {n}")
    if "leads" in files and n is not None:
        leads = [str(x) for x in npz["leads"]]
        data[S.LEADS] = A.string_lists([leads] * n)
    if not data:
        raise InputError(f"{name}: the NPZ file holds no arrays")
    table = pa.table(data)
    if meta_json is not None:
        table = table.replace_schema_metadata({S.META_KEY: meta_json.encode()})
    return table


def _npz_column(arr: np.ndarray) -> pa.Array:
    """A 1-D NPZ array as an Arrow column: numbers and booleans from the buffer, text as strings."""
    if arr.dtype.kind in "US":
        return A.strings(arr.tolist())
    if arr.dtype.kind in "biuf":
        return A.from_numpy(arr)
    return pa.array(arr)


def table_to_npz_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name == S.SIGNAL:
            if S.is_fixed_signal(col.type):
                L, T = S.fixed_shape(col.type)
                out[name] = A.to_numpy(col.flatten().flatten()).reshape(len(col), L, T)
                continue
            try:  # a variable-shape column whose rows happen to share one shape
                rows = S.SignalRows(col)
                sigs = [rows[i] for i in range(len(rows))]
            except ValueError as exc:
                raise UsageError(f"NPZ holds one (records, leads, samples) array, and a record has {exc}",
                                 "run 'ecgtool preprocess' first, or write Parquet") from None
            shapes = sorted({s.shape for s in sigs})
            if len(shapes) > 1:
                raise UsageError(
                    "NPZ holds one (records, leads, samples) array, but the records differ in shape "
                    f"({', '.join(f'{a}×{b}' for a, b in shapes[:4])}{', …' if len(shapes) > 4 else ''})",
                    "run 'ecgtool preprocess' first, or write Parquet",
                )
            out[name] = np.stack(sigs) if sigs else np.zeros((0, 0, 0), dtype=np.float32)
        elif name == S.LEADS:
            rows = col.to_pylist()
            if rows and any(r != rows[0] for r in rows):
                raise UsageError("NPZ needs one lead set for all records", "run 'ecgtool preprocess' first")
            out[name] = np.array(rows[0] if rows else [], dtype=str)
        elif pa.types.is_fixed_size_list(col.type) and pa.types.is_primitive(col.type.value_type):
            out[name] = A.to_numpy(col.flatten()).reshape(len(col), col.type.list_size)
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.array(["" if v is None else v for v in col.to_pylist()], dtype=str)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            if col.null_count and not pa.types.is_floating(col.type):
                col = col.cast(pa.float64())
            out[name] = A.to_numpy(col)
        else:
            # lists, structs, dictionaries: keep as JSON text so nothing is lost
            out[name] = np.array([json.dumps(v) for v in col.to_pylist()], dtype=str)
    meta = (table.schema.metadata or {}).get(S.META_KEY)
    if meta is not None:
        out["__ecgtool__"] = np.array(meta.decode())
    return out


# --------------------------------------------------------------------------- writing


class TableWriter(CommitOnSuccess):
    """Write batches to a file (atomically), to stdout, or to a folder of part files.

    The schema (with its metadata) is fixed when the writer opens; every batch
    is conformed to it. With ``background=True`` encoding and writing run in a
    thread, at most two batches behind :meth:`write`, so that they overlap with
    the caller's work (Parquet encoding releases the GIL); errors surface at the
    next ``write`` or at ``close``.

    A ``dest`` that names a folder (ends in ``/``, is an existing folder, or has
    ``{part}`` in its name) gives a :class:`ecgtool.io.parts.PartsWriter`
    instead, with the same interface: part files encoded in ``threads`` threads
    (default: ``-@``), rolled over at about 64 MiB, or into at least 8 parts of
    ``expected_rows`` (when the caller knows how many rows it will write). Every
    command that writes a table opens it here, so each accepts a folder ``-o``.
    """

    def __new__(cls, dest, *args, **kwargs):
        if cls is TableWriter:
            from ecgtool.io.parts import PartsWriter, is_folder_output

            if is_folder_output(dest):
                return PartsWriter(dest, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        dest: str | os.PathLike,
        schema: pa.Schema,
        meta: S.TableMeta,
        fmt: str | None = None,
        row_group_size: int = PARQUET_ROW_GROUP,
        compression: str = "zstd",
        background: bool = False,
        errors=None,
        expected_rows: int | None = None,
        threads: int | None = None,
    ):
        # expected_rows and threads concern folder output (PartsWriter) only
        # errors (a RecordErrors): when every record failed and no row was written, close() leaves no file
        self._errors = errors
        self.dest = str(dest)
        self._pool = None
        self._queued: deque = deque()
        self.format = choose_format(dest, fmt)
        self.schema = meta.with_schema(schema)
        self.meta = meta
        self.rows = 0
        self._row_group = row_group_size
        self._closed = False
        self._out = None
        self._background = background
        if self.dest == "-":
            refuse_terminal(self.dest)
            self._fh = sys.stdout.buffer
        else:
            with no_interruption():  # the temporary file is recorded before a signal can land
                self._out = AtomicOutput(self.dest)
            self._fh = self._out.fh
        self._compression = compression
        self._w = None
        self._ready = False
        if self.dest == "-":
            return  # stdout: the format's header waits for the first batch (or the close), so that a command
            # failing before it has produced anything leaves nothing on the pipe
        try:
            self._writer()
        except BaseException:  # an error or an interruption here: nobody else holds the file to discard it
            self._out.discard()
            raise

    def _writer(self) -> None:
        if not self._ready:
            self._open_writer(self._compression)
            self._ready = True

    def _open_writer(self, compression) -> None:
        if self.format in ("parquet", "arrow"):
            # an Arrow file on disk is the IPC file format, except for .arrows; a pipe gets the stream format
            regular_file = self._out is not None and self._out._tmp is not None
            ipc_file = regular_file and Path(self.dest).suffix.lower() != ".arrows"
            self._w = Encoder(self._fh, self.schema, self.format, compression, self._row_group, ipc_file=ipc_file)
        else:
            self._w = None
            self._npz: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.write(b)
            return
        if batch.num_rows == 0:
            return
        batch = S.conform(batch, self.schema)
        self.rows += batch.num_rows
        if not self._background:
            self._write_now(batch)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecgtool-write")
        self._queued.append(self._pool.submit(self._write_now, batch))
        while len(self._queued) > 2:
            self._queued.popleft().result()

    def _drain(self, cancel: bool = False) -> None:
        try:
            while self._queued:
                fut = self._queued.popleft()
                if cancel:
                    fut.cancel()
                else:
                    fut.result()
        finally:
            if self._pool is not None and (cancel or not self._queued):
                self._pool.shutdown(wait=True)
                self._pool = None

    def _write_now(self, batch: pa.RecordBatch) -> None:
        self._writer()
        if self._w is not None:
            self._w.write(batch)
            if self.format == "arrow" and self.dest == "-":
                self._fh.flush()
        else:
            self._npz.append(batch)

    def close(self) -> None:
        """Finish the file and move it into place (or remove it if finishing fails)."""
        if self._closed:
            return
        if self.rows == 0 and self._errors is not None and self._errors.count:
            self.abort()
            raise nothing_written(self.dest, self._errors.count)
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def _finish(self) -> None:
        self._drain()
        self._writer()
        if self._w is not None:
            self._w.close()
        else:
            table = pa.Table.from_batches(self._npz, schema=self.schema)
            np.savez(self._fh, **table_to_npz_arrays(table))
        if self.dest == "-":
            self._fh.flush()
            return
        self._out.commit()

    def abort(self) -> None:
        """Drop everything written so far (no partial file is left)."""
        if self._closed:
            return
        self._closed = True
        self._drain(cancel=True)
        if self._w is not None:
            self._w.abort()
        if self.dest == "-":
            return
        self._out.discard()



def write_table(
    dest: str | os.PathLike, table: pa.Table, meta: S.TableMeta, fmt: str | None = None
) -> None:
    """Write a whole (small) table."""
    with TableWriter(dest, table.schema, meta, fmt=fmt) as w:
        w.write(table)
