"""Diversity-based selection: DivPrune, DART and the query-aware CDPruner.

None of them reads [CLS] attention for the choice itself: they keep a subset of the patches that is
diverse in feature space (DivPrune: greedy max-min; DART: pivots and the tokens least duplicated with
them; CDPruner: a DPP whose kernel weighs similarity by relevance to the prompt). They read the patch
features (``Method.feature_space``): by default the projected ones, the language model's input space the
authors' code works in, so the adapter runs the projector on every patch for the selection and then
again on the kept ones (a fixed budget keeps the same tokens, bit for bit, as any other method choosing
them would give). All maths is fp32 and batched over the images or partitions of a batch; a greedy
selection of k tokens loops k times over batched tensor operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from hired.core.diverse import dart_keep, image_groups, maxmin_order, order_mask, unit_rows
from hired.core.dpp import conditional_kernel, greedy_map, minmax
from hired.core.grid import Layout
from hired.methods.base import (
    Method,
    ModelInfo,
    Prompts,
    Selection,
    check_layer,
    check_rate,
    promised_counts,
    register,
)
from hired.methods.simple import _EvenSplit

Space = Literal["projected", "vision"]


def _features(method: Method, layouts: list[Layout], features: torch.Tensor | None) -> torch.Tensor:
    """The ``(sum P, T, D)`` patch features the adapter passed, checked against the layouts."""
    if features is None:
        raise ValueError(
            f"{type(method).__name__} selects by the patch features: pass select(..., features=...) in its "
            f"feature_space() ({method.feature_space()!r}), as the adapters do"
        )
    expected = (sum(lay.num_partitions for lay in layouts), layouts[0].tokens)
    if features.dim() != 3 or tuple(features.shape[:2]) != expected:
        raise ValueError(f"features of shape {tuple(features.shape)}: expected {(*expected, 'D')}")
    return features


def _grouped(layouts: list[Layout], values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``values`` ``(sum P, T, ...)`` regrouped one row per image ``(n, N, ...)``, with the valid mask and
    the index that scatters back (see :func:`hired.core.diverse.image_groups`)."""
    index, valid = image_groups(layouts)
    index, valid = index.to(values.device, non_blocking=True), valid.to(values.device, non_blocking=True)
    if len({lay.num_partitions for lay in layouts}) == 1:  # no row padding: a view, no copy
        return values.reshape(len(layouts), -1, *values.shape[2:]), valid, index
    flat = values.flatten(0, 1)
    return flat[index.clamp(max=flat.shape[0] - 1)], valid, index


def _ungrouped(layouts: list[Layout], keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-image ``keep`` ``(n, N)`` back onto the batch's partitions, ``(sum P, T)`` bool."""
    tokens = layouts[0].tokens
    total = sum(lay.num_partitions for lay in layouts) * tokens
    flat = torch.zeros(total + 1, dtype=torch.bool, device=keep.device)
    flat.scatter_(0, index.flatten(), keep.flatten())  # row padding lands in the spare last slot
    return flat[:total].view(-1, tokens)


class _WholeImage:
    """Mixin: one budget for the whole image, chosen jointly over all of its partitions (needs ``budget``).

    An image of P partitions of T patches keeps exactly ``min(floor(budget * P * T), valid patches)``;
    how many fall in each partition is what the selection picks (``Selection.budgets``).
    """

    budget: float

    def count(self, layout: Layout) -> int:
        return min(self.total(layout), layout.num_valid)

    def partition_budgets(self, layout: Layout, scores: Mapping[str, torch.Tensor]) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} splits its budget by what it selects")


# ---------------------------------------------------------------------------------------------- DivPrune


