"""LLaVA-1.5: one crop per image, a CLIP tower whose [CLS] token is dropped, no image-newline tokens."""

from __future__ import annotations

from hired.families.base import Family


class Llava(Family):
    name = "llava"
    title = "LLaVA-1.5"

    def model_classes(self):
        from transformers import LlavaForConditionalGeneration, LlavaModel

        return {LlavaForConditionalGeneration: "model", LlavaModel: None}

    def processor_class(self):
        from transformers import LlavaProcessor

        return LlavaProcessor
