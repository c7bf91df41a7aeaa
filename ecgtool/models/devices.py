"""Devices: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from ecgtool.errors import UsageError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}, {'CPU-only build' if torch.version.cuda is None else 'no GPU visible'})",
                             "use --device cpu or --device auto")
        if spec != "cuda":
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {spec}: expected cuda:N with N a number") from None
            if not 0 <= index < torch.cuda.device_count():
                raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                                 f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    raise UsageError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
