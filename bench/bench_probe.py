"""Benchmark: `ecgtool probe` on 100,000 synthetic embeddings (D=768, 20 labels).

Ours: the library behind `ecgtool probe` (all labels fitted jointly with
L-BFGS, C chosen per label on validation from a grid of 4, or one fixed C;
1000 bootstrap resamples evaluated as weight matrices), median of --runs runs.

Baseline, run side by side on the same data and split: a naive probe, one
scikit-learn ``LogisticRegression()`` (lbfgs, default settings: C=1,
max_iter=100) per label on the same standardised features, then a Python-loop
bootstrap calling scikit-learn's ``roc_auc_score``, ``average_precision_score``,
``f1_score`` and ``recall_score`` (sensitivity, specificity) per resample and
label. The loop is timed on --baseline-boot resamples and scaled linearly to
1000 (its cost is exactly linear in the number of resamples); this is stated in
the output.

    python bench/bench_probe.py                 # full size, appends to bench/RESULTS.md
    python bench/bench_probe.py --n 20000 --no-append   # a quick look
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
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgtool.analysis import metrics as mt  # noqa: E402
from ecgtool.analysis import probe as pr  # noqa: E402


def synthetic(n: int, d: int, n_labels: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Embeddings with correlated dimensions; labels from a sparse logistic model
    with prevalences between ~2% and ~40%; 10 folds."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, d)).astype(np.float32) / 8
    X = (rng.normal(size=(n, 64)).astype(np.float32) @ basis) + rng.normal(size=(n, d)).astype(np.float32)
    W = np.zeros((d, n_labels), dtype=np.float32)
    for j in range(n_labels):
        idx = rng.choice(d, 24, replace=False)
        W[idx, j] = rng.normal(size=24) * 0.35
    bias = np.log(np.linspace(0.02, 0.4, n_labels) / (1 - np.linspace(0.02, 0.4, n_labels))) - 0.5
    Z = X @ W + bias
    Y = (rng.random((n, n_labels)) < 1 / (1 + np.exp(-Z))).astype(np.int8)
    ids = pa.array([f"r{i:06d}" for i in range(n)])
    emb = pa.table({
        "record_id": ids,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d),
        "strat_fold": pa.array(rng.integers(1, 11, n)),
    })
    lab = pa.table({"record_id": ids, **{f"label{j:02d}": Y[:, j] for j in range(n_labels)}})
    return emb, lab


def run_ours(emb, lab, names, n_boot, C):
    t0 = time.perf_counter()
    data = pr.load_probe_data(emb, lab, names)
    splits = pr.fold_splits(data.meta["strat_fold"], "10", "9")
    rep, _ = pr.run_probe(data, splits, pr.ProbeOptions(C=C, n_boot=n_boot, seed=0))
    return time.perf_counter() - t0, rep


def run_baseline(emb, lab, names, n_boot_timed, n_boot_target):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score

    t0 = time.perf_counter()
    data = pr.load_probe_data(emb, lab, names)
    sp = pr.fold_splits(data.meta["strat_fold"], "10", "9")[0]
    mean, scale = pr.fit_stats(data.X[sp.train])
    Xtr = pr.standardise(data.X[sp.train], mean, scale)
    Xva = pr.standardise(data.X[sp.val], mean, scale)
    Xte = pr.standardise(data.X[sp.test], mean, scale)
    scores, thresholds = [], []
    for j in range(len(names)):
        clf = LogisticRegression().fit(Xtr, data.Y[sp.train, j])
        pv = clf.predict_proba(Xva)[:, 1]
        thresholds.append(mt.choose_threshold(data.Y[sp.val, j], pv, "f1"))
        scores.append(clf.predict_proba(Xte)[:, 1])
    t_fit = time.perf_counter() - t0
    yte = data.Y[sp.test].astype(int)
    aurocs = []
    t1 = time.perf_counter()
    rng = np.random.default_rng(0)
    for b in range(n_boot_timed):
        idx = rng.integers(0, len(yte), len(yte))
        row = []
        for j in range(len(names)):
            y, s = yte[idx, j], scores[j][idx]
            pred = s >= thresholds[j]
            row.append(roc_auc_score(y, s))
            average_precision_score(y, s)
            f1_score(y, pred)
            recall_score(y, pred)
            recall_score(1 - y, ~pred)
        aurocs.append(row)
    t_boot = time.perf_counter() - t1
    point = [roc_auc_score(yte[:, j], scores[j]) for j in range(len(names))]
    return t_fit, t_boot, t_boot * n_boot_target / n_boot_timed, float(np.mean(point))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--labels", type=int, default=20)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-boot", type=int, default=50, help="resamples the baseline loop is timed on")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    t = time.perf_counter()
    emb, lab = synthetic(args.n, args.dim, args.labels)
    names = [f"label{j:02d}" for j in range(args.labels)]
    print(f"data: {args.n} x {args.dim}, {args.labels} labels ({time.perf_counter() - t:.1f} s to make)", flush=True)

    results = {}
    for tag, C in (("ours, C chosen per label on validation (grid of 4)", None), ("ours, fixed C=1", 1.0)):
        times, parts = [], []
        for r in range(args.runs):
            wall, rep = run_ours(emb, lab, names, args.n_boot, C)
            times.append(wall)
            parts.append(rep["timings_s"])
            mac = rep["metrics"]["macro"]["auroc"]
            print(f"{tag}: run {r + 1}: {wall:.1f} s (fit {rep['timings_s']['fit']:.1f} s, metrics+bootstrap "
                  f"{rep['timings_s']['evaluate']:.1f} s), macro AUROC {mac['value']:.4f} "
                  f"[{mac['ci'][0]:.4f}-{mac['ci'][1]:.4f}]", flush=True)
        med = statistics.median(times)
        i = times.index(med) if med in times else 0
        results[tag] = (med, times, mac["value"], parts[i])

    lines = []
    if not args.no_baseline:
        t_fit, t_boot, t_boot_full, auc = run_baseline(emb, lab, names, args.baseline_boot, args.n_boot)
        base_total = t_fit + t_boot_full
        print(f"baseline: sklearn LogisticRegression() x {args.labels}: {t_fit:.1f} s (macro AUROC {auc:.4f}); "
              f"Python-loop bootstrap {t_boot:.1f} s for {args.baseline_boot} resamples "
              f"-> {t_boot_full:.0f} s for {args.n_boot}; total {base_total:.0f} s", flush=True)
        lines.append(f"| baseline: per-label sklearn `LogisticRegression()` (lbfgs, defaults) + Python-loop bootstrap "
                     f"(sklearn metrics) | {base_total:.0f} s (fit {t_fit:.1f} s + bootstrap {t_boot_full:.0f} s, "
                     f"loop timed on {args.baseline_boot} resamples ×{args.n_boot // args.baseline_boot}) | 1 run | "
                     f"{auc:.4f} | 1.0× |")
    for tag, (med, times, auc, part) in results.items():
        ratio = f"{base_total / med:.1f}×" if not args.no_baseline else "–"
        fit_ratio = f"; fit {t_fit / part['fit']:.1f}×" if not args.no_baseline else ""
        print(f"{tag}: median {med:.1f} s" + (f", {ratio} faster than the baseline{fit_ratio}"
                                               if not args.no_baseline else ""))
        lines.append(f"| {tag} | {med:.1f} s (fit {part['fit']:.1f} s + metrics/bootstrap {part['evaluate']:.1f} s, "
                     f"median run) | median of {len(times)} ({', '.join(f'{x:.1f}' for x in times)}) | "
                     f"{auc:.4f} | {ratio} overall{fit_ratio} |")

    if not args.no_append:
        path = ROOT / "bench" / "RESULTS.md"
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        cpu = os.cpu_count()
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        block = [
            f"\n### {when}: {args.n:,} embeddings × {args.dim}, {args.labels} labels, {args.n_boot} bootstrap resamples",
            "",
            f"Machine: {cpu} CPU cores ({platform.processor() or platform.machine()}), Python "
            f"{platform.python_version()}, load average at start "
            f"{os.getloadavg()[0]:.1f} (other jobs share the cores). Split: strat_fold 1–10, test 10, val 9 "
            f"(~80k train). Wall time includes joining labels, fitting, thresholds, temperature scaling, "
            f"ECE/Brier and CIs for AUROC, AUPRC, F1, sensitivity, specificity of every label and the macro average.",
            "Reproduce: `python bench/bench_probe.py`",
            "",
            "| method | wall time | runs | macro AUROC (test) | speed-up |",
            "|---|---|---|---|---|",
            *lines,
        ]
        if "## probe" not in text:
            text = text.rstrip("\n") + "\n\n## probe\n"
            text += "\n".join(block) + "\n"
        else:
            head, tail = text.split("## probe", 1)
            nxt = tail.find("\n## ")
            section, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
            text = head + "## probe" + section.rstrip("\n") + "\n" + "\n".join(block) + "\n" + rest
        path.write_text(text)
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
