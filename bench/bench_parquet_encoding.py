"""What writing a record table to Parquet costs, per codec (the floor under convert and preprocess).

Reads a record table into memory once, then writes it to an in-memory Parquet
file with several codec settings, one row group per ``--rows`` rows, as
TableWriter does. It prints the best of ``--repeats`` runs for each, with the
file size. It also times the Arrow IPC stream as a reference point.

    python bench/bench_parquet_encoding.py TABLE.parquet [--rows 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import time

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("--rows", type=int, default=64, help="rows per row group (convert: 64)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    table = pq.read_table(args.table)
    batches = table.to_batches(max_chunksize=args.rows)
    from ecgtool.io.stream import _leaf_paths

    leaves = [p for f in table.schema for p in _leaf_paths(f)]
    sig = [p for p in leaves if p.startswith("signal.")]
    meta = [p for p in leaves if p not in sig]
    settings = {
        "ecgtool's Encoder: zstd, dictionary everywhere, no statistics on the signal":
            dict(compression="zstd", use_dictionary=leaves, write_statistics=meta),
        "zstd, dictionary everywhere, statistics on the signal too": dict(compression="zstd", use_dictionary=leaves),
        "zstd, no dictionary on the signal (plain)": dict(compression="zstd", use_dictionary=meta,
                                                           write_statistics=meta),
        "zstd, byte-stream-split signal": dict(compression="zstd", use_dictionary=meta, write_statistics=meta,
                                               use_byte_stream_split=sig),
        "zstd level -5, dictionary everywhere": dict(compression="zstd", compression_level=-5,
                                                     use_dictionary=leaves, write_statistics=meta),
        "lz4, dictionary everywhere": dict(compression="lz4", use_dictionary=leaves, write_statistics=meta),
        "uncompressed, plain signal": dict(compression="none", use_dictionary=meta, write_statistics=meta),
    }
    print(f"{args.table}: {table.num_rows} rows, {table.nbytes / 1e6:.1f} MB in memory, "
          f"row groups of {args.rows}; best of {args.repeats}")
    print("| writing | s | MB |\n|---|---|---|")
    for name, kw in settings.items():
        best, size = float("inf"), 0
        for _ in range(args.repeats):
            buf = io.BytesIO()
            t = time.perf_counter()
            with pq.ParquetWriter(buf, table.schema, **kw) as w:
                for b in batches:
                    w.write_batch(b)
            best = min(best, time.perf_counter() - t)
            size = buf.tell()
        print(f"| Parquet, {name} | {best:.2f} | {size / 1e6:.1f} |")
    best = float("inf")
    for _ in range(args.repeats):
        sink = pa.BufferOutputStream()
        t = time.perf_counter()
        with pa.ipc.new_stream(sink, table.schema) as w:
            for b in batches:
                w.write_batch(b)
        best = min(best, time.perf_counter() - t)
    print(f"| Arrow IPC stream | {best:.2f} | {sink.tell() / 1e6:.1f} |")


if __name__ == "__main__":
    main()
