"""vLLM's LLaVA-NeXT with HiRED: its processing info counts the method's placeholders, its model runs the
shared partition path (:mod:`hired.vllm.partitions`)."""

from __future__ import annotations

from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from hired.vllm.common import RequestProcessor
from hired.vllm.partitions import CountMixin, PartitionModelMixin


class HiredLlavaNextProcessingInfo(CountMixin, LlavaNextProcessingInfo):
    hired_family = "llava_next"


class HiredLlavaNextMultiModalProcessor(RequestProcessor, LlavaNextMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    HiredLlavaNextMultiModalProcessor,
    info=HiredLlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class HiredLlavaNextForConditionalGeneration(PartitionModelMixin, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT; with ``hf_overrides={"hired": {...}}`` it drops visual tokens before the LLM."""

    hired_family = "llava_next"

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._hired_init()

    def _hired_process_image_input(self, image_input):
        if self.hired_spec is None or image_input["type"] != "pixel_values":
            return LlavaNextForConditionalGeneration._process_image_input(self, image_input)
        return self._hired_anyres_features(image_input)
