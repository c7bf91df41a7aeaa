"""Held-out metrics of the default model with 95% bootstrap CIs (the numbers in docs/default-model.md).

    python examples/default-model/evaluate.py LABELS NAME=PRED.parquet [NAME=PRED.parquet ...] [--json OUT]

LABELS is the merged test label table (record_id, NORM..HYP, normal..noisy);
each PRED is an ``ecgtool predict`` output (one row per record, one
probability column per label). For every prediction table:

* PTB-XL (records with superclass labels): macro AUROC over NORM, MI, STTC,
  CD, HYP, and per label;
* CinC 2017 (records with a class): the predicted class is the most probable
  of the four CinC outputs; F1 of N, A and O one-vs-rest, and their mean
  (the challenge's F1 score, without ~), plus per-class AUROC.

CIs are percentile bootstraps over records (1000 resamples, seed 0, from
ecgtool.analysis.metrics.evaluate), for the macro values and for every label.
Calibration: expected calibration error (15 equal-width bins, pooled over the
labels of each dataset) of the probabilities as written (after the model's
temperature, from the table's metadata) and before it (sigmoid(T * logit p)). The same resamples serve every model, so
"NAME - FIRST" differences come with a paired CI.
"""

import argparse
import json
import sys

import numpy as np

from ecgtool.analysis.metrics import ece, evaluate, percentile_ci
from ecgtool.io import read_table

PTBXL = ["NORM", "MI", "STTC", "CD", "HYP"]
CINC = ["normal", "AF", "other rhythm", "noisy"]
CINC_SCORED = ["normal", "AF", "other rhythm"]  # N, A, O

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("labels")
p.add_argument("preds", nargs="+", help="NAME=predictions.parquet")
p.add_argument("--n-boot", type=int, default=1000)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--json")
a = p.parse_args()

lab, _ = read_table(a.labels)
lab_ids = [str(v) for v in lab.column("record_id").to_pylist()]


def column(table, name):
    return np.array([np.nan if v is None else float(v) for v in table.column(name).to_pylist()], dtype=float)


def ci(x):
    c = percentile_ci(x)
    return [round(c[0], 4), round(c[1], 4)] if c else None


def per_label(r, metric, names):
    """{label: [point, low, high]} of one metric."""
    out = {}
    for j, n in enumerate(names):
        c = ci(r["boot"][metric][:, j])
        out[n] = [round(float(r["point"][metric][j]), 4), *(c or [None, None])]
    return out


def calibration(Y, P, T):
    """ECE pooled over labels: after the temperature (as written) and before it."""
    y, p = Y.ravel(), np.clip(P.ravel(), 1e-7, 1 - 1e-7)
    raw = 1 / (1 + np.exp(-T * np.log(p / (1 - p))))
    return {"temperature": round(T, 4), "ece_after": round(float(ece(y, p)), 4),
            "ece_before": round(float(ece(y, raw)), 4)}


Ylab = {n: column(lab, n) for n in PTBXL + CINC}
ptb_rows = [i for i in range(len(lab_ids)) if not np.isnan(Ylab["NORM"][i])]
cinc_rows = [i for i in range(len(lab_ids)) if not np.isnan(Ylab["normal"][i])]

