"""The vLLM plugin's part shared by the families whose image is one grid of merged tokens with 3-D M-RoPE
ids (Qwen2.5-VL, Qwen3-VL, Qwen3.5: :mod:`hired.vllm.qwen2_5_vl`, :mod:`hired.vllm.qwen3_vl`,
:mod:`hired.vllm.qwen3_5`, thin subclasses of vLLM's own classes).

Without ``hired`` in ``hf_overrides`` every override below calls the parent, so the model runs exactly as
stock vLLM. With it (any fixed-budget method; query-aware ones are refused, as for every family, and
``space='vision'`` as in the transformers adapter, :meth:`hired.families.qwen2_5_vl.Qwen25VL.check_method`):

* **Counts.** An image's placeholders are ``floor(r * N)`` of its N merged tokens, from the image size
  alone: vLLM's own ``smart_resize`` gives ``image_grid_thw`` (:meth:`MergedGridInfo.get_num_image_tokens`),
  and the prompt replacement writes the method's count for that grid
  (:meth:`MergedGridProcessor._get_prompt_updates`; vLLM's own replacement counts from the grid directly,
  not through the processing info). Videos keep vLLM's own count.
* **Scores and selection.** ``_process_image_input`` runs vLLM's ViT (merger included) with hooks on the
  blocks the method reads: the rotary q and k each block hands its attention (a forward pre-hook of the
  block's ``MMEncoderAttention``) give the attention each patch receives inside each attention segment of
  that block (the image in a full-attention block, one window otherwise;
  :func:`hired.core.scores.received_attention`, no N x N map), the fused ``qkv`` output the keys of
  merging methods. Patch scores are summed over each 2x2 merge group and put in raster order (Qwen2.5-VL's
  windows: with the tower's own ``reverse_indices``; :func:`hired.core.scores.pool_to_merged`); the
  selection is the one the transformers adapter runs (:func:`hired.engine.tokens.select_merged`) on the
  merger's output, kept tokens in raster order. Qwen3-VL's tower returns each token's DeepStack features
  beside its merged features (one row); the kept rows carry them, so every DeepStack level keeps exactly
  the tokens the selection kept.
* **M-RoPE ids: exact.** vLLM computes a request's 3-D positions from the prompt before the encoder runs
  (``get_mrope_input_positions``), when the kept tokens are not known yet. The plugin hands vLLM's own
  function the prompt with every image's placeholder run widened to its stock length and reads the ids
  back: every text and video token gets its stock id, an image's placeholders the ids of its first
  ``floor(r * N)`` stock tokens for the moment (their t id, the image's first id, is right for every token
  of an image), and the delta is the stock sequence's (decoding continues with the stock ids). Each
  image's features carry four extra channels with the kept tokens' (row, column) in the merged grid (each
  as two base-256 digits, exact in bf16 and fp16). In every step the runner hands the step's features to
  ``embed_input_ids`` and then the step's positions to ``forward``: the first takes the channels off and
  keeps the kept tokens' slots and (row, column), the second gives those slots (t0, t0 + row, t0 + column)
  on a copy of the positions. Chunked prefill works (a step's slots are the step's multimodal slots).
  vLLM's own interface for pruned multimodal tokens (``SupportsMultiModalPruning.recompute_mrope_positions``,
  what EVS video pruning uses) is not used: vLLM 0.32's runner calls it only with ``video_pruning_rate >
  0``, and the CPU runner never. ``video_pruning_rate`` together with ``hired`` is refused.
* **Budget 1.0** keeps every token in raster order with its stock id: the same outputs as stock vLLM.

An encoder pass makes no host round trip per image: the reads of device data are the batch's grids and
segment bounds (once each) and, on a CPU, one check of the kept count against the promised one; images
of the same token count are selected together, and for one-grid images every method's budgets are the
promised counts, known on the host (tested in ``tests_vllm/test_encoder_pass.py``).

Videos, image embeddings given as input (``image_embeds``) and text-only prompts take vLLM's own path;
``image_embeds`` with ``hired`` is refused (their count is the stock one). The vision tower must run
unsharded (``tensor_parallel_size=1``; with ``mm_encoder_tp_mode="data"`` the tower runs whole on each rank,
unsharded over images) and eager (vLLM's optional ``torch.compile`` of the multimodal encoder would skip
the hooks).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from vllm.multimodal.processing import PromptReplacement

from hired.core.grid import Layout
from hired.core.scores import pool_to_merged
from hired.engine import oracle_keep, select_merged
from hired.engine.scores import LayerScores, Recording
from hired.vllm.common import RequestProcessor, RequestSpecs, SpecCache, StageTiming
from hired.vllm.config import Spec, spec_from_config

CHANNELS = 4
"""Extra channels of an image's features with ``hired``: row // 256, row % 256, column // 256, column % 256
of each kept token in the image's merged grid (integers below 256 are exact in bf16)."""


