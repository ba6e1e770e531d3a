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
    a, per_row = lattice_rows(height, width, k)
    i = torch.arange(a)
    rows = ((2 * i + 1) * height) // (2 * a)
    row_of = torch.repeat_interleave(i, per_row)  # (k,)
    first = torch.cumsum(per_row, 0) - per_row
    j = torch.arange(k) - first[row_of]
    n = per_row[row_of]
    cols = ((2 * j + 1) * width) // (2 * n)
    return rows[row_of] * width + cols


def lattice_rows(height: int, width: int, k: int) -> tuple[int, torch.Tensor]:
    """The rows of :func:`lattice_indices` (``k >= 1``): their number ``a``, about ``sqrt(k * height / width)``
    and between ``ceil(k / width)`` and ``min(height, k)``, and the long ``(a,)`` count of each, the uneven
    ones spread over the rows (``floor((i + 1) k / a) - floor(i k / a)``, each in ``[1, width]``)."""
    a = round(math.sqrt(k * height / width))
    a = max(-(-k // width), min(a, height, k), 1)
    i = torch.arange(a)
    return a, ((i + 1) * k) // a - (i * k) // a


def pool_windows(height: int, width: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a ``height x width`` grid into ``k`` disjoint rectangular windows for average pooling.

    The windows lie in the rows of :func:`lattice_rows` (so about as many along each axis as the grid's
    aspect ratio asks, the spare ones spread over the rows): row ``i`` of ``a`` spans grid rows
    ``floor(i * height / a)`` to ``floor((i + 1) * height / a) - 1``, and its ``n`` windows split the
    columns the same way (``floor(j * width / n)`` ...). Every cell lies in exactly one window; where the
    sizes divide evenly this is ``torch.nn.functional.avg_pool2d``'s tiling. A window's *anchor* is its
    middle cell (the upper-left one of the middle four), where the pooled token sits.

    Returns:
        ``(owner, anchors)``: long ``(height * width,)``, the window (0..k-1, raster order of the windows)
        of every cell, and long ``(k,)``, the flat index ``row * width + column`` of every window's anchor,
        ascending.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"grid must be non-empty, got {height} x {width}")
    if not 1 <= k <= height * width:
        raise ValueError(f"cannot pool a {height} x {width} grid to {k} windows")
    a, per_row = lattice_rows(height, width, k)
    owner = torch.empty(height, width, dtype=torch.long)
    anchors, first = [], 0
    for i, n in enumerate(per_row.tolist()):
        r0, r1 = i * height // a, (i + 1) * height // a
        for j in range(n):
            c0, c1 = j * width // n, (j + 1) * width // n
            owner[r0:r1, c0:c1] = first + j
            anchors.append(((r0 + r1 - 1) // 2) * width + (c0 + c1 - 1) // 2)
        first += n
    return owner.flatten(), torch.tensor(anchors, dtype=torch.long)


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
