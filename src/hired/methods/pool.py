"""Plain downsampling: average pooling of each partition's patch grid down to the budget's count.

A training-free baseline that reads no scores, keys or features: every kept token is the plain mean of
one rectangular window of valid patches (``Selection.weights``, as the merging methods), placed at the
window's middle patch, so the engine packs, projects and positions it as any merged token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch

from hired.core.grid import Layout
from hired.core.select import pool_windows
from hired.methods.base import Method, ModelInfo, Selection, register
from hired.methods.simple import _device, _EvenSplit, valid_rectangles


@lru_cache(maxsize=512)
def pool_groups(layout: Layout, budgets: tuple[int, ...]) -> torch.Tensor:
    """Long ``(P, T)`` on the CPU: for every valid patch of each partition, the index (in the partition) of
    the anchor of the pooling window it falls in; ``-1`` for padding and for partitions that keep nothing.

    Partition ``p`` is pooled to ``budgets[p]`` windows over its valid (unpadded) rectangle with
    :func:`hired.core.select.pool_windows`."""
    width_p = layout.partition_shape[1]
    groups = torch.full((layout.num_partitions, layout.tokens), -1, dtype=torch.long)
    for p, k, rows, cols in valid_rectangles(layout, budgets):
        owner, anchors = pool_windows(rows.numel(), cols.numel(), k)
        cells = rows[:, None] * width_p + cols[None, :]  # (height, width) partition index of each valid cell
        flat = cells.flatten()
        groups[p, flat] = flat[anchors][owner]
    return groups


def pool_selection(groups: torch.Tensor, budgets: list[list[int]]) -> Selection:
    """The :class:`Selection` of a batch's window map ``groups`` ``(sum P, T)`` (:func:`pool_groups`): the
    anchors are kept, each with the plain mean of its window as merge weights (identity rows elsewhere)."""
    n, t = groups.shape
    slots = torch.arange(t, device=groups.device)
    member = groups[:, None, :] == slots[None, :, None]  # (n, slot, patch): patch pools into slot
    keep = groups == slots[None, :]
    size = member.sum(dim=2, keepdim=True)
    eye = torch.eye(t, device=groups.device).expand(n, t, t)
    weights = torch.where(keep[:, :, None], member.float() / size.clamp(min=1), eye)
    return Selection(keep=keep, budgets=budgets, weights=weights)


@register
@dataclass(frozen=True)
class Pool(_EvenSplit, Method):
    """Plain downsampling: average-pool every partition's patch grid to its share of the budget.

    The downsampling baseline of VTC-Bench (Liao et al., "Are We Using the Right Benchmark: An Evaluation
    Framework for Visual Token Compression Methods", arXiv 2510.07143), which finds that plain image
    downsampling outperforms many token-compression methods. That study shrinks the pixels before the
    tower; here the same idea runs where every other method runs, on the feature-layer patch features (the
    projector's input) of each partition, so the tower sees the stock image and the count follows the same
    budget rule. Nothing is read to decide: the windows depend on the image size alone.

    Budget semantics: exactly ``floor(budget * P * T)`` patch tokens per image (P partitions of T
    patches, at least one), or every valid patch if there are fewer, split evenly over the partitions.

    Pooled grid: a partition's share ``k`` rarely factors into a grid of the partition's aspect ratio, so
    the ``k`` windows are laid out in ``a ≈ sqrt(k * h / w)`` rows of the valid ``h x w`` region (the
    rows of :class:`Spatial`'s lattice), row ``i`` holding ``floor((i + 1) k / a) - floor(i k / a)``
    windows; row and column boundaries fall at ``floor(i * h / a)`` and ``floor(j * w / n)``. Windows are
    disjoint and cover every valid patch once, so every patch counts with the same weight in its token
    and nothing is dropped; a square share of a square grid (``k = 144`` of 576) is the plain
    ``avg_pool2d`` tiling (2x2 windows). Each token is the mean of its window's patches, placed at the
    window's middle patch, so the pooled tokens keep the raster order of their windows (and, with
    ``keep_positions``, take that patch's stock position ids).

    Args:
        budget: token budget rate r in (0, 1].
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
    """

    name = "pool"
    summary = "average pooling of every partition's patch grid to its share of the budget, split evenly (no scores)"

    budget: float = 0.2

    def select(
        self, layouts: list[Layout], scores: Mapping[str, torch.Tensor], info: ModelInfo, keys=None
    ) -> Selection:
        budgets = [self._budgets(layout) for layout in layouts]
        groups = torch.cat([pool_groups(layout, tuple(b)) for layout, b in zip(layouts, budgets)])
        return pool_selection(groups.to(_device(scores), non_blocking=True), budgets)
