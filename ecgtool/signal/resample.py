"""Resampling along the last axis: polyphase (exact rational factor) or linear.

* ``poly``: :func:`scipy.signal.resample_poly` with ``up/down`` the exact
  reduced ratio of the two rates (500/300 -> 5/3), anti-aliased by scipy's
  default Kaiser-windowed FIR. Output length ``ceil(n * up / down)``.
* ``linear``: linear interpolation with the endpoints pinned, as ECG-FM's
  preprocessing does: the output has ``int(n * fs_out / fs_in)`` samples and
  input sample ``i`` sits at output position ``i * (m - 1) / (n - 1)``. No
  anti-aliasing filter (downsampling aliases, as in the original).

* ``fft``: :func:`scipy.signal.resample` (Fourier method) over the whole row,
  to ``int(n * fs_out / fs_in)`` samples (ECG-JEPA's, ST-MEM's and HuBERT-ECG's).

All work on any leading shape, so a whole (records, leads, samples) stack is
resampled in one call.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

METHODS = ("linear", "poly", "fft")


def ratio(fs_in: float, fs_out: float, max_denominator: int = 100000) -> tuple[int, int]:
    """(up, down): the reduced integer ratio fs_out / fs_in."""
    if fs_in <= 0 or fs_out <= 0:
        raise ValueError(f"sampling rates must be positive (got {fs_in} -> {fs_out})")
    fr = (Fraction(str(float(fs_out))) / Fraction(str(float(fs_in)))).limit_denominator(max_denominator)
    return fr.numerator, fr.denominator


def resampled_length(n: int, fs_in: float, fs_out: float, method: str = "poly") -> int:
    """Number of samples ``resample`` returns for ``n`` input samples."""
    if fs_in == fs_out:
        return n
    if method in ("linear", "fft"):
        return int(n * (fs_out / fs_in))
    up, down = ratio(fs_in, fs_out)
    return -(-n * up // down)


def resample_poly(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling of ``x`` (..., samples) by the exact rational ratio."""
    if fs_in == fs_out:
        return x
    from scipy.signal import resample_poly as _rp

    up, down = ratio(fs_in, fs_out)
    return _rp(x, up, down, axis=-1)


def resample_linear(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Linear interpolation of ``x`` (..., samples), endpoints pinned (ECG-FM's resampling)."""
    if fs_in == fs_out:
        return x
    n = x.shape[-1]
    m = int(n * (fs_out / fs_in))
    if m <= 0 or n == 0:
        return np.zeros(x.shape[:-1] + (max(m, 0),), dtype=np.float64)
    if n == 1:
        return np.repeat(x.astype(np.float64), m, axis=-1)
    if m == 1:
        return x[..., :1].astype(np.float64)
    pos = np.arange(m, dtype=np.float64) * ((n - 1) / (m - 1))
    left = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    frac = pos - left
    xl = x[..., left].astype(np.float64, copy=False)
    xr = x[..., left + 1].astype(np.float64, copy=False)
    return xl + (xr - xl) * frac


def resample_fft(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Fourier resampling of ``x`` (..., samples) to ``int(n * fs_out / fs_in)`` samples."""
    if fs_in == fs_out:
        return x
    from scipy.signal import resample as _rs

    m = int(x.shape[-1] * (fs_out / fs_in))
    if m <= 0 or x.shape[-1] == 0:
        return np.zeros(x.shape[:-1] + (max(m, 0),), dtype=np.float64)
    return _rs(x, m, axis=-1)


def resample(x: np.ndarray, fs_in: float, fs_out: float, method: str = "poly") -> np.ndarray:
    if method == "fft":
        return resample_fft(x, fs_in, fs_out)
    if method == "linear":
        return resample_linear(x, fs_in, fs_out)
    if method == "poly":
        return resample_poly(x, fs_in, fs_out)
    raise ValueError(f"unknown resampling method {method!r} (choose {', '.join(METHODS)})")


def stretch(values: np.ndarray, n: int) -> np.ndarray:
    """(..., F) values at F evenly spaced points -> (..., n) by linear interpolation (endpoints pinned)."""
    f = values.shape[-1]
    pos = np.linspace(0, f - 1, n)
    flat = values.reshape(-1, f).astype(np.float64)
    out = np.stack([np.interp(pos, np.arange(f), row) for row in flat]) if len(flat) else np.zeros((0, n))
    return out.reshape(values.shape[:-1] + (n,)).astype(np.float32)
