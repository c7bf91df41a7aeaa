"""Put the label columns of several label tables (from ``ecgtool label``) side by side.

    python examples/default-model/merge_labels.py A.parquet B.parquet -o merged.parquet

Rows are joined by record_id (the union of the ids); a label a table does not
have for a record stays null, so ``ecgtool finetune`` masks it out of the loss:
PTB-XL records train the superclass outputs (and AF, from its AFIB/AFLT
statements), CinC 2017 records the rhythm outputs. A label that several tables
have is combined: each record takes the first non-null value. Other columns (patient_id, split, ...) are taken from the first
table that has them. ``ecgtool finetune -l`` takes one label table; this is the
only step of the default model's recipe that is not an ecgtool command.
"""

import argparse
import sys

import pyarrow as pa

from ecgtool.io import read_table, write_table

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("tables", nargs="+")
p.add_argument("-o", "--output", required=True)
a = p.parse_args()

ids: list[str] = []
seen: set[str] = set()
loaded = []
for path in a.tables:
    table, meta = read_table(path)
    names = list(meta.info.get("label_names") or [])
    if not names:
        sys.exit(f"{path}: no label_names in its metadata (not a table from 'ecgtool label')")
    rid = [str(v) for v in table.column("record_id").to_pylist()]
    for r in rid:
        if r not in seen:
            seen.add(r)
            ids.append(r)
    loaded.append((path, table, meta, names, {r: i for i, r in enumerate(rid)}))

cols: dict[str, pa.Array] = {"record_id": pa.array(ids, pa.string())}
label_names: list[str] = []
for path, table, meta, names, pos in loaded:
    take = pa.array([pos.get(r) for r in ids], pa.int64())
    for name in table.schema.names:
        if name == "record_id" or (name in cols and name not in names):
            continue
        col = table.column(name).combine_chunks().take(take)
        if name in cols:
            if name not in label_names:
                sys.exit(f"{path}: label {name!r} is a column of an earlier table that is not a label")
            import pyarrow.compute as pc

            col = pc.coalesce(cols[name], col.cast(cols[name].type))
        cols[name] = col
    label_names += [n for n in names if n not in label_names]
first_meta = loaded[0][2]
meta = first_meta.derive(kind="labels", label_names=label_names)
write_table(a.output, pa.table(cols), meta.add_step(sys.argv))
print(f"{len(ids)} records, {len(label_names)} labels: {', '.join(label_names)}", file=sys.stderr)
