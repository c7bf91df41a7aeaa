"""``ecgtool convert``: raw ECG files -> one record table.

The steps, each usable on its own:

* :func:`discover` turns the inputs (files, folders scanned recursively, glob
  patterns, PhysioNet ``RECORDS`` files, paths read from stdin) into an
  ordered list of :class:`Item` (path, unique record id). Segment and layout
  headers that a multi-segment master header refers to are not records of
  their own; annotation and signal files found in folders are skipped.
* :func:`read_batches` reads the items in worker processes, in chunks of
  ``batch_size``, and yields Arrow record batches in input order (the output
  is the same whatever the number of workers) together with per-record
  errors and warnings.
* Each file's format is sniffed from its content during discovery
  (:func:`ecgtool.formats.scan_format`): a folder scan takes the files that
  are records whatever their names, and the table gets the metadata columns
  of the formats met (``patient_id``, ``device``, ``annotations``, ...).
  Archive layouts (MIMIC-IV-ECG's ``record_list.csv``, CODE-15's HDF5 files
  and ``exams.csv``; :mod:`ecgtool.formats.archives`) give items with the
  archive's ids, one per ECG, and their CSV tables are joined like ``--join``
  tables.
* :class:`ecgtool.io.join.JoinTable` adds per-record columns from a CSV (``--join``), by the
  same rule as ``label --join`` (see that module).
* :func:`convert` ties them together and writes a table with
  :class:`ecgtool.io.TableWriter`.

Record ids are the record names (file names without extension). When two
inputs share a name, each of them gets its path relative to the inputs'
common folder instead (``records100/00000/00001_lr``), so ids stay unique.

"""

from __future__ import annotations

import glob
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ecgtool.errors import EcgtoolError, InputError, RecordError, RecordErrors, UsageError
from ecgtool.formats import ARRAY_EXTENSIONS, RECORD_EXTENSIONS, SIGNAL_EXTENSIONS
from ecgtool.io import arrays as A
from ecgtool.io import schema as S
from ecgtool.io.join import JoinTable

log = logging.getLogger("ecgtool")

# Values per signal column chunk before a batch is split (Arrow's 32-bit list offsets).
_MAX_VALUES = 1 << 28
_GLOB_CHARS = set("*?[")

METADATA_FIELDS = [
    pa.field("source", pa.string()),
    pa.field("units", pa.list_(pa.string())),
    pa.field("age", pa.float64()),
    pa.field("sex", pa.string()),
    pa.field("dx", pa.list_(pa.string())),
    pa.field("diagnosis", pa.string()),
    pa.field("base_datetime", pa.timestamp("us")),
]


_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
                "list<string>": pa.list_(pa.string())}


def format_fields(formats: Iterable[str] = ()) -> list[pa.Field]:
    """The metadata columns the readers of ``formats`` add to the base schema (patient_id, device, ...)."""
    from ecgtool.formats import FORMAT_META, META_TYPES

    names: list[str] = []
    for fmt in sorted(set(formats)):
        for name in FORMAT_META.get(fmt, []):
            if name not in names:
                names.append(name)
    order = list(META_TYPES)
    return [pa.field(n, _ARROW_TYPES[META_TYPES[n]]) for n in sorted(names, key=order.index)]


def base_schema(formats: Iterable[str] = ()) -> pa.Schema:
    """Columns every converted table has (metadata columns are null where a source lacks them), plus
    those the readers of ``formats`` fill."""
    return pa.schema(
        [
            pa.field(S.RECORD_ID, pa.string()),
            pa.field(S.FS, pa.float64()),
            pa.field(S.LEADS, pa.list_(pa.string())),
            pa.field(S.SIGNAL, S.signal_type()),
            *METADATA_FIELDS,
            *format_fields(formats),
        ]
    )


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Item:
    path: str
    record_id: str
    fmt: str | None = None  # the reader's format, when discovery sniffed it
    part: int | None = None  # the record's index inside a container file (a CODE-15 exam)


@dataclass
class Discovery:
    items: list[Item]
    ignored: int = 0  # files in scanned folders that are not records (signal, annotation, label files)
    segments: int = 0  # segment/layout headers folded into multi-segment records
    layouts: list = field(default_factory=list)  # archive layouts found (ecgtool.formats.archives.Layout)

    @property
    def formats(self) -> set[str]:
        return {it.fmt for it in self.items if it.fmt}


