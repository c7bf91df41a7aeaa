#!/usr/bin/env python
"""Benchmark: `embed` throughput against a plain eager fp32 batch-size-1 loop.

For each model (random weights: speed does not depend on them) this measures,
side by side in one process on the same machine:

* baseline: ``model.embed(x[None])`` for one segment at a time under
  ``torch.no_grad()``, fp32 — how the reference notebooks run;
* ecgtool: ``embed_table`` over a segment table (reading, batching,
  inference_mode, pooling, writing Parquet), fp32 and bf16;
* the bf16 embeddings' cosine similarity to fp32;
* achieved FLOP/s (model FLOPs counted by torch's FlopCounterMode) as a
  fraction of the machine's matrix-multiply peak measured in the same run
  (fp32 on CPU, bf16 on CUDA; bf16 runs on the CPU against the CPU's bf16 peak).

Medians over --repeats runs. Usage:

    python bench/bench_embed.py                       # CPU, ecgfm-base and ecgfounder-12lead
    python bench/bench_embed.py --device cuda --segments 2048 --batch-size 256
    python bench/bench_embed.py --memory              # peak RSS, 100 vs 10,000 records (tiny model)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import matmul_peak, sync  # noqa: E402

from ecgtool.io import TableMeta, TableWriter, open_table, records_batch
from ecgtool.io.threads import default_threads
from ecgtool.models.apply import embed_table
from ecgtool.models.checkpoint import load_model
from ecgtool.models.devices import resolve_device
from ecgtool.models.native import save_checkpoint


def model_flops(model, contract, dev) -> float:
    """FLOPs of one segment's ``embed`` (2 per multiply-add: convolutions, GEMMs, attention matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    # torch's counter has no formula for the CPU kernel of scaled_dot_product_attention, so it would
    # count the attention matmuls (QK^T and PV: 0.9 of ecgfm-base's 29.2 GFLOP) as zero on the CPU
    def sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_sdpa: sdpa} if cpu_sdpa is not None else {}
    x = torch.zeros(1, len(contract.leads), contract.n_samples, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        model.embed(x)
    return float(fc.get_total_flops())


def segment_table(path: Path, contract, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    meta = TableMeta(kind="segments", info={"normalisation": contract.normalisation,
                                            "preprocess": {"preset": contract.preset}})
    writer = None
    for start in range(0, n, 256):
        rows = [{"record_id": f"r{i:06d}", "fs": contract.fs, "leads": list(contract.leads),
                 "signal": rng.standard_normal((len(contract.leads), contract.n_samples), dtype=np.float32)}
                for i in range(start, min(n, start + 256))]
        batch = records_batch(rows, fixed=True)
        if writer is None:
            writer = TableWriter(path, batch.schema, meta)
        writer.write(batch)
    writer.close()


def read_x(path: Path) -> np.ndarray:
    from ecgtool.io import batch_signal_array

    with open_table(path) as r:
        return np.concatenate([batch_signal_array(b) for b in r])


def bench_model(name: str, args, dev, peak: float, peak_bf16: float, tmp: Path) -> dict:
    model = load_model(name, allow_random=True, pretraining=False) if name.startswith("ecgfm") else \
        load_model(name, allow_random=True)
    model.eval().to(dev)
    c = model.contract
    table = tmp / f"{name}.parquet"
    segment_table(table, c, args.segments)
    x = read_x(table)
    flops = model_flops(model, c, dev)
    # baseline: eager fp32, batch size 1, no_grad
    nb = min(args.baseline_segments, len(x))
    base_rates = []
    with torch.no_grad():
        model.embed(torch.from_numpy(x[:1]).to(dev))
        for _ in range(args.repeats):
            sync(dev)
            t = time.perf_counter()
            for i in range(nb):
                model.embed(torch.from_numpy(x[i:i + 1]).to(dev)).cpu()
            sync(dev)
            base_rates.append(nb / (time.perf_counter() - t))
    results = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
               "gflop_per_segment": flops / 1e9, "baseline_seg_per_s": statistics.median(base_rates)}
    outs = {}
    for precision in ("fp32", "bf16"):
        rates = []
        for rep in range(args.repeats):
            out = tmp / f"{name}-{precision}.parquet"
            sync(dev)
            t = time.perf_counter()
            with open_table(table, batch_size=args.batch_size, threads=default_threads()) as reader:
                embed_table(reader, str(out), model, device=dev, precision=precision,
                            batch_size=args.batch_size, pool="none")
            sync(dev)
            rates.append(len(x) / (time.perf_counter() - t))
        import pyarrow.parquet as pq

        outs[precision] = np.stack(pq.read_table(out).column("embedding").to_numpy(zero_copy_only=False))
        results[f"ecgtool_{precision}_seg_per_s"] = statistics.median(rates)
    a, b = outs["fp32"], outs["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    results["bf16_cosine_min"] = float(cos.min())
    results["bf16_cosine_mean"] = float(cos.mean())
    best = max(results["ecgtool_fp32_seg_per_s"], results["ecgtool_bf16_seg_per_s"])
    results["ratio_fp32_vs_baseline"] = results["ecgtool_fp32_seg_per_s"] / results["baseline_seg_per_s"]
    results["ratio_best_vs_baseline"] = best / results["baseline_seg_per_s"]
    results["achieved_tflops_fp32"] = flops * results["ecgtool_fp32_seg_per_s"] / 1e12
    results["achieved_tflops_bf16"] = flops * results["ecgtool_bf16_seg_per_s"] / 1e12
    results["baseline_fraction_of_peak"] = flops * results["baseline_seg_per_s"] / peak
    results["fraction_of_peak_fp32"] = flops * results["ecgtool_fp32_seg_per_s"] / peak
    results["fraction_of_peak_bf16"] = flops * results["ecgtool_bf16_seg_per_s"] / peak_bf16
    return results


def memory(args) -> dict:
    """Peak RSS of `ecgtool embed` over 100 and 10,000 records (same tiny model, separate processes)."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = load_model("ecgfm-tiny", allow_random=True, pretraining=False)
        ckpt = tmp / "tiny.safetensors"
        save_checkpoint(model, ckpt)
        for n in (100, 10_000):
            table = tmp / f"{n}.parquet"
            segment_table(table, model.contract, n)
            code = ("import resource, sys\n"
                    "from ecgtool.cli import app\n"
                    f"try: app(['embed', '-m', '{ckpt}', '{table}', '-o', '{tmp}/e{n}.parquet', '--device', 'cpu'],"
                    " prog_name='ecgtool')\n"
                    "except SystemExit: pass\n"
                    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[n] = int(res.stdout.strip().splitlines()[-1]) / 1024  # MiB
    return {"peak_rss_mib_100": out[100], "peak_rss_mib_10000": out[10_000],
            "ratio": out[10_000] / out[100]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="ecgfm-base,ecgfounder-12lead")
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--baseline-segments", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    if args.memory:
        res = memory(args)
        print(json.dumps(res, indent=2))
        return
    dev = resolve_device(args.device)
    torch.manual_seed(0)
    peak_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    peak = statistics.median(matmul_peak(dev, peak_dtype) for _ in range(3))
    # bf16 runs are compared with the bf16 peak (on a CPU without bf16 instructions it is low)
    peak_bf16 = peak if dev.type == "cuda" else statistics.median(
        matmul_peak(dev, torch.bfloat16, n=1024) for _ in range(3))
    info = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "matmul_peak_tflops": peak / 1e12, "peak_dtype": str(peak_dtype),
            "matmul_peak_bf16_tflops": peak_bf16 / 1e12,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}
    print(json.dumps(info))
    results = [info]
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            r = bench_model(name, args, dev, peak, peak_bf16, Path(d))
            print(json.dumps(r))
            results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
