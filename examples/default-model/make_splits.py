"""Write splits.csv (record,split) for the default model. Run once; the output is committed.

PTB-XL: strat_fold 1-8 -> train, 9 -> val, 10 -> test (the dataset's own
patient-disjoint folds). CinC 2017 has no patient ids, so a patient-disjoint
split is impossible: per class (N, A, O, ~), records are shuffled with
numpy.random.default_rng(2017) and 20% go to test, 10% to val, the rest to
train. Test records are never converted for training (neither pretraining
nor finetuning sees their signals).

The file grows with the data and never moves a record: a record already in
the committed splits.csv (given as the second argument) keeps its split (the
first 3,371 CinC 2017 records, split with default_rng(2017)); records new in
REFERENCE.csv (6,013 in all now) are split by the same rule among themselves
with default_rng(2018).

    python examples/default-model/make_splits.py ../shared/data examples/default-model/splits.csv > new.csv
"""

import csv
import sys
from pathlib import Path

import numpy as np

data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
previous: dict[str, str] = {}
if len(sys.argv) > 2:
    with open(sys.argv[2], newline="") as f:
        previous = {r["record"]: r["split"] for r in csv.DictReader(f)}
rows = []
with open(data / "ptbxl-500" / "ptbxl_database.csv", newline="") as f:
    for r in csv.DictReader(f):
        fold = int(float(r["strat_fold"]))
        name = Path(r["filename_lr"]).name
        rows.append((name, "test" if fold == 10 else "val" if fold == 9 else "train"))
by_class: dict[str, list[str]] = {}
with open(data / "cinc2017" / "REFERENCE.csv", newline="") as f:
    for rec, label in csv.reader(f):
        by_class.setdefault(label, []).append(rec)


def split_per_class(groups: dict[str, list[str]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label in sorted(groups):
        recs = sorted(groups[label])
        order = rng.permutation(len(recs))
        n_test, n_val = round(0.2 * len(recs)), round(0.1 * len(recs))
        for k, i in enumerate(order):
            rows.append((recs[i], "test" if k < n_test else "val" if k < n_test + n_val else "train"))


if previous:
    rows.extend((r, previous[r]) for recs in by_class.values() for r in recs if r in previous)
    split_per_class({k: [r for r in v if r not in previous] for k, v in by_class.items()}, 2018)
else:
    split_per_class(by_class, 2017)
w = csv.writer(sys.stdout, lineterminator="\n")
w.writerow(["record", "split"])
for row in sorted(rows):
    w.writerow(row)
