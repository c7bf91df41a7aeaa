"""Benchmark: `ecgtool compare` on 100,000 records × 20 labels × 3 models, 1000 paired bootstrap resamples.

Ours: the library behind `ecgtool compare` (``ecgtool.analysis.compare.compare``): the paired bootstrap of
AUROC, AUPRC and F1 for every model on the same resamples (sparse sums of the resampled counts below each
positive, block prefix sums, one matrix product for F1; (label, model) pairs on a thread pool), DeLong's
test per label and the summaries with their intervals. Median of --runs runs after one warm-up run.

Baseline, side by side on the same data: ``ecgtool.analysis.metrics.evaluate`` once per model (the
vectorised bootstrap of ``probe``: a weight matrix per block of resamples, one sort per resample block and
label) with the same seed, hence the same resamples (the benchmark checks that the AUROC values agree).
It computes sensitivity and specificity too, which are cheap next to AUROC and AUPRC. It is timed on
--baseline-boot resamples and scaled linearly to --boot (its cost is linear in the number of resamples),
and the output says so.

    python bench/bench_compare.py                 # full size
    python bench/bench_compare.py --n 20000 --boot 200      # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgtool.analysis import compare as cp  # noqa: E402
from ecgtool.analysis import metrics as mt  # noqa: E402
from ecgtool.io.threads import default_threads  # noqa: E402


def synthetic(n: int, n_labels: int, n_models: int, seed: int = 0):
    """Labels with prevalences 1%–40%, ~3% unknown; models of different quality, float32 probabilities."""
    rng = np.random.default_rng(seed)
    prev = np.linspace(0.01, 0.4, n_labels)
    Y = rng.random((n, n_labels)) < prev
    M = rng.random((n, n_labels)) > 0.03
    latent = rng.normal(size=(n, n_labels))
    scores, preds = [], []
    for k in range(n_models):
        z = (0.8 + 0.4 * k) * Y + 0.6 * latent + rng.normal(size=(n, n_labels))
        p = (1 / (1 + np.exp(-(z - 1.0)))).astype(np.float32).astype(np.float64)
        scores.append(p)
        preds.append(p >= 0.4)
    return Y, M, scores, preds


def models_of(Y, scores, preds):
    n, L = Y.shape
    ids = np.array([f"r{i:06d}" for i in range(n)], dtype=object)
    return [cp.ModelScores(name=f"model{k}", source="synthetic", kind="predictions", record_ids=ids,
                           labels=[f"label{j:02d}" for j in range(L)], scores=s, preds=p,
                           has_pred=np.ones(L, dtype=bool)) for k, (s, p) in enumerate(zip(scores, preds))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=20)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--baseline-boot", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    Y, M, scores, preds = synthetic(args.n, args.labels, args.models)
    labels = [f"label{j:02d}" for j in range(args.labels)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # warm-up (imports, BLAS threads, page faults), then timed runs
    cp.compare(models_of(Y, scores, preds), Y, M, labels, n_boot=20, seed=1)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        rep = cp.compare(models_of(Y, scores, preds), Y, M, labels, n_boot=args.boot, seed=0)
        times.append(time.perf_counter() - t)
    ours = statistics.median(times)

    # the same resamples through metrics.evaluate, one model after another
    t = time.perf_counter()
    evs = [mt.evaluate(Y, s, M, preds=p, n_boot=args.baseline_boot, seed=0) for s, p in zip(scores, preds)]
    base_part = time.perf_counter() - t
    base = base_part * args.boot / args.baseline_boot
    res = cp.paired_bootstrap(Y, M, scores, preds, [np.ones(args.labels, bool)] * args.models,
                              n_boot=args.baseline_boot, seed=0)
    same = all(np.allclose(res["boot"][k]["auroc"], evs[k]["boot"]["auroc"], equal_nan=True, atol=1e-12)
               for k in range(args.models))

    macro = [m["macro"]["auroc"] for m in rep["models"]]
    d = rep["differences"][-1]["macro"]["auroc"]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"""
## compare

### {stamp}: {args.n:,} records × {args.labels} labels × {args.models} models, {args.boot} paired resamples

Machine: {os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}, {default_threads()} \
worker threads, load average at start {load:.1f} (other jobs share the cores). Ours is the whole
`ecgtool.analysis.compare.compare` call: AUROC, AUPRC and F1 of every model on the same resamples, the
differences from the reference with their intervals, DeLong's test per label (file reading excluded).
Reproduce: `python bench/bench_compare.py`

| method | wall time | runs | speed-up |
|---|---|---|---|
| baseline: `metrics.evaluate` (probe's vectorised bootstrap) once per model, same resamples | {base:.1f} s \
(timed on {args.baseline_boot} resamples: {base_part:.1f} s, scaled ×{args.boot / args.baseline_boot:g}) | 1 run | 1.0× |
| ours: paired engine, {default_threads()} threads | {ours:.1f} s | median of {args.runs} \
({', '.join(f'{x:.1f}' for x in times)}) | {base / ours:.1f}× |

Check: the two produce identical AUROC resamples ({'yes' if same else 'NO'}). Macro AUROC of the three models
{', '.join(f"{m['value']:.4f}" for m in macro)}; last minus reference {d['value']:+.4f}
(CI {d['ci'][0]:+.4f} to {d['ci'][1]:+.4f}).
""")


if __name__ == "__main__":
    main()
