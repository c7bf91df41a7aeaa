"""Labels from what ECG sources carry: SNOMED CT codes, PTB-XL SCP codes, CinC 2017
classes and free-text statements, mapped into named target vocabularies.

Vocabularies, patterns, cue words and the hierarchy are data files in
``ecgtool/labels/vocab/`` (see docs/labels.md); the code here only applies them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ecgtool.io.join import JoinTable  # noqa: F401  (label --join: the same rule as convert --join)
from ecgtool.labels.labeler import (  # noqa: F401
    Findings,
    LabelOptions,
    RecordLabeler,
    SourceColumns,
    default_vocabulary_for,
    label_batches,
    output_schema,
)
from ecgtool.labels.report import (  # noqa: F401
    Report,
    pos_weight,
    report_rows,
    write_report,
)
from ecgtool.labels.vocabulary import (  # noqa: F401
    Hierarchy,
    Label,
    Vocabulary,
    default_concepts,
    list_vocabularies,
    load_vocabulary,
    scp_table,
    snomed_table,
)


def label_text(text: str):
    """Concepts in a free-text statement: a TextResult (positive: concept -> weight, negative)."""
    return default_concepts().labeler.label(text)


def run_label(
    src: str,
    dest: str | None,
    vocab: str | None = None,
    columns: SourceColumns | None = None,
    id_column: str | None = None,
    split_column: str | None = None,
    min_likelihood: float = 0.0,
    uncertain: str = "positive",
    weights: bool = False,
    hierarchy: bool = True,
    join: str | None = None,
    join_on: str | None = None,
    fmt: str | None = None,
    batch_size: int = 1024,
    argv: list[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[dict[str, Any], "Any"]:
    """Label a record table (or a plain CSV) and write the label table to ``dest``.

    Returns (report dict, the output TableMeta). ``dest=None`` writes nothing
    (report only). ``shard`` (K, N): only the records of shard K of N, split by
    the same hash of the record id as every other command's ``--shard``.
    """
    from ecgtool.errors import UsageError
    from ecgtool.io import TableWriter
    from ecgtool.labels.labeler import InputTable

    jt = JoinTable(join, join_on) if join else None
    inp = InputTable(src, batch_size)
    try:
        names = inp.names
        all_names = list(names) + ([c for c in jt.columns if c not in names] if jt else [])
        auto = not (columns is not None and columns.columns())
        cols = SourceColumns.auto(all_names) if auto else columns
        if not cols.columns():
            raise UsageError(
                f"{src}: no label source column found (columns: {', '.join(all_names[:20])})",
                "name one with --text-column, --codes-column, --scp-column or --class-column",
            )
        for c in cols.columns():
            if c not in all_names:
                raise UsageError(f"{src}: no column {c!r}", f"columns: {', '.join(all_names[:30])}")
        if id_column is None:
            id_column = next((c for c in ("record_id", "record", "ecg_id", "ID", "id") if c in names), None)
            if id_column is None:
                raise UsageError(f"{src}: no record id column", "name it with --id-column")
        elif id_column not in names:
            raise UsageError(f"{src}: no column {id_column!r} (--id-column)")
        if split_column is not None and split_column not in all_names:
            raise UsageError(f"{src}: no split column {split_column!r}", f"columns: {', '.join(all_names[:30])}")
        first = None
        rest = iter(())
        if auto and jt is None:
            # columns that exist but are empty in the first batch (convert writes 'dx' for
            # every source) do not count as sources
            it = inp.batches(list(dict.fromkeys([id_column] + cols.columns() +
                                                [c for c in ("patient_id", split_column) if c and c in names])))
            first = next(it, None)
            rest = it
            if first is not None:
                cols = _drop_empty(cols, first)
        vocabulary = load_vocabulary(vocab or default_vocabulary_for(cols))
        keep = [c for c in ("patient_id",) if c in all_names]
        if split_column and split_column not in keep:
            keep.append(split_column)
        keep = [c for c in keep if c != id_column]
        opts = LabelOptions(vocabulary, cols, id_column, split_column, min_likelihood, uncertain, weights,
                            hierarchy, keep)
        need = list(dict.fromkeys([id_column] + cols.columns() + keep))
        report = Report(vocabulary, cols, split_column)
        types = dict(inp.types)
        if jt is not None:
            import re as _re

            for c in keep:
                if c not in types and c in jt.columns and c != "patient_id":  # ids stay text, as in convert
                    vals = [r.get(c) for r in jt.rows]
                    if vals and all(v is None or _re.fullmatch(r"-?\d+", str(v)) for v in vals):
                        types[c] = pa.int64()
        schema = output_schema(opts, types)
        out_meta = inp.meta.derive(
            kind="labels",
            label_names=vocabulary.label_names,
            vocabulary=vocabulary.name,
            vocabulary_title=vocabulary.title,
            label_sources=cols.describe(),
            label_policy={
                "uncertain": uncertain,
                "min_likelihood": min_likelihood,
                "hierarchy": hierarchy,
                "weights": weights,
            },
        )
        out_meta.add_step(argv)
        if first is not None:
            batches = _chain_select(first, rest, need)
        elif auto and jt is None:
            batches = iter(())
        else:
            batches = inp.batches(need)
        if shard is not None:
            from ecgtool.io.shard import shard_batches

            batches = shard_batches(batches, shard, column=id_column)
        if dest is None:
            for _ in label_batches(batches, opts, schema, report, jt):
                pass
        else:
            with TableWriter(dest, schema, out_meta, fmt=fmt) as w:
                for b in label_batches(batches, opts, schema, report, jt):
                    w.write(b)
    finally:
        inp.close()
    return report.to_dict(), out_meta


def _drop_empty(cols: SourceColumns, batch) -> SourceColumns:
    def has_values(name: str) -> bool:
        if name not in batch.schema.names:
            return True
        col = batch.column(batch.schema.get_field_index(name))
        for v in col.to_pylist():
            if v not in (None, "", [], {}):
                return True
        return False

    kept = SourceColumns(
        text=[c for c in cols.text if has_values(c)],
        codes=cols.codes if cols.codes and has_values(cols.codes) else None,
        scp=cols.scp if cols.scp and has_values(cols.scp) else None,
        classes=cols.classes if cols.classes and has_values(cols.classes) else None,
    )
    return kept if kept.columns() else cols


def _chain_select(first, rest, need):
    yield first.select([c for c in need if c in first.schema.names])
    for b in rest:
        yield b.select([c for c in need if c in b.schema.names])
