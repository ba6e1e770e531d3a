"""vLLM's LLaVA-OneVision with HiRED (images; videos take vLLM's own path): its processing info counts the
method's placeholders, its model runs the shared partition path (:mod:`hired.vllm.partitions`)."""

from __future__ import annotations

from vllm.model_executor.models.llava_next import LlavaNextProcessingInfo
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.vllm.common import RequestProcessor
from hired.vllm.partitions import CountMixin, PartitionModelMixin


class HiredLlavaOnevisionProcessingInfo(CountMixin, LlavaOnevisionProcessingInfo):
    hired_family = "onevision"

    def get_image_size_with_most_features(self):
        """vLLM sizes its encoder cache by this image's count. Stock: vLLM's own fixed size; with
        ``hired``: the grid pinpoint with the largest count (as LLaVA-NeXT does), since the method's count
        is taken before interpolation and may exceed the stock count of vLLM's fixed size."""
        if self.hired_spec() is None:
            return super().get_image_size_with_most_features()
        return LlavaNextProcessingInfo.get_image_size_with_most_features(self)


class HiredLlavaOnevisionMultiModalProcessor(RequestProcessor, LlavaOnevisionMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    HiredLlavaOnevisionMultiModalProcessor,
    info=HiredLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class HiredLlavaOnevisionForConditionalGeneration(PartitionModelMixin, LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision; with ``hf_overrides={"hired": {...}}`` it drops visual tokens of images
    before the LLM (videos: vLLM's own path)."""

    hired_family = "onevision"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def _hired_process_image_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return LlavaOnevisionForConditionalGeneration._process_image_input(self, image_input)
        return self._hired_anyres_features(image_input)
