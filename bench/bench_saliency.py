#!/usr/bin/env python
"""Benchmark: saliency for one 10 s 12-lead record with ecgfm-base on the CPU.

Compares the attention method (one forward pass per 5 s window) with
integrated gradients (steps forward+backward passes), and with the baseline of
a plain batch-1 `model.embed` forward of the same two windows (the floor any
saliency method pays). Median wall time over --repeats runs.

    python bench/bench_saliency.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ecgtool.analysis.saliency import attention_saliency, integrated_gradients
from ecgtool.models.checkpoint import load_model

EXAMPLE = Path(__file__).resolve().parents[1] / "ecgtool" / "data" / "examples" / "ptbxl" / "00351_hr"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    import wfdb

    from ecgtool.preprocess import Preprocessor, make_config
    from ecgtool.io import records_batch, batch_signal_array

    rec = wfdb.rdrecord(str(EXAMPLE))
    batch = records_batch([{"record_id": "r", "fs": float(rec.fs), "leads": rec.sig_name,
                            "signal": rec.p_signal.T.astype(np.float32)}])
    x = torch.from_numpy(batch_signal_array(Preprocessor(make_config(preset="ecg-fm")).process(batch)).copy())
    model = load_model("ecgfm-base", allow_random=True, num_labels=17).eval()
    times = {"forward_only": [], "attention": [], f"integrated_gradients_{args.steps}": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        with torch.inference_mode():
            model.embed(x)
        times["forward_only"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.inference_mode():
            attention_saliency(model, x)
        times["attention"].append(time.perf_counter() - t)
        t = time.perf_counter()
        integrated_gradients(model, x, torch.zeros(len(x), dtype=torch.long), args.steps)
        times[f"integrated_gradients_{args.steps}"].append(time.perf_counter() - t)
    res = {k: round(statistics.median(v), 3) for k, v in times.items()}
    res["windows"] = len(x)
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
