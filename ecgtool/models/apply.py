"""``embed`` and ``predict``: a model over a record table, one output table.

Both share the same path (see :mod:`ecgtool.models.inference`): adapt the
input to the model's contract, run the model over windows, group windows and
segments back into records, and write one row per record (``pool`` /
``aggregate`` = mean or max) or one row per window (``none``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from ecgtool.errors import RecordErrors, UsageError
from ecgtool.io import arrays as A
from ecgtool.io import schema as S
from ecgtool.io.stream import TableReader, TableWriter
from ecgtool.models.inference import (
    POOLS,
    Adapter,
    RecordGrouper,
    Runner,
    frames_column,
    probabilities,
    run_windows,
    passthrough,
    pool_windows,
    vector_column,
)

log = logging.getLogger("ecgtool")

PER_WINDOW_DROP = (S.SIGNAL,)
PER_RECORD_DROP = (S.SIGNAL, S.SEGMENT, S.LEAD_MASK)


@dataclass
class RunStats:
    rows_in: int = 0
    windows: int = 0
    rows_out: int = 0
    notes: list[str] = field(default_factory=list)


def model_name(model: torch.nn.Module) -> str:
    """The checkpoint file the model was loaded from, else its provenance's source or registry name."""
    loaded = getattr(model, "checkpoint_path", None)
    if loaded:
        return Path(loaded).name
    prov = (getattr(model, "extra", None) or {}).get("provenance") or {}
    rw = prov.get("random_weights")
    if isinstance(rw, dict):
        return f"{prov.get('random_init')} (random init, seed {rw.get('seed')})"
    return str(prov.get("source") or prov.get("random_init") or getattr(model, "name", None) or model.family)


def _backbone_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    head = f"{model.head_name}." if getattr(model, "head_name", None) else None
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if head is None or not k.startswith(head)}


def architecture_of(model: torch.nn.Module) -> str | None:
    """The registered variant a model is an instance of (same family, input contract and backbone
    tensor shapes), or None. Used to name the weightless architecture of a checkpoint and to find
    the model card (its pretraining data) of the weights."""
    from ecgtool.models.card import family_cards
    from ecgtool.models.checkpoint import build_on_meta

    fam = family_cards().get(getattr(model, "family", ""))
    if fam is None:
        return None
    prov = (getattr(model, "extra", None) or {}).get("provenance") or {}
    candidates = [n for n in (prov.get("random_init"), getattr(getattr(model, "card", None), "name", None))
                  if n in fam.variants]
    candidates += [n for n in fam.variants if n not in candidates]
    mine = _backbone_shapes(model)
    c = model.contract
    for name in candidates:
        k = fam.variants[name].contract
        if (float(k.fs), int(k.n_samples), tuple(k.leads)) != (float(c.fs), int(c.n_samples), tuple(c.leads)):
            continue
        try:
            ref = _backbone_shapes(build_on_meta(name))
        except Exception:  # noqa: BLE001 - a variant that cannot be built on meta is simply no match
            continue
        shared = set(ref) & set(mine)
        if shared and all(ref[key] == mine[key] for key in shared) and set(mine) <= set(ref):
            return name
    return None


def random_init_model(spec: str | None, seed: int = 0) -> torch.nn.Module:
    """A registered architecture with random weights drawn from ``seed`` (a baseline: the same
    architecture, untrained). A checkpoint is refused, naming its weightless architecture."""
    from pathlib import Path

    from ecgtool.models.registry import create_model, list_models

    name = spec or "ecgtool-default"
    if name not in list_models():
        path = Path(name).expanduser()
        if path.exists():
            from ecgtool.models.checkpoint import load_model

            arch = architecture_of(load_model(path))
            hint = (f"give the architecture instead: -m {arch} --random-init" if arch else
                    "give a registered architecture (see 'ecgtool models') with -m NAME --random-init")
            raise UsageError(f"--random-init builds an architecture with random weights; {name} is a checkpoint "
                             "with trained weights" + (f" (architecture {arch})" if arch else ""), hint)
        import os

        if os.sep in name or path.suffix.lower() in (".safetensors", ".pt", ".pth", ".ckpt", ".bin"):
            raise UsageError(f"-m {name}: no such file, and --random-init takes a registered architecture",
                             "see 'ecgtool models' for the architectures, e.g. -m ecgtool-default --random-init")
        from ecgtool.models.registry import model_card

        model_card(name)  # unknown name: the error with suggestions
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        model = create_model(name)
    model.extra["provenance"] = {"source": None, "importer": None, "random_init": name,
                                 "random_weights": {"seed": int(seed)}}
    return model.eval()


