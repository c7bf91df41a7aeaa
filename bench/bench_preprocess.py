"""Benchmark: ``ecgtool preprocess --preset ecg-fm`` against a per-record reference.

1. Speed. Input: the PTB-XL records500 record table (made by ``ecgtool
   convert`` when that command exists, else from ``wfdb.rdrecord`` through
   ``ecgtool.io.records_batch``). Baseline: a straightforward per-record loop
   in the style of fairseq-signals' preprocessing script — reorder leads,
   ``interp1d`` resample to 500 Hz (a no-op for this table), per-lead z-score
   over the record with constant leads -> 0, slice 5 s windows, one
   ``scipy.io.savemat`` per segment into a temporary folder. Both run as
   separate processes on the same input, interleaved, ``--runs`` times; the
   medians and their ratio are printed. ecgtool is timed writing Parquet (the
   on-disk default) and the Arrow IPC stream (the pipe format).
2. Memory (needs ``ecgtool convert``): peak resident memory of
   ``convert | preprocess`` over all of ``../shared/data/cinc2017`` and over
   every tenth record of it, measured for each process with ``/usr/bin/time``;
   the sum of the two peaks bounds the pipe's peak.

Results are appended to bench/RESULTS.md under ``## preprocess``.

    python bench/bench_preprocess.py [--runs 3] [--no-memory] [--no-write]
    python bench/bench_preprocess.py --phases   # CPU time per phase, nothing written
    python bench/bench_preprocess.py --io-bound [--runs 5] [--threads 2]

3. ``--io-bound``: steady-state time of ``ecgtool preprocess --preset ecg-fm`` (the run over the 500
   records minus the same command on a one-record table, its fixed start-up) against the I/O bound: a
   plain pyarrow read of the input plus a write of the output table with the same encoding (ecgtool's
   ``Encoder``: zstd, 64-row row groups, no dictionary or statistics for the signal), timed inside one
   process (no start-up), on one thread as pyarrow writes one file. Preprocess writing a folder of
   part files (``-o DIR/``, encoded in parallel) is timed the same way. Runs alternate; medians and minima are printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import CHILD_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ECGTOOL_SHARED", ROOT.parent / "shared")) / "data"
ORDER = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
PY = [sys.executable, "-m", "ecgtool", "-q"]


# --------------------------------------------------------------------------- the reference


def reference(src: str, out_dir: str) -> int:
    """Per-record preprocessing as the published script does it; returns the number of segments."""
    import numpy as np
    import pyarrow.parquet as pq
    from scipy.interpolate import interp1d
    from scipy.io import savemat

    from ecgtool.io.schema import row_signal

    fs_out, seg_len, n = 500, 2500, 0
    pf = pq.ParquetFile(src)
    for batch in pf.iter_batches(batch_size=64, columns=["record_id", "fs", "leads", "signal"]):
        ids = batch.column(0).to_pylist()
        rates = batch.column(1).to_pylist()
        leads = batch.column(2).to_pylist()
        col = batch.column(3)
        for i in range(batch.num_rows):
            feats = row_signal(col, i).astype(np.float64)
            names = [s.upper() for s in leads[i]]
            feats = feats[[names.index(o.upper()) for o in ORDER]]
            if rates[i] != fs_out:
                m = int(feats.shape[-1] * (fs_out / rates[i]))
                feats = interp1d(np.linspace(0, m - 1, feats.shape[-1]), feats, kind="linear")(np.arange(m))
            mean = feats.mean(axis=1, keepdims=True)
            feats = feats - mean
            std = feats.std(axis=1, keepdims=True)
            zero = std == 0
            feats = feats / np.where(zero, 1, std)
            feats[np.broadcast_to(zero, feats.shape)] = 0
            for s in range(feats.shape[-1] // seg_len):
                savemat(
                    os.path.join(out_dir, f"{ids[i]}_{s}.mat"),
                    {"feats": feats[:, s * seg_len : (s + 1) * seg_len], "curr_sample_rate": fs_out,
                     "idx": n, "mean": mean, "std": std, "segment_i": s},
                )
                n += 1
    return n


# --------------------------------------------------------------------------- helpers


def has_convert() -> bool:
    r = subprocess.run(PY + ["convert", "--help"], capture_output=True)
    return r.returncode == 0


def build_table(dest: Path) -> str:
    src = DATA / "ptbxl-500" / "records500"
    if has_convert():
        subprocess.run(PY + ["convert", str(src), "-o", str(dest)], check=True)
        return "ecgtool convert"
    import glob

    import numpy as np
    import wfdb

    from ecgtool.io import TableMeta, TableWriter, records_batch

    rows, writer = [], None
    for hea in sorted(glob.glob(str(src / "**" / "*.hea"), recursive=True)):
        r = wfdb.rdrecord(hea[:-4])
        rows.append({"record_id": Path(hea).stem, "fs": float(r.fs), "leads": list(r.sig_name),
                     "signal": np.ascontiguousarray(r.p_signal.T, dtype=np.float32)})
        if len(rows) == 64:
            b = records_batch(rows)
            writer = writer or TableWriter(dest, b.schema, TableMeta())
            writer.write(b)
            rows = []
    if rows:
        b = records_batch(rows)
        writer = writer or TableWriter(dest, b.schema, TableMeta())
        writer.write(b)
    writer.close()
    return "wfdb.rdrecord + ecgtool.io.records_batch"


def timed(cmd: list[str], **kw) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one child process."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=CHILD_ENV, **kw)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def speed(table: Path, runs: int, tmp: Path) -> dict:
    times: dict[str, list[float]] = {"reference": [], "parquet": [], "arrow": []}
    cpu: dict[str, list[float]] = {"reference": [], "parquet": [], "arrow": []}
    n_seg = None
    for _ in range(runs):
        out = tmp / "ref"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        w, c = timed([sys.executable, __file__, "--reference", str(table), str(out)])
        times["reference"].append(w)
        cpu["reference"].append(c)
        n_seg = len(os.listdir(out))
        shutil.rmtree(out)
        for fmt in ("parquet", "arrow"):
            dest = tmp / f"seg.{fmt}"
            w, c = timed(PY + ["preprocess", "--preset", "ecg-fm", str(table), "-o", str(dest)])
            times[fmt].append(w)
            cpu[fmt].append(c)
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(tmp / "seg.parquet").metadata.num_rows
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"times": times, "median": med, "cpu": cpu, "median_cpu": med_cpu,
            "segments_reference": n_seg, "segments_ecgtool": rows}


def peak_kb(path: Path) -> int:
    return int(path.read_text().strip().splitlines()[-1])


def memory(tmp: Path) -> dict:
    folder = DATA / "cinc2017"
    heas = sorted(str(p) for p in folder.glob("*.hea"))
    res = {}
    for label, paths in (("all", None), ("tenth", heas[::10])):
        a, b = tmp / f"conv_{label}.txt", tmp / f"pre_{label}.txt"
        conv = ["/usr/bin/time", "-f", "%M", "-o", str(a)] + PY + ["convert", str(folder) if paths is None else "-",
                                                                     "-o", "-"]
        pre = ["/usr/bin/time", "-f", "%M", "-o", str(b)] + PY + [
            "preprocess", "--preset", "ecg-fm", "--leads", "ECG", "--on-error", "skip", "-", "-o",
            str(tmp / f"mem_{label}.parquet")]
        t = time.perf_counter()
        p1 = subprocess.Popen(conv, stdin=subprocess.PIPE if paths else subprocess.DEVNULL, stdout=subprocess.PIPE)
        p2 = subprocess.Popen(pre, stdin=p1.stdout)
        p1.stdout.close()
        if paths:
            p1.stdin.write(("\n".join(paths) + "\n").encode())
            p1.stdin.close()
        rc2 = p2.wait()
        rc1 = p1.wait()
        import pyarrow.parquet as pq

        res[label] = {
            "records": len(heas) if paths is None else len(paths),
            "rc": (rc1, rc2),
            "seconds": time.perf_counter() - t,
            "convert_kb": peak_kb(a),
            "preprocess_kb": peak_kb(b),
            "segments": pq.ParquetFile(tmp / f"mem_{label}.parquet").metadata.num_rows,
        }
        res[label]["sum_kb"] = res[label]["convert_kb"] + res[label]["preprocess_kb"]
    return res


def phases(table: Path, tmp: Path) -> str:
    """CPU seconds of each phase, in this (warm) process."""
    t0 = time.process_time()
    from ecgtool.io import open_table
    from ecgtool.preprocess import Preprocessor, make_config, preprocess_table

    t1 = time.process_time()
    batches = []
    with open_table(table) as r:
        batches.extend(r)
    t2 = time.process_time()
    pre = Preprocessor(make_config("ecg-fm"))
    for b in batches:
        pre.process(b)
    t3 = time.process_time()
    with open_table(table) as r:
        preprocess_table(r, str(tmp / "phases.parquet"), make_config("ecg-fm"), argv=["bench"])
    t4 = time.process_time()
    out = tmp / "phases_ref"
    out.mkdir(exist_ok=True)
    reference(str(table), str(out))
    t5 = time.process_time()
    return (f"CPU s in one process: imports {t1 - t0:.2f}, read table {t2 - t1:.2f}, ecg-fm pipeline {t3 - t2:.2f}, "
            f"read + pipeline + Parquet write {t4 - t3:.2f}, reference loop (same read) {t5 - t4:.2f}")


def bound_child(src: str, out: str, dest: str) -> None:
    """The I/O bound, timed in-process: read ``src`` in full, write ``out``'s table to ``dest`` the way
    ecgtool's writer encodes it; prints the seconds of read + write."""
    import pyarrow.parquet as pq

    from ecgtool.io.stream import Encoder

    table = pq.read_table(out)  # loaded before the clock starts: what is timed is the write
    t = time.perf_counter()
    pf = pq.ParquetFile(src)
    for rg in range(pf.num_row_groups):
        pf.read_row_group(rg)
    with open(dest, "wb") as fh:  # ecgtool's own Parquet encoding (zstd, 64-row groups), one thread
        enc = Encoder(fh, table.schema, "parquet")
        for batch in table.to_batches():
            enc.write(batch)
        enc.close()
    print(time.perf_counter() - t)


