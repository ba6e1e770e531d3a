"""Qwen2.5-VL glue for the transformers adapter (:mod:`hired.adapters.transformers` does the rest).

What differs from the LLaVA families, and how it is met without copying transformers' code:

* **Scores.** The ViT has fused ``qkv`` projections, rotary q/k and window attention in every block but
  ``fullatt_block_indexes``. :class:`QwenScoreHooks` reads a block's ``qkv`` output and the rotary
  ``position_embeddings`` and ``cu_seqlens`` the block passes to its attention (a forward pre-hook),
  applies the rotary embedding with transformers' own ``apply_rotary_pos_emb_vision``, and computes the
  received attention inside each attention segment that block uses (the whole image in a full-attention
  block, one window otherwise): exactly the attention the stock block computes, never as an N x N map.
  The tower keeps its tokens in window order; the scores of a merged token are the sum over its
  ``m x m`` patches, put back in raster order with the tower's own window index.
* **Features.** The merger's output (already the language model's width) is the features; the kept
  merged tokens are handed on in raster order. Methods choosing by features use it (``space="projected"``).
* **Positions.** ``get_rope_index`` gives text tokens their stock M-RoPE ids (each image counted at its
  stock token count) and ``rope_deltas`` for decoding; the kept visual tokens' own (t, h, w) ids are set
  by a forward pre-hook of the language model once the vision step has chosen them.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import torch
from torch import nn

from hired.adapters.vision import Recording, ScoreHooks
from hired.core.scores import received_attention


class QwenScoreHooks(ScoreHooks):
    """Received-attention rows (``rows``) and pre-rotary keys (``keys``) of Qwen2.5-VL vision blocks, in the
    tower's window order: ``rows[role]`` ``(seq,)`` fp32 summed over heads, ``keys[role]`` ``(seq, H * D)``."""

    def __init__(self, blocks: nn.ModuleList, num_heads: int, rows, keys=None, kind: str = "received"):
        if kind != "received":
            raise ValueError("Qwen-VL towers have no [CLS] token: their scores are the received attention")
        super().__init__(blocks, num_heads, rows, keys, kind)

    def _install(self, block: nn.Module, layer: int, row_roles: list[str], key_roles: list[str]) -> None:
        """Hook one vision block: its attention's inputs (rotary embeddings, segments) and fused ``qkv``."""
        attn = block.attn
        # the rotary embedding of the block's own modeling file (Qwen2.5-VL's or Qwen3-VL's)
        self._rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
        self._handles.append(attn.register_forward_pre_hook(self._on_attention(layer), with_kwargs=True))
        self._handles.append(attn.qkv.register_forward_hook(self._on_qkv(layer, row_roles, key_roles)))

    def _on_attention(self, layer: int):
        def hook(_module, _args, kwargs):
            rec = self._current()
            if rec is not None:
                rec.pending[("attention", layer)] = (kwargs["position_embeddings"], kwargs["cu_seqlens"])

        return hook

    def _on_qkv(self, layer: int, row_roles: list[str], key_roles: list[str]):
        def hook(_module, _inputs, out):
            rec = self._current()
            if rec is None:
                return
            seq = out.shape[0]
            qkv = out.detach().reshape(seq, 3, self.num_heads, -1)
            if key_roles:
                keys = qkv[:, 1].reshape(seq, -1)
                for role in key_roles:
                    rec.keys[role] = keys
            if row_roles:
                row = self._received(rec, layer, qkv[:, 0], qkv[:, 1])
                for role in row_roles:
                    rec.rows[role] = row

        return hook

    def _received(self, rec: Recording, layer: int, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        (cos, sin), cu_seqlens = rec.pending.pop(("attention", layer))
        q, k = self._rotary(q, k, cos, sin)  # (seq, H, D), as the block's attention does
        q, k = q.flatten(1), k.flatten(1)
        bounds = cu_seqlens.tolist()
        parts = [received_attention(q[a:b][None], k[a:b][None], self.num_heads)[0] for a, b in zip(bounds, bounds[1:])]
        return torch.cat(parts)  # (seq,) fp32


def merged_order(visual: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """Long ``(sum N,)``: for each merged token in raster order, its place in the tower's window order
    (Qwen2.5-VL); the identity for a tower without windows (Qwen3-VL keeps raster order)."""
    from transformers.vision_utils import get_vision_window_index

    if getattr(visual, "window_size", None) is None:
        return torch.arange(int((grid_thw.prod(-1) // visual.spatial_merge_size**2).sum()))

    window_index, _ = get_vision_window_index(
        grid_thw,
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    return torch.argsort(window_index)


def pool_to_merged(values: torch.Tensor, unit: int, order: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-patch ``values`` ``(seq, ...)`` in window order → per merged token in raster order ``(sum N, ...)``."""
    grouped = values.reshape(values.shape[0] // unit, unit, *values.shape[1:])
    pooled = grouped.sum(dim=1) if reduce == "sum" else grouped.float().mean(dim=1)
    return pooled[order.to(pooled.device)]


def select_merged(
    method, info, layouts: list, merged: torch.Tensor, scores: dict, keys: dict, prompts=None
) -> list[tuple]:
    """Select the merged tokens of a batch of images, one method call per token count (images of one count
    are selected together). Shared by the transformers adapter and the vLLM plugin.

    ``merged`` ``(sum N, D)``, ``scores[role]`` ``(sum N,)`` and ``keys[role]`` ``(sum N, H * D)``: image
    after image, each in raster order. Returns one ``(features, index, keep, budget)`` per image: the kept
    tokens' features ``(k, D)`` and raster indices ``(k,)`` in the order handed on (raster), the ``(N,)``
    bool mask of kept tokens and the image's budget list (one partition), all on the features' device.
    ``prompts`` (``hired.methods.base.Prompts``, one owner per image): the images' prompts, for a
    query-aware method (``None``: encoded without them)."""
    from hired.methods.pack import feature_inputs, pack_features

    starts = [0]
    for layout in layouts:
        starts.append(starts[-1] + layout.tokens)
    groups: dict[int, list[int]] = {}
    for i, layout in enumerate(layouts):
        groups.setdefault(layout.tokens, []).append(i)
    out: list = [None] * len(layouts)
    for tokens, idx in groups.items():
        rows = lambda values, tokens=tokens, idx=idx: torch.stack([values[starts[i] : starts[i] + tokens] for i in idx])  # noqa: E731
        group = [layouts[i] for i in idx]
        feats = rows(merged)  # (G, N, D)
        g_scores, g_keys = {r: rows(v) for r, v in scores.items()}, {r: rows(v) for r, v in keys.items()}
        extra = feature_inputs(method, feats, lambda f: f)
        if getattr(method, "query_aware", False):
            extra["prompts"] = (
                None
                if prompts is None
                else dataclasses.replace(prompts, owner=prompts.owner[torch.tensor(idx, device=prompts.owner.device)])
            )
        selection = method.select(group, g_scores, info, keys=g_keys, **extra)
        packed = pack_features(method, group, selection, feats, newline=False)
        for j, (i, features, index) in enumerate(
            zip(idx, packed.features.split(packed.lengths), packed.stock_index.split(packed.lengths))
        ):
            out[i] = (features, index, selection.keep[j], selection.budgets[j])
    return out


def mrope_offsets(index: torch.Tensor, width: int) -> torch.Tensor:
    """Long ``(3, n)``: the (t, h, w) M-RoPE offsets of merged tokens ``index`` of an image ``width`` tokens
    wide (one temporal step), as transformers' ``get_vision_position_ids`` lays them out."""
    return torch.stack([torch.zeros_like(index), index // width, index % width])


def rope_index(
    inner: nn.Module,
    state,
    input_ids,
    mm_token_type_ids=None,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    attention_mask=None,
    **kwargs,
):
    """Replacement for ``get_rope_index``: the stock ids of a prompt whose images hold the method's counts.

    Each image's placeholder run is widened to its stock token count, transformers' own ``get_rope_index``
    runs on that, and the ids are read back at the prompt's tokens: text tokens get exactly their stock ids,
    an image's tokens the first ones of its stock ids (the language model's pre-hook puts the kept tokens'
    ids there once they are known), and ``rope_deltas`` continue decoding from the stock sequence.
    """
    original = state.saved.get("get_rope_index") or functools.partial(type(inner).get_rope_index, inner)
    call = dict(
        image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw,
        second_per_grid_ts=second_per_grid_ts,
        attention_mask=attention_mask,
        **kwargs,
    )
    if image_grid_thw is None or mm_token_type_ids is None:
        return original(input_ids, mm_token_type_ids, **call)
    layouts = [state.family.grid_layout(state.geometry, g) for g in image_grid_thw.tolist()]
    kept = [state.token_count(layout) for layout in layouts]
    stock = [layout.tokens for layout in layouts]
    if kept == stock:
        return original(input_ids, mm_token_type_ids, **call)
    wide_ids, wide_types, wide_mask, back, extra = _widen(input_ids, mm_token_type_ids, attention_mask, kept, stock)
    call["attention_mask"] = wide_mask
    ids, deltas = original(wide_ids, wide_types, **call)
    out = torch.stack([ids[:, b, back[b]] for b in range(ids.shape[1])], dim=1)  # (3, B, S)
    return out, deltas + torch.tensor(extra, dtype=deltas.dtype, device=deltas.device)[:, None]


def _widen(input_ids, types, attention_mask, kept: list[int], stock: list[int]):
    """Rows with image ``i``'s ``kept[i]`` placeholders widened to ``stock[i]`` (images in row-major order).

    Returns the widened ids, types and mask ``(B, S')`` (rows right-padded with masked tokens), for each row
    where its tokens went (``(S,)`` long), and each row's number of added tokens."""
    image = 1
    counts = iter(zip(kept, stock))
    rows, backs, extras = [], [], []
    batch, length = input_ids.shape
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    for b in range(batch):
        ids_row, type_row, mask_row = input_ids[b].tolist(), types[b].tolist(), mask[b].tolist()
        out_ids, out_types, out_mask, back, added = [], [], [], [], 0
        j = 0
        while j < length:
            if type_row[j] == image and mask_row[j]:
                end = j
                while end < length and type_row[end] == image and mask_row[end]:
                    end += 1
                run = end - j
                while run > 0:
                    k, n = next(counts)
                    if k > run:
                        raise ValueError("the image placeholders of the prompt do not hold the method's counts")
                    back.extend(range(len(out_ids), len(out_ids) + k))
                    out_ids += [ids_row[j]] * n
                    out_types += [image] * n
                    out_mask += [1] * n
                    added += n - k
                    run -= k
                j = end
            else:
                back.append(len(out_ids))
                out_ids.append(ids_row[j])
                out_types.append(type_row[j])
                out_mask.append(mask_row[j])
                j += 1
        rows.append((out_ids, out_types, out_mask))
        backs.append(torch.tensor(back, dtype=torch.long, device=input_ids.device))
        extras.append(added)
    width = max(len(r[0]) for r in rows)
    pad = lambda row: row + [0] * (width - len(row))  # noqa: E731
    wide_ids = torch.tensor([pad(r[0]) for r in rows], dtype=input_ids.dtype, device=input_ids.device)
    wide_types = torch.tensor([pad(r[1]) for r in rows], dtype=types.dtype, device=types.device)
    wide_mask = torch.tensor([pad(r[2]) for r in rows], dtype=mask.dtype, device=mask.device)
    return wide_ids, wide_types, wide_mask, backs, extras


def kept_positions(position_ids: torch.Tensor, image_mask: torch.Tensor, offsets: list[torch.Tensor]) -> torch.Tensor:
    """``position_ids`` ``(3 or 4, B, S)`` with each image's tokens given their stock (t, h, w) ids.

    ``image_mask`` ``(B, S)``: the image placeholders, images in row-major order; ``offsets[i]`` ``(3, n_i)``:
    the kept tokens' offsets from the image's first stock id, which its first placeholder holds."""
    counts = torch.tensor([o.shape[1] for o in offsets], dtype=torch.long, device=position_ids.device)
    flat = image_mask.flatten().nonzero().flatten()  # (L,) row-major positions of the placeholders
    if flat.numel() != int(counts.sum()):
        raise RuntimeError(f"{flat.numel()} image placeholders for {int(counts.sum())} kept visual tokens")
    first = torch.cumsum(counts, 0) - counts
    grid = position_ids[-3:].flatten(1)  # (3, B * S)
    start = grid[0, flat[first]]  # each image's first stock id (t = h = w there)
    ids = torch.repeat_interleave(start, counts)[None] + torch.cat(offsets, dim=1).to(grid.device)
    grid = grid.clone()
    grid[:, flat] = ids.to(grid.dtype)
    out = position_ids.clone()
    out[-3:] = grid.view(3, *position_ids.shape[1:])
    return out


def check_method(method, title: str = "Qwen2.5-VL") -> None:
    """What Qwen2.5-VL and Qwen3-VL (``title``) cannot run yet, as one clear error (the transformers adapter
    and the vLLM plugin)."""
    name = type(method).__name__
    if method.feature_space() == "vision":
        raise ValueError(
            f"{name}(space='vision'): {title}'s tower ends in its patch merger, whose output is the "
            "language model's input; use space='projected'"
        )
    if getattr(method, "adaptive", False):
        raise ValueError(
            f"{name} without a budget keeps a content-dependent number of tokens; on {title} only "
            f"fixed-budget methods run yet: give it a budget (e.g. {name}(budget=0.2))"
        )
