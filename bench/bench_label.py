"""ecgtool label throughput: the library path vs a plain per-row loop.

Baseline: for each row, RecordLabeler.findings -> status -> values (what a
straightforward implementation does, no memo, no column selection), run side
by side with ``run_label`` (column-selected Parquet read, memo of identical
source values, label table written). Inputs are real header texts / code lists
repeated to N rows (reports repeat in real archives too). Medians of --repeats.

    python bench/bench_label.py ../shared/data --rows 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def build(data: Path, rows: int, tmp: Path) -> dict[str, tuple[str, str]]:
    import wfdb

    from ecgtool.io import TableMeta, write_table
    from ecgtool.labels import ludb

    texts = list(ludb.header_texts(data / "ludb").values())
    codes = []
    for hea in sorted((data / "cinc2021-sample").glob("*.hea")):
        rec = wfdb.rdheader(str(hea.with_suffix("")))
        dx = next(c for c in rec.comments if c.strip().startswith("Dx")).split(":", 1)[1].strip().split(",")
        codes.append(dx)
    t = [{"record_id": str(i), "diagnosis": texts[i % len(texts)]} for i in range(rows)]
    c = [{"record_id": str(i), "dx": codes[i % len(codes)]} for i in range(rows)]
    write_table(tmp / "text.parquet", pa.Table.from_pylist(t), TableMeta())
    write_table(tmp / "codes.parquet", pa.Table.from_pylist(c), TableMeta())
    return {"text (LUDB headers)": (str(tmp / "text.parquet"), "diagnosis"),
            "SNOMED codes (CinC 2021)": (str(tmp / "codes.parquet"), "dx")}


def baseline(path: str, col: str) -> None:
    from ecgtool.labels import RecordLabeler, SourceColumns, load_vocabulary

    cols = SourceColumns(text=[col]) if col == "diagnosis" else SourceColumns(codes=col)
    lab = RecordLabeler(load_vocabulary("ecgfm-17"))
    out = []
    for r in pq.read_table(path).to_pylist():
        f = lab.findings(r, cols)
        out.append(lab.values(f, lab.status(f)))


def library(path: str, col: str, dest: str) -> None:
    from ecgtool.labels import SourceColumns, run_label

    cols = SourceColumns(text=[col]) if col == "diagnosis" else SourceColumns(codes=col)
    run_label(path, dest, vocab="ecgfm-17", columns=cols, argv=["ecgtool", "label"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        inputs = build(a.data, a.rows, tmp)
        # warm the vocabularies and regex compilation once, outside the timings
        library(*next(iter(inputs.values())), str(tmp / "warm.parquet"))
        print("| input | rows | per-row loop (baseline) | run_label | ratio |")
        print("|---|---:|---:|---:|---:|")
        for name, (path, col) in inputs.items():
            tb, tl = [], []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                baseline(path, col)
                tb.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                library(path, col, str(tmp / "out.parquet"))
                tl.append(time.perf_counter() - t0)
            mb, ml = statistics.median(tb), statistics.median(tl)
            print(f"| {name} | {a.rows} | {mb:.2f} s ({a.rows / mb:,.0f} rec/s) | "
                  f"{ml:.2f} s ({a.rows / ml:,.0f} rec/s) | {mb / ml:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