# ------------------------------------------------------------------------------------- processing


class MergedGridInfo(SpecCache):
    """Processing-info mixin: placeholder counts from the core when ``hired`` is configured, vLLM's own
    otherwise."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int, image_processor, mm_kwargs) -> int:
        spec = self.hired_spec()
        if spec is None:
            return super().get_num_image_tokens(
                image_width=image_width, image_height=image_height, image_processor=image_processor, mm_kwargs=mm_kwargs
            )
        size, _ = self._get_vision_info(
            image_width=image_width,
            image_height=image_height,
            num_frames=1,
            image_processor=image_processor,
            mm_kwargs=mm_kwargs,
            modality="image",
        )
        patch = spec.geometry.patch_size
        return spec.grid_tokens((1, size.height // patch, size.width // patch))


class MergedGridProcessor(RequestProcessor):
    """Multimodal-processor mixin: with ``hired`` each image's placeholder run holds the method's count
    (the request's own options, when it sets them)."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        spec = self.info.hired_spec()
        if spec is None:
            return updates
        token = self.info.get_tokenizer().get_vocab()[self.info.get_hf_processor(**hf_processor_mm_kwargs).image_token]

        def replacement(item_idx: int):
            grid = out_mm_kwargs["image"][item_idx]["image_grid_thw"].data
            return [token] * spec.grid_tokens(grid.tolist())

        return [
            PromptReplacement(modality="image", target=[token], replacement=replacement) if u.modality == "image" else u
            for u in updates
        ]


# ------------------------------------------------------------------------------------- score hooks


@contextmanager
def record(visual: nn.Module, spec: Spec, bounds: dict[int, list[int]]) -> Iterator[tuple[dict, dict]]:
    """Within the block, a forward of vLLM's Qwen ViT fills ``rows[role]`` ``(seq,)`` fp32 (the attention
    each patch receives inside its block's attention segments, summed over heads) and ``keys[role]``
    ``(seq, H * D)`` (pre-rotary keys), patches in the tower's order; the scores are
    :class:`hired.engine.scores.LayerScores`'. ``bounds`` maps ``id`` of each ``cu_seqlens`` tensor the
    tower uses to its list of segment bounds. Leaving the block, a role whose block the forward never
    reached is a ``RuntimeError``."""
    heads = visual.blocks[0].attn.num_attention_heads_per_partition
    scores = LayerScores(spec.roles, spec.key_roles, heads, "received")
    rec = Recording()
    handles = []

    def on_attention(layer: int):
        def hook(_module, _args, kwargs):
            q, k = kwargs["query"][0], kwargs["key"][0]  # (seq, H, D), rotary applied, as attended
            cu = kwargs["cu_seqlens"]
            row = scores.score(q.flatten(1), k.flatten(1), segments=bounds.get(id(cu)) or cu.tolist())
            scores.put_rows(rec, layer, row)

        return hook

    def on_qkv(layer: int):
        def hook(_module, _inputs, output):
            x = output[0] if isinstance(output, tuple) else output  # (seq, 1, 3 * H * D)
            seq = x.shape[0]
            scores.put_keys(rec, layer, x.detach().reshape(seq, 3, heads, -1)[:, 1].reshape(seq, -1))

        return hook

    try:
        for layer in scores.layers:
            attn = visual.blocks[layer].attn
            if layer in scores.row_roles:
                handles.append(attn.attn.register_forward_pre_hook(on_attention(layer), with_kwargs=True))
            if layer in scores.key_roles:
                handles.append(attn.qkv.register_forward_hook(on_qkv(layer)))
        yield rec.rows, rec.keys
        scores.check_complete(rec)
    finally:
        for h in handles:
            h.remove()


def encode_positions(index: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """``(k, CHANNELS)`` of the kept merged tokens ``index`` (raster, image ``cols`` tokens wide)."""
    row, col = index // cols, index % cols
    return torch.stack([row // 256, row % 256, col // 256, col % 256], dim=1).to(dtype)


def decode_positions(channels: torch.Tensor) -> torch.Tensor:
    """``(2, k)`` long (row, column) from :func:`encode_positions`'s channels."""
    code = channels.float().round().long()
    return torch.stack([code[:, 0] * 256 + code[:, 1], code[:, 2] * 256 + code[:, 3]])


def widen(input_tokens: list[int], features: list, stock: list[int | None], image_token: int):
    """The prompt as the stock model has it. ``features``: the request's multimodal features in offset
    order; ``stock[i]``: the stock token count of feature ``i`` if it is an image (its placeholder run is
    widened to that many ``image_token``), ``None`` to leave it as it is (videos).

    Returns the wide tokens, the features with their wide placements, and for each token of the prompt
    its index in the wide one (an image's placeholders: the first ones of its wide run)."""
    tokens: list[int] = []
    wide_features, back, at = [], [], 0
    for feature, length in zip(features, stock):
        pos = feature.mm_position
        back.extend(range(len(tokens), len(tokens) + pos.offset - at))
        tokens.extend(input_tokens[at : pos.offset])
        if length is None or length == pos.length:
            length, run = pos.length, input_tokens[pos.offset : pos.offset + pos.length]
        elif pos.length > length or pos.is_embed is not None:
            raise ValueError(f"an image placeholder run of {pos.length} tokens cannot stand for {length} stock ones")
        else:
            run = [image_token] * length
        back.extend(range(len(tokens), len(tokens) + pos.length))
        placed = dataclasses.replace(pos, offset=len(tokens), length=length)
        wide_features.append(dataclasses.replace(feature, mm_position=placed))
        tokens.extend(run)
        at = pos.offset + pos.length
    back.extend(range(len(tokens), len(tokens) + len(input_tokens) - at))
    tokens.extend(input_tokens[at:])
    return tokens, wide_features, back


# ------------------------------------------------------------------------------------------ the model


class MergedGridModel(RequestSpecs, StageTiming):
    """Model mixin of a merged-grid family's vLLM class (put before vLLM's class): with
    ``hf_overrides={"hired": {...}}`` it drops the merged tokens of images before the LLM, the kept ones
    with their stock M-RoPE ids (videos: vLLM's own path)."""

    hired_family: str  # a name of hired.families

    def _hired_init(self) -> None:
        """Read the ``hired`` entry (after vLLM's ``__init__``) and refuse what the plugin cannot serve."""
        self.hired_spec = spec_from_config(self.config, self.hired_family)
        self._hired_last: list[tuple[Spec, list[int], list[Layout], list[torch.Tensor], list[list[int]]]] | None = None
        self._hired_positions: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.hired_spec is None:
            return
        title = self.hired_spec.family.title
        if self.video_pruning_rate:
            raise ValueError(
                f"hf_overrides['hired']: video_pruning_rate (EVS) together with hired is not supported on "
                f"{title} yet; drop one of them"
            )
        if self.visual.blocks[0].attn.tp_size > 1:
            raise ValueError(
                f"hf_overrides['hired']: {title}'s vision tower is sharded over tensor-parallel ranks, which "
                "split the heads the scores sum over; use tensor_parallel_size=1 or mm_encoder_tp_mode='data'"
            )

    def hired_stages(self) -> dict:
        """``vision``: the ViT and its merger; ``selection``: scores, top-k, gather (no projector stage)."""
        return {"vision": self.visual}

    def hired_feature_width(self) -> int:
        """Columns of the tower's output that are the merged features the methods read (the rest of a row,
        Qwen3-VL's DeepStack features, follows the selection)."""
        return self.visual.out_hidden_size

    # --------------------------------------------------------------------------------- the image step

    def _process_image_input(self, image_input):
        if self.hired_spec is None:
            return super()._process_image_input(image_input)
        if image_input["type"] != "pixel_values":
            title = self.hired_spec.family.title
            raise ValueError(f"hired on {title} needs images as pixels; image_embeds hold the stock count")
        return self.hired_timed(self._hired_features, image_input["pixel_values"], image_input["image_grid_thw"])

    def _hired_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Patches ``(sum t*h*w, C')`` of images of ``grid_thw`` ``(B, 3)`` → one ``(tokens_i, D' + 4)``
        tensor per image. Images of requests with options of their own (:meth:`hired_pass_specs`) are
        encoded and selected with those, one group of images per distinct options."""
        grids = grid_thw.tolist()  # one host read per pass (vLLM's own path reads it too)
        rows = [t * h * w for t, h, w in grids]
        return tuple(self.hired_grouped(pixel_values, rows, grids, self._hired_group))

    def _hired_group(self, spec: Spec, pixel_values: torch.Tensor, grids: list[list[int]]) -> tuple[tuple, tuple]:
        """One group's ``(embeds, (layouts, keeps, budgets))`` with the score hooks and method of ``spec``."""
        visual = self.visual
        layouts = [spec.grid_layout(g) for g in grids]
        metadata = visual.prepare_encoder_metadata(grids)
        if spec.oracle:
            rows = visual(pixel_values, grid_thw=grids, encoder_metadata=metadata)
            chosen, start = [], 0
            for layout in layouts:
                keep = oracle_keep(layout, spec.method.count(layout))[0][0].to(rows.device)
                index = keep.nonzero().flatten()
                chosen.append((rows[start : start + layout.tokens][index], index, keep, [int(index.numel())]))
                start += layout.tokens
        else:
            bounds = {
                id(cu): cu.tolist() for k in ("cu_seqlens", "cu_window_seqlens") if (cu := metadata.get(k)) is not None
            }
            with record(visual, spec, bounds) as (scored, keys):
                rows = visual(pixel_values, grid_thw=grids, encoder_metadata=metadata)  # (sum N, D') raster
            order = metadata.get("reverse_indices")  # Qwen2.5-VL's windows → raster order
            if order is None:
                order = torch.arange(rows.shape[0], device=rows.device)
            unit = visual.spatial_merge_unit
            scores = {r: pool_to_merged(v, unit, order, "sum") for r, v in scored.items()}
            keys = {r: pool_to_merged(v, unit, order, "mean") for r, v in keys.items()}
            width = self.hired_feature_width()
            chosen = select_merged(spec, layouts, rows[:, :width], scores, keys)
            if rows.shape[1] != width:  # DeepStack: the kept rows whole
                starts = itertools.accumulate([0, *[lay.tokens for lay in layouts]])
                chosen = [(rows[start + c[1]], *c[1:]) for start, c in zip(starts, chosen)]
        if self._hired_clock is not None:  # no projector stage: the merger ran in the tower
            self._hired_clock.at("projector_start")
            self._hired_clock.at("projector_end")
        embeds = tuple(
            torch.cat([features, encode_positions(index, layout.partition_shape[1], features.dtype)], dim=1)
            for layout, (features, index, _keep, _budget) in zip(layouts, chosen)
        )
        return embeds, (layouts, [c[2].detach() for c in chosen], [c[3] for c in chosen])

    # -------------------------------------------------------------------------------------- positions

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple[torch.Tensor, int]:
        """vLLM's own ids for the prompt with every image counted at its stock size: every text and video
        token gets its stock id, an image's placeholders the ids of its first stock tokens until
        :meth:`forward` puts the kept tokens' ids there. The delta is the stock sequence's (decoding
        continues with the stock ids)."""
        if self.hired_spec is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        stock = [
            self.hired_spec.grid_layout(f.data["image_grid_thw"].data.tolist()).tokens
            if f.modality == "image"
            else None
            for f in features
        ]
        wide, wide_features, back = widen(input_tokens, features, stock, self.config.image_token_id)
        positions, delta = super().get_mrope_input_positions(wide, wide_features)
        return positions[:, back].contiguous(), int(delta) + len(wide) - len(input_tokens)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        """The step's token embeddings with its multimodal features scattered in (vLLM's own), after taking
        the position channels off the images' features: the kept tokens' (row, column) are held for this
        step's :meth:`forward`, which gives them their ids."""
        if self.hired_spec is not None and multimodal_embeddings is not None and len(multimodal_embeddings):
            multimodal_embeddings = self._hired_take_positions(multimodal_embeddings, is_multimodal)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def _hired_take_positions(self, embeddings, is_multimodal) -> list[torch.Tensor]:
        width = self.visual.out_hidden_size
        if not any(e.shape[-1] == width + CHANNELS for e in embeddings):
            self._hired_positions = None
            return embeddings
        slots = is_multimodal.nonzero().flatten()  # the step's multimodal slots, features in this order
        out, where, codes, at = [], [], [], 0
        for emb in embeddings:
            n = emb.shape[0]
            if emb.shape[-1] == width + CHANNELS:
                where.append(slots[at : at + n])
                codes.append(decode_positions(emb[:, width:]))
                emb = emb[:, :width]
            out.append(emb)
            at += n
        if at != slots.numel():
            raise RuntimeError(f"{at} multimodal features for {slots.numel()} multimodal slots in this step")
        device = codes[0].device
        self._hired_positions = (torch.cat(where).to(device, non_blocking=True), torch.cat(codes, dim=1))
        return out

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        """vLLM's forward, the kept image tokens of this step given their stock (t, h, w) ids: t0 (the t id
        every token of an image has, the image's first id) plus their row and column."""
        pending = self.__dict__.pop("_hired_positions", None)
        if pending is not None and positions.dim() == 2:
            where, row_col = pending
            positions = positions.clone()  # the runner's buffer stays as it is
            base = positions[0, where]
            positions[1, where] = base + row_col[0].to(positions.dtype)
            positions[2, where] = base + row_col[1].to(positions.dtype)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
