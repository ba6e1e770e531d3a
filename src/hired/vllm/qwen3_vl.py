"""vLLM architectures the plugin does not serve yet, registered so that a ``hired`` entry in their
``hf_overrides`` is one clear error instead of a setting vLLM would ignore (the model would run stock)."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

from hired.vllm.config import KEY, override_error


class HiredQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL, unchanged; refuses ``hf_overrides={"hired": ...}`` before building the model."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        if getattr(vllm_config.model_config.hf_config, KEY, None) is not None:
            raise override_error(
                "the vLLM plugin does not serve Qwen3-VL yet (its DeepStack features would need the same "
                "selection in vLLM's model); run HiRED on Qwen3-VL through transformers (hired.apply), or "
                "drop the 'hired' entry to run vLLM's stock Qwen3-VL"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)
