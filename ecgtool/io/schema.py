"""The record table: column names, the signal column, and the table metadata.

See docs/format.md for the contract in words. In short:

* one row per ECG (or per segment), columns ``record_id`` (string), ``fs``
  (float64, Hz), ``leads`` (list<string>), ``signal`` (lead-major nested list
  of float32: ``signal[i][j]`` is lead ``j`` of row ``i``);
* ``signal`` is ``list<list<float32>>`` while records differ in length, and
  ``fixed_size_list<fixed_size_list<float32, T>, L>`` once every row shares
  its lead set and length (after ``preprocess``), so that a batch converts to
  an ``(N, L, T)`` numpy array without copying;
* the schema metadata key ``ecgtool`` holds a JSON object: format version,
  kind, processing history and kind-specific fields.

This module is the one home of the format: :data:`COLUMNS` registers every column a command
writes (name, Arrow type, the kinds that have it, where it is required, meaning), and the
builders (:func:`records_fields`, :func:`segments_fields`, :func:`embeddings_fields`,
:func:`predictions_fields`, :func:`labels_fields`, :func:`saliency_fields`) make the commands'
output fields from it; :mod:`ecgtool.io.metadata` registers the metadata keys, read through
:class:`TableMeta`'s typed accessors. tests/test_format_doc.py checks docs/format.md against both.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from ecgtool import __version__
from ecgtool.provenance import command_line
from ecgtool.errors import InputError
from ecgtool.io import arrays as A
from ecgtool.io.metadata import (  # noqa: F401  (the metadata registry, re-exported)
    ALL_KINDS,
    CORE_KEYS,
    KINDS,
    META_KEY_NAMES,
    META_KEYS,
    RESULT_KINDS,
    MetaFields,
    MetaKey,
    check_info,
)

FORMAT_VERSION = "1.0"
META_KEY = b"ecgtool"

RECORD_ID = "record_id"
FS = "fs"
LEADS = "leads"
SIGNAL = "signal"
SEGMENT = "segment"
PATIENT_ID = "patient_id"
SOURCE = "source"
LEAD_MASK = "lead_mask"
EMBEDDING = "embedding"
UNITS = "units"
LOCAL = "local"
FINDINGS = "findings"
PREDICTION_SET = "prediction_set"
UNCERTAIN = "uncertain"
LABEL = "label"
PROBABILITY = "probability"
METHOD = "method"
SALIENCY = "saliency"
QUALITY_COLUMNS = ("q_nan", "q_flat_leads", "q_clipping", "q_amplitude")
# the metadata columns every converted table has, and those only some formats fill (in this order)
CONVERT_METADATA = (SOURCE, UNITS, "age", "sex", "dx", "diagnosis", "base_datetime")
FORMAT_METADATA = (PATIENT_ID, "study_id", "device", "classification", "symptoms", "annotations", "q_out_of_range")
WEIGHT_SUFFIX = "__w"
DECISION_SUFFIX = "__decision"


@dataclass
class Preprocessing:
    """How a table was preprocessed (``ecgtool preprocess`` writes it; :attr:`TableMeta.preprocessing`)."""

    normalisation: str = "none"
    fs: float | None = None
    leads: tuple[str, ...] | None = None
    n_samples: int | None = None
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def physical_units(self) -> bool:
        """True when samples are still in physical units (mV), so leads may be derived from others."""
        return self.normalisation == "none"


@dataclass
class TableMeta(MetaFields):
    """What a table is and where it came from (stored in the schema metadata).

    The registered keys of ``info`` read as typed attributes (``meta.label_names``, ``meta.model``,
    ``meta.thresholds``, ... :mod:`ecgtool.io.metadata`); they are set with :meth:`derive` or
    :meth:`create`, which check them against the registry."""

    kind: str = "records"
    history: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    format_version: str = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "kind": self.kind,
                "history": self.history,
                **self.info,
            },
            sort_keys=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "input") -> "TableMeta":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{source}: the table's ecgtool metadata is not valid JSON ({exc})")
        version = str(obj.pop("format_version", FORMAT_VERSION))
        check_version(version, source)
        kind = obj.pop("kind", "records")
        history = obj.pop("history", [])
        return cls(kind=kind, history=history, info=obj, format_version=version)

    @classmethod
    def from_schema(cls, schema: pa.Schema, source: str = "input") -> "TableMeta":
        md = schema.metadata or {}
        if META_KEY in md:
            return cls.from_json(md[META_KEY], source)
        # A table written by something else: guess the kind from its columns.
        names = set(schema.names)
        kind = "records"
        if EMBEDDING in names:
            kind = "embeddings"
        elif SIGNAL not in names:
            kind = "labels"
        elif SEGMENT in names:
            kind = "segments"
        return cls(kind=kind)

    @property
    def preprocessing(self) -> Preprocessing | None:
        """The typed record of ``ecgtool preprocess`` (None: the table holds records as converted)."""
        pre = self.preprocess
        if pre is None:
            return None
        leads, n = self.leads, self.n_samples
        return Preprocessing(normalisation=self.normalisation or str(pre.get("normalisation", "none")),
                             fs=self.fs if self.fs is not None else pre.get("fs"),
                             leads=tuple(leads) if leads else None, n_samples=n or None,
                             preset=pre.get("preset"), settings=pre)

    def derive(self, kind: str | None = None, **info: Any) -> "TableMeta":
        """A copy for a command's output: same history and fields, the new kind, and the fields of
        ``info`` (registered keys of that kind, :func:`check_info`) set."""
        kind = kind or self.kind
        check_info(kind, info)
        return TableMeta(kind=kind, history=list(self.history), info={**self.info, **info})

    @classmethod
    def create(cls, kind: str, **info: Any) -> "TableMeta":
        """A new table's metadata (no history yet), its fields checked as :meth:`derive` does."""
        check_info(kind, info)
        return cls(kind=kind, info=dict(info))

    def add_step(self, argv: Sequence[str] | None = None) -> "TableMeta":
        """Append this command (like samtools' @PG lines) to the history: ``argv``, or the command line
        the CLI is running (:func:`command_line`); a library call records no command."""
        argv = list(command_line() if argv is None else argv) or None
        if argv:
            argv[0] = "ecgtool"
        self.history.append(
            {
                "program": "ecgtool",
                "version": __version__,
                "command": shlex.join(argv) if argv else None,
                "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        return self

    def with_schema(self, schema: pa.Schema) -> pa.Schema:
        md = dict(schema.metadata or {})
        md[META_KEY] = self.to_json().encode()
        return schema.with_metadata(md)


def check_version(version: str, source: str = "input") -> None:
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise InputError(f"{source}: unreadable table format version {version!r}")
    ours = int(FORMAT_VERSION.split(".")[0])
    if major > ours:
        raise InputError(
            f"{source}: table format {version} is newer than this ecgtool understands ({FORMAT_VERSION})",
            "upgrade ecgtool to read it",
        )


# --------------------------------------------------------------------------- the columns


@dataclass(frozen=True)
class Column:
    """One registered column: its Arrow type as docs/format.md writes it (``text``; capitals L, T, D
    stand for sizes) and as Arrow builds it (``arrow``: a type, or a function of those sizes), the
    kinds of table that have it, those where it is ``required``, and its meaning."""

    name: str
    text: str
    arrow: pa.DataType | Callable[..., pa.DataType]
    kinds: tuple[str, ...]
    required: tuple[str, ...]
    meaning: str

    def type(self, **sizes: int | None) -> pa.DataType:
        return self.arrow(**sizes) if callable(self.arrow) else self.arrow

    def field(self, name: str | None = None, **sizes: int | None) -> pa.Field:
        """The column's field (``name``: the concrete name of a per-label column such as ``<label>``)."""
        return pa.field(name or self.name, self.type(**sizes))

    def accepts(self, type_: pa.DataType) -> bool:
        """Whether ``type_`` is one this column is written with (any sizes)."""
        return type_matches(self.text, type_)


_SIGNAL_TYPE = "list<list<float32>> or fixed_size_list<fixed_size_list<float32, T>, L>"
_SIGNALS = ("records", "segments")
_CARRIED = ("records", "segments", "embeddings", "predictions")  # input columns a per-record output keeps
_RAW = ("records", "segments", "embeddings", "predictions", "saliency")


def _col(name, text, arrow, kinds, required, meaning) -> Column:
    return Column(name, text, arrow, tuple(kinds), tuple(kinds if required is True else required or ()), meaning)


_STR, _F64, _I32, _STRS = pa.string(), pa.float64(), pa.int32(), pa.list_(pa.string())
COLUMNS: tuple[Column, ...] = (
    _col(RECORD_ID, "string", _STR, KINDS, True, "identifies the source ECG; unique in a records table, "
         "with `segment` in a segments table"),
    _col(SEGMENT, "int32", _I32, ("records", "segments", "embeddings", "predictions"), ("segments",),
         "window index within the record (0, 1, ...): from `preprocess --segment` (kept when such a table "
         "is preprocessed again), and in embeddings and predictions with `--pool none` / `--aggregate none`"),
    _col(FS, "float64", _F64, _RAW, _SIGNALS + ("saliency",), "sampling rate in Hz (saliency: the model's)"),
    _col(LEADS, "list<string>", _STRS, _RAW, _SIGNALS + ("saliency",),
         "lead names in the order of the signal rows, canonical spelling"),
    _col(SIGNAL, _SIGNAL_TYPE, lambda L=None, T=None: signal_type(L, T), _SIGNALS + ("saliency",), True,
         "the samples, lead-major (see below)"),
    _col(LEAD_MASK, "fixed_size_list<bool, L> or list<bool>",
         lambda L=None: pa.list_(pa.bool_(), L) if L else pa.list_(pa.bool_()), _CARRIED, (),
         "after `preprocess` with chosen leads: false where a lead was absent and zero-filled"),
    _col("q_nan", "int32", _I32, _CARRIED, (), "after `preprocess`: NaN samples"),
    _col("q_flat_leads", "int32", _I32, _CARRIED, (), "after `preprocess`: flat leads (range below 0.01 mV)"),
    _col("q_clipping", "int32", _I32, _CARRIED, (), "after `preprocess`: leads that hit a rail"),
    _col("q_amplitude", "int32", _I32, _CARRIED, (), "after `preprocess`: leads whose range exceeds 15 mV"),
    _col(SOURCE, "string", _STR, _CARRIED, (), "the file the record was read from"),
    _col(UNITS, "list<string>", _STRS, _CARRIED, (), "each lead's unit as the source states it"),
    _col("age", "float64", _F64, _CARRIED, (), "age in years"),
    _col("sex", "string", _STR, _CARRIED, (), "`M` or `F` whatever the source"),
    _col("dx", "list<string>", _STRS, _CARRIED, (), "SNOMED CT codes (a WFDB header's `# Dx:`)"),
    _col("diagnosis", "string", _STR, _CARRIED, (), "the source's diagnosis statements"),
    _col("base_datetime", "timestamp[us]", pa.timestamp("us"), _CARRIED, (), "when the recording started"),
    _col(PATIENT_ID, "string", _STR, _CARRIED + ("labels",), (),
         "text without a trailing `.0`; needed for patient-grouped splits and CMSC"),
    _col("study_id", "string", _STR, _CARRIED, (), "the archive's study or exam id (MIMIC-IV-ECG, CODE-15)"),
    _col("device", "string", _STR, _CARRIED, (), "the recording device"),
    _col("classification", "string", _STR, _CARRIED, (), "Apple Watch's own classification"),
    _col("symptoms", "string", _STR, _CARRIED, (), "symptoms noted with an Apple Watch ECG"),
    _col("annotations", "list<string>", _STRS, _CARRIED, (), "EDF+ annotations (`+ONSET TEXT`)"),
    _col("q_out_of_range", "int64", pa.int64(), _CARRIED, (), "EDF samples outside the declared physical range"),
    _col(EMBEDDING, "fixed_size_list<float32, D>", lambda D: pa.list_(pa.float32(), D), ("embeddings",), True,
         "one vector per row"),
    _col(LOCAL, "list<fixed_size_list<float32, D>>", lambda D: pa.list_(pa.list_(pa.float32(), D)),
         ("embeddings",), (), "`--local`: the per-frame features, in time order"),
    _col("<label>", "float32", pa.float32(), ("predictions",), True,
         "one per name of `label_names`: the label's probability"),
    _col(FINDINGS, "list<string>", _STRS, ("predictions",), True,
         "the labels at or above their threshold, most probable first"),
    _col(PREDICTION_SET, "list<string>", _STRS, ("predictions",), (),
         "a conformally calibrated multi-class model: the classes of the conformal set"),
    _col("<label>" + DECISION_SUFFIX, "string", _STR, ("predictions",), (),
         "a conformally calibrated multi-label model: positive, negative or abstain (null: not calibrated)"),
    _col(UNCERTAIN, "list<string>", _STRS, ("predictions",), (),
         "a conformally calibrated multi-label model: the labels it abstains on"),
    _col("<label>", "int8", pa.int8(), ("labels",), True,
         "one per name of `label_names`: 1, 0, or null (nothing known about the record)"),
    _col("<label>" + WEIGHT_SUFFIX, "float32", pa.float32(), ("labels",), (),
         "`--weights`: the label's likelihood weight"),
    _col(LABEL, "string", _STR, ("saliency",), True, "the label explained (null: a model without a head)"),
    _col(PROBABILITY, "float32", pa.float32(), ("saliency",), True, "its probability"),
    _col(METHOD, "string", _STR, ("saliency",), True, "`attention` or `gradient`"),
    _col(SALIENCY, "list<list<float32>>", lambda: signal_type(), ("saliency",), True,
         "per lead, the saliency of each sample of `signal`, 0 to 1"),
)
PASSTHROUGH_KINDS = ("records", "segments", "embeddings", "predictions", "labels")


def column_spec(name: str, kind: str, label_names: Sequence[str] = ()) -> Column | None:
    """The registered column ``name`` of a ``kind`` table (a per-label column through ``label_names``)."""
    for c in COLUMNS:
        if kind not in c.kinds:
            continue
        if c.name == name:
            return c
        if c.name.startswith("<label>") and any(name == n + c.name[len("<label>"):] for n in label_names):
            return c
    return None


def column(name: str, kind: str | None = None, **sizes: int | None) -> pa.Field:
    """The registered field ``name`` (``kind`` tells apart ``<label>`` columns of two kinds)."""
    for c in COLUMNS:
        if c.name == name and (kind is None or kind in c.kinds):
            return c.field(**sizes)
    raise KeyError(f"no registered column {name!r}" + (f" in {kind} tables" if kind else ""))


def _per_label(pattern: str, kind: str, names: Iterable[str]) -> list[pa.Field]:
    spec = next(c for c in COLUMNS if c.name == pattern and kind in c.kinds)
    return [spec.field(pattern.replace("<label>", n)) for n in names]


def records_fields(extra: Iterable[str] = ()) -> list[pa.Field]:
    """What ``convert`` writes: record id, rate, leads, the (ragged) signal, :data:`CONVERT_METADATA`,
    and those of :data:`FORMAT_METADATA` named in ``extra`` (in that order)."""
    extra = set(extra)
    return [column(n) for n in (RECORD_ID, FS, LEADS, SIGNAL, *CONVERT_METADATA)] + \
        [column(n) for n in FORMAT_METADATA if n in extra]


def segments_fields(n_leads: int | None, n_samples: int | None, segment: bool | pa.Field = False,
                    lead_mask: bool | pa.Field = False) -> list[pa.Field]:
    """What ``preprocess`` writes before the input's other columns (a segments table, or records
    when it cuts no windows): ``segment`` and ``lead_mask`` are left out (False), made (True) or
    the input's field (kept)."""
    def own(name, given, **sizes):
        return [] if given is False else [column(name, **sizes) if given is True else given]

    return ([column(RECORD_ID)] + own(SEGMENT, segment) + [column(FS), column(LEADS)]
            + [column(SIGNAL, L=n_leads, T=n_samples)] + own(LEAD_MASK, lead_mask, L=n_leads)
            + [column(c) for c in QUALITY_COLUMNS])


def embeddings_fields(dim: int, local: bool = False) -> list[pa.Field]:
    """The columns ``embed`` adds to the input's (``segment`` too with ``--pool none``)."""
    return [column(EMBEDDING, D=dim)] + ([column(LOCAL, D=dim)] if local else [])


def predictions_fields(label_names: Sequence[str], conformal_task: str | None = None) -> list[pa.Field]:
    """The columns ``predict`` adds: a probability per label, ``findings``, and with a conformal
    calibration (``conformal_task``: the model's task) the conformal set or the decisions."""
    fields = _per_label("<label>", "predictions", label_names) + [column(FINDINGS)]
    if conformal_task == "multiclass":
        fields.append(column(PREDICTION_SET))
    elif conformal_task is not None:
        fields += _per_label("<label>" + DECISION_SUFFIX, "predictions", label_names) + [column(UNCERTAIN)]
    return fields


def labels_fields(label_names: Sequence[str], keep: Sequence[pa.Field] = (), weights: bool = False) -> list[pa.Field]:
    """What ``label`` writes: record id, the ``keep`` columns (patient id, split), a value per label,
    and with ``weights`` a weight per label."""
    return ([column(RECORD_ID), *keep] + _per_label("<label>", "labels", label_names)
            + (_per_label("<label>" + WEIGHT_SUFFIX, "labels", label_names) if weights else []))


def saliency_fields() -> list[pa.Field]:
    """What ``saliency`` writes."""
    return [column(n) for n in (RECORD_ID, FS, LEADS, LABEL, PROBABILITY, METHOD, SIGNAL, SALIENCY)]


def type_text(type_: pa.DataType) -> str:
    """An Arrow type written as docs/format.md writes types (``list<string>``, ``fixed_size_list<float32, 12>``)."""
    if pa.types.is_fixed_size_list(type_):
        return f"fixed_size_list<{type_text(type_.value_type)}, {type_.list_size}>"
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return f"list<{type_text(type_.value_type)}>"
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(type_), str(type_))


def type_matches(text: str, type_: pa.DataType) -> bool:
    """Whether ``type_`` is one of the types ``text`` names (alternatives joined by `` or ``; a capital
    letter stands for any size)."""
    import re

    written = type_text(type_)
    return any(re.fullmatch(re.sub(r"\b[A-Z]\b", r"\\d+", re.escape(alt.strip())), written)
               for alt in text.split(" or "))


# --------------------------------------------------------------------------- signal column


def signal_type(n_leads: int | None = None, n_samples: int | None = None) -> pa.DataType:
    """Arrow type of the signal column: fixed shape when both sizes are given."""
    if n_leads is None or n_samples is None:
        return pa.list_(pa.list_(pa.float32()))
    return pa.list_(pa.list_(pa.float32(), n_samples), n_leads)


def is_fixed_signal(type_: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(type_) and pa.types.is_fixed_size_list(type_.value_type)


def fixed_shape(type_: pa.DataType) -> tuple[int, int] | None:
    """(leads, samples) of a fixed-shape signal type, else None."""
    if is_fixed_signal(type_):
        return type_.list_size, type_.value_type.list_size
    return None


def signals_to_arrow(signals: Sequence[np.ndarray], fixed: bool = False) -> pa.Array:
    """Build the signal column from (leads, samples) float32 arrays.

    With ``fixed=True`` every array must share one shape and the column is a
    fixed-size list of fixed-size lists.
    """
    if len(signals) == 0:
        return pa.array([], type=signal_type())
    if fixed:
        stack = np.ascontiguousarray(np.stack([np.asarray(s, dtype=np.float32) for s in signals]))
        n, n_leads, n_samples = stack.shape
        values = A.from_numpy(stack.reshape(-1), pa.float32())
        inner = pa.FixedSizeListArray.from_arrays(values, n_samples)
        return pa.FixedSizeListArray.from_arrays(inner, n_leads)
    lead_counts = np.array([s.shape[0] for s in signals], dtype=np.int64)
    outer_offsets = np.zeros(len(signals) + 1, dtype=np.int32)
    np.cumsum(lead_counts, out=outer_offsets[1:])
    lead_lengths = np.concatenate(
        [np.full(s.shape[0], s.shape[1] if s.ndim == 2 else 0, dtype=np.int64) for s in signals]
    )
    inner_offsets = np.zeros(len(lead_lengths) + 1, dtype=np.int64)
    np.cumsum(lead_lengths, out=inner_offsets[1:])
    if inner_offsets[-1] >= 2**31:
        raise ValueError("batch too large for one signal column chunk; use a smaller batch size")
    flat = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for s in signals])
    inner = pa.ListArray.from_arrays(A.from_numpy(inner_offsets.astype(np.int32)), A.from_numpy(flat, pa.float32()))
    return pa.ListArray.from_arrays(A.from_numpy(outer_offsets), inner)


