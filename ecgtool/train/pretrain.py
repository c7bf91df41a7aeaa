"""ECG-FM pretraining: wav2vec 2.0 + CMSC + RLM on a segment table (../shared/reference/ecgfm.md §2).

One update, for a batch of ``B`` items (pairs of adjacent segments of one
record with CMSC, single segments without):

1. gather the segments ``x`` (2B or B, L, T); RLM zeroes each lead of each
   segment with probability ``rlm_prob``;
2. span masks over the ``T'`` frames (:func:`ecgtool.train.masking.compute_mask_indices`);
3. ``model.forward_pretrain(x, mask)``: masked frames replaced by ``mask_emb``,
   context ``final_proj(c_t)`` and targets ``project_q(q_t)`` at masked frames;
4. InfoNCE over ``num_negatives`` distractors from the masked frames of the
   same segment, cosine similarity / ``logit_temp`` (mean over masked frames)
   + ``diversity_weight`` * (G*V - prob_perplexity)/(G*V)
   + ``feature_penalty_weight`` * mean(conv features²);
5. CMSC: mean-pooled encoder outputs of the two segments of each pair,
   L2-normalised, symmetric cross-entropy at ``cmsc_temp``, weight ``cmsc_weight``;
6. AdamW (fairseq's Adam decays weights decoupled from the gradient):
   betas (0.9, 0.98), eps 1e-6, weight decay 0.01, lr 5e-5 fixed.

The Gumbel temperature follows ``max(2 * 0.999995**updates, 0.5)``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from ecgtool.errors import CheckpointError, InputError, UsageError
from ecgtool.train import objectives as O
from ecgtool.train.data import BatchPlan, SegmentSet, apply_lead_map, cmsc_pairs, load_segments
from ecgtool.train.distributed import init_distributed, local_device, shutdown
from ecgtool.train.loop import Loop, LoopConfig
from ecgtool.train.masking import compute_mask_indices, random_lead_mask

log = logging.getLogger("ecgtool")


@dataclass
class PretrainConfig:
    """Every pretraining hyperparameter; defaults are the published ECG-FM values."""

    w2v: bool = True
    cmsc: bool = True
    rlm: bool = True
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    num_negatives: int = 100
    logit_temp: float = 0.1
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    diversity_weight: float = 0.1
    feature_penalty_weight: float = 10.0
    cmsc_weight: float = 1.0
    cmsc_temp: float = 0.1
    rlm_prob: float = 0.5
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    batch_size: int = 64   # items per process and update: pairs with CMSC, segments without

    def check(self) -> None:
        def bad(name, value, why):
            raise UsageError(f"--{name.replace('_', '-')} {value}: {why}")

        if not (self.w2v or self.cmsc):
            raise UsageError("--no-w2v and --no-cmsc together leave nothing to train")
        if not 0.0 <= self.mask_prob < 1.0:
            bad("mask_prob", self.mask_prob, "must be in [0, 1)")
        for name in ("mask_length", "num_negatives", "batch_size"):
            if int(getattr(self, name)) < 1:
                bad(name, getattr(self, name), "must be >= 1")
        if self.min_masks < 0:
            bad("min_masks", self.min_masks, "must be >= 0")
        for name in ("logit_temp", "cmsc_temp", "lr", "eps"):
            if not float(getattr(self, name)) > 0:
                bad(name, getattr(self, name), "must be > 0")
        for name in ("diversity_weight", "feature_penalty_weight", "cmsc_weight", "weight_decay"):
            if float(getattr(self, name)) < 0:
                bad(name, getattr(self, name), "must be >= 0")
        if not 0.0 <= self.rlm_prob <= 1.0:
            bad("rlm_prob", self.rlm_prob, "must be in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad("betas", self.betas, "two values in [0, 1)")
        t = self.latent_temp
        if len(t) != 3 or not (t[0] >= t[1] > 0 and 0 < t[2] <= 1):
            bad("latent_temp", t, "(max, min, decay) with max >= min > 0 and 0 < decay <= 1")


class PretrainTask(nn.Module):
    """forward(batch) -> (loss, parts): the ECG-FM pretraining loss of one batch."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor]):
        cfg, model = self.cfg, self.model
        out = model.forward_pretrain(batch["x"], batch.get("mask"))
        parts: dict[str, Any] = {}
        loss = out["encoder_out"].new_zeros((), dtype=torch.float32)
        if cfg.w2v:
            negs = O.sample_negatives(out["y"], out["mask_counts"], cfg.num_negatives)
            logits = O.infonce_logits(out["x"], out["y"], negs, cfg.logit_temp)
            nce = O.infonce_loss(logits)
            div = O.diversity_loss(out["prob_perplexity"].float(), out["num_vars"])
            pen = out["features_pen"].float()
            loss = loss + nce + cfg.diversity_weight * div + cfg.feature_penalty_weight * pen
            with torch.no_grad():
                acc = (logits.argmax(-1) == 0).float().mean()
            parts.update(infonce=nce.detach(), diversity=div.detach(), feature_penalty=pen.detach(),
                         accuracy=acc, prob_perplexity=out["prob_perplexity"].detach().float(),
                         code_perplexity=out["code_perplexity"].detach().float(), gumbel_temp=float(out["temp"]))
        if cfg.cmsc:
            pooled = model.pool(out["encoder_out"].float(), out.get("padding_mask"))
            b = pooled.shape[0] // 2
            c = O.cmsc_loss(pooled[:b], pooled[b:], cfg.cmsc_temp, batch.get("groups"))
            loss = loss + cfg.cmsc_weight * c
            parts["cmsc"] = c.detach()
        return loss, parts


