"""From a record table's metadata columns to a label table (the report of what was found is
:mod:`ecgtool.labels.report`).

Per record:

1. every source column is read into *tokens* (see :mod:`ecgtool.labels.vocabulary`):
   SNOMED codes (plus the codes the challenge scores as equivalent, plus the
   concepts the code stands for), PTB-XL SCP codes (statement, diagnostic
   subclass and superclass, concepts), CinC 2017 classes, and concepts read
   from free text (negated ones are kept apart; uncertain ones carry a weight);
2. concepts imply their ancestors (``hierarchy.csv``);
3. each label of the target vocabulary is 1 when a token it names is present
   (weight: the highest of those tokens), 0 otherwise, and missing (null) for
   a record about which the sources say nothing recognisable, or nothing in
   the vocabulary's scope (e.g. a PTB-XL record without diagnostic statements
   for the superclass task); a label that nothing maps to is missing for
   every record.

Here: the source columns (:class:`SourceColumns`, found by name or given), the
per-record :class:`RecordLabeler` and its :class:`Findings`, the input table
(:class:`InputTable`: a record table or a plain CSV), and :func:`label_batches`,
which labels batch after batch into :func:`output_schema` and counts into a
:class:`ecgtool.labels.report.Report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa

from ecgtool.io import schema as S
from ecgtool.io.join import JoinTable
from ecgtool.errors import InputError, UsageError
from ecgtool.labels import sources as src_parse
from ecgtool.labels.vocabulary import (
    CINC2017_CLASSES,
    Concepts,
    Vocabulary,
    default_concepts,
    scp_table,
    snomed_table,
)

UNCERTAIN_POLICIES = ("positive", "negative", "missing")
WEIGHT_SUFFIX = S.WEIGHT_SUFFIX

# Column names tried when none is given (first present wins).
AUTO_COLUMNS = {
    "codes": ["dx", "Dx", "snomed", "snomed_codes", "dx_codes", "codes"],
    "scp": ["scp_codes"],
    "classes": ["cinc2017_label", "label", "class", "rhythm_class"],
    "text": ["diagnosis", "diagnoses", "dx_text", "comments", "statements", "report"],
}


@dataclass
class SourceColumns:
    text: list[str] = field(default_factory=list)
    codes: str | None = None
    scp: str | None = None
    classes: str | None = None

    def columns(self) -> list[str]:
        return [c for c in [*self.text, self.codes, self.scp, self.classes] if c]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.text:
            d["text"] = list(self.text)
        for k in ("codes", "scp", "classes"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    @classmethod
    def auto(cls, names: Iterable[str]) -> "SourceColumns":
        names = list(names)
        out = cls()
        for kind in ("codes", "scp", "classes"):
            for c in AUTO_COLUMNS[kind]:
                if c in names:
                    setattr(out, kind, c)
                    break
        # header diagnoses ride along with codes; a free 'report' column only when
        # nothing coded is there (PTB-XL's German reports next to scp_codes)
        for c in AUTO_COLUMNS["text"]:
            if c in names and (c != "report" or not (out.codes or out.scp or out.classes)):
                out.text = [c]
                break
        return out


def default_vocabulary_for(cols: SourceColumns) -> str:
    if cols.scp:
        return "ptbxl-superclass"
    if cols.classes:
        return "cinc2017"
    if cols.codes:
        return "snomed"
    return "concepts"


# --------------------------------------------------------------------------- per record


@dataclass
class Findings:
    positive: dict[str, float] = field(default_factory=dict)
    negative: set[str] = field(default_factory=set)
    items: dict[str, set[str]] = field(default_factory=dict)  # source item -> tokens it gave
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (source, code)
    unrecognised_text: str | None = None
    has_input: bool = False
    dropped: int = 0  # known statements left out (below --min-likelihood)

    def add(self, item: str, tokens: Iterable[str], weight: float = 1.0) -> None:
        toks = set(tokens)
        self.items.setdefault(item, set()).update(toks)
        for t in toks:
            self.positive[t] = max(weight, self.positive.get(t, 0.0))


class RecordLabeler:
    """Turns one record's source values into label values for a vocabulary."""

    def __init__(
        self,
        vocab: Vocabulary,
        concepts: Concepts | None = None,
        min_likelihood: float = 0.0,
        hierarchy: bool = True,
        uncertain: str = "positive",
    ):
        if uncertain not in UNCERTAIN_POLICIES:
            raise UsageError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, not {uncertain!r}")
        if not 0.0 <= min_likelihood <= 100.0:
            raise UsageError(f"--min-likelihood must be between 0 and 100, not {min_likelihood}")
        self.vocab = vocab
        self.concepts = concepts or default_concepts()
        self.min_likelihood = float(min_likelihood)
        self.hierarchy = hierarchy
        self.uncertain = uncertain
        self.vocab_tokens = set().union(*(lab.tokens() for lab in vocab.labels)) if vocab.labels else set()
        self._code_cache: dict[str, set[str]] = {}
        self._snomed = None
        self._scp = None

    @property
    def snomed(self):
        if self._snomed is None:
            self._snomed = snomed_table()
        return self._snomed

    @property
    def scp(self):
        if self._scp is None:
            self._scp = scp_table()
        return self._scp

    # -- sources -> tokens ---------------------------------------------------
    def _snomed_tokens(self, code: str) -> set[str] | None:
        key = "snomed:" + code
        if key in self._code_cache:
            return self._code_cache[key]
        t = self.snomed
        if code not in t.names and key not in self.concepts.by_code:
            return None
        toks = {key} | {f"snomed:{e}" for e in t.equivalent.get(code, ())}
        toks |= self.concepts.concepts_for_code(key, t.names.get(code))
        self._code_cache[key] = toks
        return toks

    def _scp_tokens(self, code: str) -> set[str] | None:
        key = "scp:" + code
        if key in self._code_cache:
            return self._code_cache[key]
        t = self.scp
        if code not in t.description:
            return None
        toks = {key}
        if code in t.diagnostic:
            toks.add(f"scp_subclass:{t.subclass[code]}")
            toks.add(f"scp_class:{t.superclass[code]}")
        toks |= self.concepts.concepts_for_code(key, t.description.get(code))
        self._code_cache[key] = toks
        return toks

    def findings(self, row: dict[str, Any], cols: SourceColumns) -> Findings:
        f = Findings()
        if cols.codes:
            for code in src_parse.parse_codes(row.get(cols.codes)):
                f.has_input = True
                toks = self._snomed_tokens(code)
                if toks is None:
                    f.unknown.append(("snomed", code))
                else:
                    f.add("snomed:" + code, toks)
        if cols.scp:
            for code, lik in src_parse.parse_scp(row.get(cols.scp)).items():
                f.has_input = True
                toks = self._scp_tokens(code)
                if toks is None:
                    f.unknown.append(("scp", code))
                    continue
                # likelihood 0 means "not given" in PTB-XL: kept, with full weight
                if 0.0 < lik < self.min_likelihood:
                    f.dropped += 1
                    continue
                weight = lik / 100.0 if 0.0 < lik < 100.0 else 1.0
                f.add("scp:" + code, toks, weight)
        if cols.classes:
            cls = src_parse.parse_class(row.get(cols.classes))
            if cls is not None:
                f.has_input = True
                key = "cinc2017:" + cls
                if cls in CINC2017_CLASSES or key in self.concepts.by_code:
                    f.add(key, {key} | self.concepts.by_code.get(key, set()))
                else:
                    f.unknown.append(("class", cls))
        texts = []
        for c in cols.text:
            t = src_parse.parse_text(row.get(c))
            if t:
                texts.append(t)
        if texts:
            f.has_input = True
            text = "\n".join(texts)
            res = self.concepts.labeler.label(text)
            for cid, w in res.positive.items():
                f.add(cid, {cid}, w)
            f.negative |= res.negative
            if not res.recognised:
                f.unrecognised_text = text
        if self.hierarchy:
            concept_ids = {t for t in f.positive if ":" not in t}
            neg = set(f.negative)
            pos, neg = self.concepts.hierarchy.expand({t: f.positive[t] for t in concept_ids}, neg)
            for t, w in pos.items():
                f.positive[t] = max(w, f.positive.get(t, 0.0))
            f.negative = neg - set(f.positive)
            for item, toks in f.items.items():
                extra = set()
                for t in toks:
                    if ":" not in t:
                        extra |= self.concepts.hierarchy.ancestors(t)
                toks |= extra
        return f

    def status(self, f: Findings) -> str:
        """labelled, empty (no source value), unrecognised (nothing known), out_of_scope
        (nothing in the vocabulary's scope, or every statement below --min-likelihood)."""
        if not f.has_input:
            return "empty"
        if not f.positive and not f.negative:
            return "out_of_scope" if f.dropped else "unrecognised"
        if self.vocab.scope and not any(t.startswith(tuple(self.vocab.scope)) for t in f.positive):
            return "out_of_scope"
        return "labelled"

    def values(self, f: Findings, status: str) -> list[tuple[int | None, float | None]]:
        out: list[tuple[int | None, float | None]] = []
        if status != "labelled":
            return [(None, None)] * len(self.vocab.labels)
        pos = f.positive
        for lab in self.vocab.labels:
            if not lab.mapped:  # nothing can assert it: unknown, not negative
                out.append((None, None))
                continue
            w = None
            if lab.match:
                ws = [pos[t] for t in lab.match if t in pos]
                if ws:
                    w = max(ws)
            if w is None and lab.all and all(t in pos for t in lab.all):
                w = min(pos[t] for t in lab.all)
            if w is None:
                out.append((0, 1.0))
            elif w >= 1.0:
                out.append((1, 1.0))
            elif self.uncertain == "positive":
                out.append((1, w))
            elif self.uncertain == "negative":
                out.append((0, 1.0))
            else:
                out.append((None, None))
        return out

    def unmapped_items(self, f: Findings) -> list[str]:
        return [item for item, toks in f.items.items() if not (toks & self.vocab_tokens)]


