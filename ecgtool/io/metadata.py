"""The table metadata keys: one registry (name, type, the kinds that carry it, meaning) and the
typed accessors of :class:`ecgtool.io.schema.TableMeta`, which reads them through this module.

Every key lives in the object stored under the schema metadata key ``ecgtool`` (see
docs/format.md, whose "Table metadata" section tests/test_format_doc.py checks against
:data:`META_KEYS`). Three keys are the object's frame, present in every table
(:data:`CORE_KEYS`: ``format_version``, ``kind``, ``history``); the others are written by the
command that makes a kind and kept by the commands after it (``TableMeta.derive`` copies them).

Reading: ``meta.label_names``, ``meta.model``, ... give the value converted to the registered
type, or None where the table lacks the key (or holds something of another shape: a table
written by another program). Writing: ``meta.derive(kind=..., key=value, ...)`` or
``TableMeta.create(kind, key=value, ...)``, which refuse a key that is not registered, not
registered for the output kind, or a value of another type.
"""

from __future__ import annotations

from typing import Any, Generic, Iterable, TypeVar

T = TypeVar("T")

KINDS = ("records", "segments", "embeddings", "predictions", "labels", "saliency")
# the result tables of 'ecgtool search' (neighbours, votes; with --same-patient --compare: comparison); their
# columns are described in docs/retrieval.md
RESULT_KINDS = ("neighbours", "votes", "comparison")
ALL_KINDS = KINDS + RESULT_KINDS

_MODEL_RUNS = ("embeddings", "predictions", "saliency")
_SEARCHES = ("neighbours", "votes")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# type text (as docs/format.md writes it) -> (is a value of that type, the value as returned)
_TYPES: dict[str, tuple] = {
    "string": (lambda v: isinstance(v, str), str),
    "float": (_is_number, float),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), int),
    "bool": (lambda v: isinstance(v, bool), bool),
    "object": (lambda v: isinstance(v, dict), dict),
    "list<string>": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                     lambda v: [str(x) for x in v]),
    "list<float>": (lambda v: isinstance(v, (list, tuple)) and all(x is None or _is_number(x) for x in v),
                    lambda v: [None if x is None else float(x) for x in v]),
    "list<object>": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, dict) for x in v),
                     lambda v: [dict(x) for x in v]),
}


class MetaKey(Generic[T]):
    """One registered metadata key; on :class:`TableMeta` also its typed, read-only accessor."""

    def __init__(self, type_text: str, kinds: Iterable[str], meaning: str, name: str | None = None):
        if type_text not in _TYPES:
            raise ValueError(f"unknown metadata type {type_text!r}")
        self.type_text = type_text
        self.kinds = tuple(kinds)
        self.meaning = meaning
        self.name = name or ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = self.name or name

    def __repr__(self) -> str:
        return f"MetaKey({self.name!r}, {self.type_text!r}, kinds={self.kinds})"

    def accepts(self, value: Any) -> bool:
        """A value of the registered type (null is always allowed: not known)."""
        return value is None or _TYPES[self.type_text][0](value)

    def read(self, value: Any) -> T | None:
        if value is None or not self.accepts(value):
            return None
        return _TYPES[self.type_text][1](value)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return self.read(obj.info.get(self.name))

    def __set__(self, obj, value) -> None:
        raise AttributeError(f"table metadata is set with derive({self.name}=...) or TableMeta.create(...)")


CORE_KEYS = (
    MetaKey("string", ALL_KINDS, "table format version, major.minor (readers refuse a newer major)",
            name="format_version"),
    MetaKey("string", ALL_KINDS, "what the table holds: " + ", ".join(ALL_KINDS), name="kind"),
    MetaKey("list<object>", ALL_KINDS, "one entry per command that touched the data, oldest first: "
            "program, version, command (null from the Python API), time", name="history"),
)


