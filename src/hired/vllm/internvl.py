"""vLLM's InternVL (Hugging Face format: ``InternVLForConditionalGeneration``, which vLLM serves with its
``InternS1ForConditionalGeneration``) with HiRED: the processing info and the prompt replacement count the
method's placeholders, the model runs the shared partition path (:mod:`hired.vllm.partitions`). Videos take
vLLM's own path, untouched.

What the family (:class:`hired.families.internvl.InternVL`) says and this module asks of it:

* **Which tiles are whose.** vLLM hands the model a flat batch of tiles and each image's tile count, not
  its grid. With ``hired`` the multimodal processor adds the family's image inputs
  (:meth:`~hired.families.base.Family.processor_inputs`: each image's ``(height, width, rows, cols)`` under
  the request's ``min_patches`` / ``max_patches``) to every image's kwargs, kept on the host; the model
  turns them into the images' layouts and puts each thumbnail first
  (:meth:`~hired.families.base.Family.batch_layouts`).
* **Counts.** An image's placeholders are the method's count of its layout in the language model's tokens,
  wrapped as the stock processor wraps an image (:meth:`~hired.families.base.Family.placeholder`:
  ``<img>``, the kept tokens' ``<IMG_CONTEXT>``, ``</img>``).
* **Scores and features.** The score hooks read the q and k each InternViT layer hands its attention kernel
  (after the optional qk norm); the patches' features, scores and keys become the language model's tokens
  through the model's own pixel shuffle (:meth:`~hired.families.base.Family.merge_patches`); the kept
  tokens are packed in the stock order (tiles, then the thumbnail) and projected.

vLLM's InternVL reads the tower's last layer whatever ``vision_feature_layer`` says; with ``hired`` a config
whose ``vision_feature_layer`` names another layer is refused (the stock model would not read it).
Precomputed ``image_embeds`` keep their stock count and pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails, cached_encode

from hired.core.grid import Geometry, Layout
from hired.families import get_family
from hired.vllm.common import RequestProcessor, SpecCache
from hired.vllm.config import Spec, override_error
from hired.vllm.partitions import PartitionModelMixin

FAMILY = "internvl"


@lru_cache(maxsize=1024)
def _layout(height: int, width: int, rows: int, cols: int, geometry: Geometry) -> Layout:
    """One layout per image size and tile grid (what a layout caches is built once)."""
    return get_family(FAMILY).tile_layout((height, width), (rows, cols), geometry)


def image_layout(spec: Spec, sizes) -> Layout:
    """The layout of one image of ``sizes = (height, width, rows, cols)`` (the processor's image input)."""
    h, w, r, c = (int(v) for v in (sizes.tolist() if hasattr(sizes, "tolist") else sizes))
    return _layout(h, w, r, c, spec.geometry)


def _settings(ctx, kwargs: Mapping[str, object]) -> dict:
    """The request's image settings: vLLM's merged ``mm_processor_kwargs``, flat or under ``images_kwargs``."""
    merged = dict(ctx.get_merged_mm_kwargs(kwargs))
    scoped = merged.get("images_kwargs")
    return {**merged, **scoped} if isinstance(scoped, Mapping) else merged


class HiredInternVLProcessingInfo(SpecCache, InternS1ProcessingInfo):
    hired_family = FAMILY

    def get_num_image_tokens(self, *, image_width: int, image_height: int, processor, mm_kwargs) -> int:
        spec = self.hired_spec()
        if spec is None:
            return super().get_num_image_tokens(
                image_width=image_width, image_height=image_height, processor=processor, mm_kwargs=mm_kwargs
            )
        family = spec.family
        tile, low, high, crop = family.tile_settings(processor, _settings(self.ctx, mm_kwargs))
        rows, cols = family.tile_grid((image_height, image_width), tile, low, high, crop)
        return spec.token_count(_layout(image_height, image_width, rows, cols, spec.geometry))


class HiredInternVLMultiModalProcessor(RequestProcessor, InternS1MultiModalProcessor):
    """With ``hired``: every image's kwargs carry the family's image inputs, and its placeholder run holds
    the method's count."""

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        spec = self.info.hired_spec()
        images = mm_items.get("image")
        if spec is None or not isinstance(images, ImageProcessorItems) or len(images) == 0:
            return out
        processor = self.info.get_hf_processor(**hf_kwargs)
        out.update(spec.family.processor_inputs(processor, images.get_all(), _settings(self.info.ctx, hf_kwargs)))
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        spec = self.info.hired_spec()
        if spec is not None:
            for name in spec.family.image_kwargs():
                if name in hf_inputs:
                    fields[name] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        spec = self.info.hired_spec()
        if spec is None:
            return updates
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        tokenizer = self.info.get_tokenizer()
        (name,) = spec.family.image_kwargs()

        def replacement(stock, item_idx: int):
            item = out_mm_kwargs["image"][item_idx]
            if name not in item:  # image embeddings: their stock count
                return stock(item_idx)
            layout = image_layout(spec, item[name].data)
            tiles = int(item["image_num_patches"].data)
            if tiles != layout.num_partitions:
                raise ValueError(
                    f"the image processor cut image {item_idx} into {tiles} tiles, but its "
                    f"{layout.grid[0]}x{layout.grid[1]} grid implies {layout.num_partitions}"
                )
            text = spec.family.placeholder(processor, spec.token_count(layout))
            ids = cached_encode(tokenizer, text, add_special_tokens=False)
            return PromptUpdateDetails.select_token_id(ids, processor.image_token_id)

        def hired_update(update):
            def replace(item_idx: int, stock=update.replacement):
                return replacement(stock, item_idx)

            return PromptReplacement(modality="image", target=update.target, replacement=replace)

        return [hired_update(u) if u.modality == "image" else u for u in updates]


@MULTIMODAL_REGISTRY.register_processor(
    HiredInternVLMultiModalProcessor,
    info=HiredInternVLProcessingInfo,
    dummy_inputs=InternS1DummyInputsBuilder,
)
class HiredInternVLForConditionalGeneration(PartitionModelMixin, InternS1ForConditionalGeneration):
    """vLLM's InternVL (HF format); with ``hf_overrides={"hired": {...}}`` it drops visual tokens of images
    before the LLM (videos: vLLM's own path)."""

    hired_family = FAMILY

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()
        spec = self.hired_spec
        if spec is not None and spec.hidden_layers != (spec.info.num_layers,):
            raise override_error(
                f"vLLM's InternVL reads the vision tower's last layer whatever vision_feature_layer says; this "
                f"config names {self.config.vision_feature_layer}, which the stock model would not read: use "
                "vision_feature_layer=-1 or the transformers adapter"
            )

    def _image_pixels_to_features(self, tower, pixel_values):
        """The tiles' patch features ``(tiles, patches, Dv)``: the tower's output without [CLS], as vLLM's
        ``extract_feature`` reads it before the pixel shuffle."""
        return tower(pixel_values=pixel_values)[:, self.hired_spec.family.prefix_tokens(self.config) :]

    def _parse_and_validate_image_input(self, **kwargs):
        image_input = super()._parse_and_validate_image_input(**kwargs)
        if self.hired_spec is not None and image_input is not None and image_input["type"] == "pixel_values":
            for name in self.hired_spec.family.image_kwargs():
                setattr(image_input, name, kwargs.get(name))
        return image_input

    def _process_vision_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return InternS1ForConditionalGeneration._process_vision_input(self, image_input)
        return self.hired_timed(self._hired_process_image_input, image_input)

    def _hired_process_image_input(self, image_input):
        """Flat tiles ``(sum P, C, H, W)`` and each image's ``(height, width, rows, cols)`` → one
        ``(tokens_i, D)`` tensor per image."""
        (name,) = self.hired_spec.family.image_kwargs()
        sizes = image_input.get(name)
        if sizes is None:
            raise ValueError("InternVL with hired needs each image's tile grid beside pixel_values")
        spec = self.hired_spec
        layouts, pixel_values = spec.family.batch_layouts(spec.geometry, image_input["pixel_values"], sizes, {})
        return self._hired_features(pixel_values, layouts)
