"""HiRED-capable LLaVA-NeXT, LLaVA-1.5 and LLaVA-OneVision for vLLM: thin subclasses of vLLM's own classes.

Without ``hired`` in the model's ``hf_overrides`` every override below calls the parent, so the model
runs exactly as stock vLLM. With it:

* the processing info's ``get_num_image_tokens`` returns the core's count for the image size
  (:func:`hired.methods.base.num_image_tokens`), so vLLM writes that many placeholders into the prompt;
* ``_process_image_input`` runs vLLM's vision tower with score hooks on the layers the method needs
  (q and k out of each layer's fused ``qkv_proj``; no N x N map): the [CLS] row on a CLIP tower, or the
  attention each patch receives (:func:`hired.core.scores.received_attention`, queries in chunks) on a
  SigLIP tower or with ``score="received"``; the method selects, the kept features are packed in the
  promised order (:func:`hired.methods.pack.pack_features`), then projected.

LLaVA-OneVision (SigLIP, no [CLS], ``vision_feature_select_strategy="full"``): vLLM 0.32 cuts every image
of a prompt with the full anyres grid, also in a prompt with several images (its processor hands the
images to the Hugging Face image processor as one flat list, which treats each as a single-image prompt;
transformers' own prompts encode each image of a multi-image prompt as one crop plus one newline), and so
does the plugin: one layout per image from its size alone. The kept patches are packed as the
transformers adapter packs them (full image, then the unpadded canvas row by row with the family's
newline slots); the budget is taken of the ``P x T`` patches before OneVision's anyres_max
interpolation, and kept patches are never interpolated. Videos take vLLM's own path, untouched. vLLM
0.32's stock OneVision counts and interpolates with ``anyres_max_9`` whatever ``vision_aspect_ratio``
says; the plugin's layouts (``num_tokens_stock`` of :func:`hired.vllm.last_selection`) follow the config,
as transformers does; the published checkpoints use ``anyres_max_9``, where the two agree.

An encoder pass makes no host round trip per image: the only device-to-host reads are the batch's image
sizes and the method's own (HiRED: one ``tolist`` of the budgets of the whole batch); what the pass kept
stays on the device until :meth:`_HiredModelMixin.hired_last_selection` asks for it. ``hired_timing``
switches on a per-pass stage clock (vision tower, [CLS] rows inside it, selection, projector) that
``hired bench-vllm`` reads; off, it costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.bench.timing import Clock
from hired.core.grid import Layout
from hired.core.scores import received_attention
from hired.methods.base import Selection
from hired.methods.pack import feature_inputs, keeps_newline, pack_features
from hired.selection import ImageSelection, PartitionSelection
from hired.vllm.config import Spec, spec_from_config

# ------------------------------------------------------------------------------------- processing info


class _CountMixin:
    """Placeholder count from the core when ``hired`` is configured, vLLM's own otherwise."""

    _family: str

    def hired_spec(self) -> Spec | None:
        config = self.get_hf_config()
        cached = self.__dict__.get("_hired_spec")
        if cached is None or cached[0] is not config:
            cached = (config, spec_from_config(config, self._family))
            self.__dict__["_hired_spec"] = cached
        return cached[1]

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        spec = self.hired_spec()
        if spec is None:
            return super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return spec.num_tokens(image_height, image_width)


class HiredLlavaNextProcessingInfo(_CountMixin, LlavaNextProcessingInfo):
    _family = "llava_next"


class HiredLlavaProcessingInfo(_CountMixin, LlavaProcessingInfo):
    _family = "llava"


class HiredLlavaOnevisionProcessingInfo(_CountMixin, LlavaOnevisionProcessingInfo):
    _family = "onevision"

    def get_image_size_with_most_features(self):
        """vLLM sizes its encoder cache by this image's count. Stock: vLLM's own fixed size; with
        ``hired``: the grid pinpoint with the largest count (as LLaVA-NeXT does), since the method's count
        is taken before interpolation and may exceed the stock count of vLLM's fixed size."""
        if self.hired_spec() is None:
            return super().get_image_size_with_most_features()
        return LlavaNextProcessingInfo.get_image_size_with_most_features(self)


# ------------------------------------------------------------------------------------- scores and keys


