"""Qwen3-VL: Qwen2.5-VL's token layout (one grid of merged tokens per image, 3-D M-RoPE ids) from a ViT of
16 px patches with full attention in every block and learned position embeddings, plus **DeepStack**: the
outputs of a few tower blocks (``deepstack_visual_indexes``), each through its own 2x2 merger, are added to
the visual tokens entering the first decoder layers.

Everything of :class:`~hired.families.qwen2_5_vl.Qwen25VL` holds (budgets, the received-attention score
summed over each merged token's patches, kept tokens keep their stock ids); a kept token also keeps its
DeepStack features: the same selection is applied to every DeepStack level, so each kept token gets the
features the stock model adds at its position, and dropped ones get none.
"""

from __future__ import annotations

from hired.families.qwen2_5_vl import Qwen25VL


class Qwen3VL(Qwen25VL):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    videos_via_image_features = True  # its get_video_features calls get_image_features

    def model_classes(self):
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel

        return {Qwen3VLForConditionalGeneration: "model", Qwen3VLModel: None}

    def processor_class(self):
        from transformers import Qwen3VLProcessor

        return Qwen3VLProcessor
