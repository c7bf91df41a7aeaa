"""The training loop: steps, checkpoints every N updates, exact resume, JSON-lines log, NaN guard.

A run lives in one output directory::

    RUN/train_log.jsonl                    one JSON object per update (rank 0)
    RUN/checkpoints/step-00000100/         one complete checkpoint per saved step
        model.safetensors                  native checkpoint of the model (ecgtool.models.checkpoint)
        state.pt                           resume state (torch.save of tensors and plain Python only;
                                           read back with torch.load(weights_only=True))
        best.safetensors                   finetuning: the best model so far (by the validation score)

A checkpoint directory is written under a temporary name and renamed when
complete, so a kill or a full disk leaves the previous checkpoint as it was;
the newest complete ``step-*`` directory is the one ``resume`` reads. The
last ``keep`` checkpoints are kept.

Exact resume. The order of the data is a function of (seed, epoch) (see
:class:`ecgtool.train.data.BatchPlan`); every random draw of update ``s``
(masks, lead masks, negatives, dropout, Gumbel noise) comes from generators
seeded with ``(seed, rank, s)`` at the start of that update. The resume
state holds the model, optimizer and scheduler state, the step, the position
in the data ``(epoch, batch)``, the torch / CUDA / numpy / Python RNG states
and the evaluation history, so a resumed run repeats the uninterrupted one
update for update.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ecgtool.errors import CheckpointError, EcgtoolError, UsageError
from ecgtool.io.files import json_text
from ecgtool.train.data import BatchPlan
from ecgtool.train.distributed import DistInfo, all_reduce_mean, broadcast_object

log = logging.getLogger("ecgtool")

STATE_VERSION = 1
CKPT_PREFIX = "step-"


class TrainingError(EcgtoolError):
    """A run that cannot go on (a non-finite loss, ...)."""


@dataclass
class LoopConfig:
    out_dir: Path
    max_steps: int | None = None
    max_epochs: int | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    resume: bool = False
    eval_every: int | None = None   # updates between evaluations; None: at the end of every epoch
    patience: int | None = None     # evaluations without improvement before stopping
    clip_norm: float = 0.0          # 0: no gradient clipping (as published)
    amp: bool = True                # bf16 autocast on CUDA
    log_every: int = 1
    prefetch: bool = True           # build the next batch in a thread while this update runs

    def check(self) -> None:
        if self.max_steps is None and self.max_epochs is None:
            raise UsageError("give --max-steps or --max-epochs")
        for name in ("max_steps", "max_epochs", "checkpoint_every", "keep_checkpoints", "eval_every", "patience",
                     "log_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.clip_norm < 0:
            raise UsageError(f"--clip-norm must be >= 0, got {self.clip_norm}")


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch: int = 0                     # next batch of ``epoch``
    best_score: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    evals: list = field(default_factory=list)
    stopped_early: bool = False


def step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(rank), int(step), 0xEC6]).generate_state(1, np.uint64)[0]
               % (2 ** 63 - 1))


def batch_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The numpy generator of update ``step`` (masks, lead masks, augmentation)."""
    return np.random.default_rng([int(seed), int(rank), int(step)])


def seed_step(seed: int, rank: int, step: int) -> np.random.Generator:
    """Seed torch (CPU and CUDA) and Python for update ``step``; return its numpy generator."""
    s = step_seed(seed, rank, step)
    torch.manual_seed(s)
    random.seed(s)
    return batch_rng(seed, rank, step)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _py_state(random.getstate()),
    }


def _py_state(state):
    version, internal, gauss = state
    return [int(version), [int(v) for v in internal], gauss]


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if st.get("cuda") and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))


# --------------------------------------------------------------------------- checkpoint files


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX):].isdigit():
            if (p / "state.pt").is_file() and (p / "model.safetensors").is_file():
                found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def write_state(obj: dict, path: Path) -> None:
    """torch.save (a function of its own so tests can make it fail like a full disk)."""
    torch.save(obj, path)


