#!/usr/bin/env python
"""Where a model's forward spends its time on the CPU, per precision (torch.profiler).

    python bench/profile_cpu_forward.py --model ecgfm-base --batch 64 [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ecgtool.models.checkpoint import load_model


def timed(fn, x, reps):
    fn(x)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ecgfm-base")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    kw = {"pretraining": False} if args.model.startswith("ecgfm") else {}
    model = load_model(args.model, allow_random=True, **kw).eval()
    c = model.contract
    x = torch.randn(args.batch, len(c.leads), c.n_samples)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")

    def fp32(x):
        with torch.inference_mode():
            return model.embed(x)

    def amp(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model.embed(x)

    variants = {"fp32": fp32, "autocast-bf16": amp}
    if args.compile:
        cm = torch.compile(model.embed)

        def comp(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return cm(x)

        variants["compiled-autocast-bf16"] = comp
    ref = fp32(x)
    for name, fn in variants.items():
        s = timed(fn, x, args.reps)
        out = fn(x).float()
        cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1).min().item()
        print(f"{name:24s} {args.batch / s:8.1f} seg/s  min cos {cos:.6f}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        amp(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
