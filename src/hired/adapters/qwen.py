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

from hired.adapters.context import (
    STOCK,
    Record,
    State,
    StockIndex,
    VisionStep,
    attach_pending,
    cache_length,
    cache_of,
    current,
    hand_on,
    remember,
)
from hired.adapters.prompts import take_prompt
from hired.adapters.vision import ScoreHooks
from hired.core.grid import Layout
from hired.core.positions import mrope_offsets
from hired.core.scores import pool_to_merged
from hired.engine import select_merged
from hired.methods.base import Prompts, Selection


class QwenScoreHooks(ScoreHooks):
    """Received-attention rows (``rows``) and pre-rotary keys (``keys``) of Qwen2.5-VL vision blocks, in the
    tower's window order: ``rows[role]`` ``(seq,)`` fp32 summed over heads, ``keys[role]`` ``(seq, H * D)``."""

    def __init__(self, blocks: nn.ModuleList, num_heads: int, rows, keys=None, kind: str = "received"):
        if kind != "received":
            raise ValueError("Qwen-VL towers have no [CLS] token: their scores are the received attention")
        super().__init__(blocks, num_heads, rows, keys, kind)

    def _install(self, block: nn.Module, layer: int) -> None:
        """Hook one vision block: its attention's inputs (rotary embeddings, segments) and fused ``qkv``."""
        attn = block.attn
        # the rotary embedding of the block's own modeling file (Qwen2.5-VL's or Qwen3-VL's)
        self._rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
        self._handles.append(attn.register_forward_pre_hook(self._on_attention(layer), with_kwargs=True))
        self._handles.append(attn.qkv.register_forward_hook(self._on_qkv(layer)))

    def _on_attention(self, layer: int):
        def hook(_module, _args, kwargs):
            rec = self._current()
            if rec is not None:
                rec.pending[("attention", layer)] = (kwargs["position_embeddings"], kwargs["cu_seqlens"])

        return hook

    def _on_qkv(self, layer: int):
        def hook(_module, _inputs, out):
            rec = self._current()
            if rec is None:
                return
            seq = out.shape[0]
            qkv = out.detach().reshape(seq, 3, self.scores.num_heads, -1)
            self.scores.put_keys(rec, layer, qkv[:, 1].reshape(seq, -1))
            if layer in self.scores.row_roles:
                (cos, sin), cu_seqlens = rec.pending.pop(("attention", layer))
                q, k = self._rotary(qkv[:, 0], qkv[:, 1], cos, sin)  # (seq, H, D), as the block's attention does
                row = self.scores.score(q.flatten(1), k.flatten(1), segments=cu_seqlens.tolist())  # (seq,) fp32
                self.scores.put_rows(rec, layer, row)

        return hook


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
    """Rows with image ``i``'s ``kept[i]`` placeholders (at least one: every image keeps a token) widened to
    ``stock[i]`` (images in row-major order). Returns the widened ids, types and mask ``(B, S')`` (rows
    right-padded with masked tokens), for each row where its tokens went (``(S,)`` long), and each row's
    number of added tokens."""
    image = 1
    pending = list(zip(kept, stock))
    at = 0  # the next image of pending

    def next_image():
        nonlocal at
        if at == len(pending):
            raise ValueError("the image placeholders of the prompt do not hold the method's counts")
        at += 1
        return pending[at - 1]

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
                    k, n = next_image()
                    if not 0 < k <= run:
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
    flat = image_mask.flatten().nonzero().flatten()  # (L,) row-major positions of the placeholders
    if not offsets and flat.numel() == 0:
        return position_ids
    counts = torch.tensor([o.shape[1] for o in offsets], dtype=torch.long, device=position_ids.device)
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


def image_features(
    inner: nn.Module, state: State, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs
):
    """Replacement for Qwen2.5-VL's ``get_image_features``: run the tower (merger included) with the score
    hooks, select merged tokens per image, hand on the kept ones in raster order. A query-aware method
    reads the prompt of the forward this step runs in (or ``hired.prepare_inputs``'); encoded without one,
    each image is selected again when its features reach the model with its prompt (:func:`reselect`).

    Returns the tower's output with ``pooler_output`` a list of ``(kept_i, D)`` per image."""
    layouts, _ = state.family.batch_layouts(state.geometry, pixel_values, image_grid_thw, {})
    visual = inner.visual
    kwargs.pop("return_dict", None)
    with state.calls.running(), state.hooks.recording() as rec:
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw, **kwargs)
    state.hooks.scores.check_complete(rec)
    merged = out.pooler_output  # (sum N, D) raster order, image after image
    unit = visual.spatial_merge_size**2
    order = merged_order(visual, image_grid_thw)
    scores = {r: pool_to_merged(v, unit, order, "sum") for r, v in rec.rows.items()}  # (sum N,)
    keys = {r: pool_to_merged(v, unit, order, "mean") for r, v in rec.keys.items()}  # (sum N, H * D)
    prompts = take_prompt(inner, state, layouts, pixel_values) if state.method.query_aware else None
    deep = [ds[order.to(ds.device)] for ds in (getattr(out, "deepstack_features", None) or [])]  # raster order
    outs, record, deep_kept = select_tokens(state, layouts, merged, scores, keys, prompts, deep)
    hand_on(state, record)
    if state.method.query_aware and prompts is None:  # encoded without its prompt: select again with one
        attach_pending(state, outs, layouts, [lay.tokens for lay in layouts], scores, keys, merged, deep)
    out.pooler_output = outs
    if deep:  # Qwen3-VL: each DeepStack level keeps the same tokens, per image (as get_image_features splits them)
        out.deepstack_features = deep_kept
    out._hired_record = record
    return out