def model_signature(model: torch.nn.Module) -> dict:
    return {"family": getattr(model, "family", type(model).__name__), "config": getattr(model, "config", None)}


def read_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise CheckpointError(f"{ckpt / 'state.pt'}: cannot read the resume state ({type(exc).__name__}: {exc})",
                              "delete this checkpoint directory to resume from the one before") from None


# --------------------------------------------------------------------------- the loop


class Loop:
    """Drive ``task`` (an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, logs)``).

    ``make_batch(indices, rng)`` turns the item indices of one update into the
    ``batch`` dict of tensors (already on the device), drawing any randomness
    from ``rng``; ``model`` is the module saved in checkpoints (``task.model``).
    ``evaluate(model) -> dict`` with a ``score`` (higher is better) enables
    early stopping and best-model tracking. ``on_step(task, step)`` runs
    before each update (e.g. the Gumbel temperature schedule).
    """

    def __init__(self, task: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, plan: BatchPlan, make_batch: Callable[[np.ndarray, np.random.Generator], dict],
                 cfg: LoopConfig, device: torch.device, dist: DistInfo | None = None,
                 evaluate: Callable[[torch.nn.Module], dict] | None = None,
                 on_step: Callable[[torch.nn.Module, int], None] | None = None,
                 checkpoint_extra: Callable[[], dict] | None = None,
                 find_unused_parameters: bool = False):
        cfg.check()
        self.task = task
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.plan = plan
        self.make_batch = make_batch
        self.cfg = cfg
        self.device = device
        self.dist = dist or DistInfo()
        self.evaluate = evaluate
        self.on_step = on_step
        self.checkpoint_extra = checkpoint_extra
        self.state = LoopState()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.out_dir = Path(cfg.out_dir)
        self.log_path = self.out_dir / "train_log.jsonl"
        self.signature = model_signature(model)
        self.last_checkpoint: Path | None = None
        self.wrapped = task
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DDP(task, device_ids=ids, find_unused_parameters=find_unused_parameters)

    # -- resume ------------------------------------------------------------------

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.out_dir / 'checkpoints'}",
                                  "start without --resume, or point --output-dir at the run to continue")
        st = read_state(ckpt)
        if int(st.get("version", 0)) > STATE_VERSION:
            raise CheckpointError(f"{ckpt}: resume state version {st.get('version')} is newer than this ecgtool")
        sig = st.get("signature") or {}
        if sig.get("family") != self.signature["family"] or sig.get("config") != self.signature["config"]:
            diff = []
            if sig.get("family") != self.signature["family"]:
                diff.append(f"family {sig.get('family')!r} vs {self.signature['family']!r}")
            else:
                a, b = sig.get("config") or {}, self.signature["config"] or {}
                diff = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise CheckpointError(f"--resume: {ckpt} was written for a different model ("
                                  + "; ".join(diff[:6]) + ")",
                                  "resume with the same -m and options, or use a new --output-dir")
        if int(st.get("world_size", 1)) != self.dist.world_size:
            raise CheckpointError(f"--resume: {ckpt} was written by {st.get('world_size')} process(es), this run has "
                                  f"{self.dist.world_size}", "resume with the same number of processes: each "
                                  "one's share of the data and its random draws depend on it")
        from safetensors.torch import load_file

        tensors = load_file(str(ckpt / "model.safetensors"), device="cpu")
        try:
            self.model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"--resume: {ckpt / 'model.safetensors'} does not fit the model ({exc})") from None
        self.optimizer.load_state_dict(st["optimizer"])
        if self.scheduler is not None and st.get("scheduler") is not None:
            self.scheduler.load_state_dict(st["scheduler"])
        loop = st["loop"]
        self.state = LoopState(**loop)
        if (ckpt / "best.safetensors").is_file():
            self.best_state = load_file(str(ckpt / "best.safetensors"), device="cpu")
        _set_rng_state(st["rng"])
        self.last_checkpoint = ckpt
        if self.dist.is_main:
            self._truncate_log(self.state.step)
            log.info("resuming from %s (step %d, epoch %d, batch %d)", ckpt, self.state.step, self.state.epoch,
                     self.state.batch)

    def _truncate_log(self, step: int) -> None:
        if not self.log_path.is_file():
            return
        keep = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except ValueError:
                    break
        tmp = self.log_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.log_path)

    # -- checkpoint ----------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (rank 0); returns its path."""
        step = self.state.step
        path = None
        if self.dist.is_main:
            for name, p in self.model.named_parameters():
                if not torch.isfinite(p).all():
                    raise TrainingError(f"parameter {name} is not finite at step {step}; no checkpoint written",
                                        f"the last good checkpoint is {self.last_checkpoint}")
            path = self._write_checkpoint(step)
        if self.dist.enabled:
            import torch.distributed as tdist

            tdist.barrier()
        return path

    def _write_checkpoint(self, step: int) -> Path:
        from ecgtool.models.native import save_checkpoint

        root = self.out_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"{CKPT_PREFIX}{step:08d}"
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            extra = dict(self.checkpoint_extra() if self.checkpoint_extra else {})
            save_checkpoint(self.model, tmp / "model.safetensors", training={"step": step, **extra})
            if self.best_state is not None:
                from safetensors.torch import save_file

                save_file(self.best_state, str(tmp / "best.safetensors"))
            state = {
                "version": STATE_VERSION,
                "signature": self.signature,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "loop": dict(self.state.__dict__),
                "rng": _rng_state(),
                "seed": int(self.cfg.seed),
                "world_size": int(self.dist.world_size),
            }
            write_state(state, tmp / "state.pt")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            why = "the disk is full" if exc.errno == errno.ENOSPC else f"{exc.strerror or exc}"
            prev = f"the previous checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint \
                else "no earlier checkpoint exists"
            raise CheckpointError(f"checkpoint at step {step} could not be written to {final}: {why}; {prev}",
                                  "free space (or pick another --output-dir) and continue with --resume") from None
        self.last_checkpoint = final
        for old in checkpoint_dirs(self.out_dir)[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    # -- running -----------------------------------------------------------------

    def _autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json_text(record, indent=None) + "\n")

    def _done(self) -> bool:
        c, s = self.cfg, self.state
        if s.stopped_early:
            return True
        if c.max_steps is not None and s.step >= c.max_steps:
            return True
        if c.max_epochs is not None and s.epoch >= c.max_epochs:
            return True
        return False

    def _run_eval(self) -> dict:
        self.task.eval()
        with torch.no_grad(), self._autocast():
            res = dict(self.evaluate(self.model))
        self.task.train()
        s = self.state
        score = float(res.get("score", float("nan")))
        improved = math.isfinite(score) and (s.best_score is None or score > s.best_score)
        if improved:
            s.best_score, s.best_step, s.bad_evals = score, s.step, 0
            self.best_state = {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}
        else:
            s.bad_evals += 1
        rec = {"step": s.step, "epoch": s.epoch, **{k: v for k, v in res.items() if isinstance(v, (int, float, str))},
               "best": improved}
        s.evals.append(rec)
        if self.cfg.patience is not None and s.bad_evals >= self.cfg.patience:
            s.stopped_early = True
            log.info("early stop at step %d: no better validation score for %d evaluations (best %.4f at step %s)",
                     s.step, s.bad_evals, s.best_score if s.best_score is not None else float("nan"), s.best_step)
        return rec

    def steps(self) -> Iterator[dict]:
        """Run the loop, yielding one dict per update (step, epoch, loss, parts, lr, ...)."""
        cfg = self.cfg
        earlier = latest_checkpoint(self.out_dir) if not cfg.resume and self.out_dir.is_dir() else None
        if earlier is not None:
            raise UsageError(f"{self.out_dir} holds checkpoints of an earlier run (newest: {earlier.name})",
                             "continue that run with --resume, or give a new output folder (or remove this one)")
        self.out_dir.mkdir(parents=True, exist_ok=True) if self.dist.is_main else None
        if cfg.resume:
            self._resume()
        elif self.dist.is_main and self.log_path.exists():
            self.log_path.unlink()
        self.task.train()
        start_time = time.monotonic()
        last_saved = self.state.step if cfg.resume else None
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecgtool-batch") if cfg.prefetch else None
        try:
            yield from self._epochs(pool, start_time, last_saved)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _epochs(self, pool, start_time: float, last_saved: int | None) -> Iterator[dict]:
        cfg = self.cfg
        while not self._done():
            st = self.state
            finished_epoch = True
            batches = list(self.plan.epoch_batches(st.epoch, start=st.batch))
            first_step = st.step

            def build(i: int):
                # a pure function of (seed, rank, step): safe to run ahead in a thread
                return self.make_batch(batches[i], batch_rng(cfg.seed, self.dist.rank, first_step + i))

            pending = pool.submit(build, 0) if (pool is not None and batches) else None
            for i, idx in enumerate(batches):
                if self._done():
                    finished_epoch = False
                    break
                t0 = time.perf_counter()
                seed_step(cfg.seed, self.dist.rank, st.step)
                if self.on_step is not None:
                    self.on_step(self.task, st.step)
                if pending is not None:
                    batch = pending.result()
                    pending = pool.submit(build, i + 1) if i + 1 < len(batches) else None
                else:
                    batch = build(i)
                t1 = time.perf_counter()
                with self._autocast():
                    loss, parts = self.wrapped(batch)
                loss_val = all_reduce_mean(loss.detach().float().reshape(1), self.dist)
                if not torch.isfinite(loss_val).all():
                    bad = float(loss_val[0])
                    raise TrainingError(
                        f"loss is {bad} at step {st.step + 1} (epoch {st.epoch}, batch {st.batch}); "
                        "stopped without writing a checkpoint"
                        + (f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""),
                        "lower --lr, check the input for NaN/inf values ('ecgtool info'), then --resume")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in self.task.parameters() if p.requires_grad],
                                                   cfg.clip_norm)
                lr_used = float(self.optimizer.param_groups[0]["lr"])  # the rate of this update
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                t2 = time.perf_counter()
                st.step += 1
                st.batch += 1
                rec = {"step": st.step, "epoch": st.epoch, "loss": float(loss_val[0])}
                for k, v in parts.items():
                    rec[k] = float(v.detach().float().mean()) if torch.is_tensor(v) else v
                rec["lr"] = lr_used
                rec["items"] = int(len(idx) * self.dist.world_size)
                rec["data_s"] = round(t1 - t0, 6)
                rec["step_s"] = round(t2 - t1, 6)
                rec["time_s"] = round(time.monotonic() - start_time, 3)
                if st.step % cfg.log_every == 0:
                    self._log(rec)
                if self.evaluate is not None and cfg.eval_every is not None and st.step % cfg.eval_every == 0:
                    rec["eval"] = self._run_eval()
                    self._log({"step": st.step, "eval": rec["eval"]})
                if st.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                    last_saved = st.step
                yield rec
            if finished_epoch:
                st.epoch += 1
                st.batch = 0
                if self.evaluate is not None and cfg.eval_every is None:
                    ev = self._run_eval()
                    self._log({"step": st.step, "eval": ev})
        if last_saved != self.state.step:
            self.save_checkpoint()

    def run(self, callback: Callable[[dict], None] | None = None) -> LoopState:
        for rec in self.steps():
            if callback is not None:
                callback(rec)
        return self.state


def sync_flag(value: bool, info: DistInfo) -> bool:
    return bool(broadcast_object(bool(value), info))