# --------------------------------------------------------------------------- tables


class InputTable:
    """A record table or a plain CSV opened once; ``batches(columns)`` reads only
    those columns where the format allows it (Parquet files skip the signal)."""

    def __init__(self, src: str, batch_size: int = 1024):
        from ecgtool.io import open_table
        from ecgtool.io.schema import TableMeta

        self.src = src
        self.batch_size = batch_size
        self._reader = None
        self._csv_sep = None
        if src != "-" and Path(src).suffix.lower() in (".csv", ".tsv"):
            import pandas as pd

            if not Path(src).exists():
                raise InputError(f"{src}: no such file")
            self._csv_sep = "\t" if src.lower().endswith(".tsv") else ","
            try:
                self.names = [str(c) for c in pd.read_csv(src, sep=self._csv_sep, nrows=0).columns]
            except Exception as exc:
                raise InputError(f"{src}: cannot read as CSV ({exc})") from None
            self.meta = TableMeta(kind="records")
            self.format = "csv"
            self.types = {}
            return
        self._reader = open_table(src, batch_size=batch_size)
        self.names = list(self._reader.schema.names)
        self.meta = self._reader.meta
        self.format = self._reader.format
        self.types = {f.name: f.type for f in self._reader.schema}

    def batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        want = [c for c in columns if c in self.names]
        if self.format == "csv":
            import pandas as pd

            for chunk in pd.read_csv(self.src, sep=self._csv_sep, dtype=str, chunksize=self.batch_size,
                                     keep_default_na=False, usecols=want):
                chunk = chunk.replace({"": None})
                yield pa.RecordBatch.from_pandas(chunk, preserve_index=False)
            return
        if self.format == "parquet" and self.src != "-":
            import pyarrow.parquet as pq

            self.close()
            yield from pq.ParquetFile(self.src).iter_batches(batch_size=self.batch_size, columns=want)
            return
        try:
            for b in self._reader:
                yield b.select(want)
        finally:
            self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


