"""Per-partition top-k with a deterministic order, and evenly spaced lattice points."""

from __future__ import annotations

import math

import torch

from hired.core.budget import largest_remainder


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


def lattice_indices(height: int, width: int, k: int) -> torch.Tensor:
    """``k`` distinct cells of a ``height x width`` grid on an evenly spaced 2-D lattice, row-major.

    The lattice has ``a`` rows, ``a ≈ sqrt(k * height / width)`` so its spacing is about the same along
    both axes (at least ``ceil(k / width)`` and at most ``min(height, k)`` rows, so that it fits). Row
    ``i`` holds ``floor((i + 1) k / a) - floor(i k / a)`` points (the uneven ones spread over the rows);
    points sit at the centres of equal slices: row ``floor((2i + 1) height / 2a)``, column
    ``floor((2j + 1) width / 2n)`` for the ``j``-th of ``n`` points in that row. A perfect square ``k``
    in a square grid gives the regular ``sqrt(k) x sqrt(k)`` lattice.

    Returns:
        Long ``(k,)``: flat indices ``row * width + column``, ascending.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"grid must be non-empty, got {height} x {width}")
    if not 0 <= k <= height * width:
        raise ValueError(f"cannot place {k} points on a {height} x {width} grid")
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    a = round(math.sqrt(k * height / width))
    a = max(-(-k // width), min(a, height, k), 1)
    i = torch.arange(a)
    per_row = ((i + 1) * k) // a - (i * k) // a  # (a,), each in [1, width]
    rows = ((2 * i + 1) * height) // (2 * a)
    row_of = torch.repeat_interleave(i, per_row)  # (k,)
    first = torch.cumsum(per_row, 0) - per_row
    j = torch.arange(k) - first[row_of]
    n = per_row[row_of]
    cols = ((2 * j + 1) * width) // (2 * n)
    return rows[row_of] * width + cols


def region_of(rows: int, cols: int, regions: int) -> torch.Tensor:
    """Long ``(rows * cols,)``: the region of every token of a ``rows x cols`` grid (raster order) cut into
    ``regions x regions`` blocks of nearly equal size, numbered row-major (``0 .. regions**2 - 1``; a grid
    with fewer rows or columns than ``regions`` leaves the last blocks empty)."""
    r = torch.arange(rows) * min(regions, rows) // rows
    c = torch.arange(cols) * min(regions, cols) // cols
    return (r[:, None] * regions + c[None, :]).flatten()


def region_topk(
    select: torch.Tensor,
    early: torch.Tensor,
    region: torch.Tensor,
    valid: torch.Tensor,
    total: list[int],
    spread: list[int],
    regions: int,
) -> torch.Tensor:
    """Keep ``total[i]`` tokens of row ``i``: ``spread[i]`` of them shared over its regions by content, the
    rest the best of those left (a global share).

    Row ``i``'s content of region ``j`` is how many of the row's top ``spread[i]`` valid tokens by ``early``
    lie in ``j``; the regions split ``spread[i]`` in proportion to it (largest remainder, none above its
    valid tokens), each keeps its top tokens by ``select``, then the top ``total[i] - spread[i]`` of the
    remaining valid tokens by ``select`` are added. ``select`` and ``early`` are ``(n, T)`` scores,
    ``region`` ``(n, T)`` long region ids in ``[0, regions)`` and ``valid`` ``(n, T)`` bool.

    Returns ``(n, T)`` bool with ``min(total[i], valid[i].sum())`` True in row ``i``."""
    device = select.device
    region, valid = region.to(device), valid.to(device)
    hot = torch.zeros(select.shape[0], regions, dtype=torch.long, device=device)
    spread_t = torch.tensor(spread, device=device)
    top_early = topk_mask(early, spread_t, valid)
    content = hot.scatter_add(1, region, top_early.long()).tolist()
    room = hot.scatter_add(1, region, valid.long()).tolist()
    shares = torch.tensor([largest_remainder(s, c, r) for s, c, r in zip(spread, content, room)], device=device)
    keep = torch.zeros_like(valid)
    for j in range(regions):
        keep |= topk_mask(select, shares[:, j], valid & (region == j))
    rest = torch.tensor(total, device=device) - keep.sum(dim=1)
    return keep | topk_mask(select, rest, valid & ~keep)
