"""Normalisation along the last axis.

* ``per-lead-zscore``: each lead minus its mean, divided by its standard
  deviation (population std, ``ddof=0``), as ECG-FM's preprocessing does.
  Constant leads (std 0, including zero-filled missing leads) become 0.
* ``record-zscore``: one mean and std over all (present) leads of a record
  together, as ECGFounder does. A constant record becomes 0.
* ``none``: unchanged.

Statistics are accumulated in float64 whatever the input dtype; results are
float64 (the caller casts to float32 at the end of its pipeline).
"""

from __future__ import annotations

import numpy as np

METHODS = ("per-lead-zscore", "record-zscore", "none")


def per_lead_zscore(x: np.ndarray) -> np.ndarray:
    """(..., leads, samples): z-score each lead; constant leads -> 0."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    std = np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True))
    constant = (x.max(axis=-1, keepdims=True) == x.min(axis=-1, keepdims=True)) | (std == 0)
    out = centred / np.where(constant, 1.0, std)
    if constant.any():
        out = np.where(constant, 0.0, out)
    return out


def record_zscore(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(..., leads, samples): one z-score over the leads and samples of each record.

    ``mask`` (leads,) or (..., leads) excludes zero-filled leads from the
    statistics; they stay 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if mask is None or np.all(mask):
        mean = x.mean(axis=(-2, -1), keepdims=True)
        centred = x - mean
        std = np.sqrt(np.mean(centred * centred, axis=(-2, -1), keepdims=True))
        out = centred / np.where(std == 0, 1.0, std)
        return np.where(std == 0, 0.0, out) if np.any(std == 0) else out
    m = np.broadcast_to(np.asarray(mask, dtype=bool)[..., :, None], x.shape)
    count = m.sum(axis=(-2, -1), keepdims=True)
    safe = np.maximum(count, 1)
    mean = np.where(m, x, 0.0).sum(axis=(-2, -1), keepdims=True) / safe
    centred = np.where(m, x - mean, 0.0)
    std = np.sqrt((centred * centred).sum(axis=(-2, -1), keepdims=True) / safe)
    out = centred / np.where(std == 0, 1.0, std)
    return np.where(std == 0, 0.0, out)


def normalise(x: np.ndarray, method: str, mask: np.ndarray | None = None) -> np.ndarray:
    if method == "per-lead-zscore":
        return per_lead_zscore(x)
    if method == "record-zscore":
        return record_zscore(x, mask)
    if method == "none":
        return x
    raise ValueError(f"unknown normalisation {method!r} (choose {', '.join(METHODS)})")