def build_optimizer(params, lr: float, betas, eps: float, weight_decay: float):
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)  # fixed learning rate
    return opt, sched


def load_pretrain_model(spec: str, need_heads: bool):
    from ecgtool.models.checkpoint import load_model

    model = load_model(spec, allow_random=True)
    from ecgtool.models.base import WAV2VEC2_PRETRAINING

    if not model.has(WAV2VEC2_PRETRAINING):
        raise UsageError(f"-m {spec}: pretraining (wav2vec 2.0 + CMSC + RLM) needs a model with that capability "
                         f"(ECG-FM's transformer), not {model.family}",
                         "e.g. -m ecgfm-small, or a checkpoint written by 'ecgtool pretrain'")
    if need_heads and getattr(model, "quantizer", None) is None:
        raise CheckpointError(f"-m {spec}: this model has no pretraining heads (mask_emb, quantizer, project_q, "
                              "final_proj)", "continue from a pretraining checkpoint, or pass --no-w2v")
    return model


class Pretrainer:
    """Set up a pretraining run; iterate :meth:`steps` (one dict per update), then :meth:`finish`."""

    def __init__(self, data: str | SegmentSet, model: str, out_dir: str | Path, cfg: PretrainConfig | None = None,
                 loop: LoopConfig | None = None, device: str = "auto"):
        from ecgtool.models.devices import resolve_device

        self.cfg = cfg or PretrainConfig()
        self.cfg.check()
        loop = loop or LoopConfig(out_dir=Path(out_dir), max_epochs=1)
        loop.out_dir = Path(out_dir)
        dev = resolve_device(device)
        self.dist = init_distributed(dev)
        self.device = local_device(dev, self.dist)
        self.data = data if isinstance(data, SegmentSet) else load_segments(data)
        torch.manual_seed(loop.seed)  # a model built from a registry name starts from seeded weights
        self.model = load_pretrain_model(model, self.cfg.w2v)
        self.model_spec = model
        # a checkpoint from an earlier pretraining run continues its Gumbel temperature schedule
        done = ((getattr(self.model, "extra", None) or {}).get("training") or {})
        self.update_offset = int(done.get("updates", done.get("step", 0)) or 0)
        self.lead_map = self.data.check_contract(self.model.contract)
        t = self.cfg.latent_temp
        if self.model.quantizer is not None:
            q = self.model.quantizer
            q.max_temp, q.min_temp, q.temp_decay = float(t[0]), float(t[1]), float(t[2])
            self.model.config["latent_temp"] = [float(v) for v in t]
        self.model.config["logit_temp"] = float(self.cfg.logit_temp)
        self.model.to(self.device)
        self.n_frames = self.model.output_length(self.data.n_samples)
        if self.cfg.cmsc:
            self.pairs = cmsc_pairs(self.data.record_ids, self.data.segments)
            if len(self.pairs) == 0:
                raise InputError(f"{self.data.name}: no record has two segments, so CMSC has no positive pairs",
                                 "segment records of >= 10 s ('ecgtool preprocess --segment 5') or pass --no-cmsc")
            n_items = len(self.pairs)
            left = len(self.data) - 2 * n_items
            if left:
                log.info("CMSC: %d pairs of adjacent segments; %d segments without a partner are not used",
                         n_items, left)
        else:
            self.pairs = None
            n_items = len(self.data)
        self.plan = BatchPlan(n_items, self.cfg.batch_size, seed=loop.seed, rank=self.dist.rank,
                              world_size=self.dist.world_size)
        self.task = PretrainTask(self.model, self.cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(params, self.cfg.lr, self.cfg.betas, self.cfg.eps,
                                                         self.cfg.weight_decay)
        self.loop = Loop(self.task, self.model, self.optimizer, self.scheduler, self.plan, self.make_batch, loop,
                         self.device, self.dist, on_step=self._on_step,
                         checkpoint_extra=lambda: {"pretrain": _jsonable(asdict(self.cfg)),
                                                   "updates": self.update_offset + self.loop.state.step,
                                                   "data": self.data.name},
                         find_unused_parameters=not self.cfg.w2v)

    def _on_step(self, task, step: int) -> None:
        self.model.set_num_updates(self.update_offset + step)

    def make_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        groups = None
        if self.pairs is not None:
            rows = self.pairs[idx]
            order = np.concatenate([rows[:, 0], rows[:, 1]])
            groups = torch.from_numpy(self.data.record_index[rows[:, 0]].astype(np.int64))
        else:
            order = np.asarray(idx)
        x = apply_lead_map(self.data.signals(order), self.lead_map)
        if cfg.rlm:
            x *= random_lead_mask(x.shape[0], x.shape[1], cfg.rlm_prob, rng)[..., None]
        batch = {"x": torch.from_numpy(x).to(self.device, non_blocking=True)}
        if cfg.w2v:
            mask = compute_mask_indices((x.shape[0], self.n_frames), cfg.mask_prob, cfg.mask_length, rng,
                                        cfg.min_masks)
            batch["mask"] = torch.from_numpy(mask).to(self.device)
        if groups is not None:
            batch["groups"] = groups.to(self.device)
        return batch

    def steps(self) -> Iterator[dict]:
        return self.loop.steps()

    @property
    def total_steps(self) -> int | None:
        c = self.loop.cfg
        per_epoch = self.plan.batches_per_epoch
        if c.max_steps is not None and c.max_epochs is not None:
            return min(c.max_steps, c.max_epochs * per_epoch)
        return c.max_steps if c.max_steps is not None else c.max_epochs * per_epoch

    def finish(self) -> Path | None:
        """Write the final model to ``OUT/model.safetensors`` (rank 0) and leave the process group."""
        from ecgtool.models.native import save_checkpoint

        path = None
        if self.dist.is_main:
            path = Path(self.loop.out_dir) / "model.safetensors"
            prov = dict(getattr(self.model, "extra", {}).get("provenance") or {})
            prov["trained_by"] = "ecgtool pretrain"
            prov["base"] = str(self.model_spec)
            save_checkpoint(self.model, path, provenance=prov,
                            training={"step": self.loop.state.step,
                                      "updates": self.update_offset + self.loop.state.step,
                                      "pretrain": _jsonable(asdict(self.cfg)),
                                      "data": self.data.name})
        shutdown(self.dist)
        return path


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
