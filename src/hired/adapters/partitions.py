"""The transformers runtime for families whose images are partitions of patches (LLaVA-1.5, LLaVA-NeXT,
LLaVA-OneVision): the vision step (tower with score hooks, selection, packing in the family's order,
projector) and, with ``keep_positions``, the stock position ids of the kept tokens."""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from hired.adapters.context import (
    SHIFT,
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
    per_image,
    pooled,
    remember,
    take_carried,
)
from hired.adapters.prompts import take_prompt
from hired.adapters.vision import ScoreHooks
from hired.core.detail import edge_density
from hired.core.grid import Layout
from hired.core.positions import stock_position_ids
from hired.engine import pack_and_project, select_partitions
from hired.methods.base import Prompts


def image_features(
    inner: nn.Module,
    state: State,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | None = None,
    vision_feature_layer=None,
    vision_feature_select_strategy: str | None = None,
    **kwargs,
):
    """Replacement for ``get_image_features``: encode, select, project the kept patches, pack.

    Returns the tower's output with ``pooler_output`` a list of ``(tokens_i, hidden)`` per image.
    """
    config = inner.config
    if vision_feature_layer is not None and vision_feature_layer != config.vision_feature_layer:
        raise ValueError("hired was applied for the config's vision_feature_layer; pass None or the same value")
    if vision_feature_select_strategy not in (None, config.vision_feature_select_strategy):
        raise ValueError(
            "hired was applied for the config's vision_feature_select_strategy; pass None or the same value"
        )
    extra = {name: kwargs.pop(name) for name in state.family.image_kwargs() if name in kwargs}
    aspect = kwargs.pop("vision_aspect_ratio", None)
    if aspect is not None and aspect != getattr(config, "vision_aspect_ratio", None):
        raise ValueError("hired was applied for the config's vision_aspect_ratio; pass None or the same value")
    if image_sizes is None:  # InternVL: the forward's image_sizes, which get_image_features is not given
        image_sizes = take_carried(pixel_values).get("image_sizes")
    kwargs.pop("return_dict", None)
    split = state.family.stock_split(pixel_values, image_sizes)  # InternVL: video frames among the tiles
    if split is not None:
        return _with_stock(inner, state, split, pixel_values, extra, kwargs)
    return _encode(inner, state, pixel_values, pixel_values, image_sizes, extra, kwargs)


def _encode(inner, state: State, pixel_values, given, image_sizes, extra: dict, kwargs: dict, stock=None):
    """The vision step of a batch of images: ``given`` is the tensor the call was given (its prompt's key);
    ``stock``: ``StockSplit.order`` when that tensor holds stock inputs beside these images."""
    config = inner.config
    layouts, pixel_values = state.family.batch_layouts(state.geometry, pixel_values, image_sizes, extra)
    if state.method.reads_pixels():  # a content-adaptive budget: each image's sharp-edge density
        layouts = with_detail(state.processor, layouts, pixel_values, type(state.method).__name__)
    kwargs = {**kwargs, "output_hidden_states": True}
    with state.calls.running(), state.hooks.recording() as rec:
        tower_out = inner.vision_tower(pixel_values, return_dict=True, **kwargs)
    prefix = state.family.prefix_tokens(config)  # [CLS], when the features drop it
    feats = torch.cat(
        [tower_out.hidden_states[i][:, prefix:] for i in state.plan.hidden_layers], dim=-1
    )  # (sum P, T, Dv)
    patches = feats.shape[1]
    state.hooks.scores.check_complete(rec)
    scores = {role: row[:, -patches:] for role, row in rec.rows.items()}
    keys = {role: k[:, -patches:] for role, k in rec.keys.items()}
    feats, scores, keys = state.family.merge_patches(inner, config, feats, scores, keys)  # the LM's tokens
    tokens = layouts[0].tokens
    if feats.shape[1] != tokens:
        raise ValueError(f"the vision tower gave {feats.shape[1]} tokens per partition, expected {tokens}")
    prompts = take_prompt(inner, state, layouts, given, stock) if state.method.query_aware else None
    tower_out.pooler_output, record = select_and_pack(inner, state, layouts, scores, keys, feats, prompts)
    hand_on(state, record)
    if state.method.query_aware and prompts is None:  # encoded without its prompt: select again with one
        attach_pending(
            state, tower_out.pooler_output, layouts, [lay.num_partitions for lay in layouts], scores, keys, feats
        )
    tower_out._hired_record = record
    tower_out.pooler_output = pooled(state, tower_out.pooler_output)  # InternVL: one tensor
    return tower_out


