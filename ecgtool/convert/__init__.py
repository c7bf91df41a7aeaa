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

The modules: :mod:`ecgtool.convert.discovery` (inputs -> items),
:mod:`ecgtool.convert.reading` (items -> batches, in worker processes),
:mod:`ecgtool.convert.columns` (the table's schema) and
:mod:`ecgtool.convert.records` (:func:`convert`, :class:`RecordsReader`).
This package re-exports their public names.
"""

from ecgtool.convert.columns import base_schema, output_schema
from ecgtool.convert.discovery import Discovery, Item, discover
from ecgtool.convert.reading import ChunkResult, chunk_batches, read_batches, read_chunk
from ecgtool.convert.records import ConvertResult, RecordsReader, convert

__all__ = [
    "ChunkResult",
    "ConvertResult",
    "Discovery",
    "Item",
    "RecordsReader",
    "base_schema",
    "chunk_batches",
    "convert",
    "discover",
    "output_schema",
    "read_batches",
    "read_chunk",
]
