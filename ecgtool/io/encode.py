"""Encoding one table file (what the one-file writer, ecgtool.io.stream.TableWriter, and the part files of
ecgtool.io.parts.PartsWriter share): output format and extension rules, the Parquet/Arrow encoder, and the
writers' commit-or-abort context."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ecgtool.errors import InputError, UsageError
from ecgtool.io import schema as S

OUTPUT_FORMATS = ("parquet", "arrow", "npz")
PARQUET_ROW_GROUP = 64
TABLE_SUFFIXES = (".parquet", ".pq", ".arrow", ".arrows", ".ipc", ".feather", ".npz")


def choose_format(dest: str | os.PathLike, fmt: str | None) -> str:
    """Output format: explicit ``-O``, else the extension, else Arrow on a pipe."""
    if fmt:
        fmt = fmt.lower()
        if fmt == "ipc":
            fmt = "arrow"
        if fmt not in OUTPUT_FORMATS:
            raise UsageError(f"unknown output format {fmt!r}", f"choose one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    d = str(dest)
    if d == "-":
        return "arrow"
    ext = Path(d).suffix.lower()
    if ext and ext not in TABLE_EXTENSIONS:
        raise UsageError(f"{d}: '{ext}' is not a table format ecgtool writes (.parquet, .arrow, .arrows, .npz)",
                         f"name it {Path(d).with_suffix('.parquet').name}, or keep the name with -O parquet|arrow|npz")
    return TABLE_EXTENSIONS.get(ext, "parquet")


# Output extensions. An Arrow file on disk is the IPC *file* format (what .arrow / .feather mean to
# polars, pandas and DuckDB); pipes and .arrows files get the IPC stream format.
TABLE_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".arrows": "arrow",
                    ".ipc": "arrow", ".feather": "arrow", ".npz": "npz"}


def _leaf_paths(field: pa.Field) -> list[str]:
    """Parquet column paths of an Arrow field: 'signal' -> ['signal.list.element.list.element']."""
    t = field.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [f"{field.name}.list.{p}" for p in _leaf_paths(pa.field("element", t.value_type))]
    if pa.types.is_struct(t):
        return [f"{field.name}.{p}" for i in range(t.num_fields) for p in _leaf_paths(t.field(i))]
    return [field.name]


def refuse_terminal(dest: str) -> None:
    """A table on stdout must go to a file or a pipe, not a terminal (checked before any work is done)."""
    if dest == "-" and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a binary table to the terminal",
            "give -o FILE, or pipe into another command (… | ecgtool info -)",
        )


def nothing_written(dest: str, n: int) -> InputError:
    """The error of a writer closed when every record failed (nothing is left at ``dest``)."""
    return InputError(f"nothing written to {dest}: {'the' if n == 1 else f'all {n}'} "
                      f"record{'s' if n != 1 else ''} failed", "the lines above name each record and its cause")


class Encoder:
    """The Parquet or Arrow IPC encoding of one file (what :class:`TableWriter` and the part files of
    :class:`ecgtool.io.parts.PartsWriter` share): batches in, row groups of ``row_group`` rows out.

    Parquet: zstd; dictionary encoding for every column except fixed-shape signals and embeddings
    (raw signals hold few distinct values, ADC steps times a gain, so it makes converted tables ~40%
    smaller at the same write time; normalised samples and embeddings are all distinct, so there it is
    only overhead); no min/max statistics for the signal's samples (they cost encoding time and no
    reader filters on them). pyarrow matches both options against leaf paths
    (signal.list.element.list.element), so nested columns are named by theirs (:func:`_leaf_paths`).
    """

    def __init__(self, fh, schema: pa.Schema, fmt: str, compression: str = "zstd",
                 row_group: int = PARQUET_ROW_GROUP, ipc_file: bool = True):
        self.schema, self.format, self._row_group = schema, fmt, row_group
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        if fmt == "parquet":
            plain = {S.EMBEDDING}
            if S.SIGNAL in schema.names and S.is_fixed_signal(schema.field(S.SIGNAL).type):
                plain.add(S.SIGNAL)
            dict_cols = [path for f in schema if f.name not in plain for path in _leaf_paths(f)]
            stats_cols = [path for f in schema if f.name != S.SIGNAL for path in _leaf_paths(f)]
            self._w = pq.ParquetWriter(fh, schema, compression=compression, use_dictionary=dict_cols,
                                       write_statistics=stats_cols)
        elif fmt == "arrow":
            self._w = ipc.new_file(fh, schema) if ipc_file else ipc.new_stream(fh, schema)
        else:
            raise ValueError(f"Encoder writes parquet or arrow, not {fmt!r}")

    def write(self, batch: pa.RecordBatch) -> None:
        if self.format == "arrow":
            self._w.write_batch(batch)
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self._row_group:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            self._w.write_table(table, row_group_size=self._row_group)
            self._pending = []
            self._pending_rows = 0

    def close(self) -> None:
        """Write what is pending and the file's footer."""
        self._flush()
        self._w.close()

    def abort(self) -> None:
        self._pending = []
        try:
            self._w.close()
        except Exception:
            pass


class CommitOnSuccess:
    """A writer as a context manager: ``close()`` (commit) when the block succeeds, ``abort()`` when it raises."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