def weights_info(model: torch.nn.Module) -> dict:
    """Metadata fields for embedding and prediction tables: the architecture, whether the weights
    are random, and the model card's pretraining data (for leakage warnings)."""
    prov = (getattr(model, "extra", None) or {}).get("provenance") or {}
    arch = architecture_of(model)
    out: dict = {"architecture": arch}
    rw = prov.get("random_weights")
    if isinstance(rw, dict):
        out["random_init"] = {"architecture": prov.get("random_init"), "seed": rw.get("seed")}
        out["pretraining_data"] = []
        return out
    from ecgtool.models.card import card

    c = card(arch) if arch else None
    out["pretraining_data"] = list(c.pretraining_data) if c is not None else None
    return out


class _Output:
    """Builds output rows (per window or per record) and writes them."""

    def __init__(self, reader: TableReader, dest: str, fmt: str | None, meta: S.TableMeta, pool: str,
                 new_fields: list[pa.Field], errors: RecordErrors | None = None):
        if pool not in POOLS:
            raise UsageError(f"--pool/--aggregate must be one of {', '.join(POOLS)}, not {pool!r}")
        self.pool = pool
        drop = PER_RECORD_DROP if pool != "none" else PER_WINDOW_DROP
        keep = [f for f in reader.schema if f.name not in drop and f.name not in {n.name for n in new_fields}]
        fields = list(keep)
        if pool == "none":
            fields = [f for f in fields if f.name != S.SEGMENT]
            fields.insert(1 if fields and fields[0].name == S.RECORD_ID else 0, S.column(S.SEGMENT))
        self.keep = [f.name for f in keep if not (pool == "none" and f.name == S.SEGMENT)]
        self.schema = pa.schema(fields + new_fields)
        self.writer = TableWriter(dest, self.schema, meta, fmt=fmt, errors=errors)
        self.grouper = RecordGrouper()
        self.rows = 0

    def add(self, adapted_batch: pa.RecordBatch, per_window: dict[str, np.ndarray], finish) -> None:
        """``per_window[name]`` has shape (rows, windows, ...); ``finish(name -> array) -> columns``."""
        if self.pool == "none":
            rows = adapted_batch.num_rows
            nwin = next(iter(per_window.values())).shape[1]
            idx = np.repeat(np.arange(rows), nwin)
            base = passthrough(A.take(adapted_batch, idx), drop=(S.SEGMENT,))
            base = pa.RecordBatch.from_arrays([base.column(base.schema.get_field_index(n)) for n in self.keep],
                                              names=self.keep)
            seg_in = (np.asarray(S.column_values(adapted_batch, S.SEGMENT, 0), dtype=np.int64)
                      if S.SEGMENT in adapted_batch.schema.names else np.zeros(rows, dtype=np.int64))
            seg = (np.nan_to_num(seg_in.astype(float)).astype(np.int64)[:, None] * nwin + np.arange(nwin)).reshape(-1)
            flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in per_window.items()}
            self._write(base, {S.SEGMENT: A.from_numpy(seg, pa.int32()), **finish(flat, None)})
            return
        self._emit(self.grouper.push(adapted_batch, per_window), finish)

    def _emit(self, groups, finish) -> None:
        if not groups:
            return
        first = pa.Table.from_batches([g[0] for g in groups]).combine_chunks().to_batches()[0]
        base = pa.RecordBatch.from_arrays([first.column(first.schema.get_field_index(n)) for n in self.keep],
                                          names=self.keep)
        names = groups[0][1].keys()
        stacked = {k: [g[1][k] for g in groups] for k in names}
        self._write(base, finish(None, stacked))

    def _write(self, base: pa.RecordBatch, cols: dict[str, pa.Array]) -> None:
        arrays = [base.column(i) for i in range(base.num_columns)] + list(cols.values())
        names = list(base.schema.names) + list(cols.keys())
        out = pa.RecordBatch.from_arrays(arrays, names=names)
        self.writer.write(out)
        self.rows += out.num_rows

    def close(self, finish) -> None:
        if self.pool != "none":
            self._emit(self.grouper.flush(), finish)
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _run(reader: TableReader, model, adapter: Adapter, runner: Runner, out: _Output, fn, finish,
         batches: Iterable[pa.RecordBatch] | None, stats: RunStats, prefetch: int = 2) -> RunStats:
    """Run the shared inference path and write one output table."""
    counts: dict = {}
    try:
        for wb in run_windows(adapter, runner, fn, batches if batches is not None else reader, prefetch, counts):
            out.add(wb.batch, wb.out, finish)
        out.close(finish)
    except BaseException:
        out.abort()
        raise
    stats.rows_in, stats.windows = counts.get("rows_in", 0), counts.get("windows", 0)
    stats.rows_out = out.rows
    stats.notes = sorted(adapter.notes)
    return stats


