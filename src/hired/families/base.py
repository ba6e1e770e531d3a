"""What an adapter needs to know about one model family, in one place (no runtime, no weights).

A :class:`Family` says how an image becomes partitions (:meth:`Family.geometry`, :meth:`Family.layouts`),
which tokens of the vision tower's output are patches (:meth:`Family.prefix_tokens`), whether the
language model sees image-newline tokens (:attr:`Family.newline`), and which configurations are out of
reach (:meth:`Family.check_config`). The transformers adapter and the vLLM plugin both ask it, so the
placeholder count, the packing and the stock positions agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from hired.core.grid import Geometry, Layout, layout_for
from hired.methods.base import ModelInfo

_CLS_BY_TOWER = {"clip_vision_model": True, "siglip_vision_model": False}
"""Vision towers known by their config's ``model_type`` → whether they prepend a [CLS] token."""


@dataclass(frozen=True)
class StockSplit:
    """A batch given to ``get_image_features`` that holds, beside the images' partitions, inputs the model
    gets stock (InternVL's video frames, which share ``pixel_values`` with the images' tiles).

    ``images``: the images' partitions ``(sum P, C, H, W)``, in order (possibly none); ``image_sizes``: the
    images' own image inputs (``None`` without images); ``stock``: the stock inputs ``(N, C, H, W)``, in
    order; ``order``: the batch in its given order, one entry per run: ``None`` for the next image, ``n``
    for the next ``n`` stock inputs."""

    images: Any
    image_sizes: Any
    stock: Any
    order: tuple[int | None, ...]

    @property
    def num_images(self) -> int:
        return sum(unit is None for unit in self.order)


