"""Training objectives on plain tensors.

Pretraining (ECG-FM, ../shared/reference/ecgfm.md §2):

* :func:`sample_negatives` + :func:`infonce_logits` + :func:`infonce_loss`:
  wav2vec 2.0 contrastive loss. For each masked frame the positive is its
  own quantized target, the distractors are ``num_negatives`` targets of
  *other masked frames of the same sample* (drawn with replacement, never
  the frame itself); logits are cosine similarities divided by
  ``logit_temp``; a distractor identical to the positive gets ``-inf``.
* :func:`diversity_loss`: ``(G*V - prob_perplexity) / (G*V)``.
* feature penalty: ``mean(conv_features ** 2)`` (computed by the model).
* :func:`cmsc_loss`: contrastive multi-segment coding: mean-pooled encoder
  outputs of two segments, L2-normalised, ``logits = z0 @ z1.T / temp``,
  positives where the record ids match; symmetric cross-entropy
  (½ rows + ½ columns).
* :func:`gumbel_temperature`: ``max(t_max * decay ** updates, t_min)``.

Finetuning:

* :func:`bce_loss`: multi-label BCE with ``pos_weight`` over *observed*
  labels only (``mask`` = 0 where a label is null, i.e. not part of that
  record's source vocabulary).
* :func:`multiclass_loss`: softmax cross-entropy.
* :func:`nnpu_loss`: non-negative PU risk (Kiryo et al., 2017) per label,
  see its docstring.

Temperature scaling of the finetuned model's logits is numpy code:
:func:`ecgtool.evaluation.calibration.fit_temperature`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- wav2vec 2.0


def gumbel_temperature(num_updates: int, max_temp: float = 2.0, min_temp: float = 0.5,
                       decay: float = 0.999995) -> float:
    """The Gumbel-softmax temperature after ``num_updates`` updates."""
    return max(max_temp * decay ** num_updates, min_temp)


def sample_negatives(y: torch.Tensor, counts: torch.Tensor | list[int], num_negatives: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Distractors for each masked frame from the other masked frames of the same sample.

    ``y`` (M, F): targets of all masked frames, sample after sample (row-major
    order of the (B, T) mask); ``counts`` (B,): masked frames per sample.
    Returns ``(num_negatives, M, F)``. A sample with a single masked frame has
    no other frame to draw from; its distractors are the frame itself (and are
    then masked out by :func:`infonce_logits`).
    """
    counts = [int(c) for c in (counts.tolist() if torch.is_tensor(counts) else counts)]
    if sum(counts) != y.shape[0]:
        raise ValueError(f"counts add up to {sum(counts)} but y has {y.shape[0]} rows")
    if num_negatives < 1 or y.shape[0] == 0:
        return y.new_zeros((0, y.shape[0], y.shape[1]))
    idx = []
    offset = 0
    for c in counts:
        if c == 0:
            continue
        own = torch.arange(c, device=y.device)
        if c == 1:
            neg = torch.zeros((c, num_negatives), dtype=torch.long, device=y.device)
        else:
            neg = torch.randint(0, c - 1, (c, num_negatives), generator=generator,
                                device="cpu").to(y.device)
            neg = neg + (neg >= own[:, None]).long()  # skip the frame itself
        idx.append(neg + offset)
        offset += c
    idx = torch.cat(idx, 0)  # (M, N)
    return y[idx.reshape(-1)].view(y.shape[0], num_negatives, -1).permute(1, 0, 2)


def infonce_logits(x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor,
                   logit_temp: float = 0.1) -> torch.Tensor:
    """Cosine-similarity logits ``(M, 1 + N)``: column 0 the positive, then the distractors.

    ``x`` (M, F) context outputs, ``y`` (M, F) targets, ``negatives`` (N, M, F).
    A distractor equal to its positive is set to ``-inf`` (as wav2vec 2.0).
    """
    targets = torch.cat([y[None], negatives], 0)  # (1+N, M, F)
    logits = F.cosine_similarity(x.float()[None], targets.float(), dim=-1) / logit_temp
    if negatives.shape[0]:
        same = (y[None] == negatives).all(-1)
        if same.any():
            logits[1:] = logits[1:].masked_fill(same, float("-inf"))
    return logits.transpose(0, 1)


