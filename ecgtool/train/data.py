"""Training data from segment tables: signals in memory, deterministic batches, labels, splits.

* :class:`SegmentSet` holds a fixed-shape table (from ``ecgtool preprocess``)
  as zero-copy ``(n, L, T)`` numpy views of its Arrow buffers plus the
  ``record_id`` / ``segment`` / ``patient_id`` columns, and gathers rows by index.
* :func:`cmsc_pairs`: adjacent non-overlapping segments of the same record,
  (0, 1), (2, 3), ... as in fairseq-signals' CMSC manifests (an odd last
  segment and single-segment records are left out).
* :class:`BatchPlan`: the order of the data is a pure function of
  ``(seed, epoch)``: a seeded permutation per epoch, split across ranks, cut
  into equal batches (the incomplete last batch dropped so every rank takes
  the same number of steps). The position in the data is ``(epoch, batch)``,
  which is all a resume needs.
* :func:`join_labels`: a label matrix with NaN for null (unobserved)
  entries from a label table, and how many rows joined.

Label values, duplicate record ids in a label table and the splits follow
:mod:`ecgtool.evaluation` (the rules ``probe`` uses too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from ecgtool.errors import InputError, UsageError
from ecgtool.evaluation import labels as EL
from ecgtool.io import schema as S
from ecgtool.signal.leads import normalize_lead

log = logging.getLogger("ecgtool")


# --------------------------------------------------------------------------- signals


class SegmentSet:
    """A fixed-shape record/segment table held in memory (Arrow buffers, numpy views)."""

    def __init__(self, table: pa.Table, name: str = "input", meta: S.TableMeta | None = None):
        self.name = name
        self.meta = meta
        self.table = table
        n = table.num_rows
        if n == 0:
            raise InputError(f"{name}: the table has no rows")
        for col in (S.RECORD_ID, S.SIGNAL):
            if col not in table.schema.names:
                raise InputError(f"{name}: no '{col}' column (columns: {', '.join(table.schema.names)})",
                                 "give a table made by 'ecgtool convert' / 'ecgtool preprocess'")
        self._chunks: list[np.ndarray] = []
        for rb in table.to_batches():
            if rb.num_rows:
                try:
                    self._chunks.append(S.batch_signal_array(rb))
                except InputError as exc:
                    raise InputError(f"{name}: {exc.message}", exc.hint
                                     or "run 'ecgtool preprocess' first so every row has the same shape") from None
        shapes = {c.shape[1:] for c in self._chunks}
        if len(shapes) != 1:
            raise InputError(f"{name}: rows differ in shape {sorted(shapes)}",
                             "run 'ecgtool preprocess' so every row shares leads and length")
        self.n_leads, self.n_samples = next(iter(shapes))
        self._offsets = np.cumsum([0] + [len(c) for c in self._chunks])
        self.record_ids = np.asarray(table.column(S.RECORD_ID).to_pylist(), dtype=object).astype(str)
        self.segments = (np.asarray(table.column(S.SEGMENT).fill_null(0).to_pylist(), dtype=np.int64)
                         if S.SEGMENT in table.schema.names else np.zeros(n, dtype=np.int64))
        self.fs = float(table.column(S.FS)[0].as_py()) if S.FS in table.schema.names else None
        if S.LEADS in table.schema.names:
            leads = table.column(S.LEADS)[0].as_py() or []
            self.leads = tuple(normalize_lead(lead) for lead in leads)
        else:
            self.leads = tuple(f"ch{i}" for i in range(self.n_leads))
        _, self.record_index = np.unique(self.record_ids, return_inverse=True)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def column(self, name: str) -> list | None:
        if name not in self.table.schema.names:
            return None
        return self.table.column(name).to_pylist()

    def signals(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` as a new ``(len(idx), L, T)`` float32 array."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.n_leads, self.n_samples), dtype=np.float32)
        chunk = np.searchsorted(self._offsets, idx, side="right") - 1
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = self._chunks[c][idx[sel] - self._offsets[c]]
        return out

    def check_contract(self, contract, adapt_leads: bool = True):
        """Check fs / length / normalisation against a model contract; return the
        :class:`ecgtool.models.adapt.LeadMap` to the model's leads (None = identity)."""
        if self.fs is not None and abs(self.fs - contract.fs) > 1e-6:
            raise InputError(f"{self.name}: sampled at {self.fs:g} Hz but the model takes {contract.fs:g} Hz",
                             f"run 'ecgtool preprocess' with the model's preset ({contract.preset or contract.fs})")
        if self.n_samples != contract.n_samples:
            raise InputError(f"{self.name}: rows have {self.n_samples} samples but the model takes "
                             f"{contract.n_samples} ({contract.seconds:g} s)",
                             f"run 'ecgtool preprocess' with the model's preset ({contract.preset or 'matching --length/--segment'})")
        from ecgtool.models.adapt import lead_map_for

        lead_map = lead_map_for(self.meta, self.leads, contract, self.name)
        if lead_map.identity:
            return None
        if not adapt_leads:
            raise InputError(f"{self.name}: leads {', '.join(self.leads)} differ from the model's "
                             f"{', '.join(lead_map.want)}")
        for msg in lead_map.messages():
            log.warning("%s: %s", self.name, msg)
        return lead_map


