"""Label values as probe and compare read them (numpy only)."""

from __future__ import annotations

import math

import numpy as np

from ecgtool.errors import InputError


def binary_values(name: str, values: np.ndarray) -> np.ndarray:
    """A label column as 1.0 / 0.0 / NaN (missing): 1/0, true/false, yes/no; anything else is an error."""
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, str):
            v = v.strip().lower()
            if v in ("", "nan", "na", "none"):
                continue
            v = {"true": 1, "false": 0, "yes": 1, "no": 0}.get(v, v)
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InputError(f"label {name!r}: value '{values[i]}' is not 1/0/missing",
                             "use --multiclass for a single column of class names")
        if f not in (0.0, 1.0):
            raise InputError(f"label {name!r}: value '{values[i]}' is not 1/0/missing",
                             "use --multiclass for a single column of class names")
        out[i] = f
    return out
