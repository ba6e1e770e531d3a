"""vLLM's Qwen2.5-VL with HiRED: a thin subclass of vLLM's own class running the shared merged-grid path
(:mod:`hired.vllm.merged_grid`: counts, scores inside each window or full-attention segment put back in
raster order with the tower's ``reverse_indices``, exact stock M-RoPE ids)."""

from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.vllm.merged_grid import MergedGridInfo, MergedGridModel, MergedGridProcessor


class HiredQwen2_5_VLProcessingInfo(MergedGridInfo, Qwen2_5_VLProcessingInfo):
    hired_family = "qwen2_5_vl"


class HiredQwen2_5_VLMultiModalProcessor(MergedGridProcessor, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    HiredQwen2_5_VLMultiModalProcessor,
    info=HiredQwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class HiredQwen2_5_VLForConditionalGeneration(MergedGridModel, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL; with ``hf_overrides={"hired": {...}}`` it drops merged tokens before the LLM."""

    hired_family = "qwen2_5_vl"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()
