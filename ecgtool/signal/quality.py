"""Signal-quality flags, computed on physical units (mV) before normalisation.

Per record (leads, samples), over the leads the record really has (zero-filled
missing leads are left out):

* ``q_nan``: number of NaN samples (0 = none).
* ``q_flat_leads``: leads whose peak-to-peak range is below ``flat_mv``
  (default 0.01 mV: a lead that is all zeros or stuck).
* ``q_clipping``: leads that hit a rail: at least ``clip_plateaus`` (default
  3) separate plateaus of at least ``clip_ms`` (default 10 ms, and at least 3
  samples) sitting exactly at the lead's maximum or minimum, flat leads
  excluded. (One long stretch at the minimum, e.g. a lead-off at the start, is
  not clipping; a QRS that saturates the amplifier beat after beat is.)
* ``q_amplitude``: leads whose peak-to-peak range exceeds ``amplitude_mv``
  (default 15 mV: beyond plausible ECG voltages; unit errors, saturation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLAGS = ("nan", "flat", "clipping", "amplitude")
COLUMNS = {"nan": "q_nan", "flat": "q_flat_leads", "clipping": "q_clipping", "amplitude": "q_amplitude"}


@dataclass(frozen=True)
class QualityLimits:
    flat_mv: float = 0.01
    clip_ms: float = 10.0
    clip_plateaus: int = 3
    amplitude_mv: float = 15.0


def _plateaus(at: np.ndarray, k: int) -> np.ndarray:
    """Number of runs of at least ``k`` consecutive True values along the last axis."""
    t = at.shape[-1]
    if t < k:
        return np.zeros(at.shape[:-1], dtype=np.int64)
    cs = np.zeros(at.shape[:-1] + (t + 1,), dtype=np.int32)
    np.cumsum(at, axis=-1, out=cs[..., 1:])
    full = (cs[..., k:] - cs[..., :-k]) == k  # window starting at i is all True
    prev = np.concatenate([np.zeros(at.shape[:-1] + (1,), dtype=bool), at[..., : t - k]], axis=-1)
    return (full & ~prev).sum(axis=-1)


def quality_flags(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    limits: QualityLimits = QualityLimits(),
    fs: float = 500.0,
) -> dict:
    """Flags of one record or of a stack: x (..., leads, samples) at ``fs`` -> dict of int arrays (...,)."""
    x = np.asarray(x)
    lead_shape = x.shape[:-1]
    if mask is None:
        m = np.ones(lead_shape, dtype=bool)
    else:
        m = np.broadcast_to(np.asarray(mask, dtype=bool), lead_shape)
    nan = np.isnan(x)
    n_nan = np.where(m, nan.sum(axis=-1), 0).sum(axis=-1)
    if x.shape[-1] == 0:
        zeros = np.zeros(lead_shape[:-1], dtype=np.int64)
        return {"q_nan": zeros, "q_flat_leads": zeros + m.sum(axis=-1), "q_clipping": zeros, "q_amplitude": zeros}
    if nan.any():
        hi = np.nanmax(np.where(nan, -np.inf, x), axis=-1)
        lo = np.nanmin(np.where(nan, np.inf, x), axis=-1)
        all_nan = nan.all(axis=-1)
        hi = np.where(all_nan, 0.0, hi)
        lo = np.where(all_nan, 0.0, lo)
    else:
        hi = x.max(axis=-1)
        lo = x.min(axis=-1)
    ptp = hi - lo
    flat = m & (ptp < limits.flat_mv)
    k = max(3, int(round(limits.clip_ms * fs / 1000.0)))
    at_hi = x == hi[..., None]
    at_lo = x == lo[..., None]
    # only leads with enough samples at a rail can have enough plateaus
    need = k * limits.clip_plateaus
    cand = m & ~flat & ((at_hi.sum(axis=-1) >= need) | (at_lo.sum(axis=-1) >= need))
    clipped = np.zeros(lead_shape, dtype=bool)
    if cand.any():
        plateaus = _plateaus(at_hi[cand], k) + _plateaus(at_lo[cand], k)
        clipped[cand] = plateaus >= limits.clip_plateaus
    amp = m & (ptp > limits.amplitude_mv)
    return {
        "q_nan": n_nan.astype(np.int64),
        "q_flat_leads": flat.sum(axis=-1).astype(np.int64),
        "q_clipping": clipped.sum(axis=-1).astype(np.int64),
        "q_amplitude": amp.sum(axis=-1).astype(np.int64),
    }
