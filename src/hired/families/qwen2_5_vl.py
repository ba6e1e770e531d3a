"""Qwen2.5-VL: a native-resolution ViT without [CLS] whose merger turns each 2x2 group of patches into one
visual token; positions are 3-D M-RoPE ids.

An image becomes one partition: its grid of ``(grid_h / m) x (grid_w / m)`` merged tokens (``m`` the
spatial merge size, 2), in raster order, as the language model sees them. There are no sub-images, so a
method's budget is ``floor(r * N)`` of the N merged tokens and HiRED's budget distribution has nothing to
split: all of it goes to the one partition, and HiRED keeps the top tokens by its selection score (one
global top-k, which gives the content's regions their share by construction). Scores are the attention
each patch receives (no [CLS] token), summed over each merged token's ``m x m`` patches. The kept tokens
keep their stock (t, h, w) M-RoPE ids, always: there is no packed alternative for 3-D ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hired.core.grid import Geometry, Layout
from hired.families.base import Family
from hired.methods.base import ModelInfo, fixed_form

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"  # the same strings in every Qwen2/2.5-VL tokenizer


class Qwen25VL(Family):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    mrope = True  # the language model takes 3-D (t, h, w) position ids
    merged_grid = True  # one grid of merged tokens per image
    torchvision_extra = "qwen"  # its video processor imports torchvision
    tower_attentions = False  # its blocks return no attention maps

    def check_config(self, config, has_cls: bool) -> None:
        vc = config.vision_config
        if int(vc.spatial_merge_size) < 1:
            raise ValueError(f"spatial_merge_size must be positive, got {vc.spatial_merge_size}")

    def prefix_tokens(self, config) -> int:
        return 0

    def model_info(self, config, has_cls: bool) -> tuple[ModelInfo, list[int]]:
        vc = config.vision_config
        depth = int(vc.depth)  # the merger reads the last block's output
        return ModelInfo(
            num_layers=depth, num_heads=int(vc.num_heads), feature_layer=depth - 1, has_cls=False, subimages=False
        ), [depth]

    def tower(self, inner):
        return inner.visual

    def stages(self, inner) -> tuple:
        """The ViT with its merger inside (the merger is the projector: there is no stage between them)."""
        return inner.visual, None, inner.language_model

    def config_has_cls(self, config) -> bool:
        """The Qwen ViT has no [CLS] token."""
        return False

    def check_method(self, method) -> None:
        """``space='vision'`` and adaptive counts are not served yet."""
        name = type(method).__name__
        if method.feature_space() == "vision":
            raise ValueError(
                f"{name}(space='vision'): {self.title}'s tower ends in its patch merger, whose output is the "
                "language model's input; use space='projected'"
            )
        if method.adaptive:
            raise ValueError(
                f"{name} keeps a content-dependent number of tokens as configured; on {self.title} only "
                f"fixed-budget methods run yet: e.g. {fixed_form(method)}"
            )

    def image_placeholder(self, processor) -> str:
        """Qwen's prompts wrap each image's placeholder in ``<|vision_start|>`` / ``<|vision_end|>``."""
        return f"{VISION_START}{processor.image_token}{VISION_END}"

    def geometry(self, config) -> Geometry:
        """``crop_size``: a merged token's side in pixels (patch x merge, 28); ``patch_size``: the ViT's patch."""
        vc = config.vision_config
        return Geometry(crop_size=int(vc.patch_size) * int(vc.spatial_merge_size), patch_size=int(vc.patch_size))

    def grid_layout(self, geometry: Geometry, grid_thw: Sequence[int]) -> Layout:
        """The layout of one image of ``grid_thw = (t, h, w)`` patches (the processor's ``image_grid_thw``)."""
        merge, patch = geometry.crop_size // geometry.patch_size, geometry.patch_size
        t, h, w = (int(v) for v in grid_thw)
        if t != 1:
            raise ValueError(f"an image has one temporal patch, got image_grid_thw {tuple(grid_thw)}")
        if h <= 0 or w <= 0 or h % merge or w % merge:
            raise ValueError(f"image_grid_thw {tuple(grid_thw)} is not a positive multiple of the merge size {merge}")
        return Layout(image_size=(h * patch, w * patch), side=merge, shape=(h // merge, w // merge))

    def layout(self, image_size, geometry: Geometry, *, single: bool = False) -> Layout:
        raise ValueError(f"a {self.title} layout comes from the processor's image_grid_thw (Family.grid_layout)")

    def image_kwargs(self) -> tuple[str, ...]:
        return ("image_grid_thw",)

    def position_kwargs(self) -> tuple[str, ...]:
        return ("image_grid_thw",)

    def processor_layout(self, geometry: Geometry, image_inputs: dict, image_idx: int) -> Layout:
        grid = image_inputs["image_grid_thw"][image_idx]
        return self.grid_layout(geometry, grid.tolist() if hasattr(grid, "tolist") else list(grid))

    def batch_layouts(self, geometry: Geometry, pixel_values, image_grid_thw, extra: dict[str, Any]):
        if image_grid_thw is None:
            raise ValueError(f"{self.title} needs image_grid_thw with pixel_values")
        grids = image_grid_thw.tolist() if hasattr(image_grid_thw, "tolist") else [list(g) for g in image_grid_thw]
        layouts = [self.grid_layout(geometry, g) for g in grids]
        patches = sum(int(g[0]) * int(g[1]) * int(g[2]) for g in grids)
        if pixel_values.dim() != 2 or pixel_values.shape[0] != patches:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)}: image_grid_thw implies {patches} patches"
            )
        return layouts, pixel_values

    def model_classes(self):
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

        return {Qwen2_5_VLForConditionalGeneration: "model", Qwen2_5_VLModel: None}

    def processor_class(self):
        from transformers import Qwen2_5_VLProcessor

        return Qwen2_5_VLProcessor

    def check_processor(self, processor, geometry: Geometry, config) -> None:
        expected = self.processor_class()
        if not isinstance(processor, expected):
            raise TypeError(f"a {self.title} model needs a {expected.__name__}, got {type(processor).__name__}")
        vc = config.vision_config
        ip = processor.image_processor
        for name, value in (
            ("patch_size", vc.patch_size),
            ("merge_size", vc.spatial_merge_size),
            ("temporal_patch_size", vc.temporal_patch_size),
        ):
            if int(getattr(ip, name)) != int(value):
                raise ValueError(f"processor {name} {getattr(ip, name)} differs from the model's {value}")
