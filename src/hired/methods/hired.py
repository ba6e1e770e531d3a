"""HiRED: High-Resolution Early Dropping (Arif et al., AAAI 2025, arXiv 2408.10945)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch

from hired.core.budget import allocate, scaled_floor, total_budget
from hired.core.grid import Layout, full_to_subimage, row_chunk_to_subimage
from hired.methods.base import Method, ModelInfo, ScoreKind, Selection, check_layer, check_rate, register, topk_selection


@register
@dataclass(frozen=True)
class HiRED(Method):
    """HiRED token dropping at a fixed budget.

    Budget semantics: exactly ``B = floor(budget * P * T)`` patch tokens per image (P partitions of T
    patches), or every valid patch if there are fewer. The full image gets ``floor(alpha * B)``; the
    sub-images share the rest by their visual content, read from the ``budget_layer`` [CLS] attention on
    the full image. Inside every partition the top patches by the ``selection_layer`` [CLS] attention are
    kept.

    Args:
        budget: token budget rate r in (0, 1].
        alpha: full-image share of the budget, in [0, 1].
        budget_layer: vision encoder layer (0-based) whose [CLS] attention measures content.
        selection_layer: encoder layer (0-based) whose [CLS] attention ranks patches; ``None`` uses the
            layer that produces the features (``vision_feature_layer``, 22 of 24 for LLaVA's CLIP).
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row); the paper drops them.
        mapping: ``"2d"`` credits each full-image patch to the sub-image covering it; ``"reference"``
            reproduces the original code's row-chunk mapping (for comparison only).
        score: ``"cls"`` ranks by [CLS] attention (the paper), ``"received"`` by the attention each patch
            receives from all tokens (towers without [CLS]); ``"auto"``: [CLS] where the tower has one.
            Both stages (budget and selection) use the same kind.
    """

    name = "hired"
    summary = "HiRED: content-aware budget per partition (early-layer CLS), top-k by feature-layer CLS"

    budget: float = 0.2
    alpha: float = 0.5
    budget_layer: int = 0
    selection_layer: int | None = None
    keep_newline: bool = False
    mapping: Literal["2d", "reference"] = "2d"
    score: ScoreKind = "auto"

    def validate(self) -> None:
        check_rate("budget", self.budget, low_open=True)
        check_rate("alpha", self.alpha, low_open=False)
        check_layer("budget_layer", self.budget_layer)
        check_layer("selection_layer", self.selection_layer)

    def score_layers(self, info: ModelInfo) -> Mapping[str, int]:
        select = info.feature_layer if self.selection_layer is None else self.selection_layer
        return {"budget": self.budget_layer, "select": select}

    def _budget(self, layout: Layout) -> int:
        return total_budget(self.budget, layout.num_partitions, layout.tokens)

    def count(self, layout: Layout) -> int:
        return sum(self._allocate(layout, [0] * layout.num_subimages))

    def content(self, layout: Layout, full_scores: torch.Tensor) -> list[int]:
        """Visual content per sub-image: how many of the full image's top ``(1 - alpha) * T`` patches
        (by ``full_scores``, ``(T,)``) fall inside it."""
        return self.contents([layout], full_scores[None])[0]

    def contents(self, layouts: list[Layout], full_scores: torch.Tensor) -> list[list[int]]:
        """``content`` for a batch of images at once (one device sync); ``full_scores`` is ``(n, T)``."""
        top = scaled_floor(1.0 - self.alpha, layouts[0].tokens) if self.alpha < 1 else 0
        n_sub = [lay.num_subimages for lay in layouts]
        if top == 0 or not any(n_sub):
            return [[0] * n for n in n_sub]
        to_sub = full_to_subimage if self.mapping == "2d" else row_chunk_to_subimage
        device = full_scores.device
        width = max(n_sub)
        # sub-image of every full-image patch, offset per image into one (n * width) histogram
        # (an image without sub-images credits its own slot 0, which the slicing below drops)
        mapping = torch.stack(
            [(to_sub(lay) if lay.num_subimages else torch.zeros(lay.tokens, dtype=torch.long)) + i * width
             for i, lay in enumerate(layouts)]
        ).to(device, non_blocking=True)
        idx = torch.sort(full_scores.float(), dim=1, descending=True, stable=True).indices[:, :top]
        hits = mapping.gather(1, idx).flatten()
        counts = torch.bincount(hits, minlength=len(layouts) * width).view(len(layouts), width).tolist()
        return [row[:n] for row, n in zip(counts, n_sub)]

    def _allocate(self, layout: Layout, content: list[int]) -> list[int]:
        return allocate(self._budget(layout), self.alpha, layout.valid_counts, content)

    def partition_budgets(self, layout: Layout, scores: Mapping[str, torch.Tensor]) -> list[int]:
        return self._allocate(layout, self.content(layout, scores["budget"][0]))

    def select(self, layouts: list[Layout], scores: Mapping[str, torch.Tensor], info: ModelInfo, keys=None) -> Selection:
        firsts, start = [], 0
        for layout in layouts:
            firsts.append(start)
            start += layout.num_partitions
        full_rows = scores["budget"][torch.tensor(firsts, device=scores["budget"].device)]
        contents = self.contents(layouts, full_rows)
        budgets = [self._allocate(lay, content) for lay, content in zip(layouts, contents)]
        return topk_selection(layouts, budgets, scores["select"])
