"""HiRED inside vLLM, as an out-of-tree plugin (``pip install "hired-vlm[vllm]"``).

vLLM loads :func:`register` from the ``vllm.general_plugins`` entry point in every process. It replaces
the ``LlavaNextForConditionalGeneration``, ``LlavaForConditionalGeneration``,
``LlavaOnevisionForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration``, ``Qwen3_5ForConditionalGeneration`` and
``InternVLForConditionalGeneration`` architectures with thin subclasses of vLLM's own classes that behave
exactly as stock unless the model is given ``hf_overrides={"hired": {"method": "hired", "budget": 0.2, "alpha": 0.5}}``::

    from vllm import LLM
    llm = LLM(model="llava-hf/llava-v1.6-vicuna-7b-hf", hf_overrides={"hired": {"budget": 0.2}})

Only fixed-budget methods work here (vLLM sizes each prompt from the image size before the encoder runs).
"""

from __future__ import annotations

ARCHITECTURES = {
    "LlavaNextForConditionalGeneration": ("llava_next", "HiredLlavaNextForConditionalGeneration"),
    "LlavaForConditionalGeneration": ("llava", "HiredLlavaForConditionalGeneration"),
    "LlavaOnevisionForConditionalGeneration": ("onevision", "HiredLlavaOnevisionForConditionalGeneration"),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", "HiredQwen2_5_VLForConditionalGeneration"),
    "Qwen3VLForConditionalGeneration": ("qwen3_vl", "HiredQwen3VLForConditionalGeneration"),
    "Qwen3_5ForConditionalGeneration": ("qwen3_5", "HiredQwen3_5ForConditionalGeneration"),
    "InternVLForConditionalGeneration": ("internvl", "HiredInternVLForConditionalGeneration"),
}
"""vLLM architecture → (module of :mod:`hired.vllm`, class): one module per family, one line each."""


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the HiRED-capable classes (idempotent)."""
    import importlib

    from vllm import ModelRegistry

    for arch, (module, name) in ARCHITECTURES.items():
        ModelRegistry.register_model(arch, getattr(importlib.import_module(f"hired.vllm.{module}"), name))


def last_selection(llm) -> list:
    """What the last vision-encoder pass of an in-process ``vllm.LLM`` kept (list of
    :class:`hired.ImageSelection`, one per image; empty when ``hired`` is off). Needs the engine in this
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); meant for tests and inspection."""
    return llm.apply_model(lambda model: model.hired_last_selection())[0]