class _Found:
    """What the discovery walk collects: plain files (with their sniffed format) and archive layouts."""

    def __init__(self):
        self.paths: list[Path] = []
        self.fmts: dict[str, str | None] = {}
        self.layouts: list = []
        self.order: list = []  # Path or Layout, in input order
        self.ignored = 0

    def add(self, p: Path, fmt: str | None = None) -> None:
        self.paths.append(p)
        if fmt is not None:
            self.fmts[str(p)] = fmt
        self.order.append(p)

    def add_layout(self, lay) -> None:
        self.layouts.append(lay)
        self.order.append(lay)


def _scan(folder: Path, out: _Found) -> None:
    from ecgtool.formats import scan_format
    from ecgtool.formats.archives import file_layout, folder_layout

    for root, dirs, files in os.walk(folder):
        dirs.sort()
        lay = folder_layout(Path(root))
        if lay is not None:
            out.add_layout(lay)
            dirs[:] = []  # the archive's own list says what is in its tree
            continue
        for f in sorted(files):
            p = Path(root) / f
            fmt = scan_format(p)
            if fmt == "code15":
                _hdf5(p, out, file_layout)
            elif fmt is not None:
                out.add(p, fmt)
            elif p.suffix.lower() not in SIGNAL_EXTENSIONS:
                out.ignored += 1


def _records_file(path: Path, out: _Found) -> None:
    base = path.parent
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for line in lines:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        p = base / name
        if p.is_dir():
            _scan(p, out)
        elif p.suffix.lower() in RECORD_EXTENSIONS and p.exists():
            out.add(p)
        else:
            out.add(Path(str(p) + ".hea"))  # a missing header becomes a per-record error


def _file(p: Path, out: _Found) -> None:
    """A file named explicitly: a record whatever its content (the reader says why it is not one)."""
    from ecgtool.formats import sniff_format
    from ecgtool.formats.archives import file_layout

    try:
        fmt = sniff_format(p)
    except EcgtoolError:
        fmt = None
    if fmt == "code15":
        _hdf5(p, out, file_layout)
    else:
        out.add(p, fmt)


def _hdf5(p: Path, out: _Found, file_layout) -> None:
    """A CODE-15 part file: one entry per exam; a file that cannot be opened is one record that says why."""
    from ecgtool.formats.archives import readable_hdf5

    if readable_hdf5(p):
        out.add_layout(file_layout(p))
    else:
        out.add(p, "code15")


def _one(arg: str, out: _Found) -> None:
    from ecgtool.formats import scan_format

    p = Path(arg)
    if p.is_dir():
        _scan(p, out)
    elif p.is_file():
        if p.name == "RECORDS":
            _records_file(p, out)
        else:
            _file(p, out)
    elif Path(arg + ".hea").is_file():
        out.add(Path(arg + ".hea"), "wfdb")
    elif _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg}: the pattern matches no file")
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                _scan(mp, out)
            elif mp.name == "RECORDS" or mp.suffix.lower() in ARRAY_EXTENSIONS or scan_format(mp) is not None:
                _one(m, out)
            else:
                out.ignored += 1
    else:
        raise InputError(f"{arg}: no such file or folder")


def discover(inputs: Sequence[str], stdin: Iterable[str] | None = None) -> Discovery:
    """Inputs -> ordered, de-duplicated records with unique ids."""
    if not inputs:
        raise UsageError("no input given", "give files, folders, glob patterns, a RECORDS file, or '-' for stdin")
    found = _Found()
    for arg in inputs:
        if arg == "-":
            lines = stdin if stdin is not None else sys.stdin
            for line in lines:
                line = line.strip()
                if line and line != "-":
                    _one(line, found)
        else:
            _one(arg, found)
    paths = found.paths
    # multi-segment records: their segment and layout headers are not records of their own
    parts: set[str] = set()
    from ecgtool.formats.wfdb import multi_segment_parts

    for p in paths:
        if p.suffix.lower() == ".hea":
            parts.update(os.path.abspath(x) for x in multi_segment_parts(p))
    seen: set[str] = set()
    unique: list[Path] = []
    folded = 0
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            continue
        seen.add(key)
        if key in parts:
            folded += 1
            continue
        unique.append(p)
    plain = iter(_assign_ids(unique, found.fmts))
    keep = {str(p) for p in unique}
    items: list[Item] = []
    used: set[str] = set()
    for entry in found.order:
        if isinstance(entry, Path):
            if str(entry) in keep:
                keep.discard(str(entry))
                items.append(next(plain))
            continue
        for e in entry.entries:
            items.append(Item(e.path, e.record_id, e.fmt, e.part))
    # archive ids may meet file ids: keep every id unique
    out: list[Item] = []
    for it in items:
        rid, k = it.record_id, 2
        while rid in used:
            rid = f"{it.record_id}#{k}"
            k += 1
        used.add(rid)
        out.append(it if rid == it.record_id else Item(it.path, rid, it.fmt, it.part))
    return Discovery(items=out, ignored=found.ignored, segments=folded, layouts=found.layouts)


