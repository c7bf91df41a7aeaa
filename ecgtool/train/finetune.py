"""Finetuning: a classifier head on a pretrained (or random) backbone, on a labelled table.

Losses (``task``):

* ``multilabel``: BCE-with-logits with ``pos_weight = (1 - p) / p`` per label
  (p = positive rate among the *observed* training labels, as fairseq-signals'
  ``label_def.csv``), averaged over observed entries only: a null label (not
  part of that record's source vocabulary) is masked out, so datasets labelled
  with different vocabularies train one head.
* ``multiclass``: softmax cross-entropy over the label columns used as one-hot
  classes (a row whose observed labels do not hold exactly one 1 is left out).
* ``pu``: non-negative PU learning (Kiryo et al., 2017), per label: a 1 is a
  positive, a 0 ("not mentioned") is unlabeled rather than negative, a null is
  left out. Class prior ``pi_k = pu_prior_scale *`` the observed positive rate
  (capped at 0.99). See :func:`ecgtool.train.objectives.nnpu_loss`. Chosen
  because ECGFounder's report-derived labels miss findings the report did
  not state: nnPU keeps the unbiased risk of the classifier under that
  censoring and its max(0, ·) stops the negative risk going below zero,
  which is what over-fitting the unlabeled set looks like.

Modes: ``full`` (everything trains), ``frozen-features`` (ECG-FM: the conv
feature extractor runs under no_grad, ``feature_grad_mult=0``, as in the
published finetuning; Net1D: the stem and first stage are frozen),
``linear`` (linear probing: only the head trains; the backbone stays in eval
mode).

Evaluation: scores per row, then per record (mean of the segment logits),
macro AUPRC over the labels with both classes in the validation set; early
stopping on it. After training, the best model's validation logits give a
temperature T (one scalar, minimising the validation NLL of logits / T,
:func:`ecgtool.evaluation.calibration.fit_temperature`) and
per-label thresholds on the calibrated probabilities (F1-optimal, see
:func:`ecgtool.analysis.metrics.choose_threshold`) and a split-conformal
calibration at ``alpha`` (:mod:`ecgtool.analysis.conformal`: adaptive
prediction sets for ``multiclass``, a positive / negative / abstain decision
per label otherwise), all stored in the saved checkpoint's metadata
(``predict`` writes the sets and decisions).

Layer-wise learning rates (``lr_scales``, default 0.1 and 0.01, as the
ICLR-2026 ECG foundation-model benchmark finetunes): the head trains at
``lr``, the upper half of the encoder's blocks at ``lr * 0.1``, the lower
half with the input modules at ``lr * 0.01`` (the model's
``parameter_groups()``); ``(1, 1)`` trains everything at ``lr``.

Single-lead lead augmentation (ECGFounder, ``lead_augment``): for a model that
takes Lead I only, each training row's lead I is replaced by
``L(theta) = I cos(theta) + aVF sin(theta)`` with ``theta`` drawn uniformly
from ``{0, ±a1, ±a2, ±a3}`` (default 15°, 30°, 45°: Lead I and six leads rotated
around it in the frontal plane, the hexaxial projection of the cardiac
vector when I and aVF stand for its x and y components).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn

from ecgtool.errors import CheckpointError, InputError, UsageError
from ecgtool.evaluation import calibration as ECAL
from ecgtool.evaluation import labels as EL
from ecgtool.evaluation import splits as ES
from ecgtool.io import schema as S
from ecgtool.signal.leads import normalize_lead
from ecgtool.train import objectives as O
from ecgtool.train import data as D
from ecgtool.train.distributed import init_distributed, local_device, shutdown
from ecgtool.train.loop import Loop, LoopConfig
from ecgtool.train.schedule import check_schedule, lr_multiplier

log = logging.getLogger("ecgtool")

TASKS = ("multilabel", "multiclass", "pu")
MODES = ("full", "frozen-features", "linear")
# ECG-FM finetuning dropouts (fairseq-signals diagnosis.yaml)

@dataclass
class FinetuneConfig:
    task: str = "multilabel"
    mode: str = "full"
    labels: list[str] | None = None          # subset / order of label names (default: all)
    pos_weight: bool = True
    pu_prior_scale: float = 1.0
    lr: float = 5e-5
    lr_scales: tuple[float, float] = (0.1, 0.01)  # multipliers of lr for the upper and the lower encoder blocks
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = 32
    fold_column: str | None = None
    val_folds: list[str] = field(default_factory=list)
    test_folds: list[str] = field(default_factory=list)
    group_column: str | None = None           # default: patient_id if present, else record_id
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    lead_augment: bool = False
    lead_augment_angles: tuple[float, ...] = (15.0, 30.0, 45.0)
    lead_dropout: float = 0.0                 # each lead zeroed with this probability (as RLM)
    single_lead_prob: float = 0.0             # or, with this probability, all leads but one zeroed
    eval_batch_size: int = 64
    alpha: float | None = 0.1                 # conformal calibration on validation (None: none)
    schedule: str = "constant"                # learning-rate schedule (train/schedule.py)
    warmup_steps: int = 0

    def check(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if len(self.lr_scales) != 2 or not all(float(v) >= 0 for v in self.lr_scales):
            raise UsageError(f"--lr-scales {self.lr_scales}: two multipliers >= 0 (upper, lower blocks)")
        for name in ("lr", "eps", "pu_prior_scale"):
            if not float(getattr(self, name)) > 0:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be > 0")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay {self.weight_decay}: must be >= 0")
        check_schedule(self.schedule, self.warmup_steps)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UsageError(f"--betas {self.betas}: two values in [0, 1)")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be >= 1")
        for name in ("lead_dropout", "single_lead_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be in [0, 1]")
        if self.fold_column and not self.val_folds:
            raise UsageError("--fold-column needs --val-folds")
        if self.alpha is not None:
            from ecgtool.analysis.conformal import check_alpha

            check_alpha(self.alpha)


# --------------------------------------------------------------------------- models


def classifier_from(model: nn.Module, label_names: Sequence[str], from_scratch: bool = False) -> tuple[nn.Module, list[str]]:
    """A model of the same architecture with a head for ``label_names``; backbone weights copied.

    Returns (model, names of tensors that start from a fresh initialisation).
    A head whose label names already match is kept.
    """
    try:
        return model.for_labels(label_names, from_scratch=from_scratch)
    except ValueError as exc:
        raise UsageError(f"cannot finetune this {model.family} model: {exc}") from None


def set_mode(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """Freeze per ``mode`` (linear / frozen-features / full); return the trainable parameters."""
    return model.freeze(mode)


class FinetuneTask(nn.Module):
    def __init__(self, model: nn.Module, task: str, mode: str, pos_weight: torch.Tensor | None,
                 prior: torch.Tensor | None):
        super().__init__()
        self.model = model
        self.kind = task
        self.mode = mode
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.zeros(0))
        self.register_buffer("prior", prior if prior is not None else torch.zeros(0))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.mode == "linear":
            self.model.eval()  # frozen backbone: no dropout, fixed statistics
        return self

    def forward(self, batch):
        z = self.model.logits(batch["x"]).float()
        if self.kind == "multiclass":
            loss = O.multiclass_loss(z, batch["y"])
        elif self.kind == "pu":
            loss = O.nnpu_loss(z, batch["y"], self.prior, batch["m"])
        else:
            pw = self.pos_weight if self.pos_weight.numel() else None
            loss = O.bce_loss(z, batch["y"], batch["m"], pw)
        return loss, {}


# --------------------------------------------------------------------------- metrics


def drop_leads(x: np.ndarray, p: float, single: float, rng: np.random.Generator) -> np.ndarray:
    """Zero leads of (n, L, T) training inputs, so that a model learns to work
    with any subset of leads (zero-filled, as at inference): each lead with
    probability ``p`` (random lead masking), or, for a fraction ``single`` of
    the samples, every lead but one chosen among those carrying a signal."""
    n, L = x.shape[:2]
    present = np.abs(x).sum(-1) > 0
    keep = rng.random((n, L)) >= p
    one = rng.random(n) < single
    choice = np.argmax(rng.random((n, L)) * present, axis=1)
    keep[one] = False
    keep[one, choice[one]] = True
    keep &= present
    empty = ~keep.any(1)  # never zero every lead of a sample
    keep[empty] = present[empty]
    return x * keep[..., None].astype(x.dtype)


def macro_scores(y: np.ndarray, s: np.ndarray, multiclass: bool = False) -> dict[str, float]:
    """Macro AUPRC / AUROC over labels with both classes observed (NaN entries ignored)."""
    from ecgtool.analysis.metrics import auprc, auroc  # numpy; equal to scikit-learn's AP / ROC AUC

    aps, aucs = [], []
    for k in range(y.shape[1]):
        obs = ~np.isnan(y[:, k])
        yk = y[obs, k]
        if yk.size == 0 or yk.min() == yk.max():
            continue
        aps.append(auprc(yk, s[obs, k]))
        aucs.append(auroc(yk, s[obs, k]))
    return {"macro_auprc": float(np.mean(aps)) if aps else float("nan"),
            "macro_auroc": float(np.mean(aucs)) if aucs else float("nan"), "n_labels_scored": len(aps)}


def per_record(record_index: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` rows per record; returns (unique record indices, means)."""
    uniq, inv = np.unique(record_index, return_inverse=True)
    out = np.zeros((len(uniq), values.shape[1]), dtype=np.float64)
    np.add.at(out, inv, values)
    counts = np.bincount(inv, minlength=len(uniq))[:, None]
    return uniq, out / counts


