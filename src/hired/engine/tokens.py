"""What the engine keeps of a vision step's output, for both runtimes: select → pack → project.

Two token layouts exist today, and each family has one of them:

- **partitions** (LLaVA-1.5, LLaVA-NeXT, OneVision): ``(sum P, T, Dv)`` patch features of every partition,
  packed in the family's order with image-newline slots, then projected (:func:`select_partitions`,
  :func:`pack_and_project`);
- **a merged grid** (Qwen2.5-VL, Qwen3-VL, Qwen3.5): ``(sum N, D)`` merged tokens, already the language model's
  width, one grid per image in raster order (:func:`select_merged`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from hired.core.grid import Layout
from hired.engine.plan import Plan
from hired.methods.base import Prompts, Selection
from hired.methods.pack import Packed, check_kept, feature_inputs, pack_features


def select_partitions(
    plan: Plan,
    layouts: list[Layout],
    scores: dict[str, torch.Tensor],
    keys: dict[str, torch.Tensor],
    features: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    prompts: Prompts | None = None,
) -> Selection:
    """The method's choice for a batch of partitions: ``scores[role]`` ``(sum P, T)``, ``keys[role]``
    ``(sum P, T, H * D)``, ``features`` ``(sum P, T, Dv)`` the projector's input; ``project`` the projector
    (a method reading projected features gets every patch projected, without autograd); ``prompts``: the
    images' prompts, for a query-aware method."""
    method = plan.method
    extra: dict[str, Any] = feature_inputs(method, features, project)
    if method.query_aware:
        extra["prompts"] = prompts
    return method.select(layouts, scores, plan.info, keys=keys, **extra)


def pack_and_project(
    plan: Plan,
    layouts: list[Layout],
    selection: Selection,
    features: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    image_newline: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], Packed]:
    """The kept patches of ``features`` ``(sum P, T, Dv)`` packed in the family's order, projected, with the
    model's ``image_newline`` ``(D,)`` in the newline slots the method keeps. Returns one ``(tokens_i, D)``
    tensor per image and the packing (each token's index in its image's stock sequence)."""
    packed = pack_features(plan.method, layouts, selection, features, plan.newline)
    embeds = project(packed.features)  # (L, D)
    if plan.packs_newline:
        if image_newline is None:
            raise ValueError(f"{plan.family.title} keeps image-newline tokens but no image_newline was given")
        slots = packed.is_newline.to(embeds.device)[:, None]
        embeds = torch.where(slots, image_newline.to(embeds.dtype), embeds)
    return list(embeds.split(packed.lengths)), packed


def select_merged(
    plan: Plan,
    layouts: list[Layout],
    merged: torch.Tensor,
    scores: dict[str, torch.Tensor],
    keys: dict[str, torch.Tensor],
    prompts: Prompts | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]:
    """Select the merged tokens of a batch of images, one method call per token count (images of one count
    are selected together).

    ``merged`` ``(sum N, D)``, ``scores[role]`` ``(sum N,)`` and ``keys[role]`` ``(sum N, H * D)``: image
    after image, each in raster order. Returns one ``(features, index, keep, budget)`` per image: the kept
    tokens' features ``(k, D)`` and raster indices ``(k,)`` in the order handed on (raster), the ``(N,)``
    bool mask of kept tokens and the image's budget list (one partition), all on the features' device.
    ``prompts`` (one owner per image): the images' prompts, for a query-aware method (``None``: encoded
    without them)."""
    method = plan.method
    starts = [0]
    for layout in layouts:
        starts.append(starts[-1] + layout.tokens)
    groups: dict[int, list[int]] = {}
    for i, layout in enumerate(layouts):
        groups.setdefault(layout.tokens, []).append(i)
    out: list = [None] * len(layouts)
    kept = []  # per group, its kept count (0-d, on the features' device)
    for tokens, idx in groups.items():

        def rows(values: torch.Tensor, tokens: int = tokens, idx: list[int] = idx) -> torch.Tensor:
            return torch.stack([values[starts[i] : starts[i] + tokens] for i in idx])

        group = [layouts[i] for i in idx]
        feats = rows(merged)  # (G, N, D)
        extra = feature_inputs(method, feats, lambda f: f)
        if method.query_aware:
            owner = None if prompts is None else prompts.owner[torch.tensor(idx, device=prompts.owner.device)]
            extra["prompts"] = None if prompts is None else dataclasses.replace(prompts, owner=owner)
        g_scores = {r: rows(v) for r, v in scores.items()}
        g_keys = {r: rows(v) for r, v in keys.items()}
        selection = method.select(group, g_scores, plan.info, keys=g_keys, **extra)
        packed = pack_features(method, group, selection, feats, newline=False, check=False)
        kept.append(selection.keep.sum())
        pieces = zip(idx, packed.features.split(packed.lengths), packed.stock_index.split(packed.lengths))
        for j, (i, features, index) in enumerate(pieces):
            out[i] = (features, index, selection.keep[j], selection.budgets[j])
    if kept:  # one check of the whole batch against the counts promised, not one per group
        check_kept(method, torch.stack([k.to(merged.device) for k in kept]).sum(), sum(len(o[1]) for o in out))
    return out


@lru_cache(maxsize=512)
def oracle_keep(layout: Layout, count: int) -> tuple[torch.Tensor, list[int]]:
    """Bool ``(P, T)``: the first ``count`` patches of the family's pack order, and the per-partition counts
    (benchmarks: the same token count as a method, with no selection work)."""
    keep = torch.zeros(layout.num_partitions * layout.tokens, dtype=torch.bool)
    keep[layout.pack_order(False)[:count]] = True
    keep = keep.view(layout.num_partitions, layout.tokens)
    return keep, keep.sum(dim=1).tolist()
