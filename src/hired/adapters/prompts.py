"""Query-aware methods in the transformers runtime: each image's prompt, from the model's inputs or from the
texts given to ``hired.prepare_inputs``, and the re-selection of images encoded without their prompt."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hired.adapters.context import PENDING, STOCK, RawPrompt, State, current, per_image, pooled, remember, update
from hired.core.grid import Layout
from hired.methods.base import Prompts


def take_prompt(inner: nn.Module, state: State, layouts: list[Layout], pixel_values, stock=None) -> Prompts | None:
    """The prompts of this vision step's images, or ``None`` when it runs without them (``get_image_features``
    called directly). Takes the calling context's prompt, so no later step can reuse it. ``stock``: the
    ``StockSplit.order`` of a batch whose ``pixel_values`` also hold stock inputs (InternVL's video frames,
    which have placeholders of their own: ``geometry.tokens`` per input)."""
    raw = current().prompt
    if raw is None:
        return None
    update(prompt=None)
    if isinstance(raw, RawPrompt):
        if raw.pixel_values is not pixel_values:
            return None  # a prompt for other images (a forward that never reached its vision step)
        counts = [state.token_count(layout) for layout in layouts]
        picks = None
        if stock is not None:  # every run of placeholders in order, the images' picked out
            images, counts, picks = iter(counts), [], []
            for unit in stock:
                if unit is None:
                    picks.append(len(counts))
                counts.append(next(images) if unit is None else unit * state.geometry.tokens)
        prompts = prompts_from_inputs(inner, raw.input_ids, raw.inputs_embeds, raw.attention_mask, counts)
        if picks is not None:
            owner = prompts.owner[torch.tensor(picks, dtype=torch.long, device=prompts.owner.device)]
            prompts = Prompts(embeds=prompts.embeds, mask=prompts.mask, owner=owner)
    else:
        prompts = raw
    if prompts.owner.numel() != len(layouts):
        raise ValueError(
            f"{type(state.method).__name__} reads the prompt of each image, but the prompts hold "
            f"{prompts.owner.numel()} image placeholders for {len(layouts)} images"
        )
    return prompts


def prompts_from_inputs(inner: nn.Module, input_ids, inputs_embeds, attention_mask, counts: list[int]) -> Prompts:
    """:class:`Prompts` of a batch of model inputs whose images give ``counts[i]`` tokens each, in order:
    image i is the one whose placeholder run starts at placeholder ``sum(counts[:i])`` (row-major)."""
    embed = inner.get_input_embeddings()
    image_id = inner.config.image_token_id
    with torch.no_grad():
        if input_ids is not None:
            image = input_ids == image_id
            embeds = embed(input_ids)
        else:
            embeds = inputs_embeds
            token = embed(torch.full((), image_id, dtype=torch.long, device=embeds.device))
            image = (embeds == token).all(dim=-1)
    mask = ~image
    if attention_mask is not None and attention_mask.dim() == 2:
        mask &= attention_mask.to(mask.device).bool()
    ends = image.sum(dim=1).cumsum(dim=0)  # placeholders up to the end of each row
    starts = torch.tensor([0, *counts[:-1]], dtype=torch.long).cumsum(0).to(ends.device)
    owner = torch.searchsorted(ends, starts, right=True).clamp(max=image.shape[0] - 1)
    return Prompts(embeds=embeds.detach(), mask=mask, owner=owner)


def prompts_from_text(inner: nn.Module, processor, text) -> Prompts:
    """:class:`Prompts` of the prompts given to ``hired.prepare_inputs``: each ``<image>`` of the texts, in
    order, is one image, and its prompt is the text's tokens (the tokenizer's, as the processor makes them)."""
    texts = [text] if isinstance(text, str) else list(text)
    ids = [list(processor.tokenizer(t)["input_ids"]) for t in texts]
    width = max((len(row) for row in ids), default=0)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    attention = torch.zeros(len(ids), width, dtype=torch.bool)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[r, : len(row)] = True
    image = (input_ids == inner.config.image_token_id) & attention
    device = inner.get_input_embeddings().weight.device
    with torch.no_grad():
        embeds = inner.get_input_embeddings()(input_ids.to(device))
    owner = torch.repeat_interleave(torch.arange(len(ids)), image.sum(dim=1))
    return Prompts(embeds=embeds, mask=(attention & ~image).to(device), owner=owner.to(device))


def reselect(inner: nn.Module, state: State, encoded, given: dict):
    """``encoded`` (``mm_encoder_outputs["image"]``) with every image that a query-aware method encoded
    without its prompt selected again for the prompt it sits in; ``None`` when there is none."""
    outs = per_image(encoded.pooler_output)
    pending = [getattr(f, PENDING, None) for f in outs]
    idx = [i for i, p in enumerate(pending) if p is not None and p.state is state]
    if not idx:
        return None
    prompts = prompts_from_inputs(
        inner, given.get("input_ids"), given.get("inputs_embeds"), given.get("attention_mask"), [len(f) for f in outs]
    )
    picked = [pending[i] for i in idx]
    layouts = [p.layout for p in picked]
    scores = {r: torch.cat([p.scores[r] for p in picked]) for r in picked[0].scores}
    keys = {r: torch.cat([p.keys[r] for p in picked]) for r in picked[0].keys}
    feats = torch.cat([p.features for p in picked])
    sub = Prompts(
        embeds=prompts.embeds, mask=prompts.mask, owner=prompts.owner[torch.tensor(idx, device=prompts.owner.device)]
    )
    with state.calls.running():
        deep = [torch.cat(level) for level in zip(*(p.deepstack for p in picked))]  # DeepStack levels, if any
        fresh, record, deep_fresh = state.step.select(inner, state, layouts, scores, keys, feats, sub, deep)
    for i, features in zip(idx, fresh):
        if len(features) != len(outs[i]):
            raise RuntimeError(
                f"{type(state.method).__name__} selected {len(features)} tokens again for an image "
                f"that had {len(outs[i])}"
            )
        outs[i] = features.to(outs[i].device, outs[i].dtype)
        setattr(outs[i], STOCK, getattr(features, STOCK))
    remember(state, record)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    fresh_encoded = BaseModelOutputWithPooling(pooler_output=pooled(state, outs))
    if deep_fresh:  # Qwen3-VL: the DeepStack levels of the images selected again, the others as given
        given_levels = getattr(encoded, "deepstack_features", None)
        if given_levels is None:
            raise ValueError(
                f"{state.family.title}'s mm_encoder_outputs['image'] needs the deepstack_features that "
                "get_image_features returned, one entry per image in every level"
            )
        levels = [list(level) for level in given_levels]
        for level, kept_rows in zip(levels, deep_fresh):
            for i, rows in zip(idx, kept_rows):
                level[i] = rows.to(outs[i].device)
        fresh_encoded = copy.copy(encoded)
        fresh_encoded.pooler_output = outs
        fresh_encoded.deepstack_features = [tuple(level) for level in levels]
    if len(idx) == len(outs):
        fresh_encoded._hired_record = record
    return fresh_encoded
