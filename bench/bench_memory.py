"""Peak memory against the number of records, for every data command.

Each command runs as its own process under ``/usr/bin/time -f %M`` (peak resident set size) on a small
input of N records and on one of 10 N records, with one thread, with two (``-@ 2``) and as a shard
(``--shard 1/2``). The issue's bound: 10x the records costs at most 1.2x the peak. A third size (``--sizes``)
shows where the peak stops growing: a streaming command's buffers fill within its first batches, so a
ratio over a very small input measures how full those buffers were, not growth.

Inputs: CinC 2017 records from ../shared/data/cinc2017 (single lead, 9-61 s at 300 Hz; the first N
by name), converted, preprocessed with the default model's preset and labelled once per size; each
command then reads the table the step before it wrote. ``embed`` and ``predict`` use the bundled default
model; ``saliency`` runs on the first hundredth of each size (it costs a backward pass per record).

    python bench/bench_memory.py [--sizes 500,5000] [--data ../shared/data/cinc2017]

Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import CHILD_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (global options, command options)
VARIANTS = {"-@ 1": (["-@", "1"], []), "-@ 2": (["-@", "2"], []), "--shard 1/2 -@ 2": (["-@", "2"], ["--shard", "1/2"])}


def peak(cmd: list[str], stdin: str | None = None) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-q", "-f", "%M", "-o", tf.name, *cmd]
        t = time.perf_counter()
        with open(stdin) if stdin else open(os.devnull) as fin:
            proc = subprocess.run(full, stdin=fin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=CHILD_ENV)
        wall = time.perf_counter() - t
        if proc.returncode not in (0, 3):
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        kib = int(tf.read().split()[-1])
    return kib / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cinc2017"))
    ap.add_argument("--sizes", default="500,5000", help="record counts, the first two 10x apart")
    ap.add_argument("--commands", default="convert,preprocess,label,embed,predict,saliency")
    args = ap.parse_args()
    data = Path(args.data)
    sizes = [int(s) for s in args.sizes.split(",")]
    commands = args.commands.split(",")
    records = sorted(p.with_suffix("") for p in data.glob("*.hea"))
    if len(records) < max(sizes):
        raise SystemExit(f"{data} has {len(records)} records, fewer than {max(sizes)}")
    exe = [sys.executable, "-m", "ecgtool"]
    rows: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for n in sizes:
            d = tmp / str(n)
            d.mkdir()
            listing = d / "paths.txt"
            listing.write_text("".join(f"{r}.hea\n" for r in records[:n]))
            raw, seg, lab = d / "raw.parquet", d / "seg.parquet", d / "labels.parquet"
            few = d / "few.parquet"
            subprocess.run([*exe, "convert", "-", "--join", str(data / "REFERENCE.csv"), "-o", str(raw)],
                           stdin=open(listing), check=True, env=CHILD_ENV, stderr=subprocess.DEVNULL)
            subprocess.run([*exe, "preprocess", str(raw), "--preset", "ecgtool-default", "--rename", "ECG=I",
                            "-o", str(seg)], check=True, env=CHILD_ENV, stderr=subprocess.DEVNULL)
            few_listing = d / "few.txt"
            few_listing.write_text("".join(f"{r}.hea\n" for r in records[:max(1, n // 100)]))
            subprocess.run([*exe, "convert", "-", "-o", str(d / "few_raw.parquet")], stdin=open(few_listing),
                           check=True, env=CHILD_ENV, stderr=subprocess.DEVNULL)
            subprocess.run([*exe, "preprocess", str(d / "few_raw.parquet"), "--preset", "ecgtool-default",
                            "--rename", "ECG=I", "-o", str(few)], check=True, env=CHILD_ENV, stderr=subprocess.DEVNULL)
            for i, (name, (glob, extra)) in enumerate(VARIANTS.items()):
                out = d / f"out{i}"
                cmds = {
                    "convert": ([*exe, *glob, "convert", *extra, "-", "-o", f"{out}.c.parquet"], str(listing)),
                    "preprocess": ([*exe, *glob, "preprocess", *extra, str(raw), "--preset", "ecgtool-default",
                                    "--rename", "ECG=I", "-o", f"{out}.p.parquet"], None),
                    "label": ([*exe, *glob, "label", *extra, str(raw), "--class-column", "label",
                               "-o", f"{out}.l.parquet"], None),
                    "embed": ([*exe, *glob, "embed", *extra, str(seg), "--precision", "fp32", "-o", f"{out}.e.parquet"],
                              None),
                    "predict": ([*exe, *glob, "predict", *extra, str(seg), "--precision", "fp32",
                                 "-o", f"{out}.q.parquet"], None),
                    "saliency": ([*exe, *glob, "saliency", *extra, str(few), "-o", f"{out}.s.parquet"], None),
                }
                for cmd in commands:
                    argv, stdin = cmds[cmd]
                    rows.setdefault((cmd, name), {})[n] = peak(argv, stdin)
                    mib, wall = rows[(cmd, name)][n]
                    print(f"{cmd:10s} {name:18s} {n:6d} records: {mib:7.1f} MiB {wall:6.1f} s", file=sys.stderr)
    a, b = sizes[0], sizes[1]
    head = " | ".join(f"{n} records MiB (s)" for n in sizes)
    print(f"| command | threads / shard | {head} | {b} / {a} |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    for (cmd, name), by in rows.items():
        cells = " | ".join(f"{by[n][0]:.0f} ({by[n][1]:.1f})" for n in sizes)
        ratio = by[b][0] / by[a][0]
        print(f"| {cmd} | {name} | {cells} | {'**' if ratio > 1.2 else ''}{ratio:.2f}×{'**' if ratio > 1.2 else ''} |")


if __name__ == "__main__":
    main()
