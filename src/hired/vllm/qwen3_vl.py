"""vLLM's Qwen3-VL with HiRED: a thin subclass of vLLM's own class running the shared merged-grid path
(:mod:`hired.vllm.merged_grid`). Its tower returns each merged token's DeepStack features beside its
merged features, one row a token: the methods read the merged features, and the kept rows carry the
DeepStack features, so every DeepStack level keeps exactly the selected tokens."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.vllm.merged_grid import MergedGridInfo, MergedGridModel, MergedGridProcessor


class HiredQwen3VLProcessingInfo(MergedGridInfo, Qwen3VLProcessingInfo):
    hired_family = "qwen3_vl"


class HiredQwen3VLMultiModalProcessor(MergedGridProcessor, Qwen3VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    HiredQwen3VLMultiModalProcessor, info=HiredQwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class HiredQwen3VLForConditionalGeneration(MergedGridModel, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL; with ``hf_overrides={"hired": {...}}`` it drops merged tokens (and their DeepStack
    features) before the LLM."""

    hired_family = "qwen3_vl"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def hired_feature_width(self) -> int:
        return self.visual_dim  # the merger's output; the DeepStack levels follow it in each row
