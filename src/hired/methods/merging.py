"""Merging baselines: PruMerge, PruMerge+ (Shang et al.) and VisionZip (Yang et al.).

They keep a few patches by [CLS] attention and fold (some of) the dropped ones into the kept tokens by
key similarity, so the kept tokens are convex combinations of patch features (``Selection.weights``).
Everything runs batched on the model's device; similarities use the keys of one encoder layer (no
attention maps). On LLaVA-NeXT every partition is reduced on its own, as each is its own ViT pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from hired.core.grid import Layout
from hired.core.merge import group_merge_weights, iqr_outliers, knn_merge_weights
from hired.core.select import topk_mask
from hired.methods.base import (
    Method,
    ModelInfo,
    ScoreKind,
    Selection,
    adaptive_message,
    check_layer,
    check_rate,
    kept_counts,
    register,
)
from hired.methods.simple import _EvenSplit, _lattice_mask


def _valid(layouts: list[Layout], device: torch.device) -> torch.Tensor:
    """``(sum P, T)`` bool valid-patch mask of a batch, on ``device``."""
    return torch.cat([lay.valid_mask for lay in layouts]).to(device, non_blocking=True)


def _lattice(layouts: list[Layout], per_image: list[list[int]], device: torch.device) -> torch.Tensor:
    """``(sum P, T)`` bool: ``per_image[i][p]`` evenly spaced valid patches in each partition."""
    masks = [_lattice_mask(lay, tuple(counts)) for lay, counts in zip(layouts, per_image)]
    return torch.cat(masks).to(device, non_blocking=True)


def _check_int(name: str, value, low: int) -> None:
    if value < low:  # an int: see check_option_types
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class _KeyMerge:
    """Mixin: [CLS] attention and keys from one encoder layer (needs a ``layer`` field)."""

    layer: int | None

    def _default_layer(self, info: ModelInfo) -> int:
        raise NotImplementedError

    def _layer(self, info: ModelInfo) -> int:
        return self._default_layer(info) if self.layer is None else self.layer

    def score_layers(self, info: ModelInfo) -> Mapping[str, int]:
        return {"select": self._layer(info)}

    def key_layers(self, info: ModelInfo) -> Mapping[str, int]:
        return {"merge": self._layer(info)}

    def _merge_keys(self, keys: Mapping[str, torch.Tensor] | None, info: ModelInfo) -> torch.Tensor:
        """``(sum P, T, H * D)`` keys the adapter recorded for :meth:`key_layers`."""
        if not keys or "merge" not in keys:
            raise ValueError(f"{type(self).__name__} needs the keys of encoder layer {self._layer(info)}")
        return keys["merge"]


@dataclass(frozen=True)
class _PruMergeBase(_KeyMerge, _EvenSplit, Method):
    """Shared options and the merge step of PruMerge and PruMerge+."""

    budget: float | None = None
    neighbours: int = 32
    layer: int | None = None
    score: ScoreKind = "auto"

    @property
    def adaptive(self) -> bool:  # type: ignore[override]
        return self.budget is None

    def validate(self) -> None:
        if self.budget is not None:
            check_rate("budget", self.budget, low_open=True)
        _check_int("neighbours", self.neighbours, 0)
        check_layer("layer", self.layer)

    def _default_layer(self, info: ModelInfo) -> int:
        return min(info.feature_layer + 1, info.num_layers - 1)

    def count(self, layout: Layout) -> int:
        if self.adaptive:
            raise ValueError(adaptive_message(self))
        return super().count(layout)

    def _outliers(self, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """IQR outliers of every partition, and its best patch where there is none (never empty)."""
        out = iqr_outliers(scores, valid)
        best = topk_mask(scores, torch.ones(scores.shape[0], dtype=torch.long, device=scores.device), valid)
        return out | (best & ~out.any(dim=1, keepdim=True))

    def _keep(self, layouts, scores, valid) -> tuple[torch.Tensor, list[list[int]]]:
        raise NotImplementedError

    def select(
        self,
        layouts: list[Layout],
        scores: Mapping[str, torch.Tensor],
        info: ModelInfo,
        keys: Mapping[str, torch.Tensor] | None = None,
    ) -> Selection:
        merge_keys = self._merge_keys(keys, info)
        s = scores["select"]
        valid = _valid(layouts, s.device)
        keep, budgets = self._keep(layouts, s, valid)
        weights = knn_merge_weights(merge_keys, s, keep, valid, self.neighbours)
        return Selection(keep=keep, budgets=budgets, weights=weights)


@register
@dataclass(frozen=True)
class PruMerge(_PruMergeBase):
    """PruMerge (Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal
    Models", arXiv 2403.15388).

    Keeps the patches whose [CLS] attention is an outlier of its partition (above ``Q3 + 1.5 IQR`` of the
    valid patches' attention, heads summed), then every kept patch absorbs its ``neighbours`` most
    key-similar dropped patches: the kept token becomes their attention-weighted mean, itself included
    (a convex combination). Attention and keys come from ``layer``: by default the layer after the
    feature layer, whose input is the features themselves (layer 23 of 24 on LLaVA's CLIP, as in the
    authors' code).

    Budget semantics: with ``budget=None`` (the published, adaptive form) the count depends on the image
    content, at least one token per partition; it is known only after the vision tower runs, so build
    inputs with ``hired.prepare_inputs``. With ``budget=r`` exactly ``floor(r * P * T)`` tokens per image
    (or every valid patch), split evenly over the partitions, the top ones by attention.

    Differences from the authors' code: quartiles per partition and per image (theirs pool the batch, on
    the CPU); head-summed attention (theirs, one softmax over concatenated heads); no extra
    "sum of everything dropped" token, so every token is a convex combination of patches.

    Args:
        budget: ``None`` (adaptive) or a token budget rate in (0, 1].
        neighbours: dropped patches merged into each kept one (k, 32 in the paper's code).
        layer: encoder layer (0-based) of the attention and keys; ``None``: feature layer + 1.
        keep_newline: keep LLaVA-NeXT's image-newline tokens.
        score: ``"cls"``, ``"received"`` or ``"auto"`` attention scores (see :class:`hired.HiRED`).
    """

    name = "prumerge"
    summary = "PruMerge: IQR outliers of CLS attention (adaptive) or top-k at a budget, merged with key-similar patches"

    def _keep(self, layouts, scores, valid):
        if self.adaptive:
            keep = self._outliers(scores, valid)
            return keep, kept_counts(layouts, keep)
        budgets = [self._budgets(lay) for lay in layouts]
        k = torch.tensor([b for per in budgets for b in per]).to(scores.device, non_blocking=True)
        return topk_mask(scores, k, valid), budgets


@register
@dataclass(frozen=True)
class PruMergePlus(_PruMergeBase):
    """PruMerge+ (Shang et al., arXiv 2403.15388): PruMerge plus spatially uniform samples.

    Adaptive form (``budget=None``): the IQR outliers of each partition plus a uniform 2-D lattice of
    three times as many patches (as the authors' code samples about three per outlier), then the
    PruMerge merge. Fixed budget ``r``: ``B = floor(r * P * T)`` tokens per image split evenly; in each
    partition three quarters of its share on the lattice and the rest the top patches by [CLS]
    attention among the others, then the merge.

    Budget semantics: adaptive (content-dependent, ``hired.prepare_inputs``) or exactly ``B``.

    Args:
        budget: ``None`` (adaptive) or a token budget rate in (0, 1].
        neighbours: dropped patches merged into each kept one.
        layer: encoder layer (0-based) of the attention and keys; ``None``: feature layer + 1.
        keep_newline: keep LLaVA-NeXT's image-newline tokens.
        score: ``"cls"``, ``"received"`` or ``"auto"`` attention scores (see :class:`hired.HiRED`).
    """

    name = "prumerge_plus"
    summary = "PruMerge+: PruMerge outliers plus a uniform spatial lattice, merged with key-similar patches"

    def _keep(self, layouts, scores, valid):
        if self.adaptive:
            outliers = self._outliers(scores, valid)
            n_out = kept_counts(layouts, outliers)
            spread = [[min(3 * n, v) for n, v in zip(per, lay.valid_counts)] for per, lay in zip(n_out, layouts)]
            keep = outliers | _lattice(layouts, spread, scores.device)
            return keep, kept_counts(layouts, keep)
        budgets = [self._budgets(lay) for lay in layouts]
        spread = [[b - math.ceil(b / 4) for b in per] for per in budgets]
        lattice = _lattice(layouts, spread, scores.device)
        k = torch.tensor([b for per in budgets for b in per]).to(scores.device, non_blocking=True)
        # lattice patches first (infinite score), then the best of the rest by attention
        return topk_mask(scores.float().masked_fill(lattice, float("inf")), k, valid), budgets


@register
@dataclass(frozen=True)
class VisionZip(_KeyMerge, _EvenSplit, Method):
    """VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
    CVPR 2025, arXiv 2412.04467).

    In every partition: *dominant* tokens, the top patches by [CLS] attention (heads summed); then
    *contextual* tokens: among the remaining valid patches, evenly spaced targets (in raster order), each
    other remaining patch joins the target its key is most similar to, and each target becomes the mean
    of its group. Attention and keys come from the feature layer (layer 22 of 24 on LLaVA's CLIP).

    Budget semantics: exactly ``B = floor(budget * P * T)`` tokens per image (or every valid patch),
    split evenly over the partitions; in each partition ``round(contextual * share)`` of its share are
    contextual tokens (10 of 64 by default, VisionZip's 54 + 10 setting), the rest dominant. Contextual
    tokens sit at their target's position, so LLaVA's spatial order is kept. Unlike the authors' code,
    contextual tokens are group means (a target does not count twice) and the [CLS] token is not kept
    (LLaVA drops it).

    Args:
        budget: token budget rate in (0, 1].
        contextual: share of each partition's budget given to contextual tokens, in [0, 1].
        layer: encoder layer (0-based) of the attention and keys; ``None``: the feature layer.
        keep_newline: keep LLaVA-NeXT's image-newline tokens.
        score: ``"cls"``, ``"received"`` or ``"auto"`` attention scores (see :class:`hired.HiRED`).
    """

    name = "visionzip"
    summary = "VisionZip: dominant tokens by CLS attention plus contextual tokens merged by key similarity"

    budget: float = 0.2
    contextual: float = 10 / 64
    layer: int | None = None
    score: ScoreKind = "auto"

    def validate(self) -> None:
        super().validate()
        check_rate("contextual", self.contextual, low_open=False)
        check_layer("layer", self.layer)

    def _default_layer(self, info: ModelInfo) -> int:
        return info.feature_layer

    def select(
        self,
        layouts: list[Layout],
        scores: Mapping[str, torch.Tensor],
        info: ModelInfo,
        keys: Mapping[str, torch.Tensor] | None = None,
    ) -> Selection:
        merge_keys = self._merge_keys(keys, info)
        s = scores["select"]
        device = s.device
        valid = _valid(layouts, device)
        budgets = [self._budgets(lay) for lay in layouts]
        flat = [b for per in budgets for b in per]
        n_ctx = torch.tensor([round(self.contextual * b) for b in flat]).to(device, non_blocking=True)
        n_dom = torch.tensor(flat).to(device, non_blocking=True) - n_ctx
        dominant = topk_mask(s, n_dom, valid)
        rest = valid & ~dominant
        rank = rest.long().cumsum(dim=1) - 1  # raster position among the remaining patches
        step = (rest.sum(dim=1) // n_ctx.clamp(min=1)).clamp(min=1)[:, None]
        targets = rest & (rank % step == 0) & (rank // step < n_ctx[:, None])
        weights = group_merge_weights(merge_keys, targets, rest & ~targets)
        return Selection(keep=dominant | targets, budgets=budgets, weights=weights)
