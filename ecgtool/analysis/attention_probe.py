"""Attention probe: a learnable-query attention pooling and a linear layer over per-token features.

The frozen-backbone evaluation of the ICLR-2026 ECG foundation-model benchmark
(Al-Masud, Lopez Alcaraz & Strodthoff, arXiv 2509.25095) trains, on the
per-token features of a frozen encoder, a V-JEPA-style attention-pooling head:
one learned query (initialised ``randn / sqrt(D)``) attends over the tokens
with multi-head attention whose query, key, value and output projections have
no bias. Here the pooled vector then goes through one linear layer to the
labels. Training: AdamW (lr 1e-3, weight decay 1e-3, the benchmark's
settings), batches of 64 records, up to ``epochs`` epochs; the epoch with the
lowest validation loss (masked BCE, or cross-entropy for exclusive classes)
is kept (early stopping after ``patience`` epochs without a better one).
Tokens are standardised with the training tokens' mean and SD.

With one query, the attention scores of head ``h`` are ``x_t · (W_k,h^T q_h)``
and the head's output is ``W_v,h`` applied to the attention-weighted mean of
the tokens, so a record costs ``T · D · H`` operations instead of
``T · D^2`` (the same function as the standard multi-head attention).

torch is imported when a probe is fitted, never at import time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("ecgtool")


@dataclass
class AttentionOptions:
    epochs: int = 60
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    heads: int | None = None   # default: 16 when D allows, else the largest of 8, 4, 2, 1 dividing D
    seed: int = 0


def default_heads(dim: int) -> int:
    for h in (16, 8, 4, 2, 1):
        if dim % h == 0:
            return h
    return 1


def _module(dim: int, heads: int, n_out: int):
    import torch
    from torch import nn

    class QueryAttentionPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = heads
            self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
            self.q = nn.Linear(dim, dim, bias=False)
            self.k = nn.Linear(dim, dim, bias=False)
            self.v = nn.Linear(dim, dim, bias=False)
            self.o = nn.Linear(dim, dim, bias=False)
            self.linear = nn.Linear(dim, n_out)

        def attention(self, x, pad):
            """(B, T, H) attention weights of the query over the tokens."""
            H, dh = self.heads, dim // self.heads
            q = self.q(self.query).view(H, 1, dh)
            u = torch.bmm(q, self.k.weight.view(H, dh, dim)).view(H, dim) / math.sqrt(dh)  # W_k,h^T q_h
            s = torch.matmul(x, u.t())                                                    # (B, T, H)
            s = s.masked_fill(pad[:, :, None], float("-inf"))
            return torch.softmax(s, dim=1)

        def forward(self, x, pad):
            H, dh = self.heads, dim // self.heads
            a = self.attention(x, pad)
            pooled = torch.bmm(a.transpose(1, 2), x)                                      # (B, H, D)
            wv = self.v.weight.view(H, dh, dim)
            v = torch.bmm(pooled.transpose(0, 1), wv.transpose(1, 2))                    # (H, B, dh): W_v,h pooled_h
            v = v.transpose(0, 1).reshape(x.shape[0], dim)
            return self.linear(self.o(v))

    return QueryAttentionPool()


def _batch(tokens: Sequence[np.ndarray], idx: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    import torch

    lens = np.array([tokens[i].shape[0] for i in idx])
    T = int(lens.max()) if lens.size else 1
    D = mean.shape[0]
    x = np.zeros((len(idx), T, D), dtype=np.float32)
    pad = np.ones((len(idx), T), dtype=bool)
    for r, i in enumerate(idx):
        t = tokens[i]
        x[r, : t.shape[0]] = (t - mean) / scale
        pad[r, : t.shape[0]] = False
    return torch.from_numpy(x), torch.from_numpy(pad)


@dataclass
class AttentionProbe:
    mean: np.ndarray
    scale: np.ndarray
    module: Any
    multiclass: bool
    info: dict = field(default_factory=dict)

    def logits(self, tokens: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
        import torch

        out = []
        self.module.eval()
        with torch.no_grad():
            for a in range(0, len(tokens), batch_size):
                idx = np.arange(a, min(a + batch_size, len(tokens)))
                x, pad = _batch(tokens, idx, self.mean, self.scale)
                out.append(self.module(x, pad).double().numpy())
        n_out = self.module.linear.out_features
        return np.concatenate(out) if out else np.zeros((0, n_out))


def _loss(z, y, m, multiclass: bool):
    import torch
    import torch.nn.functional as F

    if multiclass:
        keep = m
        if not bool(keep.any()):
            return z.sum() * 0.0
        return F.cross_entropy(z[keep], y[keep])
    per = F.binary_cross_entropy_with_logits(z, y, reduction="none") * m
    return per.sum() / m.sum().clamp_min(1.0)


def fit_attention(tokens_tr: Sequence[np.ndarray], Y_tr: np.ndarray, M_tr: np.ndarray,
                  tokens_val: Sequence[np.ndarray], Y_val: np.ndarray, M_val: np.ndarray,
                  multiclass: bool, n_out: int, opts: AttentionOptions | None = None) -> AttentionProbe:
    """Train on (tokens, labels) of the training split; keep the epoch with the lowest validation loss.

    ``Y`` binary (n, L) with ``M`` (n, L) known, or class indices (n,) with ``M`` (n,)."""
    import torch

    from ecgtool.errors import InputError

    opts = opts or AttentionOptions()
    if not len(tokens_tr):
        raise InputError("attention probe: no training record")
    flat = np.concatenate([np.asarray(t, dtype=np.float64) for t in tokens_tr])
    mean = flat.mean(axis=0).astype(np.float32)
    scale = flat.std(axis=0).astype(np.float32)
    scale[~(scale > 1e-8)] = 1.0
    del flat
    dim = mean.shape[0]
    heads = opts.heads or default_heads(dim)
    if dim % heads:
        raise InputError(f"attention probe: {heads} heads do not divide the feature width {dim}")
    gen = torch.Generator().manual_seed(opts.seed)
    with torch.random.fork_rng():
        torch.manual_seed(opts.seed)
        module = _module(dim, heads, n_out)
    opt = torch.optim.AdamW(module.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    def targets(Y, M, idx):
        if multiclass:
            return torch.from_numpy(np.asarray(Y)[idx].astype(np.int64)), torch.from_numpy(np.asarray(M)[idx])
        return (torch.from_numpy(np.nan_to_num(np.asarray(Y, dtype=np.float32)[idx], nan=0.0)),
                torch.from_numpy(np.asarray(M)[idx].astype(np.float32)))

    def val_loss() -> float:
        module.eval()
        total, weight = 0.0, 0.0
        with torch.no_grad():
            for a in range(0, len(tokens_val), 128):
                idx = np.arange(a, min(a + 128, len(tokens_val)))
                x, pad = _batch(tokens_val, idx, mean, scale)
                y, m = targets(Y_val, M_val, idx)
                w = float(m.sum())
                if w:
                    total += float(_loss(module(x, pad), y, m, multiclass)) * w
                    weight += w
        return total / weight if weight else float("inf")

    best, best_epoch, best_state, stale = math.inf, 0, None, 0
    n = len(tokens_tr)
    history = []
    for epoch in range(1, opts.epochs + 1):
        module.train()
        perm = torch.randperm(n, generator=gen).numpy()
        for a in range(0, n, opts.batch_size):
            idx = perm[a:a + opts.batch_size]
            x, pad = _batch(tokens_tr, idx, mean, scale)
            y, m = targets(Y_tr, M_tr, idx)
            loss = _loss(module(x, pad), y, m, multiclass)
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = val_loss()
        history.append(round(v, 6))
        if v < best - 1e-6:
            best, best_epoch, stale = v, epoch, 0
            best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
        else:
            stale += 1
            if stale >= opts.patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    info = {"heads": heads, "epochs_run": len(history), "best_epoch": best_epoch,
            "best_val_loss": None if math.isinf(best) else best, "lr": opts.lr, "weight_decay": opts.weight_decay,
            "batch_size": opts.batch_size}
    return AttentionProbe(mean, scale, module, multiclass, info)