def infonce_loss(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with the positive in column 0 (``mean`` over masked frames, or ``sum``)."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction=reduction)


def diversity_loss(prob_perplexity: torch.Tensor, num_vars: int) -> torch.Tensor:
    """``(G*V - prob_perplexity) / (G*V)``: 0 when every code is used equally."""
    return (num_vars - prob_perplexity) / num_vars


# --------------------------------------------------------------------------- CMSC


def cmsc_loss(z0: torch.Tensor, z1: torch.Tensor, temp: float = 0.1,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric CMSC loss between two views ``z0``, ``z1`` (B, D) (L2-normalised here).

    ``groups`` (B,) integer record ids: pair (i, j) is positive when
    ``groups[i] == groups[j]`` (default: only i == j). Each row's loss is the
    mean of ``-log_softmax`` over its positives; the loss is ½ mean over rows
    of ``z0 @ z1.T / temp`` + ½ the same over columns.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"CMSC needs two (B, D) views of the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    z0 = F.normalize(z0.float(), dim=-1)
    z1 = F.normalize(z1.float(), dim=-1)
    logits = z0 @ z1.t() / temp
    b = logits.shape[0]
    if groups is None:
        pos = torch.eye(b, dtype=torch.bool, device=logits.device)
    else:
        groups = groups.to(logits.device)
        pos = groups[:, None] == groups[None, :]
    posf = pos.float()
    rows = -(F.log_softmax(logits, dim=1) * posf).sum(1) / posf.sum(1)
    cols = -(F.log_softmax(logits, dim=0) * posf).sum(0) / posf.sum(0)
    return 0.5 * rows.mean() + 0.5 * cols.mean()


# --------------------------------------------------------------------------- supervised


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
             pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE-with-logits with ``pos_weight``, averaged over observed entries.

    ``targets`` (B, K) in {0, 1}; ``mask`` (B, K) 1 where the label is observed,
    0 where it is null (another source's vocabulary): those entries add
    nothing to the loss and its gradient.
    """
    t = torch.nan_to_num(targets.float(), nan=0.0)
    loss = F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=pos_weight, reduction="none")
    if mask is None:
        return loss.mean()
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp_min(1.0)


def multiclass_loss(logits: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy; ``target`` (B,) class indices, -1 = no label (ignored)."""
    return F.cross_entropy(logits.float(), target.long(), weight=weight, ignore_index=-1)


def nnpu_loss(logits: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor,
              mask: torch.Tensor | None = None, beta: float = 0.0, gamma: float = 1.0) -> torch.Tensor:
    """Non-negative positive-unlabeled risk (Kiryo et al., NeurIPS 2017), per label, logistic loss.

    For label k: P = rows labelled 1, U = all observed rows of the batch (a
    sample of the marginal: a 0 means "not mentioned", which may still be a
    positive), ``pi_k = prior[k]`` the class prior. With
    ``l+(z) = softplus(-z)``, ``l-(z) = softplus(z)``::

        R_p  = pi * mean_P l+(z)
        R_n  = mean_U l-(z) - pi * mean_P l-(z)       (unbiased negative risk)
        risk = R_p + max(0, R_n)

    When ``R_n < -beta`` the returned value is ``R_p - gamma * R_n`` instead
    (its gradient pushes the negative risk back up: nnPU's defence against
    overfitting). Labels with no positive in the batch contribute ``mean_U
    l-(z)`` (the unlabeled risk alone). Null entries (``mask`` 0) are left
    out entirely. Averaged over labels observed in the batch.
    """
    z = logits.float()
    t = torch.nan_to_num(targets.float(), nan=0.0)
    m = torch.ones_like(z) if mask is None else mask.float()
    p = t * m
    n_u = m.sum(0)
    n_p = p.sum(0)
    lp = F.softplus(-z)
    ln = F.softplus(z)
    pi = prior.to(z).reshape(-1)
    r_p = pi * (lp * p).sum(0) / n_p.clamp_min(1.0)
    r_n = (ln * m).sum(0) / n_u.clamp_min(1.0) - pi * (ln * p).sum(0) / n_p.clamp_min(1.0)
    has_p = n_p > 0
    r_p = torch.where(has_p, r_p, torch.zeros_like(r_p))
    per = torch.where(r_n < -beta, r_p - gamma * r_n, r_p + r_n.clamp_min(0.0))
    observed = n_u > 0
    if not observed.any():
        return z.sum() * 0.0
    return per[observed].mean()


def pos_weight_from_counts(pos: torch.Tensor, n: torch.Tensor, cap: float = 1e4) -> torch.Tensor:
    """``(1 - p) / p`` per label from positive and observed counts (as fairseq-signals' label_def)."""
    p = pos.double() / n.double().clamp_min(1.0)
    w = (1.0 - p) / p.clamp_min(1.0 / cap)
    return w.clamp(max=cap).float()