def io_bound(table: Path, tmp: Path, runs: int, threads: int) -> str:
    import pyarrow.parquet as pq

    one = tmp / "one.parquet"
    pq.write_table(pq.read_table(table).slice(0, 1), one)
    out, out1 = tmp / "bound-out.parquet", tmp / "bound-out1.parquet"
    cmd = PY + ["-@", str(threads), "preprocess", "--preset", "ecg-fm"]
    full, single, bound, pfull, psingle = [], [], [], [], []
    for _ in range(runs):
        full.append(timed(cmd + [str(table), "-o", str(out)])[0])
        single.append(timed(cmd + [str(one), "-o", str(out1)])[0])
        for d, acc, src in ((tmp / "parts", pfull, table), (tmp / "parts1", psingle, one)):
            shutil.rmtree(d, ignore_errors=True)
            acc.append(timed(cmd + [str(src), "-o", f"{d}/"])[0])
        r = subprocess.run([sys.executable, __file__, "--bound-child", str(table), str(out), str(tmp / "b.parquet")],
                           check=True, env=CHILD_ENV, capture_output=True, text=True)
        bound.append(float(r.stdout.split()[-1]))
    steady = [f - o for f, o in zip(full, single)]
    psteady = [f - o for f, o in zip(pfull, psingle)]
    med = statistics.median
    lines = [f"`python bench/bench_preprocess.py --io-bound --runs {runs} --threads {threads}` "
             f"({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f}; output {pq.ParquetFile(out).metadata.num_rows} segments, "
             f"{out.stat().st_size / 1e6:.0f} MB)", "",
             "| run | median s | min s | all runs |", "|---|---|---|---|"]
    for name, v in (("preprocess, 500 records (whole process)", full), ("preprocess, 1 record (start-up)", single),
                    ("preprocess steady state (500 - 1)", steady),
                    ("preprocess -o DIR/ (part files), 500 records", pfull),
                    ("preprocess -o DIR/, 1 record", psingle),
                    ("preprocess -o DIR/ steady state", psteady),
                    ("I/O bound: pyarrow read of the input + write of the output (in-process)", bound)):
        lines.append(f"| {name} | {med(v):.2f} | {min(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    lines += ["", f"Steady state / I/O bound: median {med(steady) / med(bound):.2f}×, "
                  f"of minima {min(steady) / min(bound):.2f}× (target ≤ 1.25×); writing part files: median "
                  f"{med(psteady) / med(bound):.2f}×, of minima {min(psteady) / min(bound):.2f}×."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    ap.add_argument("--phases", action="store_true", help="only print the CPU time of each phase")
    ap.add_argument("--io-bound", action="store_true", help="steady state against the I/O bound (printed only)")
    ap.add_argument("--threads", type=int, default=2, help="-@ for --io-bound")
    ap.add_argument("--reference", nargs=2, metavar=("TABLE", "OUT_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--bound-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference(*args.reference)
        return
    if args.bound_child:
        bound_child(*args.bound_child)
        return
    if not DATA.exists():
        sys.exit(f"{DATA} is not here")
    lines = []
    with tempfile.TemporaryDirectory(prefix="ecgtool-bench-") as tmpd:
        tmp = Path(tmpd)
        table = tmp / "ptbxl500.parquet"
        made_by = build_table(table)
        if args.phases:
            print(phases(table, tmp))
            return
        if args.io_bound:
            print(io_bound(table, tmp, args.runs, args.threads))
            return
        s = speed(table, args.runs, tmp)
        m = s["median"]
        lines.append(f"### {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
                     f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        lines.append("")
        lines.append(f"Input: PTB-XL records500, 500 records x 12 leads x 10 s, Parquet table made by {made_by}. "
                     f"Median of {args.runs} interleaved runs, each a fresh process (interpreter start included).")
        lines.append("")
        mc = s["median_cpu"]
        lines.append("| run | median wall s (all runs) | median CPU s (all runs) | segments | speed-up, wall | speed-up, CPU |")
        lines.append("|---|---|---|---|---|---|")

        def row(name, key, n):
            return (f"| {name} | {m[key]:.2f} ({', '.join(f'{t:.2f}' for t in s['times'][key])}) | "
                    f"{mc[key]:.2f} ({', '.join(f'{t:.2f}' for t in s['cpu'][key])}) | {n} | "
                    f"{m['reference'] / m[key]:.1f}x | {mc['reference'] / mc[key]:.1f}x |")

        lines.append(row("reference: per record interp1d + per-lead z-score + 5 s slices + savemat per segment",
                         "reference", s["segments_reference"]))
        for fmt in ("parquet", "arrow"):
            lines.append(row(f"`ecgtool preprocess --preset ecg-fm -o seg.{fmt}`", fmt, s["segments_ecgtool"]))
        lines.append("")
        if not args.no_memory:
            if has_convert():
                mem = memory(tmp)
                lines.append("Peak resident memory, `ecgtool convert DIR -o - | ecgtool preprocess --preset ecg-fm "
                             "--leads ECG --on-error skip - -o mem.parquet` over ../shared/data/cinc2017 "
                             "(300 Hz single lead, 9-61 s), `/usr/bin/time -f %M` per process:")
                lines.append("")
                lines.append("| input | records | segments | convert MiB | preprocess MiB | sum MiB | seconds | exit codes |")
                lines.append("|---|---|---|---|---|---|---|---|")
                for label in ("tenth", "all"):
                    r = mem[label]
                    lines.append(f"| {label} | {r['records']} | {r['segments']} | {r['convert_kb'] / 1024:.0f} | "
                                 f"{r['preprocess_kb'] / 1024:.0f} | {r['sum_kb'] / 1024:.0f} | {r['seconds']:.1f} | "
                                 f"{r['rc'][0]}, {r['rc'][1]} |")
                ratio = mem["all"]["sum_kb"] / mem["tenth"]["sum_kb"]
                lines.append("")
                lines.append(f"All / tenth (sum of peaks): {ratio:.2f}x (limit 1.5x); all: "
                             f"{mem['all']['sum_kb'] / 1024:.0f} MiB (limit 1024 MiB).")
            else:
                lines.append("Memory: not measured (`ecgtool convert` is not in this build).")
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        results = ROOT / "bench" / "RESULTS.md"
        existing = results.read_text() if results.exists() else "# Benchmark results\n"
        if "## preprocess" not in existing:
            existing = existing.rstrip("\n") + "\n\n## preprocess\n\n" + \
                "Reproduce: `python bench/bench_preprocess.py` (see its docstring for what is compared).\n"
        head, _, tail = existing.partition("## preprocess")
        # new results go at the end of this section, before the next "## " heading
        body, sep, rest = tail.partition("\n## ")
        body = body.rstrip("\n") + "\n\n" + text + "\n"
        results.write_text(head + "## preprocess" + body + (("\n## " + rest) if sep else ""))


if __name__ == "__main__":
    main()