def _attention_modules(tower: nn.Module) -> nn.ModuleList:
    """The ``self_attn`` module of every encoder layer vLLM built (``vision_model.encoder.layers`` of
    vLLM's CLIPVisionModel and SiglipVisionModel; each has a fused ``qkv_proj`` and ``num_heads_per_partition``
    and ``tp_size``)."""
    try:
        layers = tower.vision_model.encoder.layers
        attns = nn.ModuleList([layer.self_attn for layer in layers])
        for attn in attns:
            attn.qkv_proj, attn.num_heads_per_partition, attn.tp_size  # noqa: B018 - what the hooks read
    except AttributeError:
        raise TypeError(
            f"hired expects vLLM's CLIPVisionModel or SiglipVisionModel as vision tower, got {type(tower).__name__}"
        ) from None
    return attns


def cls_rows(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N)`` fp32 [CLS] attention rows, summed over heads, straight from a fused ``(B, N, 3 * H * D)``
    ``qkv_proj`` output (q, k, v side by side, as vLLM's ``QKVParallelLinear`` gives them).

    The same numbers as :func:`hired.core.scores.cls_attention` (up to float rounding), computed without
    copying the keys: ``k`` stays a strided view of ``qkv`` (no ``chunk``/``reshape``/``einsum``
    transposition of the full key matrix) and the logits are one broadcast multiply and a reduction over
    the head dimension, in fp32.
    """
    batch, seq, fused = qkv.shape
    width = fused // 3
    head_dim = width // num_heads
    q = qkv[:, 0, :width].float().view(batch, 1, num_heads, head_dim)
    k = qkv[:, :, width : 2 * width].float().view(batch, seq, num_heads, head_dim)  # no copy in fp32
    logits = (k * q).sum(dim=-1) * head_dim**-0.5  # (B, N, H)
    return logits.softmax(dim=1).sum(dim=2)


def received_rows(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N)`` fp32 attention each token receives (averaged over all N queries, summed over heads) from a
    fused ``(B, N, 3 * H * D)`` ``qkv_proj`` output: :func:`hired.core.scores.received_attention` on strided
    views of the q and k columns (queries in chunks, no N x N map)."""
    width = qkv.shape[-1] // 3
    return received_attention(qkv[..., :width], qkv[..., width : 2 * width], num_heads)


class StageClock(Clock):
    """Per-pass marks of the encoder stages: ``perf_counter`` on a CPU, CUDA events (no synchronisation
    inside the pass; one when the timings are read) on CUDA."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.passes: list[dict] = []
        self.current: dict | None = None

    def begin(self) -> None:
        self.current = {"start": self.mark(), "cls": []}

    def at(self, name: str) -> None:
        """Mark ``name`` in the current pass (the last call wins)."""
        if self.current is not None:
            self.current[name] = self.mark()

    def end(self, images: int) -> None:
        if self.current is not None:
            self.current["end"] = self.mark()
            self.current["images"] = images
            self.passes.append(self.current)
        self.current = None

    def take(self) -> list[dict]:
        """Seconds per stage of every pass since the last call: ``encoder`` (the whole pass), ``vision``
        (the tower, hooks included), ``cls_rows`` (time in the [CLS]-row hooks, part of ``vision``),
        ``selection`` (tower end to projector start: scores, budgets, top-k, gather) and ``projector``;
        a stage the pass did not reach is ``None``."""
        if self.passes:
            self.sync()
        out = []
        for p in self.passes:

            def span(a, b, p=p):
                return self.seconds(p[a], p[b]) if a in p and b in p else None

            out.append(
                {
                    "images": p["images"],
                    "encoder": span("start", "end"),
                    "vision": span("vision_start", "vision_end"),
                    "cls_rows": sum(self.seconds(a, b) for a, b in p["cls"]),
                    "selection": span("vision_end", "projector_start"),
                    "projector": span("projector_start", "projector_end"),
                }
            )
        self.passes = []
        return out


@contextmanager
def record(
    attns: Sequence[nn.Module],
    roles: Mapping[str, int],
    key_roles: Mapping[str, int],
    clock: StageClock | None = None,
    kind: str = "cls",
) -> Iterator[tuple[dict, dict]]:
    """Within the block, a tower forward fills ``rows[role]`` with ``(B, N)`` fp32 scores summed over all
    heads (``kind="cls"``: the [CLS] row; ``"received"``: the attention each token receives) and
    ``keys[role]`` with ``(B, N, H * D)`` keys, from the hooked layers' ``qkv_proj`` (``attns``: every
    encoder layer's ``self_attn``). With a ``clock``, the time in the hooks is marked."""
    if kind not in ("cls", "received"):
        raise ValueError(f"score kind must be 'cls' or 'received', got {kind!r}")
    score = cls_rows if kind == "cls" else received_rows
    rows: dict[str, torch.Tensor] = {}
    keys: dict[str, torch.Tensor] = {}
    wanted: dict[int, tuple[list[str], list[str]]] = {}
    for role, layer in roles.items():
        wanted.setdefault(layer, ([], []))[0].append(role)
    for role, layer in key_roles.items():
        wanted.setdefault(layer, ([], []))[1].append(role)
    handles = []

    def hook(attn, row_roles, key_roles_here):
        def on_qkv(_module, _inputs, output):
            qkv = output[0] if isinstance(output, tuple) else output  # (B, N, 3 * H_local * D)
            start = clock.mark() if clock is not None and clock.current is not None else None
            if row_roles:
                row = score(qkv, attn.num_heads_per_partition)
                if attn.tp_size > 1:  # heads are split over tensor-parallel ranks: add up their rows
                    from vllm.distributed import tensor_model_parallel_all_reduce

                    row = tensor_model_parallel_all_reduce(row)
                for role in row_roles:
                    rows[role] = row
            if key_roles_here:
                width = qkv.shape[-1] // 3
                for role in key_roles_here:
                    keys[role] = qkv[..., width : 2 * width].detach()
            if start is not None:
                clock.current["cls"].append((start, clock.mark()))

        return on_qkv

    try:
        for layer, (row_roles, key_roles_here) in wanted.items():
            attn = attns[layer]
            if key_roles_here and attn.tp_size > 1:
                raise NotImplementedError("merging methods need all heads' keys; run the vision tower unsharded")
            handles.append(attn.qkv_proj.register_forward_hook(hook(attn, row_roles, key_roles_here)))
        yield rows, keys
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------- the model mixin


@lru_cache(maxsize=512)
def _oracle_keep(layout: Layout, count: int) -> tuple[torch.Tensor, list[int]]:
    """Bool ``(P, T)``: the first ``count`` patches of the pack order, and the per-partition counts."""
    keep = torch.zeros(layout.num_partitions * layout.tokens, dtype=torch.bool)
    keep[layout.pack_order(False)[:count]] = True
    keep = keep.view(layout.num_partitions, layout.tokens)
    return keep, keep.sum(dim=1).tolist()


class _HiredModelMixin:
    """Encoder → [CLS] rows → selection → pack → projector, for ``spec`` (``None``: the parent's path)."""

    _family: str

    def _hired_init(self) -> None:
        self.hired_spec = spec_from_config(self.config, self._family)
        self._hired_last: tuple[list[Layout], torch.Tensor, list[list[int]]] | None = None
        self._hired_clock: StageClock | None = None
        self._hired_clock_handles: list = []
        self._hired_attns: nn.ModuleList | None = None
        if self.hired_spec is not None:
            attns = _attention_modules(self.vision_tower)  # fail at start-up on an unexpected tower
            if self.hired_spec.key_roles and attns[0].tp_size > 1:
                raise ValueError(
                    f"hf_overrides['hired']: {self.hired_spec.method.name} merges by keys of all heads, which "
                    "tensor parallelism splits over ranks; use a selection-only method (hired, cls_topk, spatial, "
                    "random) or tensor_parallel_size=1"
                )
            self._hired_attns = attns

    # ----------------------------------------------------------------------------------- stage clock

    def hired_timing(self, on: bool = True) -> None:
        """Switch the per-pass stage clock on (and clear it) or off. Works with and without ``hired``."""
        for handle in self._hired_clock_handles:
            handle.remove()
        self._hired_clock_handles = []
        self._hired_clock = None
        if not on:
            return
        clock = StageClock(next(self.vision_tower.parameters()).device)

        def marker(name):
            return lambda *_args: clock.at(name)

        for module, stage in ((self.vision_tower, "vision"), (self.multi_modal_projector, "projector")):
            self._hired_clock_handles.append(module.register_forward_pre_hook(marker(f"{stage}_start")))
            self._hired_clock_handles.append(module.register_forward_hook(marker(f"{stage}_end")))
        self._hired_clock = clock

    def hired_take_timings(self) -> list[dict]:
        """Stage seconds of every encoder pass since the last call (see :meth:`StageClock.take`); empty
        when the clock is off."""
        return [] if self._hired_clock is None else self._hired_clock.take()

    def _process_image_input(self, image_input):
        clock = self._hired_clock
        if clock is None:
            return self._hired_process_image_input(image_input)
        clock.begin()
        out = self._hired_process_image_input(image_input)
        clock.end(len(out))
        return out

    # ---------------------------------------------------------------------------------- the hired path

    def _hired_features(self, pixel_values: torch.Tensor, layouts: list[Layout]) -> list[torch.Tensor]:
        """``pixel_values`` ``(sum P, C, H, W)`` → one ``(tokens_i, D)`` tensor per image."""
        spec = self.hired_spec
        tokens = layouts[0].tokens
        if spec.oracle:
            feats = self._image_pixels_to_features(self.vision_tower, pixel_values)
            parts = [_oracle_keep(lay, spec.method.count(lay)) for lay in layouts]
            selection = Selection(keep=torch.cat([k for k, _ in parts]).to(feats.device), budgets=[b for _, b in parts])
        else:
            with record(self._hired_attns, spec.roles, spec.key_roles, self._hired_clock, spec.score_kind) as (
                rows,
                keys,
            ):
                feats = self._image_pixels_to_features(self.vision_tower, pixel_values)  # (sum P, T, Dv)
            scores = {role: row[:, -tokens:] for role, row in rows.items()}
            extra = feature_inputs(spec.method, feats, self.multi_modal_projector)
            if spec.key_roles:
                extra["keys"] = {r: k[:, -tokens:] for r, k in keys.items()}
            selection = spec.method.select(layouts, scores, spec.info, **extra)
        if feats.shape[1] != tokens:
            raise ValueError(f"the vision tower gave {feats.shape[1]} patch tokens per partition, expected {tokens}")
        # kept on the device: copying it to the host here would wait for the selection on every pass
        self._hired_last = (layouts, selection.keep.detach(), selection.budgets)
        packed = pack_features(spec.method, layouts, selection, feats, spec.newline)
        embeds = self.multi_modal_projector(packed.features)  # (L, D)
        if keeps_newline(spec.method, spec.newline):
            newline = self.image_newline.to(embeds.dtype)
            embeds = torch.where(packed.is_newline.to(embeds.device)[:, None], newline, embeds)
        return list(embeds.split(packed.lengths))

    def _hired_anyres_features(self, image_input) -> list[torch.Tensor]:
        """LLaVA-NeXT / OneVision pixel input (``pixel_values`` ``(B, P_max, C, H, W)`` or a list of
        ``(P_i, C, H, W)``, ``image_sizes`` ``(B, 2)``) → one ``(tokens_i, D)`` tensor per image."""
        pixel_values = image_input["pixel_values"]
        image_sizes = image_input.get("image_sizes")
        if image_sizes is None:
            raise ValueError(f"{self.hired_spec.family.title} with hired needs image_sizes next to pixel_values")
        # one device-to-host read for the whole batch (the sizes decide the layouts)
        sizes = image_sizes.tolist() if hasattr(image_sizes, "tolist") else list(image_sizes)
        layouts = [self.hired_spec.layout(h, w) for h, w in sizes]
        if len(pixel_values) != len(layouts):
            raise ValueError(f"got pixel values for {len(pixel_values)} images but {len(layouts)} image sizes")
        # (P_i, C, H, W) per image; a batched tensor may be padded along P
        crops = (
            [pv.shape[0] for pv in pixel_values]
            if not isinstance(pixel_values, torch.Tensor)
            else ([pixel_values.shape[1]] * pixel_values.shape[0])
        )
        for i, (n, lay) in enumerate(zip(crops, layouts)):
            if n < lay.num_partitions:
                raise ValueError(
                    f"image {i} of size {tuple(lay.image_size)} has {n} crops, its layout needs {lay.num_partitions}"
                )
        if isinstance(pixel_values, torch.Tensor) and all(n == lay.num_partitions for n, lay in zip(crops, layouts)):
            stacked = pixel_values.flatten(0, 1)  # no padding: a view, as stock vLLM does
        else:
            stacked = torch.cat([pv[: lay.num_partitions] for pv, lay in zip(pixel_values, layouts)])
        return self._hired_features(stacked, layouts)

    def hired_last_selection(self) -> list[ImageSelection]:
        """What the last encoder pass kept, one entry per image (empty before any image or when off)."""
        if self.hired_spec is None or self._hired_last is None:
            return []
        layouts, keep, budgets = self._hired_last
        keep = keep.cpu()
        spec = self.hired_spec
        out, start = [], 0
        for layout, image_budgets in zip(layouts, budgets):
            parts = [
                PartitionSelection(
                    kept=torch.nonzero(keep[start + p]).flatten().tolist(),
                    budget=image_budgets[p],
                    grid=(layout.side, layout.side),
                    valid=layout.valid_counts[p],
                )
                for p in range(layout.num_partitions)
            ]
            out.append(
                ImageSelection(
                    image_size=layout.image_size,
                    grid=layout.grid,
                    partitions=parts,
                    num_tokens=spec.num_tokens(*layout.image_size),
                    num_tokens_stock=spec.stock_tokens(layout),
                )
            )
            start += layout.num_partitions
        return out


# ------------------------------------------------------------------------------------------ LLaVA-NeXT


@MULTIMODAL_REGISTRY.register_processor(
    LlavaNextMultiModalProcessor,
    info=HiredLlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class HiredLlavaNextForConditionalGeneration(_HiredModelMixin, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT; with ``hf_overrides={"hired": {...}}`` it drops visual tokens before the LLM."""

    _family = "llava_next"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def _hired_process_image_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return LlavaNextForConditionalGeneration._process_image_input(self, image_input)
        return self._hired_anyres_features(image_input)


# ------------------------------------------------------------------------------------------- LLaVA-1.5


def _llava_info(ctx):
    from transformers import CLIPVisionConfig, LlavaConfig

    if isinstance(ctx.get_hf_config(LlavaConfig).vision_config, CLIPVisionConfig):
        return HiredLlavaProcessingInfo(ctx)
    return _STOCK_LLAVA_FACTORIES.info(ctx)  # Pixtral and other towers: vLLM's own


def _llava_processor(info, dummy_inputs):
    if isinstance(info, HiredLlavaProcessingInfo):
        return LlavaMultiModalProcessor(info, dummy_inputs)
    return _STOCK_LLAVA_FACTORIES.processor(info, dummy_inputs)


_STOCK_LLAVA_FACTORIES = LlavaForConditionalGeneration._processor_factory  # vLLM's own (LLaVA and Pixtral-HF)


@MULTIMODAL_REGISTRY.register_processor(_llava_processor, info=_llava_info, dummy_inputs=LlavaDummyInputsBuilder)
class HiredLlavaForConditionalGeneration(_HiredModelMixin, LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5; with ``hf_overrides={"hired": {...}}`` it drops visual tokens before the LLM."""

    _family = "llava"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def _hired_process_image_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return LlavaForConditionalGeneration._process_image_input(self, image_input)
        pixel_values = image_input["pixel_values"]  # (B, C, H, W)
        layouts = [self.hired_spec.layout(0, 0)] * pixel_values.shape[0]
        return self._hired_features(pixel_values, layouts)


# ------------------------------------------------------------------------------------- LLaVA-OneVision


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionMultiModalProcessor,
    info=HiredLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class HiredLlavaOnevisionForConditionalGeneration(_HiredModelMixin, LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision; with ``hf_overrides={"hired": {...}}`` it drops visual tokens of images
    before the LLM (videos: vLLM's own path)."""

    _family = "onevision"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def _hired_process_image_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return LlavaOnevisionForConditionalGeneration._process_image_input(self, image_input)
        return self._hired_anyres_features(image_input)
