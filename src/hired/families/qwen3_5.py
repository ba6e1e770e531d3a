"""Qwen3.5: Qwen3-VL's vision tower without DeepStack (16 px patches, 2x2 merge, full attention in every
block) in front of a hybrid language model: Gated DeltaNet linear-attention layers between full-attention
layers, with 3-D M-RoPE on a part of each head (``partial_rotary_factor``).

Everything of :class:`~hired.families.qwen2_5_vl.Qwen25VL` holds: an image is one grid of merged tokens,
the budget is ``floor(r * N)`` of its N merged tokens, scores are the attention each patch receives summed
over its merged token's patches, and the kept tokens keep their stock (t, h, w) ids in the full-attention
layers (text tokens and decoding too).

What dropping tokens means for the linear-attention layers: they have no positions. Their short causal
convolution and their recurrent state run over the sequence as it reaches them, so they read the kept
tokens as one contiguous run, as if the dropped ones had never been in the image; nothing of a dropped
token enters the state, and the state's size does not depend on the number of tokens (only the
full-attention layers' KV cache shrinks with the budget).
"""

from __future__ import annotations

from hired.families.qwen3_vl import Qwen3VL


class Qwen35(Qwen3VL):
    name = "qwen3_5"
    title = "Qwen3.5"

    def model_classes(self):
        from transformers import Qwen3_5ForConditionalGeneration, Qwen3_5Model

        return {Qwen3_5ForConditionalGeneration: "model", Qwen3_5Model: None}
