"""Folder output: one table written as part files, encoded in parallel, all or nothing.

``-o out/`` (a name ending in ``/``, or an existing folder) writes ``out/part-00000.parquet``,
``out/part-00001.parquet``, ... (``.arrow`` for Arrow; NPZ is refused: numpy's format holds each
column of the whole table as one array). A name with ``{part}`` in it is a template for the part
files' names instead: ``-o out/x-{part}.parquet`` writes ``out/x-00000.parquet``, ... Every reader
takes the folder (or a glob of the parts) as one table, rows in part order
(:func:`ecgtool.io.stream.table_parts`).

* **Parallel.** Rows roll over to the next part at a fixed row count: about :data:`PART_BYTES`
  of the first batch's in-memory size per part, at least :data:`MIN_PART_BYTES`, and, when the
  writer is told how many rows to expect (``convert`` knows how many records it reads), small
  enough for :data:`MIN_PARTS` parts so that every thread has work (never below the floor). Part
  ``j`` is encoded and written by thread ``j % N`` (``N``: ``-@/--threads``); Parquet and Arrow
  encoding release the GIL, so N parts are encoded at once. At most about N parts' rows are in
  flight. With one thread everything runs on the calling thread.
* **All or nothing.** Parts are written to hidden temporary files in the folder and moved into
  place when the writer closes (:class:`ecgtool.io.files.AtomicFolder`); a failed or interrupted
  command leaves no part file, and removes the folder if it created it.
* **No overwriting.** A folder that already holds table files is refused, except the part files
  of other shards of the same run: ``--shard K/N`` names its parts ``part-shardKofN-00000.parquet``
  (:func:`ecgtool.io.shard.shard_path`), so that N shards write into one folder.

``ECGTOOL_PART_BYTES`` (internal, for tests) sets the target size of a part in bytes (and lowers
the floor to it).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import deque
from pathlib import Path

import pyarrow as pa

from ecgtool.errors import UsageError
from ecgtool.io import schema as S
from ecgtool.io.files import AtomicFolder, AtomicOutput
from ecgtool.io.encode import (
    PARQUET_ROW_GROUP,
    TABLE_SUFFIXES,
    CommitOnSuccess,
    Encoder,
    choose_format,
    nothing_written,
)

log = logging.getLogger("ecgtool")

PLACEHOLDER = "{part}"
PART_BYTES = 64 << 20
MIN_PART_BYTES = 8 << 20
MIN_PARTS = 8
PART_BYTES_ENV = "ECGTOOL_PART_BYTES"
EXTENSION = {"parquet": ".parquet", "arrow": ".arrow"}
# the names folder output gives its parts: part-00000, or part-shard2of4-00000 for --shard 2/4
_CANONICAL = re.compile(r"part-(?:shard(\d+)of(\d+)-)?\{part\}")
_SHARD_PART = re.compile(r"part-shard(\d+)of(\d+)-\d+\.[A-Za-z]+")
_SHARD_TAG = re.compile(r"\.shard\d+of\d+")


def is_folder_output(dest) -> bool:
    """True when ``dest`` names a folder of part files: it ends in ``/``, is an existing folder, or has
    ``{part}`` in its name."""
    d = str(dest)
    if d == "-":
        return False
    return d.endswith(("/", os.sep)) or PLACEHOLDER in os.path.basename(d) or os.path.isdir(d)


def part_bytes() -> tuple[int, int]:
    """(target, floor) size of a part in bytes: 64 MiB and 8 MiB, or ``ECGTOOL_PART_BYTES`` for both."""
    text = os.environ.get(PART_BYTES_ENV)
    if not text:
        return PART_BYTES, MIN_PART_BYTES
    try:
        n = int(text)
        if n < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"{PART_BYTES_ENV}={text!r}: expected a whole number of bytes (at least 1)",
                         f"unset {PART_BYTES_ENV} to get parts of about 64 MiB") from None
    return n, min(n, MIN_PART_BYTES)


def rows_per_part(batch: pa.RecordBatch, expected_rows: int | None = None, row_group: int = PARQUET_ROW_GROUP) -> int:
    """Rows of each part file, from the first batch's in-memory size (see the module's notes)."""
    target, floor = part_bytes()
    per_row = max(1.0, batch.nbytes / max(1, batch.num_rows))
    rows = target / per_row
    if expected_rows:
        rows = min(rows, math.ceil(expected_rows / MIN_PARTS))
    rows = max(1, int(max(rows, floor / per_row)))
    if rows > row_group:  # whole row groups
        rows = math.ceil(rows / row_group) * row_group
    return rows


class _Layout:
    """Where the part files go and what they are called; what already there is refused."""

    def __init__(self, dest: str, fmt: str | None):
        self.dest = dest
        if PLACEHOLDER in os.path.basename(dest):
            folder, name = os.path.split(dest)
            folder = folder or "."
        else:
            folder, name = dest, f"part-{PLACEHOLDER}"
        first = name.replace(PLACEHOLDER, "00000")
        suffix = Path(first).suffix.lower()
        if not suffix or _SHARD_TAG.fullmatch(suffix):
            self.format = choose_format("x", fmt)  # -O, else Parquet; the extension is added below
        else:  # from the extension (one that is no table format is refused, unless -O says what to write)
            self.format = choose_format(first, fmt)
        if self.format == "npz":
            raise UsageError(f"{dest}: NPZ cannot be written as part files (numpy's format holds each column of "
                             "the whole table as one array)",
                             "write Parquet or Arrow parts (-O parquet or -O arrow), or give a file name ending in "
                             ".npz")
        if not suffix or _SHARD_TAG.fullmatch(suffix):
            name += EXTENSION[self.format]
        self.folder, self.name = folder, name
        m = _CANONICAL.fullmatch(os.path.splitext(name)[0])
        self.canonical = m is not None  # the folder is ours: any other table file in it is refused
        self.shard = (int(m.group(1)), int(m.group(2))) if m is not None and m.group(1) else None
        head, tail = name.split(PLACEHOLDER, 1)
        self._mine = re.compile(re.escape(head) + r"\d+" + re.escape(tail))

    def part_name(self, index: int) -> str:
        return self.name.replace(PLACEHOLDER, f"{index:05d}")

    def check_free(self) -> None:
        """Refuse a folder holding table files this run would mix with (other shards' parts are fine)."""
        folder = Path(self.folder)
        if not folder.is_dir():
            return
        taken = []
        for q in sorted(folder.iterdir()):
            if q.name.startswith(".") or not q.is_file():
                continue
            if self.canonical:
                if q.suffix.lower() not in TABLE_SUFFIXES:
                    continue
                m = _SHARD_PART.fullmatch(q.name)
                other_shard = (m is not None and self.shard is not None and int(m.group(2)) == self.shard[1]
                               and int(m.group(1)) != self.shard[0])
                if not other_shard:
                    taken.append(q.name)
            elif self._mine.fullmatch(q.name):
                taken.append(q.name)
        if not taken:
            return
        shown = ", ".join(taken[:3]) + (f", … ({len(taken)} in all)" if len(taken) > 3 else "")
        if self.canonical:
            raise UsageError(
                f"{self.dest}: the folder already holds table files ({shown}); a folder output is written whole, "
                "and its parts would be read together with them",
                f"remove them (rm -r {self.folder}) or choose another folder"
                + ("; shards of one run (--shard K/N) may share a folder" if self.shard else ""))
        raise UsageError(f"{self.dest}: {self.folder} already holds part files of this name ({shown})",
                         "remove them or choose another name")


class _Part:
    """One part file: its temporary file and its encoder, used by one thread at a time."""

    def __init__(self, index: int, out: AtomicOutput, schema: pa.Schema, fmt: str, compression: str, row_group: int):
        self.index, self.out = index, out
        self.rows = 0
        self._args = (schema, fmt, compression, row_group)
        self._enc: Encoder | None = None

    def _encoder(self) -> Encoder:
        if self._enc is None:
            schema, fmt, compression, row_group = self._args
            self._enc = Encoder(self.out.fh, schema, fmt, compression, row_group, ipc_file=True)
        return self._enc

    def write(self, batch: pa.RecordBatch) -> None:
        self._encoder().write(batch)

    def finish(self) -> None:
        self._encoder().close()
        self.out.finish()

    def abort(self) -> None:
        if self._enc is not None:
            self._enc.abort()


class PartsWriter(CommitOnSuccess):
    """A table written to a folder of part files (see the module's notes); what
    ``TableWriter(dest, ...)`` gives for a folder ``dest``, with TableWriter's interface: ``write``,
    ``close``, ``abort``, a context manager; ``rows``, ``format``, ``schema``, ``meta``, and ``paths``
    (the part files, once closed).

    ``threads``: the encoding threads (default: ``-@/--threads``); ``expected_rows``: how many rows
    the caller expects to write, if it knows (more, smaller parts, so that every thread has work);
    ``background`` is TableWriter's and has no effect here."""

    def __init__(
        self,
        dest,
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
        from ecgtool.io.threads import default_threads

        self.dest = str(dest)
        self._layout = _Layout(self.dest, fmt)
        self.format = self._layout.format
        self.schema = meta.with_schema(schema)
        self.meta = meta
        self.rows = 0
        self.paths: list[str] = []
        self._errors = errors
        self._compression = compression
        self._row_group = row_group_size
        self._expected = expected_rows
        self._threads = max(1, int(threads if threads is not None else default_threads()))
        self._part_rows: int | None = None
        self._parts: list[_Part] = []
        self._current: _Part | None = None
        self._pools: list = []
        self._inflight: deque = deque()  # (future, rows), oldest first
        self._inflight_rows = 0
        self._closed = False
        self._layout.check_free()  # before the folder is made: a refusal leaves nothing
        self._folder = AtomicFolder(self._layout.folder)

    # -- writing -----------------------------------------------------------------
    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.write(b)
            return
        if batch.num_rows == 0:
            return
        batch = S.conform(batch, self.schema)
        if self._part_rows is None:
            self._part_rows = rows_per_part(batch, self._expected, self._row_group)
            log.debug("%s: part files of %d rows, encoded in %d thread%s", self.dest, self._part_rows,
                      self._threads, "s" if self._threads != 1 else "")
        start = 0
        while start < batch.num_rows:
            part = self._current if self._current is not None else self._new_part()
            n = min(batch.num_rows - start, self._part_rows - part.rows)
            piece = batch if n == batch.num_rows else batch.slice(start, n)
            part.rows += n
            self.rows += n
            start += n
            self._submit(part, part.write, piece, n)
            if part.rows >= self._part_rows:
                self._end_part()

    def _new_part(self) -> _Part:
        index = len(self._parts)
        out = self._folder.file(self._layout.part_name(index))
        part = _Part(index, out, self.schema, self.format, self._compression, self._row_group)
        self._parts.append(part)
        self._current = part
        return part

    def _end_part(self) -> None:
        part, self._current = self._current, None
        self._submit(part, part.finish, None, 0)

    def _submit(self, part: _Part, fn, arg, rows: int) -> None:
        """``fn(arg)`` on the part's thread (``index % threads``), or here with one thread."""
        call = (lambda: fn(arg)) if arg is not None else fn
        if self._threads == 1:
            call()
            return
        if not self._pools:
            from concurrent.futures import ThreadPoolExecutor

            self._pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ecgtool-part{i}")
                           for i in range(self._threads)]
        self._inflight.append((self._pools[part.index % self._threads].submit(call), rows))
        self._inflight_rows += rows
        # bounded memory: at most about one part per thread waits to be encoded; errors surface here
        while self._inflight and (self._inflight[0][0].done()
                                  or self._inflight_rows > self._threads * self._part_rows):
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        fut, rows = self._inflight.popleft()
        self._inflight_rows -= rows
        fut.result()

    # -- finishing ---------------------------------------------------------------
    def close(self) -> None:
        """Finish every part and move them all into place (or leave nothing if that fails)."""
        if self._closed:
            return
        if self.rows == 0 and self._errors is not None and self._errors.count:
            self.abort()
            raise nothing_written(self.dest, self._errors.count)
        try:
            if not self._parts:  # an empty table is one part file with the schema
                self._new_part()
            if self._current is not None:
                self._end_part()
            while self._inflight:
                self._wait_oldest()
            self._shutdown(cancel=False)
            self._folder.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.paths = [str(p.out.target) for p in self._parts]
        log.info("wrote %d rows to %s in %d part file%s", self.rows, self.dest, len(self._parts),
                 "s" if len(self._parts) != 1 else "")

    def _shutdown(self, cancel: bool) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=cancel)
        self._pools = []

    def abort(self) -> None:
        """Drop everything written so far: no part file is left (nor the folder, if this writer made it)."""
        if self._closed:
            return
        self._closed = True
        for fut, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._shutdown(cancel=True)  # a part being encoded is finished first (bounded: one row group)
        for part in self._parts:
            part.abort()
        self._folder.discard()
