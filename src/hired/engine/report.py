"""The one builder of :class:`~hired.selection.ImageSelection`: every runtime reports the same fields with
the same meaning."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hired.core.grid import Layout
from hired.engine.plan import Plan
from hired.methods.base import newline_tokens
from hired.selection import ImageSelection, PartitionSelection


def image_selections(
    plan: Plan,
    layouts: Sequence[Layout],
    keeps: Sequence[torch.Tensor],
    budgets: Sequence[Sequence[int]],
    positions: Sequence[list | None] | None = None,
) -> list[ImageSelection]:
    """One :class:`ImageSelection` per image.

    ``keeps[i]``: image i's ``(P_i, T_i)`` bool mask of kept patches (any device); ``budgets[i]``: its
    per-partition budgets; ``positions[i]``: the position ids its tokens were given, or ``None`` (packed).
    ``num_tokens`` is what the language model receives for the image (the budgets plus the newline tokens
    the method keeps); ``num_tokens_stock`` what the unmodified model gives it.
    """
    positions = positions if positions is not None else [None] * len(layouts)
    out = []
    for layout, keep, image_budgets, ids in zip(layouts, keeps, budgets, positions):
        keep = keep.detach().cpu().reshape(layout.num_partitions, -1)
        parts = [
            PartitionSelection(
                kept=torch.nonzero(keep[p]).flatten().tolist(),
                budget=int(image_budgets[p]),
                grid=layout.partition_shape,
                valid=layout.valid_counts[p],
            )
            for p in range(layout.num_partitions)
        ]
        extra = newline_tokens(layout) if plan.packs_newline else 0
        out.append(
            ImageSelection(
                image_size=layout.image_size,
                grid=layout.grid,
                partitions=parts,
                num_tokens=sum(int(b) for b in image_budgets) + extra,
                num_tokens_stock=plan.stock_tokens(layout),
                position_ids=ids,
            )
        )
    return out
