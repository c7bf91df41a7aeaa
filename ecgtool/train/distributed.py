"""torch.distributed set-up from the launcher's environment (torchrun or SLURM srun).

* torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
* srun sets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; the
  rendezvous address comes from ``MASTER_ADDR`` / ``MASTER_PORT`` (set them
  in the batch script, e.g. ``export MASTER_ADDR=$(scontrol show hostnames
  $SLURM_JOB_NODELIST | head -n1)``), defaulting to 127.0.0.1:29500 on one node.

The backend is NCCL on CUDA and gloo on CPU. Only rank 0 writes files
(:attr:`DistInfo.is_main`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ecgtool.errors import UsageError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launcher_env(env: dict | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun or srun variables, or None when not launched."""
    env = os.environ if env is None else env
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
            return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    except ValueError as exc:
        raise UsageError(f"bad launcher environment ({exc})") from None
    return None


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group the launcher describes (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        dist.get_backend(), False)
    got = launcher_env()
    if got is None or got[1] <= 1:
        return DistInfo()
    rank, world, local = got
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(rank), str(world), str(local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local if device.index is None else device.index)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local, backend, True)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under a launcher."""
    if device.type == "cuda" and info.enabled and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    v = value.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
