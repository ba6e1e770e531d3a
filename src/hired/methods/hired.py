"""HiRED: High-Resolution Early Dropping (Arif et al., AAAI 2025, arXiv 2408.10945)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from hired.core.budget import adapted_budget, allocate, scaled_floor
from hired.core.grid import Layout, full_to_subimage, row_chunk_to_subimage
from hired.core.select import region_of, region_topk
from hired.methods.base import (
    Method,
    ModelInfo,
    ScoreKind,
    Selection,
    adaptive_message,
    check_layer,
    check_rate,
    register,
    topk_selection,
)

DETAIL_REFERENCE = 0.0067
"""The default ``reference`` of :class:`HiRED`'s content-adaptive budget: the median sharp-edge density of
hired-tiny's two test families (240 images); calibrate it for your data with ``hired.calibrate``."""


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
        regions: for a model whose images are one grid (LLaVA-1.5, Qwen2.5-VL, Qwen3-VL): cut each grid
            into ``regions x regions`` blocks that share ``B - floor(alpha * B)`` tokens by their content
            (how many of the image's top tokens by the ``budget_layer`` score each holds), each keeping its
            top tokens by the selection score; the ``floor(alpha * B)`` left are the best of the rest, a
            global share like the full image's. ``None`` (the default): one global top-k, and the
            ``budget_layer`` is not read. Refused on models that cut images into sub-images.
        adapt: the content-adaptive budget's exponent gamma, ``>= 0``. ``0`` (the default): every image keeps
            ``floor(budget * P * T)``. Otherwise image i keeps ``floor(min(1, budget * (d_i / reference) **
            gamma) * P * T)`` tokens (at least one), where ``d_i`` is its sharp-edge density: the share of
            neighbouring pixel pairs of its sub-images (its full image without them) that differ in luminance
            by more than 96/255 (:func:`hired.core.detail.edge_density`). Pages of text and tables get more
            tokens, smooth photos fewer. The count is then known only after the image is seen: transformers
            only, through ``hired.prepare_inputs`` (vLLM refuses it). ``hired.calibrate`` sets ``reference``
            so that a data set's mean count is the fixed budget's.
        reference: the sharp-edge density that keeps exactly ``budget`` (with ``adapt > 0``).

    On a one-grid image without ``regions`` there is nothing to split: HiRED keeps the image's top ``B``
    tokens by the selection score, and only the selection layer is scored.
    """

    name = "hired"
    summary = "HiRED: content-aware budget per partition (early-layer CLS), top-k by feature-layer CLS"

    budget: float = 0.2
    alpha: float = 0.5
    budget_layer: int = 0
    selection_layer: int | None = None
    mapping: Literal["2d", "reference"] = "2d"
    score: ScoreKind = "auto"
    regions: int | None = None
    adapt: float = 0.0
    reference: float = DETAIL_REFERENCE

    @property
    def adaptive(self) -> bool:  # type: ignore[override]
        return self.adapt > 0

    def validate(self) -> None:
        check_rate("budget", self.budget, low_open=True)
        check_rate("alpha", self.alpha, low_open=False)
        check_layer("budget_layer", self.budget_layer)
        check_layer("selection_layer", self.selection_layer)
        if self.regions is not None and self.regions < 1:
            raise ValueError(f"regions must be a positive number of blocks per side or None, got {self.regions!r}")
        if not self.adapt >= 0 or self.adapt == float("inf"):
            raise ValueError(f"adapt must be a finite number >= 0 (0: a fixed budget), got {self.adapt!r}")
        if not 0 < self.reference < float("inf"):
            raise ValueError(f"reference must be a positive sharp-edge density, got {self.reference!r}")

    def score_layers(self, info: ModelInfo) -> Mapping[str, int]:
        select = info.feature_layer if self.selection_layer is None else self.selection_layer
        if self.regions is not None and info.subimages:
            raise ValueError(
                f"HiRED(regions={self.regions}) shares the budget over regions of an image that is one grid "
                "(LLaVA-1.5, Qwen2.5-VL, Qwen3-VL); this model cuts images into sub-images, which HiRED "
                "already weights by content: leave regions=None"
            )
        if not info.subimages and self.regions is None:
            return {"select": select}  # one grid per image, one global top-k: no budget to distribute
        return {"budget": self.budget_layer, "select": select}

    def _budget(self, layout: Layout) -> int:
        if not self.adaptive:
            return self.total(layout)
        if layout.detail is None:
            raise ValueError(adaptive_message(self))
        return adapted_budget(
            self.budget,
            self.adapt,
            layout.detail / self.reference,
            layout.num_partitions,
            layout.tokens,
            layout.num_valid,
        )

    def count(self, layout: Layout) -> int:
        """Patch tokens kept for one image; with ``adapt > 0`` only for a layout that carries its ``detail``."""
        return sum(self._allocate(layout, [0] * layout.num_subimages))

    def fixed_options(self) -> dict[str, float]:
        return {"budget": self.budget, "adapt": 0.0}

    def reads_pixels(self) -> bool:
        """Whether the vision step must set each layout's ``detail`` from the pixels (``adapt > 0``)."""
        return self.adaptive

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
            [
                (to_sub(lay) if lay.num_subimages else torch.zeros(lay.tokens, dtype=torch.long)) + i * width
                for i, lay in enumerate(layouts)
            ]
        ).to(device, non_blocking=True)
        idx = torch.sort(full_scores.float(), dim=1, descending=True, stable=True).indices[:, :top]
        hits = mapping.gather(1, idx).flatten()
        counts = torch.bincount(hits, minlength=len(layouts) * width).view(len(layouts), width).tolist()
        return [row[:n] for row, n in zip(counts, n_sub)]

    def _allocate(self, layout: Layout, content: list[int]) -> list[int]:
        return allocate(self._budget(layout), self.alpha, layout.valid_counts, content)

    def partition_budgets(self, layout: Layout, scores: Mapping[str, torch.Tensor]) -> list[int]:
        if not layout.num_subimages:  # one partition: nothing to distribute (its budget layer may be unscored)
            return self._allocate(layout, [])
        return self._allocate(layout, self.content(layout, scores["budget"][0]))

    def select(
        self, layouts: list[Layout], scores: Mapping[str, torch.Tensor], info: ModelInfo, keys=None
    ) -> Selection:
        if self.regions is not None:
            return self._select_regions(layouts, scores)
        if "budget" not in scores:  # one grid per image (score_layers): its whole budget, global top-k
            return topk_selection(layouts, [self._allocate(lay, []) for lay in layouts], scores["select"])
        firsts, start = [], 0
        for layout in layouts:
            firsts.append(start)
            start += layout.num_partitions
        full_rows = scores["budget"][torch.tensor(firsts, device=scores["budget"].device)]
        contents = self.contents(layouts, full_rows)
        budgets = [self._allocate(lay, content) for lay, content in zip(layouts, contents)]
        return topk_selection(layouts, budgets, scores["select"])

    def _select_regions(self, layouts: list[Layout], scores: Mapping[str, torch.Tensor]) -> Selection:
        """``regions``: each one-grid image's budget shared over its blocks by content (:func:`region_topk`)."""
        if any(lay.num_partitions != 1 for lay in layouts):
            raise ValueError(f"HiRED(regions={self.regions}) needs images that are one grid; got sub-images")
        total = [self._allocate(lay, [])[0] for lay in layouts]
        spread = [b - scaled_floor(self.alpha, b) for b in total]
        width = scores["select"].shape[1]
        region = torch.zeros(len(layouts), width, dtype=torch.long)
        for i, lay in enumerate(layouts):
            rows, cols = lay.partition_shape
            region[i, : rows * cols] = region_of(rows, cols, self.regions)
        valid = torch.cat([lay.valid_mask for lay in layouts])
        keep = region_topk(scores["select"], scores["budget"], region, valid, total, spread, self.regions**2)
        return Selection(keep=keep, budgets=[[b] for b in total])