def apply_lead_map(x: np.ndarray, lead_map) -> np.ndarray:
    """The model's leads from ``x`` (n, L, T) by a map from :meth:`SegmentSet.check_contract` (None: as is)."""
    return x if lead_map is None else lead_map(x)


def load_segments(src: str) -> SegmentSet:
    from ecgtool.io import read_table

    table, meta = read_table(src)
    return SegmentSet(table, name=str(src), meta=meta)


# --------------------------------------------------------------------------- CMSC pairs


def cmsc_pairs(record_ids: Sequence[str], segments: Sequence[int]) -> np.ndarray:
    """Row-index pairs ``(P, 2)`` of adjacent segments of the same record: (0,1), (2,3), ...

    Rows are grouped by record id and ordered by segment index; a record's
    segments pair in order, so segments ``2k`` and ``2k+1`` form a pair.
    """
    rid = np.asarray(record_ids)
    seg = np.asarray(segments, dtype=np.int64)
    order = np.lexsort((seg, rid))
    pairs = []
    start = 0
    n = len(order)
    while start < n:
        end = start
        while end < n and rid[order[end]] == rid[order[start]]:
            end += 1
        rows = order[start:end]
        for k in range(0, len(rows) - 1, 2):
            pairs.append((rows[k], rows[k + 1]))
        start = end
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------- batches


@dataclass
class BatchPlan:
    """Deterministic batches of item indices for one rank: a function of (seed, epoch)."""

    n_items: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {self.batch_size}")
        if self.n_items < self.batch_size * self.world_size:
            raise UsageError(f"{self.n_items} training items are fewer than one batch "
                             f"({self.batch_size} x {self.world_size} process(es))",
                             "lower --batch-size or give more data")

    @property
    def batches_per_epoch(self) -> int:
        return (self.n_items // self.world_size) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_items)
        rng = np.random.default_rng([int(self.seed), int(epoch), 0x5EED])
        return rng.permutation(self.n_items)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """Batches of ``epoch`` for this rank, from batch number ``start``."""
        per_rank = self.order(epoch)[self.rank::self.world_size]
        nb = self.batches_per_epoch
        for b in range(start, nb):
            yield per_rank[b * self.batch_size:(b + 1) * self.batch_size]


# --------------------------------------------------------------------------- labels


def label_names_of(table: pa.Table, meta: S.TableMeta | None, source: str) -> list[str]:
    names = meta.label_names if meta is not None else None
    if not names:
        names = [n for n in table.schema.names if n not in (S.RECORD_ID, S.PATIENT_ID, S.SOURCE)]
    missing = [n for n in names if n not in table.schema.names]
    if missing:
        raise InputError(f"{source}: label names {missing} have no column")
    if not names:
        raise InputError(f"{source}: no label columns", "make one with 'ecgtool label'")
    return list(names)


def join_labels(record_ids: np.ndarray, labels: pa.Table, names: Sequence[str],
                source: str = "labels") -> tuple[np.ndarray, int]:
    """Label rows for each record id (NaN rows where the id is not in ``labels``); returns (Y, joined rows).

    A record_id on several rows: see :func:`ecgtool.evaluation.labels.unique_label_rows`."""
    if S.RECORD_ID not in labels.schema.names:
        raise InputError(f"{source}: no '{S.RECORD_ID}' column to join on")
    columns = {n: labels.column(n).to_pylist() for n in names}
    y = EL.label_matrix(columns, names, source)
    rows = EL.join_rows(record_ids, labels.column(S.RECORD_ID).to_pylist(), columns, source)
    out = np.full((len(record_ids), len(names)), np.nan, dtype=np.float32)
    hit = rows >= 0
    out[hit] = y[rows[hit]]
    return out, int(hit.sum())


def check_label_columns(y: np.ndarray, names: Sequence[str], source: str, multiclass: bool = False) -> None:
    """Refuse labels a loss cannot learn from: no observed value, or a single class."""
    if y.shape[0] == 0:
        raise InputError(f"{source}: no labelled rows")
    bad = []
    for k, name in enumerate(names):
        col = y[:, k]
        obs = col[~np.isnan(col)]
        if obs.size == 0:
            bad.append(f"'{name}' is empty (all null)")
        elif not multiclass and (obs.min() == obs.max()):
            bad.append(f"'{name}' has a single class ({int(obs[0])} in all {obs.size} rows)")
        elif multiclass and obs.max() == 0:
            bad.append(f"class '{name}' has no example")
    if bad:
        raise InputError(f"{source}: labels cannot be learned: " + "; ".join(bad),
                         "drop these labels with --labels, or add data with both classes")