def _quiet_format(p: Path) -> str | None:
    """The sniffed format of a path (None when it cannot be read: the reader says why, per record)."""
    from ecgtool.formats import sniff_format

    try:
        return sniff_format(p) if p.is_file() else None
    except EcgtoolError:
        return None


def _assign_ids(paths: list[Path], fmts: dict[str, str | None] | None = None) -> list[Item]:
    fmts = dict(fmts or {})
    names = [p.stem if p.suffix else p.name for p in paths]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    clashing = [p for p, n in zip(paths, names) if counts[n] > 1]
    root = None
    if clashing:
        try:
            root = os.path.commonpath([os.path.abspath(p.parent) for p in clashing])
        except ValueError:
            root = None
    ids: list[str] = []
    used: set[str] = set()
    for p in paths:
        if str(p) not in fmts:
            fmts[str(p)] = _quiet_format(p)
    for p, n in zip(paths, names):
        rid = n
        if counts[n] > 1:
            full = os.path.abspath(p.with_suffix("") if p.suffix else p)
            rid = os.path.relpath(full, root).replace(os.sep, "/") if root else full
        base, k = rid, 2
        while rid in used:
            rid = f"{base}#{k}"
            k += 1
        used.add(rid)
        ids.append(rid)
    return [Item(str(p), rid, fmts.get(str(p))) for p, rid in zip(paths, ids)]


# --------------------------------------------------------------------------- reading


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
                "source": rec.source,
                "units": rec.units,
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


# --------------------------------------------------------------------------- joins (ecgtool.io.join)


def output_schema(joins: Sequence[JoinTable], formats: Iterable[str] = ()) -> pa.Schema:
    schema = base_schema(formats)
    for j in joins:
        for f in j.fields:
            if f.name not in schema.names:
                schema = schema.append(f)
    return schema


# --------------------------------------------------------------------------- the command


@dataclass
class ConvertResult:
    rows: int = 0
    records: int = 0
    skipped: int = 0
    ignored: int = 0
    joined: dict[str, int] = field(default_factory=dict)
    unknown_leads: dict[str, int] = field(default_factory=dict)  # name -> number of records


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


class RecordsReader:
    """Raw ECG files read as a record table on the fly (what ``convert`` would write, without
    joins), with the interface of :class:`ecgtool.io.TableReader`: ``schema``, ``meta``, iteration."""

    format = "raw"

    def __init__(self, inputs: Sequence[str], batch_size: int = 64, errors: RecordErrors | None = None):
        self._found = discover(inputs)
        if not self._found.items:
            raise InputError(f"{', '.join(map(str, inputs))}: neither a table nor ECG records",
                             "give a table, or ECG files in a format convert reads (docs/formats.md)")
        self.schema = output_schema([], self._found.formats)
        self.meta = S.TableMeta(kind="records")
        self.num_rows = len(self._found.items)
        self._batch_size = batch_size
        self._errors = errors if errors is not None else RecordErrors(None, log)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        chunks = read_batches(self._found.items, workers=1, batch_size=self._batch_size, options={})
        return chunk_batches(chunks, self._errors)

    def close(self) -> None:
        pass

    def __enter__(self) -> "RecordsReader":
        return self

    def __exit__(self, *exc) -> None:
        pass