def video_features(
    inner: nn.Module,
    state: State,
    pixel_values_videos: torch.Tensor,
    video_grid_thw: torch.Tensor | None = None,
    **kwargs,
):
    """Replacement for Qwen3-VL's ``get_video_features``, which calls ``get_image_features``: videos run the
    stock image features (the class's own, not hired's replacement), untouched."""
    original = functools.partial(type(inner).get_image_features, inner)
    return original(pixel_values_videos, video_grid_thw, **kwargs)


def select_tokens(
    state: State,
    layouts: list[Layout],
    merged: torch.Tensor,
    scores: dict,
    keys: dict,
    prompts: Prompts | None,
    deep: list[torch.Tensor] = (),
) -> tuple[list[torch.Tensor], Record, list]:
    """Select the merged tokens of a batch of images (``merged`` ``(sum N, D)``, ``scores[role]`` ``(sum N,)``,
    ``keys[role]`` ``(sum N, H * D)``, image after image, raster order): one ``(kept_i, D)`` tensor per
    image, carrying its stock indices and M-RoPE offsets, the step's record, and per DeepStack level of
    ``deep`` (``(sum N, D)`` each, Qwen3-VL) a tuple of the images' kept rows."""
    width = max(lay.tokens for lay in layouts)
    outs: list = [None] * len(layouts)
    keep = torch.zeros(len(layouts), width, dtype=torch.bool)
    budgets: list = [None] * len(layouts)
    padded = {r: torch.zeros(len(layouts), width) for r in scores}
    index_of: list = [None] * len(layouts)  # each image's kept rows of merged
    start = 0
    selected = select_merged(state.plan, layouts, merged, scores, keys, prompts)
    for i, (layout, (features, index, kept, budget)) in enumerate(zip(layouts, selected)):
        tokens, cols = layout.tokens, layout.partition_shape[1]
        setattr(features, STOCK, StockIndex(index, tokens, mrope_offsets(index.cpu(), cols)))
        outs[i] = features
        keep[i, :tokens] = kept.cpu()
        budgets[i] = budget
        for r in scores:
            padded[r][i, :tokens] = scores[r][start : start + tokens].float().cpu()
        index_of[i] = start + index
        start += tokens
    images = tuple(getattr(f, STOCK) for f in outs)
    deep_kept = [tuple(ds[rows.to(ds.device)] for rows in index_of) for ds in deep]
    return (
        outs,
        Record(layouts, Selection(keep=keep, budgets=budgets), padded, [len(f) for f in outs], images),
        deep_kept,
    )


def mrope_positions(state: State, _module, args, kwargs):
    """Forward pre-hook of Qwen2.5-VL's language model: in a prompt pass, give each kept visual token its
    stock (t, h, w) ids (text ids and decoding are the stock ones already, from ``get_rope_index``)."""
    if cache_length(cache_of(kwargs)):
        return None
    forward = current().forward
    position_ids = kwargs.get("position_ids")
    if (
        forward is None
        or forward.state is not state
        or forward.images is None
        or forward.image_mask is None
        or position_ids is None
    ):
        return None
    if position_ids.dim() != 3:
        raise ValueError(f"Qwen2.5-VL needs (3 or 4, batch, sequence) position_ids, got {tuple(position_ids.shape)}")
    kwargs["position_ids"] = kept_positions(position_ids, forward.image_mask, [i.mrope for i in forward.images])
    if forward.record is not None:
        remember(state, dataclasses.replace(forward.record, positions=(kwargs["position_ids"], forward.image_mask)))
    return args, kwargs


class MergedGridStep(VisionStep):
    """Qwen2.5-VL and Qwen3-VL: one grid of merged tokens per image; the kept tokens always keep their stock
    (t, h, w) M-RoPE ids; Qwen3-VL's DeepStack levels keep the same tokens."""

    tracks_forward = True

    def hooks(self, state: State) -> QwenScoreHooks:
        return QwenScoreHooks(state.layers, state.info.num_heads, state.roles, state.key_roles, kind=state.score_kind)

    def patches(self, state: State) -> dict:
        patches = {"get_image_features": image_features, "get_rope_index": rope_index}
        if state.family.videos_via_image_features:  # Qwen3-VL: keep videos off the image path
            patches["get_video_features"] = video_features
        return patches

    def language_hooks(self, state: State, language_model: nn.Module) -> list:
        return [language_model.register_forward_pre_hook(functools.partial(mrope_positions, state), with_kwargs=True)]

    def select(self, inner, state, layouts, scores, keys, features, prompts, deep=()) -> tuple:
        return select_tokens(state, layouts, features, scores, keys, prompts, list(deep))


STEP = MergedGridStep()
