"""The linear head: L2-regularised logistic regression on standardised embeddings.

:func:`fit_logistic` fits every label at once with L-BFGS (binary, one model
per label, or softmax); :func:`fit_probe` chooses C per label on validation
log-loss and returns a :class:`LinearModel`; :func:`fit_stats` and
:func:`standardise` are the standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, logsumexp

DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0)


@dataclass
class LinearModel:
    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray  # (D, L or K)
    b: np.ndarray
    C: np.ndarray  # per label (binary) or a single value (multiclass)
    multiclass: bool

    def logits(self, X: np.ndarray) -> np.ndarray:
        Xs = standardise(X, self.mean, self.scale)
        return (Xs @ self.W.astype(np.float32)).astype(np.float64) + self.b


def standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((X - mean) / scale).astype(np.float32, copy=False)


def fit_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X.std(axis=0, dtype=np.float64).astype(np.float32)
    std[~(std > 1e-8)] = 1.0
    return mean, std


def fit_logistic(
    Xs: np.ndarray,
    Y: np.ndarray,
    M: np.ndarray | None,
    C: float | np.ndarray,
    multiclass: bool = False,
    n_classes: int | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised logistic regression for every label at once.

    Binary: ``Y`` (n, L) 0/1 with mask ``M`` (n, L); label ``l`` minimises
    ``0.5 |w_l|^2 + C_l * sum_i M_il * loss_il`` (scikit-learn's objective,
    intercept not penalised), divided by ``C_l * n_l`` for conditioning.
    Multi-class: ``Y`` (n,) class indices (rows with ``M`` false ignored),
    softmax (multinomial) loss with one ``C``. Returns ``(W (D, L|K), b)``.
    """
    n, D = Xs.shape
    Xs = np.ascontiguousarray(Xs, dtype=np.float32)
    if multiclass:
        K = int(n_classes or (Y.max() + 1))
        m = np.ones(n, dtype=bool) if M is None else np.asarray(M, dtype=bool)
        rows = np.flatnonzero(m)
        Xf, yf = Xs[rows], Y[rows].astype(np.int64)
        onehot = np.zeros((rows.size, K))
        onehot[np.arange(rows.size), yf] = 1.0
        nn = max(rows.size, 1)
        Cv = float(np.asarray(C).ravel()[0])
        L = K

        def fun(theta):
            W = theta[: D * K].reshape(D, K)
            b = theta[D * K:]
            Z = (Xf @ W.astype(np.float32)).astype(np.float64) + b
            lse = logsumexp(Z, axis=1)
            loss = np.sum(lse - np.sum(Z * onehot, axis=1)) / nn + np.sum(W * W) / (2 * Cv * nn)
            R = (np.exp(Z - lse[:, None]) - onehot) / nn
            gW = (Xf.T @ R.astype(np.float32)).astype(np.float64) + W / (Cv * nn)
            return loss, np.concatenate([gW.ravel(), R.sum(axis=0)])
    else:
        Y = np.asarray(Y, dtype=np.float64)
        L = Y.shape[1]
        Mf = np.isfinite(Y) if M is None else np.asarray(M, dtype=bool)
        Mf = Mf.astype(np.float64)
        Yz = np.nan_to_num(Y, nan=0.0)
        nl = np.maximum(Mf.sum(axis=0), 1.0)
        Cv = np.broadcast_to(np.asarray(C, dtype=np.float64), (L,)).copy()

        def fun(theta):
            W = theta[: D * L].reshape(D, L)
            b = theta[D * L:]
            Z = (Xs @ W.astype(np.float32)).astype(np.float64) + b
            loss = np.sum(Mf * (np.logaddexp(0.0, Z) - Yz * Z), axis=0) / nl
            loss = float(np.sum(loss) + np.sum(np.sum(W * W, axis=0) / (2 * Cv * nl)))
            R = Mf * (expit(Z) - Yz) / nl
            gW = (Xs.T @ R.astype(np.float32)).astype(np.float64) + W / (Cv * nl)
            return loss, np.concatenate([gW.ravel(), R.sum(axis=0)])

    theta0 = np.zeros(D * L + L) if init is None else np.concatenate([init[0].ravel(), init[1]])
    # SciPy's L-BFGS-B calls BLAS on vectors of a few thousand numbers per
    # iteration; with a multi-threaded BLAS on a busy machine those tiny calls
    # cost milliseconds each (thread wake-ups). Run the optimiser single-threaded
    # and give the large products in ``fun`` the threads back.
    try:
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        n_threads = max([i.get("num_threads", 1) for i in ctl.info() if i.get("user_api") == "blas"] or [1])
        fun_mt = fun
        if n_threads > 1 and Xs.shape[0] * D >= 1_000_000:
            def fun_threaded(theta):
                with ctl.limit(limits=n_threads, user_api="blas"):
                    return fun(theta)

            fun_mt = fun_threaded
        limit = ctl.limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        fun_mt = fun
        limit = contextlib.nullcontext()
    with limit:
        res = minimize(fun_mt, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12, "maxcor": 20})
    W = res.x[: D * L].reshape(D, L)
    b = res.x[D * L:].copy()
    return W, b


def fit_probe(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    M_train: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    M_val: np.ndarray,
    multiclass: bool,
    n_classes: int | None = None,
    C: float | None = None,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    max_iter: int = 500,
) -> LinearModel:
    """Fit on train; with ``C=None`` choose C per label (one C for multiclass)
    from ``c_grid`` by validation log-loss."""
    mean, scale = fit_stats(X_train)
    Xs = standardise(X_train, mean, scale)
    grid = [float(C)] if C is not None else sorted(float(c) for c in c_grid)
    Xv = standardise(X_val, mean, scale) if len(grid) > 1 else None
    best = None
    init = None
    for c in grid:
        W, b = fit_logistic(Xs, Y_train, M_train, c, multiclass, n_classes, init=init, max_iter=max_iter)
        init = (W, b)
        if len(grid) == 1:
            return LinearModel(mean, scale, W, b, np.full(W.shape[1] if not multiclass else 1, c), multiclass)
        Z = (Xv @ W.astype(np.float32)).astype(np.float64) + b
        if multiclass:
            rows = np.flatnonzero(M_val)
            nll = np.array([-np.mean(log_softmax(Z[rows], axis=1)[np.arange(rows.size), Y_val[rows]])])
            nll = np.nan_to_num(nll, nan=np.inf)
        else:
            Mv = M_val.astype(np.float64)
            Yv = np.nan_to_num(Y_val, nan=0.0)
            nll = np.sum(Mv * (np.logaddexp(0.0, Z) - Yv * Z), axis=0) / np.maximum(Mv.sum(axis=0), 1)
        if best is None:
            best = [W.copy(), b.copy(), np.full(nll.shape, c), nll]
        else:
            better = nll < best[3] - 1e-12
            if multiclass:
                if better[0]:
                    best = [W.copy(), b.copy(), np.array([c]), nll]
            else:
                best[0][:, better] = W[:, better]
                best[1][better] = b[better]
                best[2][better] = c
                best[3] = np.where(better, nll, best[3])
    return LinearModel(mean, scale, best[0], best[1], best[2], multiclass)
