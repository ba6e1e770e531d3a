"""vLLM's Qwen3.5 with HiRED: a thin subclass of vLLM's own class running the shared merged-grid path
(:mod:`hired.vllm.merged_grid`; Qwen3-VL's tower without DeepStack, a hybrid decoder whose linear-attention
layers simply read the kept tokens as they come)."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_5 import Qwen3_5ForConditionalGeneration, Qwen3_5ProcessingInfo
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder, Qwen3VLMultiModalProcessor
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.vllm.merged_grid import MergedGridInfo, MergedGridModel, MergedGridProcessor


class HiredQwen3_5ProcessingInfo(MergedGridInfo, Qwen3_5ProcessingInfo):
    hired_family = "qwen3_5"


class HiredQwen3_5MultiModalProcessor(MergedGridProcessor, Qwen3VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    HiredQwen3_5MultiModalProcessor, info=HiredQwen3_5ProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class HiredQwen3_5ForConditionalGeneration(MergedGridModel, Qwen3_5ForConditionalGeneration):
    """vLLM's Qwen3.5; with ``hf_overrides={"hired": {...}}`` it drops merged tokens before the LLM."""

    hired_family = "qwen3_5"

    def __init__(self, *, vllm_config, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()
