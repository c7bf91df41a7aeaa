"""Benchmark: `ecgtool predict` with the shipped default model against the previous default, side by side.

Both models predict the same CinC 2017 records, each from a table preprocessed beforehand with its own
model's preset (the previous model's file names its preset by its old name, so predict could not apply it). Steady state: the time of a run over
--n records minus the same command on one record (its fixed start-up), as records/s; the runs alternate
(new, previous, new, ...) and the minimum of --runs runs of each is kept. Then the one-record terminal
case: `ecgtool predict RECORD.hea` (convert + preprocess + predict + the summary), wall time of whole
processes, median of --runs, and `python -X importtime` for where the start-up goes.

The previous default is a file: --previous PATH (e.g. `git show ffd3b93:ecgtool/data/models/default.safetensors
> out/previous_default.safetensors`). Its preset is given with --previous-preset (ecgfm-mini for the
ECG-FM default of ecgtool 0.x, whose file names the preset by its old name).

    python bench/bench_default_model.py --previous out/previous_default.safetensors
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _timing import CHILD_ENV  # noqa: E402

ET = [sys.executable, "-m", "ecgtool"]


def run(args, cwd) -> float:
    t = time.perf_counter()
    r = subprocess.run(ET + [str(a) for a in args], cwd=cwd, env=CHILD_ENV, capture_output=True)
    dt_ = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{r.stderr.decode(errors='replace')[-2000:]}")
    return dt_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--previous", type=Path, required=True)
    ap.add_argument("--previous-preset", default="ecgfm-mini")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    a = ap.parse_args()
    a.previous = a.previous.resolve()

    heas = sorted((a.data / "cinc2017").glob("A*.hea"))[: a.n]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        run(["convert", *heas, "-o", d / "all.parquet"], d)
        run(["convert", heas[0], "-o", d / "one.parquet"], d)
        # each model's own preset, applied beforehand (the previous model's file names its preset by the
        # old name), so that both runs time predict on the table it takes
        for name in ("all", "one"):
            run(["preprocess", "--preset", a.previous_preset, "--rename", "ECG=I", d / f"{name}.parquet",
                 "-o", d / f"{name}.prev.parquet"], d)
            run(["preprocess", "--preset", "ecgtool-default", "--rename", "ECG=I", d / f"{name}.parquet",
                 "-o", d / f"{name}.new.parquet"], d)
        cmds = {
            "new default (net1d, 250 Hz, 10 s)": lambda n: ["predict", d / f"{n}.new.parquet",
                                                          "-o", d / f"p.{n}.new.parquet"],
            "previous default (ecgfm-mini, 100 Hz, 5 s)": lambda n: ["predict", "-m", a.previous,
                                                                    d / f"{n}.prev.parquet", "-o",
                                                                    d / f"p.{n}.prev.parquet"],
        }
        times: dict[str, dict[str, list[float]]] = {k: {"all": [], "one": []} for k in cmds}
        for _ in range(a.runs):
            for k, c in cmds.items():
                times[k]["all"].append(run(c("all"), d))
                times[k]["one"].append(run(c("one"), d))
        rows = []
        for k in cmds:
            t_all, t_one = min(times[k]["all"]), min(times[k]["one"])
            rows.append((k, t_all, t_one, (len(heas) - 1) / max(t_all - t_one, 1e-9)))
        # one record on a terminal: convert + preprocess + predict in one command
        one_rec = heas[0]
        walls = [run(["predict", one_rec, "-o", d / "one.pred.parquet"], d) for _ in range(a.runs)]
        imp = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch"], env=CHILD_ENV,
                             capture_output=True, text=True).stderr
        torch_us = max(int(m.group(1)) for m in re.finditer(r"\|\s*(\d+) \| torch$", imp, flags=re.M))
        imp2 = subprocess.run([sys.executable, "-X", "importtime", "-m", "ecgtool", "--help"], env=CHILD_ENV,
                              capture_output=True, text=True).stderr
        # cumulative times of the top-level imports (a line whose module name is not indented)
        top = [int(m.group(1)) for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \| (\S+)$", imp2, flags=re.M)]
        cli_us = sum(top)

    new, prev = rows[0], rows[1]
    lines = [
        "",
        f"## Default model: predict throughput, new vs previous ({dt.date.today()}, `bench/bench_default_model.py`)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads default; CinC 2017 "
        f"A-records, {len(heas)} records vs 1 record, minimum of {a.runs} alternating runs each.",
        "",
        "| model | run over N (s) | one record (s) | steady state records/s |",
        "|---|---|---|---|",
        *[f"| {k} | {ta:.2f} | {t1:.2f} | {r:.1f} |" for k, ta, t1, r in rows],
        "",
        f"Ratio new / previous: **{new[3] / prev[3]:.2f}×** records/s (target ≥ 1).",
        "",
        f"`ecgtool predict {one_rec.name} -o one.parquet` on one record (convert + preprocess + predict), whole "
        f"process: median {statistics.median(walls):.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)}); "
        f"`import torch` alone {torch_us / 1e6:.2f} s, `ecgtool --help` imports {cli_us / 1e6:.2f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with open(a.results, "a", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
