"""The vLLM plugin's part shared by the families whose images are partitions of patches (LLaVA-NeXT,
LLaVA-1.5, LLaVA-OneVision, InternVL: :mod:`hired.vllm.llava_next`, :mod:`hired.vllm.llava`,
:mod:`hired.vllm.onevision`, :mod:`hired.vllm.internvl`, thin subclasses of vLLM's own classes). What a
family does between the tower's patches and the language model's tokens (InternVL's pixel shuffle) is
the family's :meth:`~hired.families.base.Family.merge_patches`, applied to features, scores and keys alike.

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
stays on the device until :meth:`RequestSpecs.hired_last_selection` asks for it. ``hired_timing``
switches on a per-pass stage clock (vision tower, [CLS] rows inside it, selection, projector) that
``hired bench-vllm`` reads; off, it costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hired.core.grid import Layout
from hired.engine import StageClock, oracle_keep, pack_and_project, select_partitions
from hired.engine.scores import LayerScores, Recording
from hired.methods.base import Selection
from hired.vllm.common import RequestSpecs, SpecCache, StageTiming
from hired.vllm.config import Spec, spec_from_config


class CountMixin(SpecCache):
    """Placeholder count from the core when ``hired`` is configured, vLLM's own otherwise."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        spec = self.hired_spec()
        if spec is None:
            return super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return spec.num_tokens(image_height, image_width)


def attention_modules(tower: nn.Module) -> nn.ModuleList:
    """The attention module of every encoder layer vLLM built: ``self_attn`` of ``vision_model.encoder.layers``
    in vLLM's CLIPVisionModel and SiglipVisionModel (a fused ``qkv_proj``, ``num_heads_per_partition``,
    ``tp_size``), ``attention`` of ``encoder.layer`` in its InternViT (``InternS1VisionModel``: q, k and v
    projections handed, normalized, to an ``MMEncoderAttention`` ``attn``; ``num_heads``, never sharded)."""
    try:
        if hasattr(tower, "vision_model"):
            attns = nn.ModuleList([layer.self_attn for layer in tower.vision_model.encoder.layers])
            for attn in attns:
                attn.qkv_proj, attn.num_heads_per_partition, attn.tp_size  # noqa: B018 - what the hooks read
        else:
            attns = nn.ModuleList([layer.attention for layer in tower.encoder.layer])
            for attn in attns:
                attn.attn, attn.num_heads  # noqa: B018 - what the hooks read
    except AttributeError:
        raise TypeError(
            "hired expects vLLM's CLIPVisionModel, SiglipVisionModel or InternS1VisionModel as vision tower, got "
            f"{type(tower).__name__}"
        ) from None
    return attns


def heads_of(attn: nn.Module) -> int:
    """Attention heads of one layer of :func:`attention_modules` on this rank."""
    return attn.num_heads_per_partition if hasattr(attn, "qkv_proj") else attn.num_heads


def tp_size_of(attn: nn.Module) -> int:
    """Tensor-parallel ranks one layer of :func:`attention_modules` splits its heads over."""
    return getattr(attn, "tp_size", 1)


