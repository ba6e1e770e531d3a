"""Fixed-budget, selection-only baselines: spatial lattice, random subset, per-partition [CLS] top-k.

All three share one budget rule. An image of P partitions of T patches keeps exactly
``B = floor(budget * P * T)`` patch tokens, or every valid patch if there are fewer. B is split evenly
over the partitions (largest remainders; a partition with fewer valid patches than its share keeps
them all and the rest goes to the others, see :func:`hired.core.budget.even_split`). Counts and
per-partition budgets are functions of the image layout alone, which is what lets the processor emit
the right number of placeholders before the model runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch

from hired.core.budget import even_split
from hired.core.grid import Layout
from hired.core.select import lattice_indices
from hired.methods.base import (
    Method,
    ModelInfo,
    ScoreKind,
    Selection,
    check_layer,
    check_rate,
    register,
    topk_selection,
)


def _device(scores: Mapping[str, torch.Tensor]) -> torch.device:
    """The scores' device; score-free methods get none and work on the CPU (the adapter moves ``keep``)."""
    for row in scores.values():
        return row.device
    return torch.device("cpu")


class _EvenSplit:
    """Mixin: the even-split budget rule shared by the baselines (needs a ``budget`` field), and the check
    of a fixed ``budget`` (a method with more options extends :meth:`validate`)."""

    budget: float

    def validate(self) -> None:
        check_rate("budget", self.budget, low_open=True)

    def _budgets(self, layout: Layout) -> list[int]:
        return even_split(self.total(layout), layout.valid_counts)

    def count(self, layout: Layout) -> int:
        return sum(self._budgets(layout))

    def partition_budgets(self, layout: Layout, scores: Mapping[str, torch.Tensor]) -> list[int]:
        return self._budgets(layout)


# ---------------------------------------------------------------------------------------------- spatial


def valid_rectangles(layout: Layout, budgets: tuple[int, ...]) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """``(p, k, rows, cols)`` for every partition ``p`` that keeps ``k = budgets[p] > 0`` tokens and has valid
    patches: the partition rows and columns of its valid rectangle (unpadding leaves a rectangle)."""
    height_p, width_p = layout.partition_shape
    valid = layout.valid_mask.view(-1, height_p, width_p)
    for p, k in enumerate(budgets):
        rows = torch.nonzero(valid[p].any(dim=1)).flatten()
        cols = torch.nonzero(valid[p].any(dim=0)).flatten()
        if k == 0 or rows.numel() == 0:
            continue
        if rows.numel() * cols.numel() != int(valid[p].sum()):
            raise RuntimeError(f"partition {p} of {layout} has a non-rectangular valid region")
        yield p, k, rows, cols