def ragged_to_arrow(per_lead: Sequence[Sequence[np.ndarray]]) -> pa.Array:
    """Signal column from rows whose leads may differ in length (kept as stored)."""
    return pa.array(
        [[np.asarray(x, dtype=np.float32) for x in row] for row in per_lead],
        type=signal_type(),
    )


def signal_column(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    if SIGNAL not in batch.schema.names:
        raise InputError(
            f"the input has no '{SIGNAL}' column (columns: {', '.join(batch.schema.names)})",
            "give a record table made by 'ecgtool convert'",
        )
    col = batch.column(batch.schema.get_field_index(SIGNAL))
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col


def batch_signal_array(batch: pa.RecordBatch) -> np.ndarray:
    """The whole batch as an (N, L, T) float32 array (zero-copy for fixed-shape tables)."""
    col = signal_column(batch)
    shape = fixed_shape(col.type)
    if shape is not None:
        if col.null_count:
            raise InputError("the signal column has null rows")
        arr = A.to_numpy(col.flatten().flatten())
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        return arr.reshape(len(col), shape[0], shape[1])
    sigs = batch_signals(batch)
    shapes = {s.shape for s in sigs}
    if len(shapes) > 1:
        raise InputError(
            f"records differ in shape ({', '.join(str(s) for s in sorted(shapes)[:4])})",
            "run 'ecgtool preprocess' to give every record the same leads and length",
        )
    if not sigs:
        return np.zeros((0, 0, 0), dtype=np.float32)
    return np.stack(sigs)


def batch_signals(batch: pa.RecordBatch) -> list[np.ndarray]:
    """Each row's signal as a (leads, samples) float32 array (views where possible).

    A row whose leads differ in length raises :class:`ValueError`; read such
    rows lead by lead with :func:`row_leads`.
    """
    col = signal_column(batch)
    shape = fixed_shape(col.type)
    if shape is not None:
        return list(batch_signal_array(batch))
    rows = SignalRows(col)
    return [rows[i] for i in range(len(rows))]


class SignalRows:
    """The rows of a signal column as (leads, samples) float32 arrays (views where possible).

    The offsets and values are read once, so indexing every row of a batch
    costs one pass. A row that is null, or whose leads differ in length,
    raises :class:`ValueError`; read such rows lead by lead with :meth:`leads`.
    """

    def __init__(self, col: pa.Array):
        self.outer = A.offsets(col)
        self.inner = A.offsets(col.values)
        vals = A.to_numpy(col.values.values)
        self.values = vals if vals.dtype == np.float32 else vals.astype(np.float32)
        self.valid = A.valid(col) if col.null_count else None
        self.n = len(col)

    def __len__(self) -> int:
        return self.n

    def leads(self, i: int) -> list[np.ndarray]:
        """Row i as one array per lead (lengths may differ)."""
        a, b = self.outer[i], self.outer[i + 1]
        return [self.values[self.inner[k] : self.inner[k + 1]] for k in range(a, b)]

    def __getitem__(self, i: int) -> np.ndarray:
        if self.valid is not None and not self.valid[i]:
            raise ValueError("the signal is null")
        a, b = int(self.outer[i]), int(self.outer[i + 1])
        if b == a:
            return np.zeros((0, 0), dtype=np.float32)
        starts = self.inner[a:b]
        lengths = self.inner[a + 1 : b + 1] - starts
        if np.any(lengths != lengths[0]):
            raise ValueError(f"leads differ in length ({', '.join(str(int(x)) for x in lengths)} samples)")
        lo = int(starts[0])
        return self.values[lo : lo + int(lengths[0]) * (b - a)].reshape(b - a, int(lengths[0]))


def row_leads(col: pa.Array, i: int) -> list[np.ndarray]:
    """Row i of a signal column as a list of per-lead arrays (lengths may differ)."""
    return SignalRows(col).leads(i)


def row_signal(col: pa.Array, i: int) -> np.ndarray:
    """Row i of a signal column as a (leads, samples) float32 array (for many rows, use :class:`SignalRows`)."""
    return SignalRows(col)[i]


def numeric_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A numeric column as numpy (nulls -> NaN), or an error naming the column and its type."""
    col = batch.column(batch.schema.get_field_index(name))
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise InputError(f"column '{name}' holds {col.type}, not numbers",
                         f"write '{name}' as float64 (record tables from 'ecgtool convert' do)")
    return A.to_numpy(col).astype(np.float64, copy=False)


def column_values(batch: pa.RecordBatch, name: str, default: Any = None) -> list:
    if name not in batch.schema.names:
        return [default] * batch.num_rows
    return batch.column(batch.schema.get_field_index(name)).to_pylist()


def records_batch(
    rows: Iterable[dict],
    schema: pa.Schema | None = None,
    fixed: bool = False,
) -> pa.RecordBatch:
    """Build a record batch from dicts with ``record_id``, ``fs``, ``leads``,
    ``signal`` ((L, T) array) and any other columns.

    With ``schema`` the batch is cast to it (missing columns become nulls).
    """
    rows = list(rows)
    cols: dict[str, list] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, [])
    data: dict[str, pa.Array] = {}
    for name in cols:
        if name == SIGNAL:
            data[name] = signals_to_arrow([r[SIGNAL] for r in rows], fixed=fixed)
            continue
        values = [r.get(name) for r in rows]
        typ = None
        if schema is not None and name in schema.names:
            typ = schema.field(name).type
        try:
            data[name] = pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            data[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    batch = pa.RecordBatch.from_pydict(data)
    if schema is not None:
        batch = conform(batch, schema)
    return batch


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to ``schema``: reorder, add missing columns as nulls, cast types.

    Columns the schema does not know are an error (the writer's schema must
    have been built with them).
    """
    if batch.schema.equals(schema, check_metadata=False):
        return batch
    arrays = []
    for f in schema:
        if f.name in batch.schema.names:
            col = batch.column(batch.schema.get_field_index(f.name))
            if not col.type.equals(f.type):
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise InputError(
                        f"column '{f.name}' has type {col.type}, expected {f.type} ({exc})"
                    ) from None
            arrays.append(col)
        else:
            arrays.append(pa.nulls(batch.num_rows, type=f.type))
    extra = set(batch.schema.names) - set(schema.names)
    if extra:
        raise InputError(f"unexpected columns {sorted(extra)} in a batch")
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def replace_column(batch: pa.RecordBatch, name: str, array: pa.Array) -> pa.RecordBatch:
    """Set or add a column (in place of the old one, or at the end)."""
    names = batch.schema.names
    if name in names:
        i = names.index(name)
        return batch.set_column(i, name, array) if hasattr(batch, "set_column") else _rebuild(batch, name, array)
    return batch.append_column(name, array) if hasattr(batch, "append_column") else _rebuild(batch, name, array)


def _rebuild(batch: pa.RecordBatch, name: str, array: pa.Array) -> pa.RecordBatch:
    data = {n: batch.column(i) for i, n in enumerate(batch.schema.names)}
    data[name] = array
    return pa.RecordBatch.from_pydict(data)