def fused_qk(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Strided views ``(q, k)``, each ``(..., H * D)``, of a fused ``(..., 3 * H * D)`` ``qkv_proj`` output
    (q, k, v side by side, as vLLM's ``QKVParallelLinear`` gives them): no copy of the key matrix."""
    width = qkv.shape[-1] // 3
    return qkv[..., :width], qkv[..., width : 2 * width]


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
    ``keys[role]`` with ``(B, N, H * D)`` keys, from the hooked layers' ``qkv_proj`` output, or the q and k
    handed to their attention kernel (``attns``: :func:`attention_modules`; the scores:
    :class:`hired.engine.scores.LayerScores`). With a ``clock``, the time in the hooks is marked."""
    scores = LayerScores(roles, key_roles, heads_of(attns[0]), kind)
    rec = Recording()
    handles = []

    def hook(attn, layer: int):
        def on_qk(q: torch.Tensor, k: torch.Tensor):  # each (B, N, H_local * D)
            start = clock.mark() if clock is not None and clock.current is not None else None
            if layer in scores.row_roles:
                row = scores.score(q[:, 0] if scores.kind == "cls" else q, k)
                if tp_size_of(attn) > 1:  # heads are split over tensor-parallel ranks: add up their rows
                    from vllm.distributed import tensor_model_parallel_all_reduce

                    row = tensor_model_parallel_all_reduce(row)
                scores.put_rows(rec, layer, row)
            scores.put_keys(rec, layer, k.detach())
            if start is not None:
                clock.current["cls"].append((start, clock.mark()))

        return on_qk

    def on_qkv(on_qk):
        def fused(_module, _inputs, output):
            on_qk(*fused_qk(output[0] if isinstance(output, tuple) else output))  # (B, N, 3 * H_local * D)

        return fused

    def on_kernel(on_qk):
        def handed(_module, args):
            on_qk(args[0], args[1])  # the (query, key, value) the layer hands its attention kernel

        return handed

    try:
        for layer in scores.layers:
            attn = attns[layer]
            if layer in scores.key_roles and tp_size_of(attn) > 1:
                raise NotImplementedError("merging methods need all heads' keys; run the vision tower unsharded")
            if hasattr(attn, "qkv_proj"):
                handles.append(attn.qkv_proj.register_forward_hook(on_qkv(hook(attn, layer))))
            else:
                handles.append(attn.attn.register_forward_pre_hook(on_kernel(hook(attn, layer))))
        yield rec.rows, rec.keys
    finally:
        for h in handles:
            h.remove()


class PartitionModelMixin(RequestSpecs, StageTiming):
    """Encoder → [CLS] rows → selection → pack → projector, for ``spec`` (``None``: the parent's path)."""

    def _hired_init(self) -> None:
        self.hired_spec = spec_from_config(self.config, self.hired_family)
        self._hired_last: list[tuple[Spec, list[int], list[Layout], list[torch.Tensor], list[list[int]]]] | None = None
        self._hired_attns: nn.ModuleList | None = None
        if self.hired_spec is not None:
            attns = attention_modules(self.vision_tower)  # fail at start-up on an unexpected tower
            if self.hired_spec.key_roles and tp_size_of(attns[0]) > 1:
                raise ValueError(
                    f"hf_overrides['hired']: {self.hired_spec.method.name} merges by keys of all heads, which "
                    "tensor parallelism splits over ranks; use a selection-only method (hired, cls_topk, spatial, "
                    "random) or tensor_parallel_size=1"
                )
            self._hired_attns = attns

    def hired_stages(self) -> dict:
        return {"vision": self.vision_tower, "projector": self.multi_modal_projector}

    def _process_image_input(self, image_input):
        return self.hired_timed(self._hired_process_image_input, image_input)

    # ---------------------------------------------------------------------------------- the hired path

    def _hired_features(self, pixel_values: torch.Tensor, layouts: list[Layout]) -> list[torch.Tensor]:
        """``pixel_values`` ``(sum P, C, H, W)`` → one ``(tokens_i, D)`` tensor per image. Images of requests
        with options of their own (:meth:`hired_pass_specs`) are encoded and selected with those, one group of
        images per distinct options (the tower runs once per group)."""
        rows = [layout.num_partitions for layout in layouts]
        return self.hired_grouped(pixel_values, rows, layouts, self._hired_group)

    def _hired_group(self, spec: Spec, pixel_values: torch.Tensor, layouts: list[Layout]) -> tuple[list, tuple]:
        """One group's ``(embeds, (layouts, keeps, budgets))``: the tower with the score hooks of ``spec``,
        its selection, packing and projection."""
        tokens = layouts[0].tokens
        if spec.oracle:
            feats = self._image_pixels_to_features(self.vision_tower, pixel_values)
            feats, _, _ = spec.family.merge_patches(self, self.config, feats, {}, {})
            parts = [oracle_keep(lay, spec.method.count(lay)) for lay in layouts]
            selection = Selection(keep=torch.cat([k for k, _ in parts]).to(feats.device), budgets=[b for _, b in parts])
        else:
            with record(self._hired_attns, spec.roles, spec.key_roles, self._hired_clock, spec.score_kind) as (
                rows,
                keys,
            ):
                feats = self._image_pixels_to_features(self.vision_tower, pixel_values)  # (sum P, patches, Dv)
            patches = feats.shape[1]
            scores = {role: row[:, -patches:] for role, row in rows.items()}
            keys = {r: k[:, -patches:] for r, k in keys.items()}
            # patches → the language model's tokens (InternVL's pixel shuffle; most families: unchanged)
            feats, scores, keys = spec.family.merge_patches(self, self.config, feats, scores, keys)
            selection = select_partitions(spec, layouts, scores, keys, feats, self.multi_modal_projector)
        if feats.shape[1] != tokens:
            raise ValueError(f"the vision tower gave {feats.shape[1]} patch tokens per partition, expected {tokens}")
        newline = getattr(self, "image_newline", None)
        embeds, _ = pack_and_project(spec, layouts, selection, feats, self.multi_modal_projector, newline)
        # kept on the device (views per image): copying it to the host here would wait for the selection
        keeps = selection.keep.detach().split([layout.num_partitions for layout in layouts])
        return embeds, (layouts, keeps, selection.budgets)

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