def with_detail(processor, layouts: list[Layout], pixel_values: torch.Tensor, name: str = "HiRED") -> list[Layout]:
    """``layouts`` with each image's sharp-edge density (:func:`edge_density`) of its partitions'
    ``pixel_values`` ``(sum P, C, H, W)``, read with the normalisation of ``processor``'s image processor
    (``name``: the method, for the error when there is none)."""
    ip = getattr(processor, "image_processor", None)
    mean, std = getattr(ip, "image_mean", None), getattr(ip, "image_std", None)
    if mean is None or std is None:
        raise ValueError(
            f"{name}(adapt=...) reads the pixels, which needs the image processor's "
            "image_mean and image_std: apply it with the model's processor (hired.apply(model, processor, ...))"
        )
    details = edge_density(layouts, pixel_values, list(mean), list(std))
    return [dataclasses.replace(lay, detail=d) for lay, d in zip(layouts, details)]


def _with_stock(inner, state: State, split, given, extra: dict, kwargs: dict):
    """A batch holding stock inputs (InternVL's video frames): they go through the stock
    ``get_image_features`` untouched, the images through :func:`_encode`; the features are joined in the
    batch's order, each run of stock features marked as such (``StockIndex.stock``), so that
    ``keep_positions`` gives its tokens their stock ids. Without images: the stock output, its features
    marked the same way."""
    original = state.saved.get("get_image_features") or functools.partial(type(inner).get_image_features, inner)
    if split.num_images == 0:  # the stock output, its features cut into runs that say they are stock
        remember(state, None)  # no image in this call: last_selection is empty
        out = original(pixel_values=given, return_dict=True, **kwargs)
        stock, images = out.pooler_output, iter(())
    else:
        stock = original(pixel_values=split.stock, return_dict=True, **kwargs).pooler_output
        out = _encode(inner, state, split.images, given, split.image_sizes, extra, kwargs, split.order)
        images = iter(per_image(out.pooler_output))
    chunks, at = [], 0
    for unit in split.order:
        if unit is None:
            chunks.append(next(images))
            continue
        chunk = stock[at : at + unit].flatten(0, 1).to(out.pooler_output.dtype)
        at += unit
        setattr(chunk, STOCK, StockIndex(torch.arange(len(chunk), device=chunk.device), len(chunk), stock=True))
        chunks.append(chunk)
    out.pooler_output = pooled(state, chunks)
    forward = current().forward
    if split.num_images and forward is not None and forward.state is state and forward.record is out._hired_record:
        forward.images = tuple(getattr(chunk, STOCK) for chunk in chunks)  # the frames' tokens keep their ids too
    return out


def select_and_pack(
    inner: nn.Module,
    state: State,
    layouts: list[Layout],
    scores: dict,
    keys: dict,
    feats: torch.Tensor,
    prompts: Prompts | None,
) -> tuple[list[torch.Tensor], Record]:
    """Select the kept patches of ``feats`` ``(sum P, T, Dv)``, project them and pack them in LLaVA's order.

    Returns one ``(tokens_i, D)`` tensor per image (each carrying its stock indices) and the step's record.
    A method reading projected features gets every patch projected (without autograd) for its choice; the
    kept ones are projected again from ``feats``, so they equal what any other method keeping them gives.
    """
    project = inner.multi_modal_projector
    selection = select_partitions(state.plan, layouts, scores, keys, feats, project, prompts)
    out, packed = pack_and_project(
        state.plan, layouts, selection, feats, project, getattr(inner, "image_newline", None)
    )
    images = tuple(
        StockIndex(index, n) for index, n in zip(packed.stock_index.split(packed.lengths), packed.stock_lengths)
    )
    record = Record(layouts, selection, scores, packed.lengths, images)
    for features, image in zip(out, images):
        setattr(features, STOCK, image)  # travels with the features into mm_encoder_outputs
    return out, record


