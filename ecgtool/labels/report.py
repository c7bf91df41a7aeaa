"""The label-definition report of ``ecgtool label``: per label and split, positives,
negatives, missing and uncertain values, prevalence and ``pos_weight``.

Codes that are not in the code tables are listed and counted; known codes and
concepts that reach no label of the vocabulary are listed as unmapped.
:class:`Report` keeps counters only (bounded memory) while
:func:`ecgtool.labels.labeler.label_batches` fills it; :func:`report_rows` and
:func:`write_report` give its table (CSV) or the whole report (JSON).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from ecgtool.errors import UsageError
from ecgtool.evaluation.splits import fold_order
from ecgtool.labels.labeler import Findings, SourceColumns
from ecgtool.labels.vocabulary import Vocabulary, default_concepts, scp_table, snomed_table


def pos_weight(pos: int, neg: int) -> tuple[float | None, str | None]:
    """(1 - p) / p with p = pos / (pos + neg), i.e. neg / pos; None with a reason when undefined."""
    if pos + neg == 0:
        return None, "no labelled records"
    if pos == 0:
        return None, "no positives"
    if neg == 0:
        return 0.0, "no negatives"
    return neg / pos, None


class Report:
    """Counts for the label-definition report (bounded memory: counters only)."""

    MAX_EXAMPLES = 5

    def __init__(self, vocab: Vocabulary, cols: SourceColumns, split_column: str | None):
        self.vocab = vocab
        self.cols = cols
        self.split_column = split_column
        n = len(vocab.labels)
        self.counts: dict[str, list[list[int]]] = {}  # split -> per label [pos, neg, missing, uncertain]
        self.records = 0
        self.status = Counter()
        self.unknown: dict[str, Counter] = {}
        self.unknown_records = 0
        self.unmapped = Counter()
        self.unrecognised_examples: list[dict] = []
        self.empty_examples: list[str] = []
        self.join: dict[str, Any] | None = None
        self._n = n
        self.exclusive = Counter()  # labelled records with several / no positive (exclusive vocabularies)
        self.repeated_rows = 0  # rows whose record id came earlier (segments of one record): labelled once

    def add(self, record_id: str, split: Any, status: str, values, f: Findings, unmapped: list[str]) -> None:
        self.records += 1
        self.status[status] += 1
        keys = ["all"]
        if self.split_column is not None:
            keys.append("missing split" if split is None else str(split))
        for key in keys:
            rows = self.counts.setdefault(key, [[0, 0, 0, 0] for _ in range(self._n)])
            for i, (v, w) in enumerate(values):
                if v is None:
                    rows[i][2] += 1
                elif v == 1:
                    rows[i][0] += 1
                    if w is not None and w < 1.0:
                        rows[i][3] += 1
                else:
                    rows[i][1] += 1
        if self.vocab.exclusive and status == "labelled":
            npos = sum(1 for v, _ in values if v == 1)
            if npos > 1:
                self.exclusive["several_positive"] += 1
            elif npos == 0:
                self.exclusive["no_positive"] += 1
        if f.unknown:
            self.unknown_records += 1
        for source, code in f.unknown:
            self.unknown.setdefault(source, Counter())[code] += 1
        for item in unmapped:
            self.unmapped[item] += 1
        if status == "unrecognised" and f.unrecognised_text and len(self.unrecognised_examples) < self.MAX_EXAMPLES:
            self.unrecognised_examples.append({"record_id": record_id, "text": f.unrecognised_text[:200]})
        if status == "empty" and len(self.empty_examples) < self.MAX_EXAMPLES:
            self.empty_examples.append(record_id)

    def to_dict(self) -> dict[str, Any]:
        labels = []
        order = ["all"] + sorted((k for k in self.counts if k != "all"), key=fold_order)
        for i, lab in enumerate(self.vocab.labels):
            splits = {}
            for key in order:
                if key not in self.counts:
                    continue
                pos, neg, miss, unc = self.counts[key][i]
                pw, note = pos_weight(pos, neg)
                splits[key] = {
                    "positive": pos,
                    "negative": neg,
                    "missing": miss,
                    "uncertain": unc,
                    "prevalence": (pos / (pos + neg)) if pos + neg else None,
                    "pos_weight": pw,
                    **({"note": note} if note else {}),
                }
            labels.append({"name": lab.name, "mapped": lab.mapped, "splits": splits})
        concept_names = dict(default_concepts().names)
        for code, name in snomed_table().names.items():
            concept_names["snomed:" + code] = name
        for code, name in scp_table().description.items():
            concept_names["scp:" + code] = name
        d = {
            "vocabulary": self.vocab.name,
            "vocabulary_title": self.vocab.title,
            "sources": self.cols.describe(),
            "split_column": self.split_column,
            "records": self.records,
            "repeated_rows": self.repeated_rows,
            "labelled": self.status.get("labelled", 0),
            "unlabelled": {
                "empty": self.status.get("empty", 0),
                "unrecognised": self.status.get("unrecognised", 0),
                "out_of_scope": self.status.get("out_of_scope", 0),
            },
            "unknown_codes": {
                "records": self.unknown_records,
                "total": sum(sum(c.values()) for c in self.unknown.values()),
                "codes": {s: dict(c.most_common()) for s, c in self.unknown.items()},
            },
            "unmapped": {
                "total": sum(self.unmapped.values()),
                "items": {k: {"count": v, **({"name": concept_names[k]} if k in concept_names else {})}
                          for k, v in self.unmapped.most_common()},
            },
            "unmapped_labels": self.vocab.unmapped,
            "unrecognised_examples": self.unrecognised_examples,
            "empty_examples": self.empty_examples,
            "labels": labels,
        }
        if self.vocab.exclusive:
            d["exclusive"] = {"several_positive": self.exclusive.get("several_positive", 0),
                              "no_positive": self.exclusive.get("no_positive", 0)}
        if self.join is not None:
            d["join"] = self.join
        return d


def report_rows(report: dict) -> list[dict]:
    """The per-label, per-split table of a report (for CSV and the terminal)."""
    rows = []
    for lab in report["labels"]:
        for split, s in lab["splits"].items():
            rows.append({"label": lab["name"], "split": split, **{k: s.get(k) for k in
                        ("positive", "negative", "missing", "uncertain", "prevalence", "pos_weight", "note")}})
    return rows


def write_report(report: dict, path: str) -> None:
    import csv
    import json

    p = Path(path)
    if not p.parent.exists():
        raise UsageError(f"{path}: folder {p.parent} does not exist (--report)")
    if p.suffix.lower() == ".csv":
        rows = report_rows(report)
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["label", "split"])
            w.writeheader()
            w.writerows(rows)
    else:
        p.write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return str(o)
