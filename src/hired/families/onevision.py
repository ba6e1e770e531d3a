"""LLaVA-OneVision: LLaVA-NeXT's anyres cut with a SigLIP tower (no [CLS]) and anyres_max interpolation.

Differences from LLaVA-NeXT that matter here:

* the tower has no [CLS] token and every output token is a patch (``vision_feature_select_strategy=
  "full"``), so methods rank patches by the attention they receive (``score="auto"`` → ``"received"``);
* ``vision_aspect_ratio="anyres_max_N"``: the stock model shrinks an unpadded canvas of more than about N
  crops' worth of patches by bilinear interpolation (:attr:`hired.core.grid.Geometry.max_crops`). A
  method's budget is taken of the ``P x T`` patches *before* interpolation, and it keeps real patches,
  never interpolated ones, so with interpolation the count is not a share of the stock count;
* in a prompt with several images, each image is encoded as one crop followed by one newline token
  (``batch_num_images``); videos take their own path (``get_video_features``), which hired leaves as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from hired.core.grid import Geometry
from hired.families.base import Family

_PREFIX = "anyres_max_"


def max_crops(vision_aspect_ratio) -> int:
    """N of ``"anyres_max_N"``; a clear error for anything else."""
    text = str(vision_aspect_ratio)
    if not text.startswith(_PREFIX) or not text[len(_PREFIX) :].isdigit() or int(text[len(_PREFIX) :]) < 1:
        raise ValueError(f"vision_aspect_ratio must be 'anyres_max_N' with N >= 1, got {vision_aspect_ratio!r}")
    return int(text[len(_PREFIX) :])


class Onevision(Family):
    name = "onevision"
    title = "LLaVA-OneVision"
    nests_images = True  # multi-image prompts: one image list per text
    newline = True
    anyres = True
    torchvision_extra = "onevision"  # its video processor imports torchvision

    def check_config(self, config, has_cls: bool) -> None:
        strategy = config.vision_feature_select_strategy
        if strategy == "full" and has_cls:
            raise ValueError(
                "LLaVA-OneVision with vision_feature_select_strategy='full' and a tower with a [CLS] token feeds "
                "the [CLS] token to the language model as a patch; hired needs 'default' for such a tower"
            )
        if strategy == "default" and not has_cls:
            raise ValueError(
                "this LLaVA-OneVision config drops the first patch as [CLS] (vision_feature_select_strategy="
                "'default') but its tower has no [CLS] token: the stock model cannot pack that either; use 'full'"
            )
        if strategy not in ("default", "full"):
            raise ValueError(f"unknown vision_feature_select_strategy {strategy!r}")
        max_crops(config.vision_aspect_ratio)

    def geometry(self, config) -> Geometry:
        vc = config.vision_config
        pins = tuple(tuple(int(v) for v in p) for p in config.image_grid_pinpoints)
        return Geometry(
            crop_size=int(vc.image_size),
            patch_size=int(vc.patch_size),
            grid_pinpoints=pins,
            max_crops=max_crops(config.vision_aspect_ratio),
        )

    def single_crops(self, num_images: int, batch_num_images: Sequence[int] | None) -> list[bool]:
        """OneVision encodes an image as one crop when its prompt holds more than one image."""
        if batch_num_images is None:
            return [False] * num_images
        counts = batch_num_images.tolist() if hasattr(batch_num_images, "tolist") else list(batch_num_images)
        flags = [int(n) != 1 for n in counts for _ in range(int(n))]
        if len(flags) != num_images:
            raise ValueError(f"batch_num_images {counts} adds up to {len(flags)} images, but {num_images} were given")
        return flags

    def image_kwargs(self) -> tuple[str, ...]:
        return ("image_sizes", "batch_num_images")

    def model_classes(self):
        from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel

        return {LlavaOnevisionForConditionalGeneration: "model", LlavaOnevisionModel: None}

    def processor_class(self):
        from transformers import LlavaOnevisionProcessor

        return LlavaOnevisionProcessor

    def check_processor(self, processor, geometry: Geometry, config) -> None:
        super().check_processor(processor, geometry, config)
        if max_crops(processor.vision_aspect_ratio) != geometry.max_crops:
            raise ValueError(
                f"processor vision_aspect_ratio={processor.vision_aspect_ratio!r} differs from the model's "
                f"{config.vision_aspect_ratio!r}"
            )
