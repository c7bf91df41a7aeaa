"""One timm-style table for every registered model: parameters, GFLOPs per window, window, CPU (or CUDA)
windows/s at steady state in fp32 (and bf16 where the hardware has it), peak memory.

Steady state: each model runs batches of ``--batch`` windows after a warm-up; windows/s is ``batch /
median batch time``. The baseline, run side by side in the same process, is the same model on one
window at a time (batch 1, the loop a user writes around the original code); the ratio is batched over
batch-1 throughput. Peak memory is the child process's peak RSS, torch included (CPU), or
``torch.cuda.max_memory_allocated`` (CUDA); each model runs in its own child process.

    python bench/bench_models.py                         # every model, CPU fp32 (+ bf16 if the CPU has it)
    python bench/bench_models.py --pattern '*-tiny' --reps 3
    python bench/bench_models.py --device cuda --batch 64 --dtypes bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gflops(name: str) -> float:
    """Forward FLOPs of one window (embed), counted by torch's FlopCounterMode on the meta device."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import ecgtool

    with torch.device("meta"):
        model = ecgtool.create_model(name).eval()
    c = model.contract
    x = np.zeros((1, len(c.leads), c.n_samples), dtype=np.float32)
    shape = model.prepare(x).shape  # numpy, whatever the model's device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.embed(torch.zeros(shape, device="meta"))
    return counter.get_total_flops() / 1e9


def child(name: str, device: str, dtype: str, batch: int, reps: int) -> dict:
    """Run in a child process: time batched and batch-1 forwards of one model."""
    import resource

    import numpy as np
    import torch

    import ecgtool
    from ecgtool.models.devices import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = ecgtool.create_model(name).eval().to(dev)
    c = model.contract
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((batch, len(c.leads), c.n_samples)).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(model.prepare(raw), dtype=np.float32)).to(dev)
    ac = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def run(inp):
        with torch.inference_mode(), torch.autocast(**ac):
            out = model.embed(inp)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    def median_time(inp, n):
        run(inp)
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            run(inp)
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t_batch = median_time(x, reps)
    t_one = median_time(x[:1], max(reps, 3))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole process, torch included
    return {"windows_per_s": batch / t_batch, "batch1_windows_per_s": 1.0 / t_one,
            "ratio": (batch / t_batch) / (1.0 / t_one), "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pattern", default=None, help="only models matching this glob")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default=None, help="fp32,bf16 (default: fp32, plus bf16 where supported)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, device, dtype, batch, reps = args.child
        print(json.dumps(child(name, device, dtype, int(batch), int(reps))))
        return

    import torch

    import ecgtool

    dtypes = args.dtypes.split(",") if args.dtypes else (
        ["fp32", "bf16"] if args.device == "cuda" or cpu_has_bf16() else ["fp32"])
    env = dict(os.environ)
    rows = []
    for name in ecgtool.list_models(args.pattern):
        card = ecgtool.model_card(name)
        row = {"name": name, "params": card.parameters, "gflops": gflops(name),
               "window": f"{card.contract.n_samples} @ {card.contract.fs:g} Hz ({card.contract.seconds:g} s)"}
        for dt in dtypes:
            r = subprocess.run([sys.executable, __file__, "--child", name, args.device, dt, str(args.batch),
                                str(args.reps)], capture_output=True, text=True, env=env)
            if r.returncode:
                row[dt] = {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
            else:
                row[dt] = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    dev = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{os.cpu_count()}-core CPU"
    print(f"\n{dev}, torch {torch.__version__}, batch {args.batch}, medians of {args.reps}\n")
    head = "| model | params | GFLOPs/window | window |"
    sep = "|---|---|---|---|"
    for dt in dtypes:
        head += f" {dt} windows/s (× batch 1) | {dt} peak MiB |"
        sep += "---|---|"
    print(head)
    print(sep)
    for r in rows:
        line = f"| {r['name']} | {r['params']:,} | {r['gflops']:.2f} | {r['window']} |"
        for dt in dtypes:
            d = r[dt]
            if "error" in d:
                line += f" error: {d['error'][:60]} | |"
            else:
                line += f" {d['windows_per_s']:.1f} ({d['ratio']:.2f}×) | {d['peak_mib']:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
