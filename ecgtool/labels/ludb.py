"""Checking the text labeler against LUDB: header diagnoses vs ludb.csv.

LUDB gives each record's diagnoses twice: as free text in the ``.hea``
comments and as categorised cells in ``ludb.csv``. The reference side maps
each ``ludb.csv`` cell line to a concept by the exact prefix table
``vocab/ludb-csv-map.csv`` (no pattern matching); the text side runs the
text labeler on the header comments. The same hierarchy is applied to both,
and agreement is reported per concept.

    python -m ecgtool.labels.ludb ../shared/data/ludb            # markdown table
    python -m ecgtool.labels.ludb ../shared/data/ludb --json
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ecgtool.labels.vocabulary import default_concepts, read_text


def _csv_map() -> list[tuple[str, str, str]]:
    rows = list(csv.DictReader(io.StringIO(read_text("ludb-csv-map.csv"))))
    out = [(r["column"], r["prefix"].lower(), r["concept"]) for r in rows]
    out.sort(key=lambda r: -len(r[1]))
    return out


def reference_labels(ludb_csv: str | Path, hierarchy: bool = True) -> tuple[dict[str, set[str]], list[str]]:
    """record id -> concepts from ludb.csv; and the cell lines no prefix matched."""
    import pandas as pd

    table = _csv_map()
    con = default_concepts()
    df = pd.read_csv(ludb_csv, dtype=str, keep_default_na=False)
    out: dict[str, set[str]] = {}
    unmatched: list[str] = []
    for _, row in df.iterrows():
        rid = str(row["ID"]).strip()
        found: set[str] = set()
        for col in df.columns:
            if col in ("ID", "Sex", "Age"):
                continue
            for line in str(row[col]).splitlines():
                line = line.strip().lower()
                if not line:
                    continue
                hit = next((c for cc, p, c in table if cc == col and line.startswith(p)), None)
                if hit is None:
                    unmatched.append(f"{col}: {line}")
                else:
                    found.add(hit)
        if hierarchy:
            pos, _ = con.hierarchy.expand({c: 1.0 for c in found}, set())
            found = set(pos)
        out[rid] = found
    return out, unmatched


def header_texts(ludb_dir: str | Path) -> dict[str, str]:
    """record id -> diagnosis text from the ``.hea`` comments (age/sex lines left out)."""
    import wfdb

    base = Path(ludb_dir)
    data = base / "data" if (base / "data").is_dir() else base
    out = {}
    for hea in sorted(data.glob("*.hea"), key=lambda p: (len(p.stem), p.stem)):
        rec = wfdb.rdheader(str(hea.with_suffix("")))
        lines = [c.strip() for c in rec.comments if c.strip() and not c.strip().startswith("<")]
        out[hea.stem] = "\n".join(lines)
    return out


def agreement(texts: dict[str, str], reference: dict[str, set[str]], hierarchy: bool = True) -> list[dict]:
    """Per concept present in the reference or found in the text: counts, accuracy, Cohen's kappa, sensitivity, PPV."""
    con = default_concepts()
    ids = [i for i in reference if i in texts]
    predicted = {}
    for i in ids:
        res = con.labeler.label(texts[i])
        pos = dict(res.positive)
        if hierarchy:
            pos, _ = con.hierarchy.expand(pos, set(res.negative))
        predicted[i] = {c for c, w in pos.items()}
    concepts = sorted({c for i in ids for c in reference[i] | predicted[i]},
                      key=lambda c: (-sum(c in reference[i] for i in ids), c))
    names = con.names
    rows = []
    n = len(ids)
    for c in concepts:
        tp = sum(1 for i in ids if c in reference[i] and c in predicted[i])
        fn = sum(1 for i in ids if c in reference[i] and c not in predicted[i])
        fp = sum(1 for i in ids if c not in reference[i] and c in predicted[i])
        tn = n - tp - fn - fp
        acc = (tp + tn) / n if n else None
        pe = (((tp + fn) * (tp + fp)) + ((tn + fp) * (tn + fn))) / (n * n) if n else None
        kappa = (acc - pe) / (1 - pe) if n and pe is not None and pe < 1 else None
        rows.append({
            "concept": c,
            "name": names.get(c, c),
            "records": n,
            "csv_positive": tp + fn,
            "text_positive": tp + fp,
            "both": tp,
            "agreement": acc,
            "kappa": kappa,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "ppv": tp / (tp + fp) if tp + fp else None,
        })
    return rows


def markdown(rows: list[dict]) -> str:
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    out = ["| concept | name | csv + | text + | both | agreement | kappa | sensitivity | PPV |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| `{r['concept']}` | {r['name']} | {r['csv_positive']} | {r['text_positive']} | {r['both']} | "
                   f"{f(r['agreement'])} | {f(r['kappa'])} | {f(r['sensitivity'])} | {f(r['ppv'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if len(argv) != 1:
        print("usage: python -m ecgtool.labels.ludb LUDB_DIR [--json]", file=sys.stderr)
        return 2
    base = Path(argv[0])
    ref, unmatched = reference_labels(base / "ludb.csv")
    rows = agreement(header_texts(base), ref)
    if as_json:
        print(json.dumps({"rows": rows, "unmatched_csv_lines": unmatched}, indent=2))
    else:
        print(markdown(rows))
        if unmatched:
            print(f"\nludb.csv lines with no entry in ludb-csv-map.csv: {len(unmatched)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
