"""The commands' entries: :func:`convert` (discover, read, join, write one record table, a
:class:`ConvertResult`) and :class:`RecordsReader` (raw ECG files read as a record table on the
fly, for commands given raw files instead of a table)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import pyarrow as pa

from ecgtool.convert.columns import output_schema
from ecgtool.convert.discovery import discover
from ecgtool.convert.reading import chunk_batches, read_batches
from ecgtool.errors import InputError, RecordErrors, UsageError
from ecgtool.io import schema as S
from ecgtool.io.join import JoinTable

log = logging.getLogger("ecgtool")


@dataclass
class ConvertResult:
    rows: int = 0
    records: int = 0
    skipped: int = 0
    ignored: int = 0
    joined: dict[str, int] = field(default_factory=dict)
    unknown_leads: dict[str, int] = field(default_factory=dict)  # name -> number of records


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
    # while the next ones are read (by the workers, or by this process); a folder ``dest`` gets part
    # files encoded in parallel, as many as make every thread busy (``expected_rows``).
    with TableWriter(dest, schema, meta, fmt=fmt, compression=compression, row_group_size=min(batch_size, 256),
                     background=True, errors=errors, expected_rows=len(found.items)) as writer:
        for batch in chunk_batches(chunks, errors, unknown):
            for j in joins:
                batch = j.apply(batch)
            writer.write(batch)
            result.rows += batch.num_rows
        for j in joins:  # a join that matches nothing is an error under --on-error fail (nothing is written)
            if j.matched == 0 and result.rows and errors.policy == "fail":
                raise InputError(f"--join {j.name} matched none of the {result.rows} records: its key column "
                                 f"({', '.join(j.keys)}) shares no id with them", "give the column with --join-on")
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
