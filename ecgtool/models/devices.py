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


def has_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(spec: str | None, device: torch.device) -> str:
    """``auto`` (bf16 where the hardware has it, fp32 elsewhere; said once), ``fp32`` or ``bf16``."""
    import logging

    spec = (spec or "auto").lower()
    if spec in ("fp32", "bf16"):
        return spec
    if spec != "auto":
        raise UsageError(f"--precision {spec!r}: expected auto, fp32 or bf16")
    choice = "bf16" if has_bf16(device) else "fp32"
    where = "GPU" if device.type == "cuda" else "CPU"
    if choice == "bf16":
        logging.getLogger("ecgtool").info(
            "precision bf16 (auto: this %s has native bf16; --precision fp32 for full float32)", where)
    else:
        logging.getLogger("ecgtool").info("precision fp32 (auto: this %s has no native bf16)", where)
    return choice
