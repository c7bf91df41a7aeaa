"""Plain arrays: ``.npy`` (leads × samples, or samples × leads) and ``.csv``.

Neither carries a sampling rate, so ``--fs`` is required; ``--leads`` names
the leads (a CSV header row names them otherwise; else ``ch0``, ``ch1``...).
Values are taken as mV. A 2-D array is read as leads × samples when it has
fewer rows than columns, else transposed (a CSV holds one lead per column).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError, UsageError
from ecgtool.formats import RawRecord


def read_array(path: str, fs: float | None = None, leads: list[str] | None = None, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    if not fs:
        raise UsageError(f"{p}: a {p.suffix} file carries no sampling rate", "give --fs HZ (and --leads I,II,...)")
    header = None
    try:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            with open(p, encoding="utf-8", errors="replace") as fh:
                first = fh.readline()
            cells = [c.strip() for c in first.split(",")]
            try:
                [float(c) for c in cells if c]
                skip = 0
            except ValueError:
                header, skip = cells, 1
            a = np.loadtxt(p, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2).T
    except (OSError, ValueError) as exc:
        raise RecordError(name, f"cannot read the array ({exc})") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.size == 0:
        raise RecordError(name, f"expected a 2-D array of leads × samples, got shape {a.shape}")
    if p.suffix.lower() == ".npy" and a.shape[0] > a.shape[1]:
        a = a.T
    n = a.shape[0]
    names = list(leads) if leads else (header if header and len(header) == n else [f"ch{i}" for i in range(n)])
    if len(names) != n:
        raise UsageError(f"{p}: --leads names {len(names)} leads, the array has {n}")
    return [RawRecord(name=name, fs=float(fs), leads=names, signal=np.ascontiguousarray(a, dtype=np.float32),
                      source=str(p), units=["mV"] * n)]
