"""Configs, tokenizers and processors of :mod:`hired.bench.archs`'s Qwen and InternVL architectures (built
locally, nothing downloaded): Qwen2.5-VL, Qwen3-VL and Qwen3.5 (an image is one grid of merged tokens; the
Qwen tokenizer's placeholders) and InternVL (tiles and a thumbnail, a 0.5 pixel shuffle). Every processor
here needs torchvision (its video processor imports it); :func:`hired.bench.archs.build_arch` checks first.
``arch`` is a :class:`hired.bench.archs.Arch` throughout (not imported: that module imports this one).
"""

from __future__ import annotations

__all__ = ["FAMILIES", "config", "processor", "scaled_section", "tokenizer"]

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5", "internvl")
"""The :mod:`hired.families` names built here."""


def tokenizer(arch):
    """The local tokenizer with ``arch``'s placeholders (InternVL's ``<img>`` tokens, Qwen's vision tokens)."""
    from hired.builders import internvl_tokenizer, qwen_tokenizer

    return internvl_tokenizer() if arch.family == "internvl" else qwen_tokenizer()


def config(arch, tokenizer):
    """The model config of ``arch`` for ``tokenizer`` (:func:`tokenizer`)."""
    if arch.family == "qwen2_5_vl":
        return _qwen2_5_config(arch, tokenizer)
    if arch.family == "internvl":
        return _internvl_config(arch, tokenizer)
    return _qwen3_config(arch, tokenizer)


def processor(arch, tokenizer):
    """The processor of ``arch`` around ``tokenizer``."""
    from hired.builders import internvl_processor, qwen2_5_vl_processor, qwen3_vl_processor

    if arch.family == "qwen2_5_vl":
        return qwen2_5_vl_processor(tokenizer, max_pixels=arch.max_pixels)
    if arch.family == "internvl":
        return internvl_processor(tokenizer, arch.crop_size, arch.patch_size, 1, arch.max_tiles)
    return qwen3_vl_processor(tokenizer, max_pixels=arch.max_pixels)


def _text_sizes(arch) -> dict:
    return dict(arch.text_sizes(), rms_norm_eps=1e-6)


def _qwen_vision(arch, **more) -> dict:
    """The Qwen towers' sizes (``depth``, ``num_heads``, ...) and ``more``."""
    return dict(
        depth=arch.vision_layers,
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_intermediate,
        num_heads=arch.vision_heads,
        **more,
    )


def _qwen2_5_config(arch, tokenizer):
    """Qwen2.5-VL-*-Instruct's config at ``arch``'s sizes (SiLU MLPs, RMSNorm, rope theta 1e6)."""
    from hired.builders import qwen2_5_vl_config

    vision = _qwen_vision(arch, window_size=arch.window_size, fullatt_block_indexes=list(arch.fullatt_blocks))
    return qwen2_5_vl_config(
        tokenizer, vision, dict(_text_sizes(arch), rope_theta=1000000.0, tie_word_embeddings=False)
    )


def _qwen3_config(arch, tokenizer):
    """Qwen3-VL-*-Instruct's config at ``arch``'s sizes (rope theta 5e6, interleaved M-RoPE on the whole head,
    DeepStack from ``arch.deepstack_blocks``), or for ``family="qwen3_5"`` Qwen3.5's: the same tower without
    DeepStack, and the rotary settings and Gated DeltaNet layers (every fourth layer full attention) of
    transformers' ``Qwen3_5TextConfig`` defaults (``arch.linear_heads``: other linear-attention heads). The
    head is ``text_hidden / text_heads`` wide; on a narrower head than the checkpoints' the M-RoPE sections
    are scaled to its rotary dimensions."""
    import transformers

    from hired.builders import IMAGE_TOKEN, QWEN_VIDEO, QWEN_VISION_END, QWEN_VISION_START

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, QWEN_VIDEO, QWEN_VISION_START, QWEN_VISION_END)}
    vision = _qwen_vision(
        arch,
        patch_size=arch.patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        out_hidden_size=arch.text_hidden,
        num_position_embeddings=2304,
    )
    text = dict(
        _text_sizes(arch),
        head_dim=arch.text_hidden // arch.text_heads,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch.family == "qwen3_vl":
        vision["deepstack_visual_indexes"] = list(arch.deepstack_blocks)
        rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_interleaved": True}
        text["rope_parameters"] = {**rope, "mrope_section": scaled_section(_QWEN3_VL_SECTION, text["head_dim"] // 2)}
    else:
        section = scaled_section(_QWEN3_5_SECTION, int(text["head_dim"] * _QWEN3_5_ROTARY) // 2)
        if section != list(_QWEN3_5_SECTION):  # a narrower head: the defaults' rotary settings, sections scaled
            rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": _QWEN3_5_ROTARY}
            text["rope_parameters"] = {**rope, "mrope_section": section}
        if arch.linear_heads is not None:
            keys, values, width = arch.linear_heads
            text.update(linear_num_key_heads=keys, linear_num_value_heads=values)
            text.update(linear_key_head_dim=width, linear_value_head_dim=width)
    cls = transformers.Qwen3VLConfig if arch.family == "qwen3_vl" else transformers.Qwen3_5Config
    return cls(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[QWEN_VIDEO],
        vision_start_token_id=ids[QWEN_VISION_START],
        vision_end_token_id=ids[QWEN_VISION_END],
        tie_word_embeddings=False,
    )


_QWEN3_VL_SECTION = (24, 20, 20)  # Qwen3-VL's M-RoPE sections (t, h, w) of a 128 wide head's 64 rotary pairs
_QWEN3_5_SECTION = (11, 11, 10)  # Qwen3.5's of the 32 rotary pairs of a 256 wide head (a quarter rotated)
_QWEN3_5_ROTARY = 0.25  # Qwen3_5TextConfig's default partial_rotary_factor


def scaled_section(section, pairs: int) -> list[int]:
    """M-RoPE sections ``(t, h, w)`` scaled to a head of ``pairs`` rotary pairs: ``h`` and ``w`` in proportion
    (rounded), ``t`` the rest; the checkpoints' own sections where ``pairs`` is their sum."""
    if pairs < 3:
        raise ValueError(f"M-RoPE needs at least 3 rotary pairs a head (time, height, width), got {pairs}")
    total = sum(section)
    rest = [max(1, round(s * pairs / total)) for s in section[1:]]
    return [pairs - sum(rest), *rest]


def _internvl_config(arch, tokenizer):
    """InternVL3.5-*-HF's config at ``arch``'s sizes: InternViT (layer norm, no query / key norm, biased
    attention, GELU, layer scale) and a Qwen3 language model (head ``text_hidden / text_heads``, rope theta 1e6)."""
    from hired.builders import internvl_config

    vision = dict(
        arch.vit_sizes(),
        norm_type="layer_norm",
        use_qk_norm=False,
        attention_bias=True,
        use_mean_pooling=True,
    )
    text = dict(
        _text_sizes(arch),
        model_type="qwen3",
        head_dim=arch.text_hidden // arch.text_heads,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return internvl_config(tokenizer, vision, text, tie_word_embeddings=False)
