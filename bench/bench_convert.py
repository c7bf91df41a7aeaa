"""`ecgtool convert` steady-state speed against a plain `wfdb.rdrecord` loop.

Steady state: the time of a run over the whole input minus the same run over one record of it (its fixed
start-up: the interpreter, imports, opening the output), so that what is compared is what grows with the
archive. Both numbers are printed.

* Baseline: ``for each record: wfdb.rdrecord(path)`` in this process, writing nothing (the loop over all
  records minus the loop over one).
* ``ecgtool -@ T convert INPUT -o out.parquet`` (one Parquet file) and ``-o out/`` (a folder of part
  files, encoded in parallel), for T = 1 and 2; and ``-o out.arrow`` (Arrow IPC: what Parquet encoding
  costs).

All runs are interleaved, ``--repeats`` times; medians (and the minimum over the repeats) are printed,
with the parallel efficiency from 1 to 2 threads (steady rate at 2 / twice the steady rate at 1).

    python bench/bench_convert.py [FOLDER] [--repeats 5] [--append]
    python bench/bench_convert.py ../shared/data/cinc2017 --repeats 5
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
DEFAULT = ROOT.parent / "shared" / "data" / "ptbxl-500" / "records500"


def headers(folder: Path) -> list[str]:
    return sorted(str(p)[:-4] for p in folder.rglob("*.hea"))


def rdrecord_loop(records: list[str]) -> None:
    import wfdb

    for r in records:
        wfdb.rdrecord(r)


def command(args: list[str]):
    def run():
        subprocess.run([sys.executable, "-m", "ecgtool", "-q", *args], check=True, env=CHILD_ENV,
                       stderr=subprocess.DEVNULL)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--append", action="store_true", help="append the results to bench/RESULTS.md")
    args = ap.parse_args()

    import wfdb  # noqa: F401  (imported before timing, as a user's loop would have it)

    folder = Path(args.folder)
    records = headers(folder)
    n = len(records)
    one = records[0] + ".hea"
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_"))

    def out(name: str) -> str:
        p = tmp / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        return str(p) + ("/" if name.endswith("dir") else "")

    candidates: dict[str, tuple] = {"wfdb.rdrecord loop (baseline, writes nothing)":
                                    (lambda: rdrecord_loop(records), lambda: rdrecord_loop(records[:1]))}
    for t in (1, 2):
        for kind, name in (("one Parquet file", "x.parquet"), ("folder of Parquet parts", "xdir"),
                           ("Arrow IPC file", "x.arrow")):
            if kind.startswith("Arrow") and t == 1:
                continue
            candidates[f"`ecgtool -@ {t} convert` -> {kind}"] = (
                lambda t=t, name=name: command(["-@", str(t), "convert", str(folder), "-o", out(name)])(),
                lambda t=t, name=name: command(["-@", str(t), "convert", one, "-o", out(name)])())
    for full, single in candidates.values():  # warm-up: byte-code cache, file cache
        single()
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in candidates}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, (full, single) in candidates.items():
            for fn, acc in ((single, times[name][1]), (full, times[name][0])):  # the full run last: its output is shown
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
    med = statistics.median
    steady = {k: med(f) - med(s) for k, (f, s) in times.items()}
    base = steady[next(iter(candidates))]
    lines = [
        f"{n} records from {folder.relative_to(ROOT.parent) if folder.is_relative_to(ROOT.parent) else folder} "
        f"({dt.datetime.now(dt.timezone.utc).isoformat(timespec='minutes')}, {len(os.sched_getaffinity(0))} CPUs "
        f"usable, load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f}, Python {platform.python_version()}); "
        f"medians of {args.repeats} interleaved runs; steady = all records - one record",
        "",
        "| run | all records s (min) | one record s (min) | steady s | steady records/s | × baseline |",
        "|---|---|---|---|---|---|",
    ]
    for name, (f, s) in times.items():
        st = steady[name]
        lines.append(f"| {name} | {med(f):.2f} ({min(f):.2f}) | {med(s):.2f} ({min(s):.2f}) | {st:.2f} | "
                     f"{(n - 1) / st:.0f} | {base / st:.2f} |")
    eff = []
    for kind in ("one Parquet file", "folder of Parquet parts"):
        s1, s2 = steady[f"`ecgtool -@ 1 convert` -> {kind}"], steady[f"`ecgtool -@ 2 convert` -> {kind}"]
        eff.append(f"{kind}: {s1 / (2 * s2):.0%}")
    lines += ["", "Parallel efficiency from 1 to 2 threads (steady): " + "; ".join(eff) + "."]
    parts = sorted(p.name for p in (tmp / "xdir").iterdir()) if (tmp / "xdir").is_dir() else []
    size = (tmp / "x.parquet").stat().st_size / 1e6
    lines += [f"Output: one file {size:.1f} MB; folder: {len(parts)} part files."]
    text = "\n".join(lines)
    print(text)
    if args.append:
        res = ROOT / "bench" / "RESULTS.md"
        cmdline = "python bench/bench_convert.py " + " ".join(sys.argv[1:])
        with open(res, "a") as fh:
            fh.write(f"\n`{cmdline}`\n\n{text}\n")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
