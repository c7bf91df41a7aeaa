"""Learning-rate schedules shared by pretrain and finetune (a multiplier of the base rate per update)."""

from __future__ import annotations

import math
from typing import Callable

from ecgtool.errors import UsageError

SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str, warmup_steps: int = 0) -> None:
    """A usage error for an unknown schedule or a negative warm-up."""
    if schedule not in SCHEDULES:
        raise UsageError(f"--schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if warmup_steps < 0:
        raise UsageError(f"--warmup-steps {warmup_steps}: must be >= 0")


def lr_multiplier(schedule: str, warmup_steps: int = 0, total_steps: int | None = None,
                  floor: float = 0.0) -> Callable[[int], float]:
    """f(step) -> multiplier of the base learning rate.

    ``constant``: 1 after a linear warm-up of ``warmup_steps`` updates.
    ``cosine``: the warm-up, then a half cosine from 1 down to ``floor`` at
    ``total_steps`` (needed), held at ``floor`` after it."""
    check_schedule(schedule, warmup_steps)
    if schedule == "cosine" and not total_steps:
        raise UsageError("--schedule cosine needs the length of the run", "give --max-steps or --max-epochs")
    warm = int(warmup_steps)

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, int(total_steps) - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f