# --------------------------------------------------------------------------- embed


def embed_table(
    reader: TableReader,
    dest: str,
    model: torch.nn.Module,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 32,
    pool: str = "mean",
    local: bool = False,
    layer: int | None = None,
    shard: tuple[int, int] | None = None,
    errors: RecordErrors | None = None,
    fmt: str | None = None,
    argv: Sequence[str] | None = None,
    batches: Iterable[pa.RecordBatch] | None = None,
) -> RunStats:
    """Write one embedding per record (``pool`` mean/max) or per window (``none``).

    ``local`` adds the per-frame features (frames of all windows of a record,
    in time order); ``layer`` takes the features of that transformer layer /
    network stage instead of the final one.
    """
    errors = errors or RecordErrors()
    adapter = Adapter(model.contract, reader.meta, errors, shard, writable=False)
    runner = Runner(model, device, precision, batch_size)

    def fn(x):
        if not local and layer is None:
            return model.embed(x)  # pooled as the original pools
        feats = model.features(x, layer=layer)
        return (model.pool(feats), feats) if local else model.pool(feats)

    fn.names = [S.EMBEDDING, S.LOCAL] if local else [S.EMBEDDING]
    dim = _embedding_dim(model, layer)
    new = S.embeddings_fields(dim, local)
    wi = weights_info(model)
    emb_info = {"dim": dim, "pool": pool, "layer": layer, "local": local, "precision": runner.precision}
    if "random_init" in wi:
        emb_info["random_init"] = wi["random_init"]
    meta = reader.meta.derive(kind="embeddings", model=model_name(model), contract=model.contract.to_dict(),
                              architecture=wi["architecture"], pretraining_data=wi["pretraining_data"],
                              embedding=emb_info).add_step(argv)
    out = _Output(reader, dest, fmt, meta, pool, new, errors)

    def finish(flat, groups):
        if flat is not None:
            cols = {S.EMBEDDING: vector_column(flat[S.EMBEDDING])}
            if local:
                cols[S.LOCAL] = frames_column(list(flat[S.LOCAL]))
            return cols
        cols = {S.EMBEDDING: vector_column(np.stack([pool_windows(np.concatenate(g), pool)
                                                     for g in groups[S.EMBEDDING]]))}
        if local:
            cols[S.LOCAL] = frames_column([np.concatenate(g).reshape(-1, g[0].shape[-1]) for g in groups[S.LOCAL]])
        return cols

    return _run(reader, model, adapter, runner, out, fn, finish, batches, RunStats())


def _embedding_dim(model: torch.nn.Module, layer: int | None) -> int:
    try:
        return model.feature_dim(layer)
    except ValueError as exc:
        raise UsageError(f"--layer {layer}: {exc}", "count layers from 0, or from the end with -1") from None


# --------------------------------------------------------------------------- predict


def label_settings(model: torch.nn.Module) -> tuple[list[str], np.ndarray, float, str, dict]:
    """(label names, thresholds, temperature, task, per-label aggregation) from a checkpoint's extras."""
    extra = getattr(model, "extra", None) or {}
    names = list(model.label_names) if model.label_names is not None else None
    n_head = model.n_classes
    if names is None and n_head:
        names = [f"label_{k}" for k in range(n_head)]
        log.warning("the checkpoint carries no label names; calling its %d outputs label_0..label_%d "
                    "(name them with 'ecgtool models import --label-names')", n_head, n_head - 1)
    if names is None:
        raise UsageError("the model has no classifier head (no label names)",
                         "use 'ecgtool embed' for embeddings, or a finetuned checkpoint for predictions")
    thr = extra.get("thresholds")
    thresholds = np.asarray(thr if thr is not None else [0.5] * len(names), dtype=np.float32)
    if thresholds.shape != (len(names),):
        raise UsageError(f"the checkpoint has {thresholds.size} thresholds for {len(names)} labels")
    temperature = float(extra.get("temperature") or 1.0)
    task = str(extra.get("task") or "multilabel")  # load_checkpoint flattens the stored extras
    agg = dict(extra.get("aggregation") or {})
    return names, thresholds, temperature, task, agg


def conformal_settings(model: torch.nn.Module, names: list[str], task: str) -> dict | None:
    """The checkpoint's conformal calibration (written by ``finetune``), checked against its labels."""
    c = (getattr(model, "extra", None) or {}).get("conformal")
    if not isinstance(c, dict):
        return None
    if task == "multiclass":
        if c.get("method") != "aps" or list(c.get("classes") or []) != list(names):
            log.warning("the checkpoint's conformal calibration does not match its classes; it is not used")
            return None
        return c
    labels = c.get("labels") or {}
    if c.get("method") != "class-conditional" or not set(labels) <= set(names):
        log.warning("the checkpoint's conformal calibration does not match its labels; it is not used")
        return None
    return c


