"""vLLM's LLaVA-1.5 with HiRED (CLIP towers; Pixtral and other towers keep vLLM's own processing): its
processing info counts the method's placeholders, its model runs the shared partition path
(:mod:`hired.vllm.partitions`) with one crop per image."""

from __future__ import annotations

from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.vllm.common import RequestProcessor
from hired.vllm.partitions import CountMixin, PartitionModelMixin


class HiredLlavaProcessingInfo(CountMixin, LlavaProcessingInfo):
    hired_family = "llava"


class HiredLlavaMultiModalProcessor(RequestProcessor, LlavaMultiModalProcessor):
    pass


def _llava_info(ctx):
    from transformers import CLIPVisionConfig, LlavaConfig

    if isinstance(ctx.get_hf_config(LlavaConfig).vision_config, CLIPVisionConfig):
        return HiredLlavaProcessingInfo(ctx)
    return _STOCK_LLAVA_FACTORIES.info(ctx)  # Pixtral and other towers: vLLM's own


def _llava_processor(info, dummy_inputs):
    if isinstance(info, HiredLlavaProcessingInfo):
        return HiredLlavaMultiModalProcessor(info, dummy_inputs)
    return _STOCK_LLAVA_FACTORIES.processor(info, dummy_inputs)


_STOCK_LLAVA_FACTORIES = LlavaForConditionalGeneration._processor_factory  # vLLM's own (LLaVA and Pixtral-HF)


@MULTIMODAL_REGISTRY.register_processor(_llava_processor, info=_llava_info, dummy_inputs=LlavaDummyInputsBuilder)
class HiredLlavaForConditionalGeneration(PartitionModelMixin, LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5; with ``hf_overrides={"hired": {...}}`` it drops visual tokens before the LLM."""

    hired_family = "llava"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def _hired_process_image_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return LlavaForConditionalGeneration._process_image_input(self, image_input)
        pixel_values = image_input["pixel_values"]  # (B, C, H, W)
        layouts = [self.hired_spec.layout(0, 0)] * pixel_values.shape[0]
        return self._hired_features(pixel_values, layouts)
