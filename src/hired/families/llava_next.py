"""LLaVA-NeXT: the full image plus an anyres grid of sub-images, unpadded, one newline per canvas row."""

from __future__ import annotations

from hired.core.grid import Geometry
from hired.families.base import Family


class LlavaNext(Family):
    name = "llava_next"
    title = "LLaVA-NeXT"
    newline = True
    anyres = True

    def geometry(self, config) -> Geometry:
        vc = config.vision_config
        pins = tuple(tuple(int(v) for v in p) for p in config.image_grid_pinpoints)
        return Geometry(crop_size=int(vc.image_size), patch_size=int(vc.patch_size), grid_pinpoints=pins)

    def model_classes(self):
        from transformers import LlavaNextForConditionalGeneration, LlavaNextModel

        return {LlavaNextForConditionalGeneration: "model", LlavaNextModel: None}

    def processor_class(self):
        from transformers import LlavaNextProcessor

        return LlavaNextProcessor
