"""Fixed lengths: crop / pad, and non-overlapping windows (along the last axis)."""

from __future__ import annotations

import numpy as np

CROP_MODES = ("start", "center")


def crop_or_pad(x: np.ndarray, n: int, crop: str = "start") -> np.ndarray:
    """Cut ``x`` (..., samples) to ``n`` samples, or zero-pad it at the end.

    ``crop="start"`` keeps the first ``n`` samples; ``"center"`` the middle
    ones (the extra sample of an odd excess is cut from the end).
    """
    t = x.shape[-1]
    if t == n:
        return x
    if t > n:
        if crop == "center":
            a = (t - n) // 2
            return x[..., a : a + n]
        if crop != "start":
            raise ValueError(f"unknown crop mode {crop!r} (choose {', '.join(CROP_MODES)})")
        return x[..., :n]
    out = np.zeros(x.shape[:-1] + (n,), dtype=x.dtype)
    out[..., :t] = x
    return out


def n_windows(t: int, n: int, hop: int | None = None) -> int:
    """Number of whole windows of ``n`` samples in ``t`` samples, one every ``hop`` samples (default ``n``:
    non-overlapping)."""
    hop = n if hop is None else hop
    if n <= 0 or hop <= 0 or t < n:
        return 0
    return (t - n) // hop + 1


def windows(x: np.ndarray, n: int, hop: int | None = None) -> np.ndarray:
    """Windows of ``n`` samples starting every ``hop`` samples (default ``n``: non-overlapping); the
    remainder is dropped.

    (leads, samples) -> (windows, leads, n); (records, leads, samples) ->
    (records, windows, leads, n). Views, no copies.
    """
    k = n_windows(x.shape[-1], n, hop)
    if hop is None or hop == n:
        body = x[..., : k * n]
        w = body.reshape(x.shape[:-1] + (k, n))
    else:
        w = np.lib.stride_tricks.sliding_window_view(x, n, axis=-1)[..., : (k - 1) * hop + 1 : hop, :]
    return np.moveaxis(w, -2, -3)