def convert(
    inputs: Sequence[str],
    dest: str,
    fmt: str | None = None,
    workers: int = 1,
    batch_size: int = 64,
    errors: RecordErrors | None = None,
    join: Sequence[str] = (),
    join_key: Sequence[str] | None = None,
    fs: float | None = None,
    leads: Sequence[str] | None = None,
    waveform: str | None = None,
    all_channels: bool = False,
    argv: Sequence[str] | None = None,
    stdin: Iterable[str] | None = None,
    compression: str = "zstd",
    wrap=None,
    shard: tuple[int, int] | None = None,
) -> ConvertResult:
    """Convert raw ECG files into one record table at ``dest`` ('-' for stdout).

    ``fs``: the sampling rate of .csv/.npy arrays, and the rate EDF and MFER channels are resampled
    to (else they give one record per rate); ``waveform``: ``rhythm`` (default) or ``median`` for GE
    MUSE files; ``all_channels``: keep the non-ECG channels of EDF and MFER files.
    ``wrap(iterable, total)`` may wrap the per-chunk iterator (a progress bar). ``shard`` (K, N):
    only the records whose id falls in shard K (the split every command uses; the records of one
    file stay together, under the file's record id).
    """
    from ecgtool.io import TableWriter

    if waveform is not None and waveform.lower() not in ("rhythm", "median"):
        raise UsageError(f"--waveform {waveform!r}: choose rhythm or median")
    errors = errors if errors is not None else RecordErrors("fail")
    found = discover(inputs, stdin)
    if shard is not None and found.items:
        from ecgtool.io.shard import in_shard

        n_all = len(found.items)
        found.items = [it for it in found.items if in_shard(it.record_id, shard)]
        log.info("shard %d of %d: %d of %d records", shard[0], shard[1], len(found.items), n_all)
        if not found.items:
            log.warning("shard %d of %d holds none of the %d records: its output is empty", *shard, n_all)
    if not found.items and shard is None:
        raise InputError("no ECG records found in the inputs",
                         "convert reads WFDB, GE MUSE, Philips, HL7 aECG, DICOM, SCP-ECG, EDF, MFER and Apple Health "
                         "files (docs/formats.md); give .csv/.npy files by name")
    joins = []
    for lay in found.layouts:
        log.info("%s layout in %s: %d records", lay.name, lay.root, len(lay.entries))
        joins.extend(JoinTable.from_arrow(name, table, keys) for name, table, keys in lay.joins)
    sample = [it.record_id for it in found.items[:200]]
    joins += [JoinTable(p, on=join_key or None, sample_ids=sample) for p in join]
    schema = output_schema(joins, found.formats)
    meta = S.TableMeta(kind="records").add_step(argv)
    options = {"fs": fs, "leads": list(leads) if leads else None, "waveform": waveform,
               "all_channels": all_channels}
    result = ConvertResult(ignored=found.ignored)
    unknown: dict[str, list] = {}  # lead name -> [first record, count]
    chunks = read_batches(found.items, workers=workers, batch_size=batch_size, options=options,
                          formats=sorted(found.formats))
    if wrap is not None:
        chunks = wrap(chunks, (len(found.items) + batch_size - 1) // batch_size)
    # Row groups of one batch: each chunk is encoded in a background thread as soon as it arrives,
    # while the next ones are read (by the workers, or by this process).
    with TableWriter(dest, schema, meta, fmt=fmt, compression=compression,
                     row_group_size=min(batch_size, 256), background=True, errors=errors) as writer:
        for batch in chunk_batches(chunks, errors, unknown):
            for j in joins:
                batch = j.apply(batch)
            writer.write(batch)
            result.rows += batch.num_rows
        for j in joins:  # a join that matches nothing is an error under --on-error fail (nothing is written)
            if j.matched == 0 and result.rows and errors.policy == "fail":
                raise InputError(f"--join {j.name} matched none of the {result.rows} records: its key column "
                                 f"({', '.join(j.keys)}) shares no id with them", "give the column with --join-key")
    if unknown:
        shown = [f"{name!r} (record {rid}{f' and {n - 1} more' if n > 1 else ''})"
                 for name, (rid, n) in list(unknown.items())[:8]]
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        log.warning("unknown lead names kept as they are: %s%s", ", ".join(shown), more)
    result.unknown_leads = {name: n for name, (rid, n) in unknown.items()}
    result.records = len(found.items)
    result.skipped = errors.count
    for j in joins:
        result.joined[j.name] = j.matched
    return result