@lru_cache(maxsize=512)
def _lattice_mask(layout: Layout, budgets: tuple[int, ...]) -> torch.Tensor:
    """Bool ``(P, T)`` on the CPU: ``budgets[p]`` lattice points inside each partition's valid rectangle."""
    width_p = layout.partition_shape[1]
    keep = torch.zeros(layout.num_partitions, layout.tokens, dtype=torch.bool)
    for p, k, rows, cols in valid_rectangles(layout, budgets):
        width = cols.numel()
        idx = lattice_indices(rows.numel(), width, k)
        keep[p, (rows[idx // width]) * width_p + cols[idx % width]] = True
    return keep


@register
@dataclass(frozen=True)
class Spatial(_EvenSplit, Method):
    """Uniform spatial sampling: keep patches on an evenly spaced 2-D lattice, ignoring content.

    The spatial-sampling baseline HiRED is compared against (Arif et al., AAAI 2025, arXiv 2408.10945).
    Inside every partition the kept patches form a regular lattice over the partition's valid
    (unpadded) patches, with about the same spacing along both axes (see
    :func:`hired.core.select.lattice_indices`). Needs no attention scores, so the selection is a function
    of the image layout alone.

    Budget semantics: exactly ``floor(budget * P * T)`` patch tokens per image (P partitions of T
    patches), or every valid patch if there are fewer, split evenly over the partitions.

    Args:
        budget: token budget rate r in (0, 1].
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
    """

    name = "spatial"
    summary = "uniform 2-D lattice of patches in every partition, budget split evenly (no scores)"

    budget: float = 0.2

    def select(
        self, layouts: list[Layout], scores: Mapping[str, torch.Tensor], info: ModelInfo, keys=None
    ) -> Selection:
        budgets = [self._budgets(layout) for layout in layouts]
        keep = torch.cat([_lattice_mask(layout, tuple(b)) for layout, b in zip(layouts, budgets)])
        return Selection(keep=keep.to(_device(scores)), budgets=budgets)


# ----------------------------------------------------------------------------------------------- random


def _image_seed(seed: int, layout: Layout) -> int:
    """A 63-bit generator seed from the method's seed and the image layout (stable across runs and
    processes, unlike ``hash``)."""
    box = (layout.top, layout.bottom, layout.left, layout.right)
    key = f"{seed}|{layout.image_size}|{layout.side}|{layout.grid}|{box}"
    if layout.shape is not None:
        key += f"|{layout.shape}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


@register
@dataclass(frozen=True)
class Random(_EvenSplit, Method):
    """Uniformly random subset of the valid patches of every partition.

    The usual control for token-reduction methods: what is kept if the choice carries no information.
    Random pruning is reported as a surprisingly strong baseline by the UniPruneBench study (Peng et
    al., "Can Visual Input Be Compressed?", arXiv 2511.02650); here it drops tokens before the LLM.
    Every image draws its own generator, seeded from ``seed`` and the image layout, on the CPU, so the
    selection depends on the seed and the image size only: not on the rest of the batch, the device or
    any global random state.

    Budget semantics: exactly ``floor(budget * P * T)`` patch tokens per image (P partitions of T
    patches), or every valid patch if there are fewer, split evenly over the partitions.

    Args:
        budget: token budget rate r in (0, 1].
        seed: integer seed; the same seed and image size give the same selection.
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
    """

    name = "random"
    summary = "uniformly random patches in every partition, budget split evenly, seeded (no scores)"

    budget: float = 0.2
    seed: int = 0

    def random_scores(self, layout: Layout) -> torch.Tensor:
        """Float ``(P, T)`` uniform draws on the CPU, a function of ``seed`` and ``layout`` only."""
        gen = torch.Generator().manual_seed(_image_seed(self.seed, layout))
        return torch.rand(layout.num_partitions, layout.tokens, generator=gen)

    def select(
        self, layouts: list[Layout], scores: Mapping[str, torch.Tensor], info: ModelInfo, keys=None
    ) -> Selection:
        budgets = [self._budgets(layout) for layout in layouts]
        draws = torch.cat([self.random_scores(layout) for layout in layouts])
        return topk_selection(layouts, budgets, draws.to(_device(scores), non_blocking=True))


# --------------------------------------------------------------------------------------------- cls top-k


@register
@dataclass(frozen=True)
class ClsTopK(_EvenSplit, Method):
    """Top-k patches by [CLS] attention inside every partition, the budget split evenly.

    FasterVLM (Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning",
    arXiv 2412.01818) ranks patches by the feature layer's [CLS] attention; applied per partition of a
    high-resolution model with equal budgets it is also the "even split" ablation of HiRED (Arif et al.,
    AAAI 2025, arXiv 2408.10945): HiRED without its content-aware budget distribution.

    Budget semantics: exactly ``floor(budget * P * T)`` patch tokens per image (P partitions of T
    patches), or every valid patch if there are fewer, split evenly over the partitions; inside each
    partition the valid patches with the highest [CLS] attention (summed over heads) are kept.

    Args:
        budget: token budget rate r in (0, 1].
        selection_layer: encoder layer (0-based) whose [CLS] attention ranks patches; ``None`` uses the
            layer that produces the features (``vision_feature_layer``, 22 of 24 for LLaVA's CLIP).
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
        score: ``"cls"`` ([CLS] attention), ``"received"`` (attention received from all tokens, for
            towers without [CLS]) or ``"auto"`` ([CLS] where the tower has one).
    """

    name = "cls_topk"
    summary = "top-k by feature-layer CLS attention in every partition, budget split evenly (FasterVLM)"

    budget: float = 0.2
    selection_layer: int | None = None
    score: ScoreKind = "auto"

    def validate(self) -> None:
        super().validate()
        check_layer("selection_layer", self.selection_layer)

    def score_layers(self, info: ModelInfo) -> Mapping[str, int]:
        return {"select": info.feature_layer if self.selection_layer is None else self.selection_layer}