@dataclass
class LabelOptions:
    vocabulary: Vocabulary
    columns: SourceColumns
    id_column: str = "record_id"
    split_column: str | None = None
    min_likelihood: float = 0.0
    uncertain: str = "positive"
    weights: bool = False
    hierarchy: bool = True
    keep: list[str] = field(default_factory=list)  # columns copied to the output (patient_id, split)


def output_schema(opts: LabelOptions, types: dict[str, pa.DataType]) -> pa.Schema:
    keep = [pa.field(c, types.get(c, pa.string())) for c in opts.keep]
    return pa.schema(S.labels_fields([lab.name for lab in opts.vocabulary.labels], keep, opts.weights))


def label_batches(
    batches: Iterable[pa.RecordBatch],
    opts: LabelOptions,
    schema: pa.Schema,
    report: "Report",  # noqa: F821  (ecgtool.labels.report.Report; that module imports this one)
    join: JoinTable | None = None,
) -> Iterator[pa.RecordBatch]:
    """Label every record of every batch; yields label batches with ``schema``.

    Labels belong to records: a row whose record id came earlier (the other
    segments of a record after ``preprocess --segment``) is counted in
    ``report.repeated_rows`` and not labelled again, so the output has one
    row per record id.
    """
    labeler = RecordLabeler(opts.vocabulary, min_likelihood=opts.min_likelihood,
                            hierarchy=opts.hierarchy, uncertain=opts.uncertain)
    cols = opts.columns
    n_labels = len(opts.vocabulary.labels)
    joined = unjoined = 0
    unjoined_examples: list[str] = []
    source_cols = cols.columns()
    memo: dict[tuple, tuple] = {}  # identical source values give identical labels (reports repeat)
    seen: set[str] = set()
    for batch in batches:
        rows = batch.to_pylist()
        if join is not None and join.on is None:
            join.choose_key([str(r.get(opts.id_column)) for r in rows[:200]])
        ids, keep_vals = [], {c: [] for c in opts.keep}
        vals = [[] for _ in range(n_labels)]
        wts = [[] for _ in range(n_labels)]
        for r in rows:
            rid = r.get(opts.id_column)
            rid = None if rid is None else (str(int(rid)) if isinstance(rid, float) and rid.is_integer() else str(rid))
            if rid is not None:
                if rid in seen:
                    report.repeated_rows += 1
                    continue
                seen.add(rid)
            if join is not None:
                extra = join.lookup(rid) if rid is not None else None
                if extra is None:
                    unjoined += 1
                    if len(unjoined_examples) < 5:
                        unjoined_examples.append(rid)
                else:
                    joined += 1
                    for k, v in extra.items():
                        if r.get(k) is None:
                            r[k] = v
            key = tuple(_freeze(r.get(c)) for c in source_cols)
            hit = memo.get(key)
            if hit is None:
                f = labeler.findings(r, cols)
                status = labeler.status(f)
                hit = (f, status, labeler.values(f, status), labeler.unmapped_items(f))
                if len(memo) >= 100_000:
                    memo.clear()
                memo[key] = hit
            f, status, values, unmapped = hit
            split = r.get(opts.split_column) if opts.split_column else None
            report.add(rid or "?", split, status, values, f, unmapped)
            ids.append(rid)
            for c in opts.keep:
                keep_vals[c].append(r.get(c))
            for i, (v, w) in enumerate(values):
                vals[i].append(v)
                wts[i].append(w)
        arrays = [pa.array(ids, pa.string())]
        for c in opts.keep:
            arrays.append(_array(keep_vals[c], schema.field(c).type))
        arrays += [pa.array(v, pa.int8()) for v in vals]
        if opts.weights:
            arrays += [pa.array(w, pa.float32()) for w in wts]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        if join is not None:
            report.join = {
                "file": join.path,
                "on": join.on,
                "headerless": join.headerless,
                "joined": joined,
                "not_joined": unjoined,
                "not_joined_examples": unjoined_examples,
                "join_rows_unused": len(join.rows) - len(join.used),
            }


def _freeze(v: Any):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    return v


def _array(values: list, type_: pa.DataType) -> pa.Array:
    if pa.types.is_integer(type_):
        try:
            values = [None if v is None else int(v) for v in values]
        except (TypeError, ValueError):
            pass
    try:
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