results, boots = {}, {}
for spec in a.preds:
    name, _, path = spec.partition("=")
    pred, meta = read_table(path)
    pos = {str(r): i for i, r in enumerate(pred.column("record_id").to_pylist())}
    out = {"predictions": path, "model": meta.info.get("model")}
    temp = float(meta.info.get("temperature") or 1.0)
    # PTB-XL superclasses
    rows = [i for i in ptb_rows if lab_ids[i] in pos]
    take = [pos[lab_ids[i]] for i in rows]
    Y = np.stack([Ylab[n][rows] for n in PTBXL], 1)
    S = np.stack([column(pred, n)[take] for n in PTBXL], 1)
    r = evaluate(Y, S, n_boot=a.n_boot, seed=a.seed)
    out["ptbxl"] = {"records": len(rows), "missing_predictions": len(ptb_rows) - len(rows),
                    "macro_auroc": round(r["macro_point"]["auroc"], 4), "macro_auroc_ci": ci(r["macro_boot"]["auroc"]),
                    "auroc": per_label(r, "auroc", PTBXL), "calibration": calibration(Y, S, temp),
                    "positives": {n: int(Y[:, k].sum()) for k, n in enumerate(PTBXL)}}
    boots.setdefault(name, {})["ptbxl"] = r["macro_boot"]["auroc"]
    # CinC 2017 classes
    rows = [i for i in cinc_rows if lab_ids[i] in pos]
    take = [pos[lab_ids[i]] for i in rows]
    T = np.stack([Ylab[n][rows] for n in CINC], 1).argmax(1)
    P4 = np.stack([column(pred, n)[take] for n in CINC], 1)
    guess = P4.argmax(1)
    k3 = [CINC.index(n) for n in CINC_SCORED]
    Y = np.stack([T == k for k in k3], 1)
    r = evaluate(Y, P4[:, k3], preds=np.stack([guess == k for k in k3], 1), n_boot=a.n_boot, seed=a.seed + 1)
    out["cinc2017"] = {"records": len(rows), "missing_predictions": len(cinc_rows) - len(rows),
                       "macro_f1_NAO": round(r["macro_point"]["f1"], 4), "macro_f1_NAO_ci": ci(r["macro_boot"]["f1"]),
                       "f1": per_label(r, "f1", CINC_SCORED), "auroc": per_label(r, "auroc", CINC_SCORED),
                       "calibration": calibration(np.eye(4)[T], P4, temp),
                       "accuracy_4class": round(float((guess == T).mean()), 4),
                       "class_counts": {n: int((T == k).sum()) for k, n in enumerate(CINC)}}
    boots[name]["cinc2017"] = r["macro_boot"]["f1"]
    # the AF output on 12-lead PTB-XL ECGs (test records with an AFIB/AFLT label, when the labels have one)
    rows = [i for i in ptb_rows if lab_ids[i] in pos and not np.isnan(Ylab["AF"][i])]
    if rows:
        y = Ylab["AF"][rows]
        found = [("AF" in (f or [])) for f in pred.column("findings").to_pylist()]
        flagged = np.array([found[pos[lab_ids[i]]] for i in rows])
        out["ptbxl_af"] = {"records": len(rows), "with_af": int(y.sum()),
                           "af_flagged_without_af": int((flagged & (y == 0)).sum()),
                           "af_flagged_with_af": int((flagged & (y == 1)).sum())}
    results[name] = out

names = list(results)
first = names[0]
for name in names[1:]:
    d = {}
    for key, metric in (("ptbxl", "macro_auroc"), ("cinc2017", "macro_f1_NAO")):
        diff = boots[first][key] - boots[name][key]
        d[key] = {"metric": metric, "difference": round(results[first][key][metric] - results[name][key][metric], 4),
                  "ci": ci(diff)}
    results[name][f"{first}_minus_this"] = d

text = json.dumps(results, indent=2)
if a.json:
    with open(a.json, "w") as f:
        f.write(text + "\n")
print("| model | PTB-XL fold 10 macro AUROC (95% CI) | CinC 2017 test macro F1 N/A/O (95% CI) |")
print("|---|---|---|")
for name in names:
    r = results[name]
    pc, cc = r["ptbxl"]["macro_auroc_ci"], r["cinc2017"]["macro_f1_NAO_ci"]
    print(f"| {name} | {r['ptbxl']['macro_auroc']:.3f} ({pc[0]:.3f}–{pc[1]:.3f}) "
          f"| {r['cinc2017']['macro_f1_NAO']:.3f} ({cc[0]:.3f}–{cc[1]:.3f}) |")

def cell(v):
    return f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})" if v[1] is not None else f"{v[0]:.3f}"


for name in names:
    r = results[name]
    print(f"\n{name}: per label (95% CI)\n")
    print("| dataset | label | AUROC | F1 |")
    print("|---|---|---|---|")
    for n, v in r["ptbxl"]["auroc"].items():
        print(f"| PTB-XL fold 10 | {n} | {cell(v)} | |")
    for n, v in r["cinc2017"]["auroc"].items():
        print(f"| CinC 2017 test | {n} | {cell(v)} | {cell(r['cinc2017']['f1'][n])} |")
    for key, title in (("ptbxl", "PTB-XL fold 10"), ("cinc2017", "CinC 2017 test")):
        c = r[key]["calibration"]
        print(f"{title}: ECE {c['ece_before']:.3f} before the temperature ({c['temperature']:.3f}), "
              f"{c['ece_after']:.3f} after")
for name in names:
    if "ptbxl_af" in results[name]:
        f = results[name]["ptbxl_af"]
        print(f"{name}: AF among the findings of {f['af_flagged_without_af']} of {f['records'] - f['with_af']} "
              f"PTB-XL test ECGs without AF/flutter, {f['af_flagged_with_af']} of {f['with_af']} with it")
print(f"PTB-XL records: {results[first]['ptbxl']['records']}, CinC 2017 records: {results[first]['cinc2017']['records']}",
      file=sys.stderr)