class Family:
    """One model family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    newline: ClassVar[bool] = False  # image-newline tokens (LLaVA-NeXT, OneVision)
    anyres: ClassVar[bool] = False  # images are cut into a full image plus a sub-image grid
    title: ClassVar[str]  # for messages, e.g. "LLaVA-NeXT"

    # ------------------------------------------------------------------------------------ config

    def check_config(self, config, has_cls: bool) -> None:
        """Raise ``ValueError`` naming the problem if hired cannot serve this configuration.

        ``has_cls``: whether the vision tower prepends a [CLS] token.
        """
        strategy = config.vision_feature_select_strategy
        if strategy != "default":
            raise ValueError(
                f"{self.title} needs vision_feature_select_strategy='default' (a [CLS] token that is dropped "
                f"from the features); this model uses {strategy!r}"
            )
        if not has_cls:
            raise ValueError(
                f"{self.title} with vision_feature_select_strategy='default' drops the tower's first token as "
                "[CLS], but this vision tower has no [CLS] token"
            )

    mrope: ClassVar[bool] = False  # 3-D M-RoPE position ids (Qwen2.5-VL)
    merged_grid: ClassVar[bool] = False  # an image is one grid of merged tokens (no partitions, no newlines)
    nests_images: ClassVar[bool] = False  # the processor takes one image list per text in multi-image prompts
    videos_via_image_features: ClassVar[bool] = False  # the model's get_video_features calls get_image_features
    torchvision_extra: ClassVar[str | None] = None  # hired's pip extra for a processor that imports torchvision
    tower_attentions: ClassVar[bool] = True  # the tower can return attention maps (the bench's reference path)
    joins_features: ClassVar[bool] = False  # the forward takes get_image_features' pooler_output as one tensor
    videos_in_pixel_values: ClassVar[bool] = False  # video frames share pixel_values with the images (InternVL)
    fills_canvas: ClassVar[bool] = False  # the processor stretches an image over its crops, no padding (InternVL)

    def tower(self, inner):
        """The vision tower module of the inner model."""
        return inner.vision_tower

    def config_has_cls(self, config) -> bool | None:
        """Whether the tower of ``config`` prepends a [CLS] token, read from the config alone (CLIP: yes,
        SigLIP: no); ``None`` for a tower hired does not know by its config (a runtime that cannot inspect
        the built tower refuses it)."""
        return _CLS_BY_TOWER.get(getattr(config.vision_config, "model_type", None))

    def stages(self, inner) -> tuple:
        """``(vision tower, projector or None, language model)`` modules of the inner model, whose forward
        calls mark the stages of a run (``hired bench``). ``None``: the tower projects itself."""
        return inner.vision_tower, inner.multi_modal_projector, inner.language_model

    def check_method(self, method) -> None:
        """Raise ``ValueError`` naming the problem if this family cannot run ``method`` (a method config)
        on any model; the transformers adapter and the vLLM plugin call it when a method is applied."""

    def image_placeholder(self, processor) -> str:
        """What a hand-written prompt puts for one image (the processor expands it into the features)."""
        return processor.image_token

    def model_info(self, config, has_cls: bool) -> tuple[ModelInfo, list[int]]:
        """What methods may know of the tower, and the indices into its ``hidden_states`` that form the
        features (``vision_feature_layer``; several are concatenated)."""
        vc = config.vision_config
        num_layers, num_heads = int(vc.num_hidden_layers), int(vc.num_attention_heads)
        layer = config.vision_feature_layer
        hidden = []
        for f in [layer] if isinstance(layer, int) else list(layer):
            idx = f + num_layers + 1 if f < 0 else f
            if not 1 <= idx <= num_layers:
                raise ValueError(
                    f"vision_feature_layer {f} does not name the output of one of the {num_layers} encoder layers"
                )
            hidden.append(idx)
        info = ModelInfo(
            num_layers=num_layers,
            num_heads=num_heads,
            feature_layer=max(hidden) - 1,
            has_cls=has_cls,
            subimages=self.anyres,
        )
        return info, hidden

    def position_kwargs(self) -> tuple[str, ...]:
        """Image inputs the language model's positions need; two-pass inputs keep them."""
        return ()

    def prefix_tokens(self, config) -> int:
        """Tokens before the patches in the tower's output that are not image features ([CLS])."""
        return 1 if config.vision_feature_select_strategy == "default" else 0

    def geometry(self, config) -> Geometry:
        vc = config.vision_config
        return Geometry(crop_size=int(vc.image_size), patch_size=int(vc.patch_size))

    # ------------------------------------------------------------------------------------ layouts

    def layout(self, image_size: tuple[int, int], geometry: Geometry, *, single: bool = False) -> Layout:
        """The layout of one image of ``image_size = (height, width)``; ``single``: encoded as one crop."""
        return layout_for(image_size, geometry, single=single or not self.anyres)

    def single_crops(self, num_images: int, batch_num_images: Sequence[int] | None) -> list[bool]:
        """Which images of a batch are encoded as one crop (family default: every one, or none when anyres)."""
        return [not self.anyres] * num_images

    def stock_tokens(self, layout: Layout) -> int:
        """Tokens the unmodified model gives an image of this layout."""
        return layout.stock_length(self.newline)

    # ------------------------------------------------------------------------------------ transformers

    def model_classes(self) -> dict[type, str | None]:
        """transformers classes → attribute holding the inner model (``None``: it is the inner model)."""
        raise NotImplementedError

    def processor_class(self) -> type:
        raise NotImplementedError

    def check_processor(self, processor, geometry: Geometry, config) -> None:
        """Raise if the processor would cut images differently from the model."""
        expected = self.processor_class()
        if not isinstance(processor, expected):
            raise TypeError(f"a {self.title} model needs a {expected.__name__}, got {type(processor).__name__}")
        strategy = getattr(processor, "vision_feature_select_strategy", None)
        if strategy is not None and strategy != config.vision_feature_select_strategy:
            raise ValueError(
                f"processor vision_feature_select_strategy={strategy!r} differs from the model's "
                f"{config.vision_feature_select_strategy!r}"
            )
        patch = getattr(processor, "patch_size", None)
        if patch is not None and int(patch) != geometry.patch_size:
            raise ValueError(f"processor patch_size {patch} differs from the model's {geometry.patch_size}")
        if self.anyres:
            pins = tuple(tuple(p) for p in processor.image_processor.image_grid_pinpoints)
            if pins != geometry.grid_pinpoints:
                raise ValueError("processor image_grid_pinpoints differ from the model config's image_grid_pinpoints")

    def image_kwargs(self) -> tuple[str, ...]:
        """Keyword arguments of ``get_image_features`` (besides ``pixel_values``) that carry image inputs."""
        return ("image_sizes",) if self.anyres else ()

    def carried_kwargs(self) -> tuple[str, ...]:
        """Image inputs the model's forward takes but does not hand to ``get_image_features`` (InternVL's
        ``image_sizes``): the runtime carries them from the forward to its vision step."""
        return ()

    def processor_inputs(self, processor, images, kwargs: dict) -> dict:
        """Image inputs the patched processor adds to the image processor's output, computed from the
        images and the call's image settings ``kwargs`` (InternVL: each image's size and tile grid)."""
        return {}

    def placeholder(self, processor, count: int) -> str:
        """The text the processor writes for one image that gives the language model ``count`` tokens."""
        return processor.image_token * count

    def video_inputs(self, processor, image_inputs: dict | None, video_inputs: dict, order: list[str]) -> dict:
        """Image inputs the patched processor adds to its output once a prompt batch holds videos, for a
        family whose video frames share ``pixel_values`` with the images (:attr:`videos_in_pixel_values`):
        ``image_inputs`` / ``video_inputs`` are the image and video processors' outputs (``image_inputs``
        with :meth:`processor_inputs`' additions; ``None`` without images), ``order`` the kind of each image
        and video in the batch's prompts (``"image"``, ``"video"``), in order."""
        return {}

    def stock_split(self, pixel_values, image_sizes) -> StockSplit | None:
        """The stock inputs (video frames) in a batch given to ``get_image_features``, marked in its image
        inputs by :meth:`video_inputs`; ``None`` when it holds images only."""
        return None

    def merge_patches(self, inner, config, feats, scores, keys):
        """The tower's patch features ``(P, T, Dv)``, scores ``role → (P, T)`` and keys ``role → (P, T, H * D)``
        → the same per language-model token (InternVL's pixel shuffle); most families: unchanged."""
        return feats, scores, keys

    def processor_layout(self, geometry: Geometry, image_inputs: dict, image_idx: int) -> Layout:
        """The layout of image ``image_idx`` of the processor's ``image_inputs`` (image sizes, pixel values)."""
        if not self.anyres:
            size = tuple(image_inputs["pixel_values"][image_idx].shape[-2:])
            return self.layout((int(size[0]), int(size[1])), geometry)
        crop = tuple(image_inputs["pixel_values"][0][0].shape[-2:])
        if crop != (geometry.crop_size, geometry.crop_size):
            raise ValueError(
                f"the processor produced {crop[0]}x{crop[1]} crops but the model expects "
                f"{geometry.crop_size}x{geometry.crop_size}"
            )
        size = image_inputs["image_sizes"][image_idx]
        size = size.tolist() if hasattr(size, "tolist") else list(size)
        flags = self.single_crops(len(image_inputs["image_sizes"]), image_inputs.get("batch_num_images"))
        return self.layout((int(size[0]), int(size[1])), geometry, single=flags[image_idx])

    def batch_layouts(self, geometry: Geometry, pixel_values, image_sizes, extra: dict[str, Any]):
        """Layouts of a batch given to ``get_image_features`` and the pixel values of all their partitions,
        ``(sum P, C, H, W)``. ``extra``: the call's other image arguments (e.g. ``batch_num_images``)."""
        import torch

        if not self.anyres:
            if pixel_values.dim() != 4:
                raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected (images, C, H, W)")
            h, w = pixel_values.shape[-2:]
            return [self.layout((int(h), int(w)), geometry)] * pixel_values.shape[0], pixel_values
        if image_sizes is None:
            raise ValueError(f"{self.title} needs image_sizes with pixel_values")
        sizes = image_sizes.tolist() if hasattr(image_sizes, "tolist") else list(image_sizes)
        flags = self.single_crops(len(sizes), extra.get("batch_num_images"))
        layouts = [self.layout((int(h), int(w)), geometry, single=s) for (h, w), s in zip(sizes, flags)]
        if pixel_values.dim() == 5:
            if pixel_values.shape[0] != len(layouts):
                raise ValueError(f"pixel_values hold {pixel_values.shape[0]} images, image_sizes {len(layouts)}")
            pixel_values = torch.cat([pv[: lay.num_partitions] for pv, lay in zip(pixel_values, layouts)])
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected 4 or 5 dimensions")
        expected = sum(lay.num_partitions for lay in layouts)
        if pixel_values.shape[0] != expected:
            raise ValueError(f"pixel_values hold {pixel_values.shape[0]} partitions, image_sizes imply {expected}")
        return layouts, pixel_values
