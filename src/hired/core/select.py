"""Per-partition top-k with a deterministic order."""

from __future__ import annotations

import torch


def topk_mask(scores: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``k[i]`` highest-scoring valid patches of every row.

    Args:
        scores: ``(N, T)`` any float dtype.
        k: ``(N,)`` integer budgets; clipped to each row's valid count.
        valid: ``(N, T)`` bool, patches that may be kept (all, if ``None``).

    Returns:
        ``(N, T)`` bool with exactly ``min(k[i], valid[i].sum())`` True in row i. Equal scores keep the
        lower index, so the result is deterministic on every device.
    """
    n, t = scores.shape
    s = scores.float()
    if valid is not None:
        s = s.masked_fill(~valid, float("-inf"))
        k = torch.minimum(k, valid.sum(dim=1))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    keep_sorted = torch.arange(t, device=scores.device)[None, :] < k.to(scores.device)[:, None]
    return torch.zeros(n, t, dtype=torch.bool, device=scores.device).scatter_(1, order, keep_sorted)