def split_rows(cfg: FinetuneConfig, column, columns: Sequence[str], record_ids: np.ndarray,
               source: str = "input") -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Row indices (train, val, test) and a description of the split, by ``cfg``.

    ``--fold-column`` with ``--val-folds`` / ``--test-folds``
    (:func:`ecgtool.evaluation.splits.fold_split`), else a random split grouped by ``--patient-column``
    (default patient_id, else record_id; :func:`ecgtool.evaluation.splits.grouped_split`). ``column(name)``
    gives a column of the table as a list (None when absent); ``columns`` are the table's column names.
    """
    def groups_of(name: str, required: bool) -> np.ndarray | None:
        vals = column(name)
        if vals is None:
            if required:
                raise InputError(f"{source}: no column '{name}' to group the split by")
            return None
        return ES.group_keys(vals, fallback=record_ids)  # a row without a group id: its record's group

    if cfg.fold_column:
        folds = column(cfg.fold_column)
        if folds is None:
            raise InputError(f"{source}: no fold column '{cfg.fold_column}'")
        tr, va, te = ES.fold_split(folds, cfg.val_folds, cfg.test_folds, column=cfg.fold_column)
        groups = groups_of(cfg.group_column or ES.PATIENT_ID, bool(cfg.group_column))
        leak = set(groups[tr]) & (set(groups[va]) | set(groups[te])) if groups is not None else set()
        if leak:
            log.warning("%d patients have records in the training split and in validation/test folds "
                        "(the fold column is not patient-grouped)", len(leak))
        return tr, va, te, f"fold column {cfg.fold_column}: val {cfg.val_folds}, test {cfg.test_folds}"
    name = cfg.group_column or ES.default_group_column(columns)
    groups = groups_of(name, True) if name != ES.RECORD_ID else np.asarray(record_ids, dtype=object)
    tr, va, te = ES.grouped_split(groups, cfg.val_fraction, cfg.test_fraction, seed=0)
    return tr, va, te, f"grouped by {name}: val {cfg.val_fraction}, test {cfg.test_fraction}"


# --------------------------------------------------------------------------- the run


class Finetuner:
    """Set up a finetuning run; iterate :meth:`steps`, then :meth:`finish` writes the model."""

    def __init__(self, data: str | D.SegmentSet, model: str, output: str | Path, labels: str | None = None,
                 cfg: FinetuneConfig | None = None, loop: LoopConfig | None = None, device: str = "auto",
                 from_scratch: bool = False, run_dir: str | Path | None = None):
        from ecgtool.models.checkpoint import load_model
        from ecgtool.models.devices import resolve_device

        self.cfg = cfg = cfg or FinetuneConfig()
        cfg.check()
        self.output = Path(output)
        run_dir = Path(run_dir) if run_dir is not None else self.output.with_name(self.output.stem + ".run")
        loop = loop or LoopConfig(out_dir=run_dir, max_epochs=10)
        loop.out_dir = run_dir
        if loop.patience is None:
            loop.patience = 5
        dev = resolve_device(device)
        self.dist = init_distributed(dev)
        self.device = local_device(dev, self.dist)
        self.data = data if isinstance(data, D.SegmentSet) else D.load_segments(data)
        self.report: dict[str, Any] = {"rows": len(self.data)}

        # labels
        names, y = self._labels(labels)
        self.multiclass = cfg.task == "multiclass"
        if self.multiclass:
            self.target, _ = EL.class_targets(y, names, self.data.name)
            labelled = self.target >= 0
        else:
            labelled = ~np.isnan(y).all(1)
        self.label_names, self.y = names, y
        if not labelled.any():
            raise InputError(f"{self.data.name}: no row has an observed label", "check the label table / columns")

        # splits (grouped: segments of one record and records of one patient stay together)
        train_idx, val_idx, test_idx = self._split()
        train_idx = train_idx[labelled[train_idx]]
        val_idx = val_idx[labelled[val_idx]]
        test_idx = test_idx[labelled[test_idx]]
        if len(val_idx) == 0:
            raise InputError("the validation split has no labelled row", "use other --val-folds / --val-fraction")
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.report.update(train_rows=int(len(train_idx)), val_rows=int(len(val_idx)), test_rows=int(len(test_idx)))
        ytr = y[train_idx]
        if self.multiclass:
            onehot = np.zeros((len(train_idx), len(names)), dtype=np.float32)
            onehot[np.arange(len(train_idx)), self.target[train_idx]] = 1.0
            D.check_label_columns(onehot, names, f"{self.data.name} (training split)", multiclass=True)
        else:
            D.check_label_columns(ytr, names, f"{self.data.name} (training split)")

        # model
        torch.manual_seed(loop.seed)
        try:
            base = load_model(model, allow_random=from_scratch)
        except CheckpointError as exc:
            if "registry" in exc.message:
                raise CheckpointError(exc.message, "pass a trained checkpoint with -m, or add --from-scratch "
                                      "to train this architecture from random weights (a baseline)") from None
            raise
        self.model_spec = model
        if not from_scratch and self.dist.is_main:
            self.report["leakage"] = self._leakage(base)
        self.model, fresh = classifier_from(base, names, from_scratch=from_scratch)
        self.report["fresh_tensors"] = len(fresh)
        self.report["from_scratch"] = bool(from_scratch)
        trainable = set_mode(self.model, cfg.mode)
        self.lead_map = self.data.check_contract(self.model.contract)
        self.augment = None
        if cfg.lead_augment:
            self.augment = self._augment_plan()
        self.model.to(self.device)

        pos_w = prior = None
        if not self.multiclass:
            obs = ~np.isnan(ytr)
            pos = np.nansum(ytr, 0)
            n = obs.sum(0)
            if cfg.task == "multilabel" and cfg.pos_weight:
                pos_w = O.pos_weight_from_counts(torch.tensor(pos), torch.tensor(n))
                self.report["pos_weight"] = [round(float(v), 6) for v in pos_w]
            if cfg.task == "pu":
                prior = torch.tensor(np.clip(cfg.pu_prior_scale * pos / np.maximum(n, 1), 1e-6, 0.99),
                                     dtype=torch.float32)
                self.report["pu_prior"] = [round(float(v), 6) for v in prior]
        self.task = FinetuneTask(self.model, cfg.task, cfg.mode, pos_w, prior).to(self.device)
        self.optimizer = torch.optim.AdamW(self._param_groups(trainable), lr=cfg.lr, betas=tuple(cfg.betas),
                                           eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.plan = D.BatchPlan(len(train_idx), cfg.batch_size, seed=loop.seed, rank=self.dist.rank,
                                world_size=self.dist.world_size)
        total = loop.max_steps
        if loop.max_epochs is not None:
            by_epochs = loop.max_epochs * self.plan.batches_per_epoch
            total = by_epochs if total is None else min(total, by_epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(cfg.schedule, cfg.warmup_steps, total))
        self.report["schedule"] = {"name": cfg.schedule, "warmup_steps": cfg.warmup_steps, "total_steps": total}
        self.loop = Loop(self.task, self.model, self.optimizer, self.scheduler, self.plan, self.make_batch, loop,
                         self.device, self.dist, evaluate=self.evaluate,
                         checkpoint_extra=lambda: {"finetune": {"task": cfg.task, "mode": cfg.mode}},
                         find_unused_parameters=False)

    # -- set-up helpers --------------------------------------------------------

    def _leakage(self, base: nn.Module) -> list[dict]:
        """Warn when the table's records come from a dataset the base model's card lists as pretraining data."""
        from ecgtool.analysis.leakage import detect_sources, warn_overlap
        from ecgtool.models.apply import model_name, weights_info

        data = weights_info(base).get("pretraining_data")
        if not data:
            return []
        sources = detect_sources(self.data.table, self.data.meta)
        return warn_overlap(model_name(base), data, sources, f"{self.data.name} (its validation and test splits)")

    def _param_groups(self, trainable: list[nn.Parameter]) -> list[dict]:
        """Layer-wise learning rates: the head at --lr, the upper and lower encoder blocks at
        --lr times --lr-scales (the model names its groups)."""
        cfg = self.cfg
        keep = {id(p) for p in trainable}
        scales = {"head": 1.0, "upper": float(cfg.lr_scales[0]), "lower": float(cfg.lr_scales[1])}
        groups = []
        for name, params in self.model.parameter_groups().items():
            params = [p for p in params if id(p) in keep]
            if params:
                groups.append({"params": params, "lr": cfg.lr * scales[name], "name": name})
        self.report["lr_groups"] = {g["name"]: {"lr": g["lr"], "tensors": len(g["params"])} for g in groups}
        return groups

    def _labels(self, labels: str | None) -> tuple[list[str], np.ndarray]:
        cfg = self.cfg
        if labels is not None:
            from ecgtool.io import read_table

            table, meta = read_table(labels)
            names = D.label_names_of(table, meta, str(labels))
            if cfg.labels:
                unknown = [n for n in cfg.labels if n not in names]
                if unknown:
                    raise UsageError(f"--label-names {','.join(unknown)}: not in {labels} ({', '.join(names[:12])})")
                names = list(cfg.labels)
            classes, columns = self._classes(names, {n: table.column(n).to_pylist() for n in names}, str(labels))
            if classes != names and S.RECORD_ID in table.schema.names:  # else join_labels says what is missing
                table = pa.table({S.RECORD_ID: table.column(S.RECORD_ID),
                                  **{c: pa.array(v, pa.int8()) for c, v in columns.items()}})
                names = classes
            y, joined = D.join_labels(self.data.record_ids, table, names, str(labels))
            rec_ids = set(self.data.record_ids.tolist())
            n_rec = len(rec_ids)
            hit_records = len(rec_ids & {str(v) for v in table.column("record_id").to_pylist()})
            self.report.update(label_rows=table.num_rows, joined_rows=joined, joined_records=hit_records,
                               records=n_rec)
            if self.dist.is_main:
                log.info("labels: %d of %d rows (%d of %d records) joined %s by record_id", joined,
                         len(self.data), hit_records, n_rec, labels)
            if joined == 0:
                ex_t = self.data.record_ids[0]
                ex_l = str(table.column("record_id")[0].as_py()) if table.num_rows else "-"
                raise InputError(f"{labels}: no record joined: 0 of {n_rec} records of {self.data.name} have a "
                                 f"row in the label table (record ids look like {ex_t!r} vs {ex_l!r})",
                                 "label the same records (ecgtool label on the same converted table)")
            return names, y
        names = cfg.labels
        if not names:
            names = self.data.meta.label_names if self.data.meta is not None else None
        if not names:
            raise UsageError("no labels: give a label table (-l/--label-table) or label columns (--label-names A,B,...)")
        missing = [n for n in names if n not in self.data.table.schema.names]
        if missing:
            raise InputError(f"{self.data.name}: no label column {', '.join(missing)}",
                             "give a label table with -l/--label-table, or name existing columns")
        columns = {n: self.data.column(n) for n in names}
        names, columns = self._classes(names, columns, self.data.name)
        y = EL.label_matrix(columns, names, self.data.name)
        self.report.update(joined_rows=len(self.data), records=len(set(self.data.record_ids.tolist())))
        return list(names), y

    def _classes(self, names: list[str], columns: dict[str, list], source: str) -> tuple[list[str], dict[str, list]]:
        """--task multiclass with one column of class names (CinC 2017's N/A/O/~): one 1/0 column per class."""
        if self.cfg.task != "multiclass" or len(names) != 1 or not EL.is_class_column(columns[names[0]]):
            return list(names), columns
        classes, cols = EL.class_columns(columns[names[0]])
        if self.dist.is_main:
            log.info("labels: column '%s' of %s holds %d classes: %s", names[0], source, len(classes),
                     ", ".join(classes[:20]))
        return classes, cols

    def _split(self):
        tr, va, te, self.report["split"] = split_rows(self.cfg, self.data.column, self.data.table.schema.names,
                                                      self.data.record_ids, self.data.name)
        return tr, va, te

    def _augment_plan(self):
        want = tuple(normalize_lead(x) for x in self.model.contract.leads)
        if want != ("I",):
            raise UsageError(f"--lead-augment is for single-lead (Lead I) models; this model takes {', '.join(want)}")
        pos = {lead: i for i, lead in enumerate(self.data.leads)}
        if "I" not in pos or "aVF" not in pos:
            raise InputError(f"{self.data.name}: --lead-augment needs leads I and aVF in the table "
                             f"(it has {', '.join(self.data.leads)})")
        angles = [0.0] + [s * a for a in self.cfg.lead_augment_angles for s in (1, -1)]
        return pos["I"], pos["aVF"], np.deg2rad(np.asarray(angles))

    # -- batches and evaluation ----------------------------------------------------

    def _inputs(self, rows: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        raw = self.data.signals(rows)
        x = D.apply_lead_map(raw, self.lead_map)
        if self.augment is not None and rng is not None:
            i, f, angles = self.augment
            theta = rng.choice(angles, size=len(rows))
            x[:, 0] = raw[:, i] * np.cos(theta)[:, None] + raw[:, f] * np.sin(theta)[:, None]
        if rng is not None and (self.cfg.lead_dropout or self.cfg.single_lead_prob):
            x = drop_leads(x, self.cfg.lead_dropout, self.cfg.single_lead_prob, rng)
        return np.ascontiguousarray(self.model.prepare(x), dtype=np.float32)

    def make_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        rows = self.train_idx[idx]
        x = torch.from_numpy(self._inputs(rows, rng)).to(self.device)
        if self.multiclass:
            return {"x": x, "y": torch.from_numpy(self.target[rows]).to(self.device)}
        y = self.y[rows]
        return {"x": x, "y": torch.from_numpy(np.nan_to_num(y, nan=0.0)).to(self.device),
                "m": torch.from_numpy((~np.isnan(y)).astype(np.float32)).to(self.device)}

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """Row logits (n, K) in eval mode."""
        out = []
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            for a in range(0, len(rows), self.cfg.eval_batch_size):
                x = torch.from_numpy(self._inputs(rows[a:a + self.cfg.eval_batch_size], None)).to(self.device)
                out.append(self.model.logits(x).float().cpu().numpy())
        self.model.train(was)
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)), dtype=np.float32)

    def record_level(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(record logits = mean of the segment logits, record labels) for ``rows``."""
        z = self.logits(rows)
        rec = self.data.record_index[rows]
        uniq, zr = per_record(rec, z)
        first = {r: i for i, r in reversed(list(enumerate(rec)))}
        if self.multiclass:
            t = self.target[rows][[first[r] for r in uniq]]
            y = np.full((len(uniq), len(self.label_names)), 0.0, dtype=np.float32)
            y[t >= 0, t[t >= 0]] = 1.0
            y[t < 0] = np.nan
        else:
            y = self.y[rows][[first[r] for r in uniq]]
        return zr, y

    def scores(self, z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        from ecgtool.models.inference import probabilities

        return probabilities(torch.from_numpy(z), temperature, "multiclass" if self.multiclass else "multilabel").numpy()

    def evaluate(self, model) -> dict:
        z, y = self.record_level(self.val_idx)
        res = macro_scores(y, self.scores(z), self.multiclass)
        return {"score": res["macro_auprc"], **res}

    # -- running ---------------------------------------------------------------------

    def steps(self) -> Iterator[dict]:
        return self.loop.steps()

    @property
    def total_steps(self) -> int | None:
        c = self.loop.cfg
        per = self.plan.batches_per_epoch
        if c.max_steps is not None and c.max_epochs is not None:
            return min(c.max_steps, c.max_epochs * per)
        return c.max_steps if c.max_steps is not None else c.max_epochs * per

    def finish(self) -> dict:
        """Best model -> temperature and thresholds on validation -> checkpoint at ``output`` (rank 0)."""
        from ecgtool.analysis.metrics import choose_threshold
        from ecgtool.models.native import save_checkpoint

        st = self.loop.state
        if self.loop.best_state is not None:
            self.model.load_state_dict(self.loop.best_state)
        z, y = self.record_level(self.val_idx)
        if self.multiclass:
            temp = ECAL.fit_temperature(z, self._class_index(y), multiclass=True)
        else:
            temp = ECAL.fit_temperature(z, y)  # one T for all labels; NaN (null) entries left out
        if temp is None:
            if self.dist.is_main:
                log.warning("no temperature fitted: the validation split has a single class; using T = 1")
            temp = 1.0
        p = self.scores(z, temp)
        thresholds = []
        for k in range(len(self.label_names)):
            obs = ~np.isnan(y[:, k])
            t = choose_threshold(y[obs, k], p[obs, k]) if obs.any() else None
            thresholds.append(float(t) if t is not None else 0.5)
        val = macro_scores(y, p, self.multiclass)
        conformal = self._conformal(p, y)
        report = dict(self.report)
        report.update(best_step=st.best_step, best_val_macro_auprc=st.best_score, steps=st.step,
                      stopped_early=st.stopped_early, temperature=temp, thresholds=thresholds,
                      val=val, evals=st.evals)
        if conformal is not None:
            report["conformal"] = conformal
        if len(self.test_idx):
            zt, yt = self.record_level(self.test_idx)
            pt = self.scores(zt, temp)
            report["test"] = macro_scores(yt, pt, self.multiclass)
            if conformal is not None:
                report["test_conformal"] = self._coverage(pt, yt, conformal)
        if self.dist.is_main:
            base = dict((self.model.extra or {}).get("provenance") or {})
            # this checkpoint's own provenance, with the model it was finetuned from as its base (a chain)
            prov = {"source": Path(self.output).name, "importer": None, "trained_by": "ecgtool finetune",
                    "base": {"spec": str(self.model_spec), **base}, "from_scratch": report["from_scratch"]}
            extra = {"conformal": conformal} if conformal is not None else {}
            save_checkpoint(self.model, self.output, thresholds=thresholds, temperature=temp, provenance=prov,
                            task="multiclass" if self.multiclass else "multilabel", **extra,
                            training={"task": self.cfg.task, "mode": self.cfg.mode, "data": self.data.name,
                                      "split": report.get("split"), "best_step": st.best_step,
                                      "val": val, "test": report.get("test")})
        report["output"] = str(self.output)
        shutdown(self.dist)
        return report

    @staticmethod
    def _class_index(y: np.ndarray) -> np.ndarray:
        """Class per record from one-hot rows (NaN rows: -1, unknown)."""
        return np.where(np.isnan(y).all(1), -1, np.nan_to_num(y).argmax(1)).astype(np.int64)

    def _conformal(self, p: np.ndarray, y: np.ndarray) -> dict | None:
        """Split-conformal calibration on the validation records' calibrated probabilities."""
        from ecgtool.analysis import conformal as cf

        if self.cfg.alpha is None:
            return None
        if self.multiclass:
            c = cf.calibrate_aps(p, self._class_index(y), self.cfg.alpha, self.label_names)
        else:
            c = cf.calibrate_labels(p, y, None, self.cfg.alpha, self.label_names)
            bad = [f"{n} ({e['reason']})" for n, e in c["labels"].items() if "reason" in e]
            if bad and self.dist.is_main:
                log.warning("conformal: %d label(s) not calibrated: %s", len(bad), "; ".join(bad))
        c["calibrated_on"] = f"validation split ({len(p)} records)"
        return c

    def _coverage(self, p: np.ndarray, y: np.ndarray, c: dict) -> dict:
        """Empirical coverage of the conformal output on the test split (no bootstrap here)."""
        from ecgtool.analysis import conformal as cf

        if self.multiclass:
            return cf.evaluate_sets(cf.aps_sets(p, c), self._class_index(y), self.label_names, 0, 0, 0.95)
        d, ok = cf.label_decisions(p, c, self.label_names)
        h1, h0, _ = cf.label_sets(p, c, self.label_names)
        M = ~np.isnan(y)
        return cf.evaluate_decisions(d, ok, np.nan_to_num(y) > 0.5, M, self.label_names, h1, h0, 0, 0, 0.95)
