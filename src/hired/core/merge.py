"""Token merging as convex weights, and the IQR outlier rule (pure tensor functions).

A merge is a ``(n, T, T)`` weight tensor ``W`` over the T patches of each of n partitions: the token kept
at slot ``t`` becomes ``sum_s W[p, t, s] * x[p, s]``. Every row of a kept slot is non-negative and sums to
one (a convex combination of the partition's valid patches); rows of dropped slots are the identity so the
tensor stays well defined. Keys, not attention maps, measure similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def iqr_outliers(scores: torch.Tensor, valid: torch.Tensor, whisker: float = 1.5) -> torch.Tensor:
    """Patches whose score lies above ``Q3 + whisker * (Q3 - Q1)`` of their partition's valid scores.

    Quartiles interpolate linearly between order statistics (numpy's default ``percentile``).

    Args:
        scores: ``(n, T)`` float.
        valid: ``(n, T)`` bool; invalid patches neither count towards the quartiles nor qualify.

    Returns:
        ``(n, T)`` bool.
    """
    s = scores.float().masked_fill(~valid, float("nan"))
    q = torch.nanquantile(s, torch.tensor([0.25, 0.75], device=s.device), dim=1)  # (2, n)
    upper = q[1] + whisker * (q[1] - q[0])
    return valid & (s > upper[:, None])


def _unit_similarity(keys: torch.Tensor) -> torch.Tensor:
    """``(n, T, D)`` keys → ``(n, T, T)`` fp32 cosine similarities."""
    unit = F.normalize(keys.float(), dim=-1)
    return unit @ unit.transpose(1, 2)


def knn_merge_weights(
    keys: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor, k: int
) -> torch.Tensor:
    """PruMerge-style merge: every kept patch absorbs its ``k`` most key-similar dropped valid patches.

    The merged token is the attention-weighted mean of the kept patch and those neighbours (weights
    proportional to ``scores``). A dropped patch may feed several kept ones; fewer than ``k`` dropped
    patches means all of them are candidates.

    Args:
        keys: ``(n, T, D)`` key vectors of the patches (heads concatenated).
        scores: ``(n, T)`` non-negative [CLS] attention.
        keep, valid: ``(n, T)`` bool.
        k: neighbours per kept patch (>= 0).

    Returns:
        ``(n, T, T)`` fp32 convex weights (identity rows for dropped slots).
    """
    n, t = scores.shape
    eye = torch.eye(t, device=scores.device).expand(n, t, t)
    attn = scores.float().clamp(min=0) + 1e-12  # strictly positive: every kept row has a non-zero total
    weights = eye * attn[:, :, None]  # self term of every row
    dropped = valid & ~keep
    k = min(int(k), t)
    if k > 0:
        sim = _unit_similarity(keys).masked_fill(~dropped[:, None, :], float("-inf"))
        top, idx = sim.topk(k, dim=2)  # (n, T, k)
        w = attn[:, None, :].expand(n, t, t).gather(2, idx) * torch.isfinite(top)
        weights = weights.scatter_add(2, idx, w)
    weights = weights / weights.sum(dim=2, keepdim=True)
    return torch.where(keep[:, :, None], weights, eye)


def group_merge_weights(keys: torch.Tensor, targets: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """VisionZip-style contextual tokens: each member patch joins its most key-similar target patch and
    each target becomes the plain mean of itself and its members.

    Args:
        keys: ``(n, T, D)``.
        targets: ``(n, T)`` bool, the slots that carry a contextual token.
        members: ``(n, T)`` bool, the patches merged into them (disjoint from ``targets``).

    Returns:
        ``(n, T, T)`` fp32 convex weights (identity rows everywhere but the targets).
    """
    n, t = targets.shape
    eye = torch.eye(t, device=keys.device).expand(n, t, t)
    if not bool(targets.any()):
        return eye.clone()
    sim = _unit_similarity(keys).masked_fill(~targets[:, :, None], float("-inf"))  # (n, target slot, source)
    owner = sim.argmax(dim=1)  # (n, T): the target each source patch is most similar to
    assign = torch.zeros(n, t, t, device=keys.device)
    assign.scatter_(1, owner[:, None, :], members.float()[:, None, :])
    assign = assign + eye * targets.float()[:, :, None]
    counts = assign.sum(dim=2, keepdim=True)
    return torch.where(targets[:, :, None], assign / counts.clamp(min=1), eye)