def predict_table(
    reader: TableReader,
    dest: str,
    model: torch.nn.Module,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 32,
    aggregate: str = "mean",
    shard: tuple[int, int] | None = None,
    errors: RecordErrors | None = None,
    fmt: str | None = None,
    argv: Sequence[str] | None = None,
    batches: Iterable[pa.RecordBatch] | None = None,
    crops: int | None = None,
) -> RunStats:
    """Write probabilities per label (one float32 column per label name) and
    ``findings`` (labels at or above their threshold, most probable first).

    With a conformal calibration in the checkpoint (``finetune``): a multi-class model also writes
    ``prediction_set`` (the classes of its conformal set), a multi-label one a decision per label
    (``<label>__decision``: positive, negative or abstain; null where the label could not be
    calibrated) and ``uncertain`` (the labels it abstains on). ``crops``: average over K evenly
    spaced windows of each record (test-time augmentation) instead of its non-overlapping windows."""
    errors = errors or RecordErrors()
    names, thresholds, temperature, task, per_label = label_settings(model)
    if crops is not None and int(crops) < 1:
        raise UsageError(f"--crops {crops}: must be 1 or more", "e.g. --crops 4")
    conformal = conformal_settings(model, names, task)
    adapter = Adapter(model.contract, reader.meta, errors, shard, writable=False, crops=crops)
    runner = Runner(model, device, precision, batch_size)

    def fn(x):
        return probabilities(model.logits(x), temperature, task)

    fn.names = ["probs"]
    how = np.array([per_label.get(n, aggregate) for n in names])

    def finish(flat, groups):
        if flat is not None:
            p = flat["probs"]
        else:
            p = np.stack([_aggregate(np.concatenate(g), how, aggregate) for g in groups["probs"]])
        cols = prediction_columns(p, names, thresholds, task)
        if conformal is not None:
            cols.update(conformal_columns(p, names, task, conformal))
        return cols

    new = S.predictions_fields(names, task if conformal is not None else None)
    wi = weights_info(model)
    extra_info = {"conformal": conformal} if conformal is not None else {}
    if crops:
        extra_info["crops"] = int(crops)
    meta = reader.meta.derive(kind="predictions", model=model_name(model), contract=model.contract.to_dict(),
                              label_names=names, thresholds=thresholds.tolist(), temperature=temperature,
                              task=task, aggregate=aggregate, architecture=wi["architecture"],
                              pretraining_data=wi["pretraining_data"], **extra_info).add_step(argv)
    out = _Output(reader, dest, fmt, meta, aggregate, new, errors)
    return _run(reader, model, adapter, runner, out, fn, finish, batches, RunStats())


def _aggregate(g: np.ndarray, how: np.ndarray, default: str) -> np.ndarray:
    mean, mx = g.mean(axis=0), g.max(axis=0)
    return np.where(how == "max", mx, mean) if default != "max" else np.where(how == "mean", mean, mx)


def prediction_columns(p: np.ndarray, names: list[str], thresholds: np.ndarray, task: str) -> dict[str, pa.Array]:
    cols = {n: A.from_numpy(p[:, k], pa.float32()) for k, n in enumerate(names)}
    findings = []
    for row in p:
        if task == "multiclass":
            findings.append([names[int(np.argmax(row))]])
            continue
        hit = np.flatnonzero(row >= thresholds)
        findings.append([names[k] for k in hit[np.argsort(-row[hit])]])
    cols[S.FINDINGS] = A.string_lists(findings)
    return cols


def conformal_columns(p: np.ndarray, names: list[str], task: str, conformal: dict) -> dict[str, pa.Array]:
    """The conformal set (multi-class) or the per-label decisions and the abstained labels (multi-label)."""
    from ecgtool.analysis import conformal as cf

    if task == "multiclass":
        sets = cf.aps_sets(p, conformal)
        order = np.argsort(-p, axis=1, kind="stable")
        return {S.PREDICTION_SET: A.string_lists([[names[k] for k in row if s[k]] for row, s in zip(order, sets)])}
    d, ok = cf.label_decisions(p, conformal, names)
    cols = {}
    for j, n in enumerate(names):
        vals = [cf.DECISIONS[int(v)] if ok[j] else None for v in d[:, j]]
        cols[n + S.DECISION_SUFFIX] = A.strings(vals)
    unc = [[names[j] for j in np.flatnonzero((row == cf.ABSTAIN) & ok)] for row in d]
    cols[S.UNCERTAIN] = A.string_lists(unc)
    return cols
