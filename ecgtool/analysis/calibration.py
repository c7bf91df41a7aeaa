"""Temperature scaling and reliability-curve data.

Temperature scaling (Guo et al., 2017) divides a model's logits by one scalar
``T > 0`` fitted by minimising the negative log-likelihood on a held-out
(validation) split. It changes the probabilities, never their order, so
AUROC/AUPRC are unchanged and only calibration moves.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax


def sigmoid(z: np.ndarray) -> np.ndarray:
    return expit(np.asarray(z, dtype=np.float64))


def nll_binary(z: np.ndarray, y: np.ndarray, T: float = 1.0) -> float:
    z = np.asarray(z, dtype=np.float64) / T
    y = np.asarray(y, dtype=np.float64)
    # log(1 + e^z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def nll_multiclass(z: np.ndarray, y: np.ndarray, T: float = 1.0) -> float:
    lp = log_softmax(np.asarray(z, dtype=np.float64) / T, axis=1)
    return float(-np.mean(lp[np.arange(len(y)), np.asarray(y, dtype=int)]))


def fit_temperature(z: np.ndarray, y: np.ndarray, multiclass: bool = False) -> float | None:
    """The temperature minimising the NLL of ``z / T`` against ``y``.

    Binary: ``z`` (n,) logits, ``y`` (n,) 0/1. Multi-class: ``z`` (n, K),
    ``y`` (n,) class indices. ``None`` when ``y`` has a single class (the
    NLL then falls without bound as T → 0, so no temperature is meaningful).
    """
    y = np.asarray(y)
    if y.size == 0 or np.unique(y).size < 2:
        return None
    f = nll_multiclass if multiclass else nll_binary
    res = minimize_scalar(lambda lt: f(z, y, float(np.exp(lt))), bounds=(-4.0, 4.0), method="bounded",
                          options={"xatol": 1e-4})
    if abs(abs(float(res.x)) - 4.0) < 1e-2:  # at the edge of the search: the calibration is not to be trusted
        import logging

        logging.getLogger("ecgtool").warning(
            "the fitted temperature %.3g is at the edge of its search range (e^-4 .. e^4): the validation split "
            "may be too small or one-sided for calibration", float(np.exp(res.x)))
    return float(np.exp(res.x))


def apply_temperature(z: np.ndarray, T: float | None, multiclass: bool = False) -> np.ndarray:
    T = 1.0 if T is None else T
    z = np.asarray(z, dtype=np.float64) / T
    return softmax(z, axis=1) if multiclass else expit(z)


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> dict:
    """Per equal-width bin: count, mean predicted probability, observed frequency.

    Binary ``p`` (n,) against 0/1 ``y``; multi-class ``p`` (n, K) against class
    indices (top-label confidence against accuracy). Empty bins are left out.
    """
    from ecgtool.analysis.metrics import calibration_bins

    cnt, sc, sh, _ = calibration_bins(y, p, n_bins)
    keep = cnt > 0
    edges = np.linspace(0, 1, n_bins + 1)
    return {
        "bin_lower": edges[:-1][keep].round(6).tolist(),
        "bin_upper": edges[1:][keep].round(6).tolist(),
        "count": cnt[keep].astype(int).tolist(),
        "mean_predicted": (sc[keep] / cnt[keep]).round(6).tolist(),
        "observed": (sh[keep] / cnt[keep]).round(6).tolist(),
    }