@register
@dataclass(frozen=True)
class DivPrune(_WholeImage, Method):
    """DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
    CVPR 2025, arXiv 2503.02175).

    Keeps a maximally diverse subset of the image's patches, greedy max-min over the cosine distance
    ``d = 1 - cos`` of their features: first the patch whose nearest other patch is farthest, then each
    time the patch farthest from everything kept so far. No attention scores.

    Budget semantics: exactly ``min(floor(budget * P * T), valid patches)`` patch tokens per image (P
    partitions of T patches), chosen jointly over all partitions of the image, as the authors' code
    selects over the image's whole token sequence: the per-partition counts follow the content.

    As in the authors' code: the projected features (``space="projected"``), cosine distances, the same
    greedy order; their default ratio 0.098. Differences: padding patches and image-newline tokens are
    never candidates (the authors' LLaVA-1.6 sequence holds the newline tokens; here ``keep_newline``
    keeps all of them or none); chosen patches are excluded explicitly and the first patch is
    ``argmax_j min_{i != j} d(i, j)`` (theirs: the second smallest entry of each column, the same unless
    rounding makes ``d(j, j)`` non-zero); the ``(N, N)`` distances are per image of the batch (theirs,
    batch 1); ties go to the lower index.

    Args:
        budget: token budget rate in (0, 1].
        space: ``"projected"`` (the language model's input space, the authors') or ``"vision"`` (the
            projector's input: no projector pass over the dropped patches).
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
    """

    name = "divprune"
    summary = "DivPrune: greedy max-min diverse subset of the image's patches by feature cosine distance (no scores)"

    budget: float = 0.098
    space: Space = "projected"

    def validate(self) -> None:
        check_rate("budget", self.budget, low_open=True)

    def feature_space(self) -> Space:
        return self.space

    def select(self, layouts, scores, info, keys=None, *, features=None, prompts=None) -> Selection:
        order, index = self.order(layouts, features)
        keep = _ungrouped(layouts, order_mask(order, index.shape[1]), index)
        return Selection(keep=keep, budgets=promised_counts(self, layouts, keep))

    def order(self, layouts: list[Layout], features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, its kept patches in the order the greedy chose them: ``(n, max k)`` positions into the
        image's ``P * T`` patches (``-1`` past its count), and the grouping index."""
        grouped, valid, index = _grouped(layouts, _features(self, layouts, features))
        k = torch.tensor([self.count(lay) for lay in layouts])
        return maxmin_order(grouped, valid, k), index


# -------------------------------------------------------------------------------------------------- DART


@register
@dataclass(frozen=True)
class DART(_WholeImage, Method):
    """DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
    Matters More", arXiv 2502.11494), in the pre-LLM form.

    Picks a few *pivot* tokens, the patches whose keys have the largest L1 norm, then for each pivot in
    turn the patches least duplicated with it: the not yet kept ones with the lowest cosine similarity to
    the pivot. Pivots and those patches are kept.

    Budget semantics: exactly ``B = min(floor(budget * P * T), valid patches)`` patch tokens per image,
    chosen jointly over all partitions of the image (the authors' code sees the image's whole token
    sequence): ``p = min(pivots, B)`` pivots and ``B - p`` patches split evenly over them (the pivots of
    larger norm take one more when it does not divide).

    How this differs from the authors' code, which prunes inside the language model after layer
    ``K = 2``: here tokens are dropped before the language model, so (1) duplication is measured on the
    projected features (``space="projected"``; theirs: the normalised hidden states of layer 2), (2) the
    pivots are ranked by the L1 norm of the vision tower's keys at ``pivot_layer`` (default: the feature
    layer; theirs: the language model's keys at layer 2), (3) there are no text pivots (theirs: 4 image
    and 4 text pivots; the text's keys do not exist before the language model, so DART here does not read
    the prompt and runs in vLLM too), (4) the count is exact (theirs: pivots plus ``(image + text pivots)
    * floor(max_num_trunction / pivots)``) and the pivots are visited by descending norm (theirs: in
    Python set order), (5) image-newline tokens are never candidates (``keep_newline`` keeps all or none).
    Kept from the authors: 4 image pivots, the L1 key norm, the cosine criterion, the sequential
    exclusion of kept tokens, and the LLaVA-1.5 retention ``1 - 0.778 = 0.222`` (128 of 576 tokens).

    Args:
        budget: token budget rate in (0, 1].
        pivots: pivot tokens per image (>= 1).
        pivot_layer: vision encoder layer (0-based) whose keys rank the pivots; ``None``: the feature layer.
        space: ``"projected"`` or ``"vision"`` features for the similarity (see :class:`DivPrune`).
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
    """

    name = "dart"
    summary = "DART: pivot tokens (largest key norm) and the tokens least duplicated with them, per image (no scores)"

    budget: float = 0.222
    pivots: int = 4
    pivot_layer: int | None = None
    space: Space = "projected"

    def validate(self) -> None:
        check_rate("budget", self.budget, low_open=True)
        if self.pivots < 1:
            raise ValueError(f"pivots must be an integer >= 1, got {self.pivots!r}")
        check_layer("pivot_layer", self.pivot_layer)

    def feature_space(self) -> Space:
        return self.space

    def key_layers(self, info: ModelInfo) -> Mapping[str, int]:
        return {"pivot": info.feature_layer if self.pivot_layer is None else self.pivot_layer}

    def select(self, layouts, scores, info, keys=None, *, features=None, prompts=None) -> Selection:
        keep, _, index = self.pivots_and_keep(layouts, features, keys)
        keep = _ungrouped(layouts, keep, index)
        return Selection(keep=keep, budgets=promised_counts(self, layouts, keep))

    def pivots_and_keep(self, layouts, features, keys) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image ``(n, N)`` kept mask, ``(n, pivots)`` pivots in order (``-1`` past ``p``), both over the
        image's ``P * T`` patches, and the grouping index."""
        feats = _features(self, layouts, features)
        if not keys or "pivot" not in keys:
            raise ValueError(
                "DART ranks its pivots by the keys of one encoder layer: pass select(..., keys={'pivot': ...})"
            )
        norms = torch.linalg.vector_norm(keys["pivot"].float(), ord=1, dim=-1)  # (sum P, T) L1 norm of each key
        grouped, valid, index = _grouped(layouts, feats)
        grouped_norms, _, _ = _grouped(layouts, norms.to(feats.device))
        k = torch.tensor([self.count(lay) for lay in layouts])
        keep, pivots = dart_keep(grouped, grouped_norms, valid, k, self.pivots)
        return keep, pivots, index


# ---------------------------------------------------------------------------------------------- CDPruner


@register
@dataclass(frozen=True)
class CDPruner(_EvenSplit, Method):
    """CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
    Pruning in MLLMs", NeurIPS 2025, arXiv 2506.10967). Query-aware: it reads the prompt.

    Each patch gets a relevance to the prompt: the mean cosine similarity of its projected feature to the
    prompt's text-token embeddings, min-max normalised over the image's valid patches
    (``(r - min + 1e-6) / (max - min)``). The conditional kernel ``L[i, j] = r_i * cos(x_i, x_j) * r_j``
    (or ``exp(alpha r)`` weights with ``theta``) of the partition's projected features defines a DPP, and
    the greedy MAP (fast Cholesky updates, Chen et al. 2018) picks the partition's tokens.

    Budget semantics: exactly ``floor(budget * P * T)`` patch tokens per image (P partitions of T
    patches), or every valid patch if there are fewer, split evenly over the partitions (as the authors
    give every crop the same count), each partition's DPP on its own.

    The prompt: the text tokens of the prompt the image sits in (attended, not image placeholders),
    embedded by the language model's own input embedding layer (``hired.methods.base.Prompts``); text-only
    rows and other prompts of the batch do not count. An image encoded without its prompt (its encoder
    features fetched directly, as ``hired eval --offline`` does to encode an image once for several
    questions) gets uniform relevance, a plain similarity DPP, and is selected again, for each prompt,
    when its features reach the model with that prompt (see ``hired.adapters.transformers``).

    Differences from the authors' code: relevance in the language model's input space (their LLaVA code
    uses CLIP's text tower on the raw question and CLIP's projected image embeddings; llava-hf checkpoints
    ship no text tower, and the embedding-layer form is what the paper uses for models without one), over
    the whole templated prompt's text tokens; their LLaVA code negates the CLIP similarity (an effect they
    report only for CLIP; ``invert_relevance=True`` does the same here); min-max over the image's valid
    patches (theirs: over the whole batch of crops, padding included); a partition whose relevance is
    constant gets weight 1; a numerically exhausted kernel continues in index order (theirs divides by
    zero); padding patches are never chosen; ties go to the lower index.

    Args:
        budget: token budget rate in (0, 1] (0.222 = 128 of 576, the paper's middle LLaVA-1.5 setting).
        theta: ``None`` (the authors' default kernel, weights ``r``) or a relevance trade-off in [0, 1):
            weights ``exp(alpha r)`` with ``alpha = theta / (2 (1 - theta))`` (``0``: a query-blind DPP).
        invert_relevance: rank by the negative similarity, as the authors' LLaVA/CLIP code does.
        keep_newline: keep LLaVA-NeXT's image-newline tokens (one per canvas row).
    """

    name = "cdpruner"
    summary = "CDPruner: conditional DPP per partition, similarity weighted by relevance to the prompt (query-aware)"
    query_aware = True

    budget: float = 0.222
    theta: float | None = None
    invert_relevance: bool = False

    def validate(self) -> None:
        super().validate()
        if self.theta is not None and not 0.0 <= self.theta < 1.0:
            raise ValueError(f"theta must be None or in [0, 1), got {self.theta!r}")

    def feature_space(self) -> Literal["projected"]:
        return "projected"

    def relevance(
        self, layouts: list[Layout], features: torch.Tensor, prompts: Prompts | None, normalized: bool = False
    ) -> torch.Tensor:
        """``(sum P, T)`` fp32 normalised relevance of every patch to its image's prompt (0 on padding);
        ``features`` already unit rows with ``normalized``."""
        valid = torch.cat([lay.valid_mask for lay in layouts]).to(features.device, non_blocking=True)
        if prompts is None:
            raw = torch.zeros(valid.shape, device=features.device)
        else:
            query = prompts.mean_unit().to(features.device)  # (n, D)
            if query.shape[0] != len(layouts):
                raise ValueError(f"prompts name {query.shape[0]} images' prompts, the batch has {len(layouts)} images")
            part = torch.repeat_interleave(
                torch.arange(len(layouts)), torch.tensor([lay.num_partitions for lay in layouts])
            )
            unit = features.float() if normalized else unit_rows(features)
            raw = torch.bmm(unit, query[part.to(features.device)][:, :, None])[:, :, 0]
            if self.invert_relevance:
                raw = -raw
        grouped, group_valid, index = _grouped(layouts, raw)
        normed = minmax(grouped, group_valid)
        out = torch.zeros(valid.numel() + 1, device=features.device)  # the spare last slot takes row padding
        out.scatter_(0, index.flatten(), normed.flatten())
        return out[: valid.numel()].view(valid.shape)

    def weights(self, relevance: torch.Tensor) -> torch.Tensor:
        """Kernel weights of the relevance: itself, or ``exp(alpha r)`` with ``theta``."""
        if self.theta is None:
            return relevance
        alpha = self.theta / (2.0 * (1.0 - self.theta))
        return torch.exp(alpha * relevance)

    def select(self, layouts, scores, info, keys=None, *, features=None, prompts=None) -> Selection:
        order, budgets = self.order(layouts, features, prompts)
        return Selection(keep=order_mask(order, layouts[0].tokens), budgets=budgets)

    def order(self, layouts, features, prompts) -> tuple[torch.Tensor, list[list[int]]]:
        """Every partition's kept patches in the order the greedy MAP chose them (``(sum P, max k)``, ``-1``
        past its budget), and the per-image per-partition budgets."""
        feats = _features(self, layouts, features)
        valid = torch.cat([lay.valid_mask for lay in layouts]).to(feats.device, non_blocking=True)
        budgets = [self._budgets(lay) for lay in layouts]
        k = torch.tensor([b for per in budgets for b in per])
        unit = unit_rows(feats)
        weights = self.weights(self.relevance(layouts, unit, prompts, normalized=True))
        kernel = conditional_kernel(unit, weights, normalized=True)
        return greedy_map(kernel, valid, k), budgets