def stock_positions(state: State, _module, args, kwargs):
    """Forward pre-hook of the language model (``keep_positions``): give a prompt's tokens their stock
    position ids, and decoding steps their stock continuation."""
    cache = cache_of(kwargs)
    position_ids = kwargs.get("position_ids")
    past = cache_length(cache)
    if past:
        shift = getattr(cache, SHIFT, None)
        if shift is not None:
            if position_ids is None:
                embeds = kwargs["inputs_embeds"]
                position_ids = torch.arange(past, past + embeds.shape[1], device=embeds.device).expand(
                    embeds.shape[0], -1
                )
            kwargs["position_ids"] = position_ids + shift[:, None]
        return args, kwargs
    forward = current().forward
    if forward is None or forward.state is not state or forward.images is None or forward.image_mask is None:
        return None  # a prompt without images: its ids are the stock ones
    images, mask = forward.images, forward.image_mask
    if all(image.stock for image in images):
        return None  # stock inputs alone (InternVL's video frames): the stock ids
    if position_ids is None:
        position_ids = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
    if position_ids.dim() != 2:
        raise ValueError(f"keep_positions needs (batch, sequence) position_ids, got shape {tuple(position_ids.shape)}")
    new, shift = stock_position_ids(
        position_ids,
        mask,
        torch.cat([i.index for i in images]),
        [len(i.index) for i in images],
        [i.length for i in images],
    )
    kwargs["position_ids"] = new
    if cache is not None:
        setattr(cache, SHIFT, shift)
    else:
        forward.shift = shift  # keep_shift puts it on the cache the language model makes
    if forward.record is not None:
        if any(image.stock for image in images):  # stock tokens (video frames) among them: the images' alone
            picks = torch.cat([torch.full((len(i.index),), not i.stock, device=mask.device) for i in images])
            mask = mask.clone()
            mask[mask.clone()] = picks
        remember(state, dataclasses.replace(forward.record, positions=(new, mask)))
    return args, kwargs


def keep_shift(_module, _args, output):
    """Forward hook of the language model (``keep_positions``): a cache created inside the pass gets the
    prompt's shift, so decoding steps with it continue from the stock ids."""
    forward = current().forward
    shift = getattr(forward, "shift", None)
    if shift is None:
        return None
    forward.shift = None
    cache = getattr(output, "cache", None)
    cache = getattr(output, "past_key_values", None) if cache is None else cache
    if cache is not None:
        setattr(cache, SHIFT, shift)
    return None


class PartitionStep(VisionStep):
    """LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: partitions of patches, packed in the family's order."""

    def hooks(self, state: State) -> ScoreHooks:
        return ScoreHooks(state.layers, state.info.num_heads, state.roles, state.key_roles, kind=state.score_kind)

    def patches(self, state: State) -> dict:
        return {"get_image_features": image_features}

    def language_hooks(self, state: State, language_model: nn.Module) -> list:
        if not state.method.keep_positions:
            return []
        return [
            language_model.register_forward_pre_hook(functools.partial(stock_positions, state), with_kwargs=True),
            language_model.register_forward_hook(keep_shift),
        ]

    def select(self, inner, state, layouts, scores, keys, features, prompts, deep=()) -> tuple:
        outs, record = select_and_pack(inner, state, layouts, scores, keys, features, prompts)
        return outs, record, []


STEP = PartitionStep()
