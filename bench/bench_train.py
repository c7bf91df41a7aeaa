#!/usr/bin/env python
"""Benchmark: ECG-FM pretraining throughput (segments/s), data vs model time, MFU on CUDA.

Side by side in one process, on the same batches:

* baseline ("bare step"): ``PretrainTask`` forward + backward + AdamW step on a
  batch already resident on the device (no data gathering, masking, RNG
  seeding, logging or loop bookkeeping);
* ecgtool: the full ``Pretrainer`` loop (``Loop.steps``): gathering segments
  from the table, RLM, span masks, per-step seeding, the update, the JSON log.
  Each step's time is split into data (``make_batch``) and model step
  (forward/backward/optimizer, synchronised on CUDA); the model-step share
  of the total says whether data loading is the bottleneck.

On CUDA (``--device cuda``) the run uses bf16 autocast and reports model FLOPs
utilisation: the FLOPs of one update (forward + backward, counted by
``torch.utils.flop_counter.FlopCounterMode``) per second over the bf16 matmul
peak measured in the same run (an 8192³ bf16 matmul). Medians over
``--steps`` updates after one warm-up. Segments come from PTB-XL
(../shared/data) when present, else random signals.

    python bench/bench_train.py                                  # CPU, ecgfm-base, 2 pairs per step
    python bench/bench_train.py --device cuda --batch-size 64 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import matmul_peak, sync  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]




def segment_table(n_records: int) -> pa.Table:
    from ecgtool.io import records_batch
    from ecgtool.signal.leads import STANDARD_12, normalize_leads

    data = ROOT.parent / "shared" / "data" / "ptbxl-500"
    rows = []
    if data.is_dir():
        import pandas as pd
        import wfdb

        db = pd.read_csv(data / "ptbxl_database.csv").head(n_records)
        for r in db.itertuples():
            rec = wfdb.rdrecord(str(data / r.filename_hr))
            sig = rec.p_signal.T.astype(np.float32)
            sig = (sig - sig.mean(1, keepdims=True)) / (sig.std(1, keepdims=True) + 1e-6)
            for s in range(2):
                rows.append({"record_id": str(r.ecg_id), "fs": 500.0, "leads": list(normalize_leads(rec.sig_name)),
                             "signal": sig[:, s * 2500:(s + 1) * 2500], "segment": s})
    else:
        rng = np.random.default_rng(0)
        for i in range(n_records):
            for s in range(2):
                rows.append({"record_id": f"r{i}", "fs": 500.0, "leads": list(STANDARD_12),
                             "signal": rng.standard_normal((12, 2500)).astype(np.float32), "segment": s})
    return pa.Table.from_batches([records_batch(rows, fixed=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ecgfm-base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=2, help="CMSC pairs per step (segments = 2x)")
    ap.add_argument("--steps", type=int, default=3, help="timed updates (after one warm-up)")
    ap.add_argument("--records", type=int, default=0, help="records in the table (default: enough for all steps)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from ecgtool.models.devices import resolve_device
    from ecgtool.train.data import SegmentSet
    from ecgtool.train.loop import LoopConfig
    from ecgtool.train.pretrain import PretrainConfig, Pretrainer

    dev = resolve_device(args.device)
    n_rec = args.records or args.batch_size * (args.steps + 1)
    data = SegmentSet(segment_table(n_rec), name="bench")
    seg_per_step = 2 * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        loop = LoopConfig(out_dir=Path(tmp), max_steps=args.steps + 1, checkpoint_every=10 ** 9,
                          keep_checkpoints=1)
        pt = Pretrainer(data, args.model, tmp, PretrainConfig(batch_size=args.batch_size), loop,
                        device=str(dev))
        peak = matmul_peak(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)

        # baseline: the bare update on a resident batch
        batch = pt.make_batch(pt.plan.order(0)[:args.batch_size], np.random.default_rng(0))
        task, opt = pt.task, pt.optimizer
        task.train()

        def bare_step():
            with pt.loop._autocast():
                loss, _ = task(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        flops = None
        try:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc:
                with pt.loop._autocast():
                    loss, _ = task(batch)
                loss.backward()
            opt.zero_grad(set_to_none=True)
            flops = float(fc.get_total_flops())
        except Exception as exc:  # noqa: BLE001 - FLOP counting is optional
            print(f"flop counting failed: {exc}", file=sys.stderr)
        bare = []
        bare_step()
        sync(dev)
        for _ in range(args.steps):
            t = time.perf_counter()
            bare_step()
            sync(dev)
            bare.append(time.perf_counter() - t)

        # ecgtool: the loop
        recs = list(pt.steps())[1:]
    data_s = [r["data_s"] for r in recs]
    step_s = [r["step_s"] for r in recs]
    total = [a + b for a, b in zip(data_s, step_s)]
    med = statistics.median
    res = {
        "model": args.model, "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
        else "CPU", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dtype": "bfloat16 autocast" if dev.type == "cuda" else "float32", "pairs_per_step": args.batch_size,
        "segments_per_step": seg_per_step, "steps": len(recs),
        "bare_step_s": med(bare), "bare_segments_per_s": seg_per_step / med(bare),
        "loop_step_s": med(total), "loop_segments_per_s": seg_per_step / med(total),
        "loop_data_s": med(data_s), "loop_model_s": med(step_s),
        "model_share": med(step_s) / med(total), "ratio_loop_vs_bare": med(bare) / med(total),
        "peak_flops": peak, "flops_per_step": flops,
    }
    if flops:
        res["achieved_flops"] = flops / med(step_s)
        res["mfu"] = res["achieved_flops"] / peak
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['model']} pretraining on {res['device_name']} ({res['dtype']}, torch {res['torch']}, "
          f"{res['threads']} threads), {args.batch_size} pairs = {seg_per_step} segments per step, "
          f"medians of {len(recs)} steps")
    print(f"  bare step (baseline): {res['bare_step_s'] * 1e3:.1f} ms  ({res['bare_segments_per_s']:.2f} seg/s)")
    print(f"  ecgtool loop:         {res['loop_step_s'] * 1e3:.1f} ms  ({res['loop_segments_per_s']:.2f} seg/s); "
          f"data {res['loop_data_s'] * 1e3:.1f} ms, model step {res['loop_model_s'] * 1e3:.1f} ms "
          f"({100 * res['model_share']:.1f}% of the step)")
    print(f"  loop / bare speed: {res['ratio_loop_vs_bare']:.3f}x")
    if flops:
        print(f"  {flops / 1e9:.1f} GFLOP per step, {res['achieved_flops'] / 1e12:.3f} TFLOP/s achieved, "
              f"peak {'bf16' if dev.type == 'cuda' else 'fp32'} matmul {peak / 1e12:.2f} TFLOP/s, "
              f"MFU {100 * res['mfu']:.1f}%")


if __name__ == "__main__":
    main()
