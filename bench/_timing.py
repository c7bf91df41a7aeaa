"""Timing helpers the benchmarks share."""

from __future__ import annotations

import os
import time

# torch is imported inside the functions: the preprocess benchmark's reference runs as a child process
# that imports CHILD_ENV from here, and must not pay for importing torch.

# Commands run as children with byte-code caching on, as in a normal installation (an environment that
# sets PYTHONDONTWRITEBYTECODE would otherwise charge them for compiling every module on every run).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def sync(dev) -> None:
    """Wait for queued device work (CUDA), so wall-clock timings are complete."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(dev, dtype, n: int | None = None) -> float:
    """Measured matrix-multiply FLOP/s: n³ products (8192 on CUDA, 2048 on the CPU) after warm-up."""
    import torch

    n = n or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    reps = 50 if dev.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t)
