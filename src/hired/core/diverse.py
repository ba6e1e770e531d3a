"""Diversity-based token selection as batched tensor functions: DivPrune's greedy max-min and DART's
pivots plus their least duplicated tokens (framework-free).

Every function works on ``R`` rows of ``N`` tokens at once (a row is a partition or a whole image, see
:func:`image_groups`), with a ``valid`` mask (padding and row padding are never chosen) and a per-row
count ``k``. Maths is fp32; a greedy step of k is one batched tensor operation over all rows, so the
host loops k times at most, never over tokens. Ties go to the lower token index on every device
(``argmax`` returns the first maximum; sorts are stable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hired.core.grid import Layout
from hired.core.select import topk_mask


def image_groups(layouts: list[Layout]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per image over all of its partitions' patches.

    Returns ``index`` ``(n, N)`` long, flat indices into the batch's ``(sum P * T)`` patches (image i's
    ``P_i * T`` patches in order, then ``sum P * T``: one past the end, for row padding), and ``valid``
    ``(n, N)`` bool (the image's valid patches; row padding is False). ``N`` is the largest ``P * T`` of
    the batch. CPU tensors.
    """
    tokens = layouts[0].tokens
    width = max(lay.num_partitions for lay in layouts) * tokens
    total = sum(lay.num_partitions for lay in layouts) * tokens
    index = torch.full((len(layouts), width), total, dtype=torch.long)
    valid = torch.zeros(len(layouts), width, dtype=torch.bool)
    start = 0
    for i, lay in enumerate(layouts):
        n = lay.num_partitions * tokens
        index[i, :n] = torch.arange(start, start + n)
        valid[i, :n] = lay.valid_mask.flatten()
        start += n
    return index, valid


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """``features`` ``(..., D)`` as fp32 unit vectors (a zero vector stays zero)."""
    return F.normalize(features.float(), dim=-1)


def maxmin_order(features: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """DivPrune's greedy max-min diverse subset, in the order it is chosen.

    With the cosine distance ``d(i, j) = 1 - cos(x_i, x_j)``, the first token is the one whose nearest
    other valid token is farthest (``argmax_j min_{i != j} d(i, j)``); every next token is the valid,
    not yet chosen one farthest from the chosen set (``argmax_j min_{i in S} d(i, j)``). Computed on the
    cosines themselves (``d`` is decreasing in ``cos``), from one ``(R, N, N)`` fp32 cosine matrix (the
    first choice needs every pair; each later step reads one row of it).

    Args:
        features: ``(R, N, D)`` any float dtype.
        valid: ``(R, N)`` bool, tokens that may be chosen (and that count as neighbours).
        k: ``(R,)`` tokens to choose per row, at most the row's valid count.

    Returns:
        ``(R, max k)`` long token indices in the order chosen; ``-1`` after a row's ``k``.
    """
    r, n = valid.shape
    device = features.device
    k = k.to(device)
    steps = int(k.max()) if r else 0
    if steps == 0:
        return torch.full((r, 0), -1, dtype=torch.long, device=device)
    unit = unit_rows(features)
    cos = unit @ unit.transpose(1, 2)  # (R, N, N): cos[r, i, j]
    # neighbours of the first choice: other valid tokens only (rows of invalid tokens are never read again)
    cos.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    cos.masked_fill_(~valid[:, :, None], float("-inf"))
    rows = torch.arange(r, device=device)
    closest = cos.amax(dim=1).masked_fill_(~valid, float("inf"))  # (R, N): cosine to the nearest other valid token
    order = torch.empty(r, steps, dtype=torch.long, device=device)
    for step in range(steps):
        j = closest.argmin(dim=1)  # the farthest token: first index on ties
        order[:, step] = j
        row = cos[rows, j]  # (R, N) cosines of the new token to every token
        closest = row.masked_fill(~valid, float("inf")) if step == 0 else torch.maximum(closest, row)
        closest[rows, j] = float("inf")  # chosen
    return torch.where(torch.arange(steps, device=device)[None, :] < k[:, None], order, -1)


def dart_keep(
    features: torch.Tensor, norms: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, pivots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DART's pivot tokens and, for each pivot in turn, the tokens least duplicated with it.

    The pivots of a row are its ``p = min(pivots, k)`` valid tokens of largest ``norms`` (in that order).
    The other ``k - p`` tokens are split evenly over the pivots (the earlier pivots take one more when it
    does not divide); pivot ``j`` in turn adds its share of the not yet chosen valid tokens with the
    lowest cosine similarity to it.

    Args:
        features: ``(R, N, D)`` tokens whose duplication is measured.
        norms: ``(R, N)`` pivot criterion (larger first).
        valid: ``(R, N)`` bool.
        k: ``(R,)`` tokens to keep per row, at most the row's valid count.
        pivots: pivot tokens per row (>= 1).

    Returns:
        ``keep`` ``(R, N)`` bool with ``k[r]`` True per row, and ``pivot`` ``(R, pivots)`` long, each row's
        pivots in order (``-1`` past ``p``).
    """
    r, n = valid.shape
    device = features.device
    k = k.to(device)
    p = torch.clamp(k, max=pivots)
    width = min(pivots, n)
    ranked = torch.sort(norms.float().masked_fill(~valid, float("-inf")), dim=1, descending=True, stable=True).indices
    slot = torch.arange(width, device=device)[None, :]
    is_pivot = slot < p[:, None]  # (R, width)
    pivot = torch.where(is_pivot, ranked[:, :width], -1)
    keep = torch.zeros(r, n + 1, dtype=torch.bool, device=device)
    keep.scatter_(1, torch.where(is_pivot, pivot, n), True)  # unused slots land in the spare last column
    keep = keep[:, :n]
    rest = k - p
    shares = rest[:, None] // p.clamp(min=1)[:, None] + (slot < (rest % p.clamp(min=1))[:, None])
    shares = torch.where(is_pivot, shares, 0)
    unit = unit_rows(features)
    rows = torch.arange(r, device=device)
    for j in range(width):
        sim = torch.bmm(unit, unit[rows, pivot[:, j].clamp(min=0)][:, :, None])[:, :, 0]  # (R, N)
        keep |= topk_mask(-sim, shares[:, j], valid & ~keep)  # least similar first, ties to the lower index
    return keep, pivot


def order_mask(order: torch.Tensor, n: int) -> torch.Tensor:
    """``(R, n)`` bool of the indices in ``order`` ``(R, s)`` (``-1`` entries ignored)."""
    keep = torch.zeros(order.shape[0], n + 1, dtype=torch.bool, device=order.device)
    keep.scatter_(1, torch.where(order < 0, n, order), True)
    return keep[:, :n]
