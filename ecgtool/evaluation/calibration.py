"""Temperature scaling: one scalar ``T > 0`` that divides the logits, fitted on a validation split.

Temperature scaling (Guo et al., 2017) minimises the negative log-likelihood
of ``logits / T`` on held-out records. It changes probabilities, never their
order, so AUROC / AUPRC stay as they are and only calibration moves.

* multi-label (sigmoid): ``z`` of any shape (one label ``(n,)``, or all
  labels ``(n, K)`` sharing one T) against 1 / 0 targets of the same shape;
  NaN targets (or ``mask`` False) are unobserved and left out.
* multi-class (softmax): ``z`` ``(n, K)`` against class indices ``(n,)``;
  an index below 0 (or ``mask`` False) is unknown and left out.

The search is bounded: ``log T`` in ``[log 0.05, log 20]`` (:data:`T_RANGE`).
A fit at the edge of that range is logged as a warning, since a temperature
there (a split that is tiny, separable or one-sided) is not to be trusted.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

log = logging.getLogger("ecgtool")

T_RANGE = (0.05, 20.0)


def _observed_binary(z, y, mask=None) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if z.shape != y.shape:
        raise ValueError(f"logits {z.shape} and targets {y.shape} differ in shape")
    keep = np.isfinite(y)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    return z[keep], y[keep]


def _observed_multiclass(z, y, mask=None) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"multi-class logits must be (n, K) with (n,) class indices, got {z.shape} and {y.shape}")
    keep = y >= 0
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    return z[keep], y[keep].astype(np.int64)


def nll_binary(z: np.ndarray, y: np.ndarray, T: float = 1.0, mask: np.ndarray | None = None) -> float:
    """Mean sigmoid NLL of ``z / T`` over the observed targets."""
    z, y = _observed_binary(z, y, mask)
    z = z / T
    return float(np.mean(np.logaddexp(0.0, z) - y * z))  # log(1 + e^z) - y z, computed stably


def nll_multiclass(z: np.ndarray, y: np.ndarray, T: float = 1.0, mask: np.ndarray | None = None) -> float:
    """Mean softmax NLL of ``z / T`` over the rows with a known class."""
    z, y = _observed_multiclass(z, y, mask)
    lp = log_softmax(z / T, axis=1)
    return float(-np.mean(lp[np.arange(len(y)), y]))


def fit_temperature(z: np.ndarray, y: np.ndarray, multiclass: bool = False,
                    mask: np.ndarray | None = None) -> float | None:
    """The temperature in :data:`T_RANGE` minimising the NLL of ``z / T`` against ``y``.

    ``None`` when fewer than two classes are observed (the NLL then falls without bound as T -> 0, so no
    temperature is meaningful) or nothing is observed at all.
    """
    if multiclass:
        zo, yo = _observed_multiclass(z, y, mask)
        rows = np.arange(len(yo))

        def f(lt: float) -> float:
            return float(-np.mean(log_softmax(zo / math.exp(lt), axis=1)[rows, yo]))
    else:
        zo, yo = _observed_binary(z, y, mask)

        def f(lt: float) -> float:
            s = zo / math.exp(lt)
            return float(np.mean(np.logaddexp(0.0, s) - yo * s))
    if yo.size == 0 or np.unique(yo).size < 2:
        return None
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    lt = float(res.x)
    if min(lt - lo, hi - lt) < 1e-2:
        log.warning("the fitted temperature %.3g is at the edge of its search range (%g .. %g): the validation "
                    "split may be too small or one-sided for calibration", math.exp(lt), *T_RANGE)
    return float(math.exp(lt))


def apply_temperature(z: np.ndarray, T: float | None, multiclass: bool = False) -> np.ndarray:
    """Probabilities of ``z / T`` (softmax over the last axis for multi-class, else sigmoid); ``None`` = 1."""
    T = 1.0 if T is None else T
    z = np.asarray(z, dtype=np.float64) / T
    return softmax(z, axis=-1) if multiclass else expit(z)
