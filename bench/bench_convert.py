"""`ecgtool convert` speed against a plain `wfdb.rdrecord` loop.

Baseline: ``for each record: wfdb.rdrecord(path)`` in this process, writing
nothing. Candidates, run side by side with it in the same run (interleaved,
so that load from other processes hits all of them alike):

* ``convert`` (library call, Parquet output, ``--workers`` processes);
* ``ecgtool convert DIR -o X.parquet -j N`` as a command (includes the
  interpreter start-up and imports);
* the same library call writing an Arrow IPC file instead of Parquet, to
  show what the Parquet encoding costs.

Prints the median seconds of each, records per second and the ratio to the
baseline; ``--append`` adds the table to bench/RESULTS.md under "## convert".

    python bench/bench_convert.py --repeats 5 --workers 2
    python bench/bench_convert.py ../shared/data/ptbxl-500/records500 --repeats 5 --workers 2 --append
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import CHILD_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "ptbxl-500" / "records500"


def headers(folder: Path) -> list[str]:
    return sorted(str(p)[:-4] for p in folder.rglob("*.hea"))


def rdrecord_loop(records: list[str]) -> None:
    import wfdb

    for r in records:
        wfdb.rdrecord(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the results to bench/RESULTS.md")
    args = ap.parse_args()

    import wfdb  # noqa: F401  (imported before timing, as a user's loop would have it)

    from ecgtool.convert import convert

    folder = Path(args.folder)
    records = headers(folder)
    n = len(records)
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_"))
    out_pq, out_arrow, out_cli = tmp / "x.parquet", tmp / "x.arrow", tmp / "cli.parquet"
    cmd = [sys.executable, "-m", "ecgtool", "-q", "convert", str(folder), "-o", str(out_cli), "-j", str(args.workers)]
    cmd1 = cmd[:-1] + ["1"]
    subprocess.run(cmd1, check=True, env=CHILD_ENV)  # warm-up: byte-code cache, file cache

    runs = {
        "wfdb.rdrecord loop (baseline, writes nothing)": lambda: rdrecord_loop(records),
        f"convert -> Parquet, library, {args.workers} workers": lambda: convert([str(folder)], str(out_pq),
                                                                             workers=args.workers, argv=["bench"]),
        "convert -> Parquet, library, 1 process": lambda: convert([str(folder)], str(out_pq), workers=1,
                                                                  argv=["bench"]),
        f"ecgtool convert -> Parquet, command, -j {args.workers}": lambda: subprocess.run(cmd, check=True,
                                                                                       env=CHILD_ENV),
        "ecgtool convert -> Parquet, command, -j 1": lambda: subprocess.run(cmd1, check=True, env=CHILD_ENV),
        f"convert -> Arrow IPC, library, {args.workers} workers": lambda: convert([str(folder)], str(out_arrow),
                                                                               workers=args.workers, argv=["bench"]),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times[next(iter(runs))])
    lines = [
        f"{n} records from {folder} ({dt.datetime.now(dt.timezone.utc).isoformat(timespec='minutes')}, "
        f"{len(os.sched_getaffinity(0))} CPUs usable, load average before: {os.getloadavg()[0]:.1f}, Python {platform.python_version()}); "
        f"medians of {args.repeats} interleaved runs",
        "",
        "| run | median s | records/s | × baseline |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        m = statistics.median(ts)
        lines.append(f"| {name} | {m:.2f} | {n / m:.0f} | {base / m:.2f} |")
    size = out_pq.stat().st_size / 1e6
    lines += ["", f"Parquet output: {size:.1f} MB (zstd, TableWriter's default)."]
    text = "\n".join(lines)
    print(text)
    if args.append:
        res = ROOT / "bench" / "RESULTS.md"
        cmdline = "python bench/bench_convert.py " + " ".join(sys.argv[1:])
        with open(res, "a") as fh:
            existing = res.read_text() if res.exists() else ""
            if "## convert" not in existing:
                fh.write("\n## convert\n")
            fh.write(f"\n`{cmdline}`\n\n{text}\n")
    for p in (out_pq, out_arrow, out_cli):
        if p.exists():
            p.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
