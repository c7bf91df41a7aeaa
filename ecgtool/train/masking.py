"""Span masking (wav2vec 2.0 ``compute_mask_indices``, static spans) and random lead masking (RLM).

Span masking, per sample of ``T`` frames (ECG-FM: ``mask_prob`` 0.65,
``mask_length`` 10, ``min_masks`` 2, static span lengths, overlaps allowed):

1. ``n = max(min_masks, int(mask_prob * T / mask_length + u))`` with ``u ~ U[0, 1)``
   (probabilistic rounding), capped so that ``n + mask_length < T``;
2. ``n`` distinct span starts drawn uniformly from ``0 .. T - mask_length - 1``;
3. every start masks ``mask_length`` frames; overlapping spans merge;
4. every sample of the batch keeps the same number of masked frames (the
   smallest over the batch, the rest dropped at random), so the masked
   frames of a batch form a rectangular ``(B, M)`` block.

All randomness comes from a :class:`numpy.random.Generator` the caller owns,
so masks are reproducible from a seed.
"""

from __future__ import annotations

import numpy as np


def compute_mask_indices(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    rng: np.random.Generator,
    min_masks: int = 2,
    padding_mask: np.ndarray | None = None,
    same_count: bool = True,
) -> np.ndarray:
    """Boolean mask ``(B, T)``, True at masked frames (see the module docstring).

    ``padding_mask`` (B, T) True at padded frames: spans are drawn inside the
    valid part of each sample only.
    """
    bsz, all_sz = int(shape[0]), int(shape[1])
    if not 0.0 <= mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob}")
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks}")
    mask = np.zeros((bsz, all_sz), dtype=bool)
    if mask_prob == 0.0 and min_masks == 0:
        return mask
    chosen: list[np.ndarray] = []
    for i in range(bsz):
        sz = all_sz
        if padding_mask is not None:
            sz = int(all_sz - np.asarray(padding_mask[i]).sum())
        n = int(mask_prob * sz / float(mask_length) + rng.random())
        n = max(min_masks, n)
        length = mask_length
        if sz - length <= n:
            length = sz - n - 1
        if length < 1 or n < 1:
            chosen.append(np.zeros(0, dtype=np.int64))
            continue
        starts = rng.choice(sz - length, n, replace=False)
        idx = np.unique((starts[:, None] + np.arange(length)[None, :]).reshape(-1))
        chosen.append(idx[idx < sz])
    if same_count and chosen:
        keep = min(len(c) for c in chosen)
        out = []
        for c in chosen:
            if len(c) > keep:
                c = np.sort(rng.choice(c, keep, replace=False))
            out.append(c)
        chosen = out
    for i, c in enumerate(chosen):
        mask[i, c] = True
    return mask


def random_lead_mask(n: int, n_leads: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """RLM keep-mask ``(n, n_leads)`` float32: each lead of each row is zeroed (0) with probability ``p``.

    Multiply the signal ``(n, n_leads, T)`` by ``mask[..., None]``. As in
    fairseq-signals, a row may lose every lead.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"lead mask probability must be in [0, 1], got {p}")
    return (rng.random((n, n_leads)) >= p).astype(np.float32)