class MetaFields:
    """The registered keys beyond the core three, as typed read-only attributes (the registry itself)."""

    info: dict[str, Any]

    # preprocess (kept by every table made from a preprocessed one)
    normalisation = MetaKey[str]("string", KINDS, "preprocess: the normalisation of the samples "
                                 "(`none`: still physical units, mV)")
    fs = MetaKey[float]("float", KINDS, "preprocess: the sampling rate of every row, Hz")
    leads = MetaKey[list]("list<string>", KINDS, "preprocess: the leads of every row, in signal order")
    n_samples = MetaKey[int]("int", KINDS, "preprocess: the samples per lead of every row")
    preprocess = MetaKey[dict]("object", KINDS, "preprocess: every setting of the step (preset, filters, "
                               "length, ...)")
    # a model's output
    model = MetaKey[str]("string", _MODEL_RUNS + RESULT_KINDS, "the model: its checkpoint file, "
                         "registered name, or `NAME (random init, seed S)`; for search results the index's")
    contract = MetaKey[dict]("object", _MODEL_RUNS, "the model's input contract (fs, leads, n_samples, "
                             "normalisation, ...)")
    architecture = MetaKey[str]("string", ("embeddings", "predictions"),
                                "the registered architecture the weights fit (null: none)")
    pretraining_data = MetaKey[list]("list<string>", ("embeddings", "predictions"),
                                     "the data the weights were trained on, from the model card (empty for "
                                     "random weights; null: unknown); for leakage warnings")
    embedding = MetaKey[dict]("object", ("embeddings",), "how the vectors were made: dim, pool, layer, "
                              "local, precision (and random_init: architecture, seed)")
    label_names = MetaKey[list]("list<string>", ("predictions", "labels", "comparison"),
                                "the label columns, in order")
    thresholds = MetaKey[list]("list<float>", ("predictions",), "per label of label_names: the "
                               "probability at or above which it is a finding")
    temperature = MetaKey[float]("float", ("predictions",), "the calibration temperature the logits "
                                 "were divided by")
    task = MetaKey[str]("string", ("predictions",), "`multilabel` or `multiclass`")
    aggregate = MetaKey[str]("string", ("predictions",), "how windows were combined per record: mean, "
                             "max or none")
    conformal = MetaKey[dict]("object", ("predictions",), "the checkpoint's conformal calibration "
                              "(method, alpha, the labels or classes calibrated, ...), when it has one")
    crops = MetaKey[int]("int", ("predictions",), "--crops: windows averaged per record")
    method = MetaKey[str]("string", ("saliency",), "`attention` or `gradient`")
    # label
    vocabulary = MetaKey[str]("string", ("labels",), "the target vocabulary's name")
    vocabulary_title = MetaKey[str]("string", ("labels",), "the target vocabulary's title")
    label_sources = MetaKey[dict]("object", ("labels",), "the source columns read, by kind (scp, "
                                  "codes, classes, text)")
    label_policy = MetaKey[dict]("object", ("labels",), "uncertain, min_likelihood, hierarchy, weights")
    # search
    index = MetaKey[str]("string", RESULT_KINDS, "the index searched")
    metric = MetaKey[str]("string", RESULT_KINDS, "the index's distance: cosine or l2")
    k = MetaKey[int]("int", _SEARCHES, "neighbours per query (-k)")
    same_patient = MetaKey[bool]("bool", _SEARCHES, "--same-patient: the patient's own ECGs by date")
    exclude_self = MetaKey[bool]("bool", _SEARCHES, "--exclude-self: a query's own record left out")
    vote = MetaKey[list]("list<string>", _SEARCHES, "--vote: the label columns voted on (null: none)")
    index_kind = MetaKey[str]("string", _SEARCHES, "the index's kind: exact or hnsw")

    @property
    def dim(self) -> int | None:
        """The embedding dimension (``embedding.dim``)."""
        d = (self.embedding or {}).get("dim")
        return int(d) if _is_number(d) else None


META_KEYS: tuple[MetaKey, ...] = CORE_KEYS + tuple(v for v in vars(MetaFields).values() if isinstance(v, MetaKey))
META_KEY_NAMES = {k.name: k for k in META_KEYS}
_CORE_NAMES = {k.name for k in CORE_KEYS}


def check_info(kind: str, info: dict[str, Any]) -> None:
    """Refuse (ValueError) keys that are not registered for ``kind`` or values of another type."""
    for name, value in info.items():
        key = META_KEY_NAMES.get(name)
        if key is None or name in _CORE_NAMES:
            raise ValueError(f"table metadata key {name!r} is not registered (ecgtool/io/metadata.py, and "
                             "docs/format.md documents each key)")
        if kind not in key.kinds:
            raise ValueError(f"table metadata key {name!r} is registered for {', '.join(key.kinds)}, "
                             f"not for a {kind} table")
        if not key.accepts(value):
            raise ValueError(f"table metadata key {name!r} is {key.type_text}, not {type(value).__name__} "
                             f"({value!r:.80})")
