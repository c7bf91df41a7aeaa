"""Normalisation along the last axis.

* ``per-lead-zscore``: each lead minus its mean, divided by its standard
  deviation (population std, ``ddof=0``), as ECG-FM's preprocessing does.
  Constant leads (std 0, including zero-filled missing leads) become 0.
* ``record-zscore``: one mean and std over all (present) leads of a record
  together, as ECGFounder does. A constant record becomes 0.
* ``record-minmax``: ``(x - min) / (max - min + 1e-8)`` with one min and max
  over all leads and samples of a record, into [0, 1] (MERL).
* ``lead-minmax``: per lead ``2 (x - min) / (max - min + 1e-8) - 1``, into
  [-1, 1] (HuBERT-ECG).
* ``none``: unchanged.

Statistics are accumulated in float64 whatever the input dtype.
"""

from __future__ import annotations

import numpy as np

METHODS = ("per-lead-zscore", "record-zscore", "record-minmax", "lead-minmax", "none")
MINMAX_EPS = 1e-8


CONSTANT_STD = 1e-9


def per_lead_zscore(x: np.ndarray) -> np.ndarray:
    """(..., leads, samples): z-score each lead; constant leads -> 0.

    Mean and variance are accumulated in float64; the arithmetic on the
    samples stays in the input's dtype (float32 input -> float32 output,
    within 1e-6 of a float64 computation for ECG amplitudes). A lead whose
    std is at most ``CONSTANT_STD`` counts as constant.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
    centred = x - mean.astype(x.dtype)
    var = np.einsum("...t,...t->...", centred, centred, dtype=np.float64)[..., None] / max(x.shape[-1], 1)
    std = np.sqrt(var)
    constant = std <= CONSTANT_STD
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std)).astype(x.dtype)
    centred *= scale
    return centred


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


def record_minmax(x: np.ndarray) -> np.ndarray:
    """(..., leads, samples) -> [0, 1] with one min and max per record (float64)."""
    x = np.asarray(x, dtype=np.float64)
    lo = x.min(axis=(-2, -1), keepdims=True)
    hi = x.max(axis=(-2, -1), keepdims=True)
    return (x - lo) / (hi - lo + MINMAX_EPS)


def lead_minmax(x: np.ndarray) -> np.ndarray:
    """(..., leads, samples) -> [-1, 1] per lead (float64)."""
    x = np.asarray(x, dtype=np.float64)
    lo = x.min(axis=-1, keepdims=True)
    hi = x.max(axis=-1, keepdims=True)
    return 2.0 * (x - lo) / (hi - lo + MINMAX_EPS) - 1.0


def normalise(x: np.ndarray, method: str, mask: np.ndarray | None = None) -> np.ndarray:
    if method == "per-lead-zscore":
        return per_lead_zscore(x)
    if method == "record-zscore":
        return record_zscore(x, mask)
    if method == "record-minmax":
        return record_minmax(x)
    if method == "lead-minmax":
        return lead_minmax(x)
    if method == "none":
        return x
    raise ValueError(f"unknown normalisation {method!r} (choose {', '.join(METHODS)})")
