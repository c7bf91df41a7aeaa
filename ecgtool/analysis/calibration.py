"""Reliability-curve data for calibration reports.

The temperature itself (fitting and applying it) is
:mod:`ecgtool.evaluation.calibration`, shared by ``probe`` and ``finetune``.
"""

from __future__ import annotations

import numpy as np


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
