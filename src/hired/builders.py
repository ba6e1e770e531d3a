"""Local builders of tokenizers, configs and processors (no download): a byte-level BPE tokenizer with the
LLaVA placeholders, Qwen2.5-VL's tokens, config and processor, Qwen3-VL's processor, InternVL's tokens, config and
processor, and the anyres grid lists.

The random-weight architectures of :mod:`hired.bench.archs` and hired-tiny (:mod:`hired.models.tiny_vlm`)
are built from these; the tiny test models of :mod:`hired.testing` too.
"""

from __future__ import annotations

from hired.families.qwen2_5_vl import VISION_END as QWEN_VISION_END
from hired.families.qwen2_5_vl import VISION_START as QWEN_VISION_START

_CORPUS = (
    "a photo of a cat sitting on a red chair next to the window . what is in the image ? "
    "the image shows a dog , a tree and a blue car on the street . describe the picture in detail . "
    "there are two people and one bird . the sky is clear and the grass is green . yes no maybe "
    "left right top bottom center small large circle square triangle colour color count how many "
    "USER: ASSISTANT: Question: Answer: 0 1 2 3 4 5 6 7 8 9"
)

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a short built-in text, with ``<image>`` as a special token."""
    return bpe_tokenizer([_CORPUS] * 4, vocab_size)


def bpe_tokenizer(texts, vocab_size: int):
    """A byte-level BPE trained offline on ``texts``, specials ``<pad> <s> </s> <unk> <image>`` (ids 0-4)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok):
    """A transformers fast tokenizer around a ``tokenizers.Tokenizer`` with the specials of
    :func:`tiny_tokenizer` (``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``<image>``), padding on the left."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )


def default_pinpoints(crop_size: int) -> list[list[int]]:
    """Grids 1x2, 2x1, 2x2, 1x3, 3x1 (as ``(height, width)`` in pixels)."""
    c = crop_size
    return [[c, 2 * c], [2 * c, c], [2 * c, 2 * c], [c, 3 * c], [3 * c, c]]


def onevision_pinpoints(crop_size: int, max_grid: int = 3) -> list[list[int]]:
    """Every grid from 1x1 to ``max_grid x max_grid``, as the OneVision checkpoints list them (up to 6x6)."""
    c = crop_size
    return [[c * i, c * j] for i in range(1, max_grid + 1) for j in range(1, max_grid + 1)]


QWEN_VIDEO = "<|video_pad|>"


def qwen_tokenizer():
    """:func:`tiny_tokenizer` with Qwen's video placeholder and vision start / end tokens."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [QWEN_VIDEO, QWEN_VISION_START, QWEN_VISION_END]})
    return tokenizer


def mrope_section(head_dim: int) -> list[int]:
    """The M-RoPE split of a head's rotary half, as Qwen2.5-VL's (1/4 time, 3/8 height, 3/8 width)."""
    section = [head_dim // 8, (head_dim // 2 - head_dim // 8) // 2]
    return section + [head_dim // 2 - sum(section)]


def qwen2_5_vl_config(tokenizer, vision: dict, text: dict):
    """A ``Qwen2_5_VLConfig`` for ``tokenizer`` (:func:`qwen_tokenizer`): patch 14, 2x2 merge, 2 temporal
    patches; ``vision`` and ``text`` give the sizes (``text["rope_theta"]``; the M-RoPE sections split the
    head's rotary half as Qwen2.5-VL does, 1/4 time, 3/8 height, 3/8 width)."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, QWEN_VIDEO, QWEN_VISION_START, QWEN_VISION_END)}
    text = dict(text)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rope = {"rope_type": "default", "mrope_section": mrope_section(head_dim), "rope_theta": text.pop("rope_theta")}
    return Qwen2_5_VLConfig(
        vision_config=dict(
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            out_hidden_size=text["hidden_size"],
            **vision,
        ),
        text_config=dict(
            rope_parameters=rope, pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2, **text
        ),
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[QWEN_VIDEO],
        vision_start_token_id=ids[QWEN_VISION_START],
        vision_end_token_id=ids[QWEN_VISION_END],
    )


def qwen2_5_vl_processor(tokenizer, max_pixels: int, min_pixels: int = 56 * 56):
    """A ``Qwen2_5_VLProcessor`` (patch 14, 2x2 merge) resizing images to ``min_pixels``-``max_pixels``."""
    import transformers

    image_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    sizes = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    return transformers.Qwen2_5_VLProcessor(
        image_processor=image_cls(**sizes),
        tokenizer=tokenizer,
        video_processor=transformers.Qwen2VLVideoProcessor(**sizes),
    )


def qwen3_vl_processor(tokenizer, max_pixels: int, min_pixels: int = 64 * 64):
    """A ``Qwen3VLProcessor`` (patch 16, 2x2 merge; Qwen3.5 uses it too) resizing images to
    ``min_pixels``-``max_pixels``; its video processor needs torchvision."""
    import transformers

    image_cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    sizes = dict(patch_size=16, merge_size=2, temporal_patch_size=2)
    return transformers.Qwen3VLProcessor(
        image_processor=image_cls(min_pixels=min_pixels, max_pixels=max_pixels, **sizes),
        tokenizer=tokenizer,
        video_processor=transformers.Qwen3VLVideoProcessor(**sizes),
    )


INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


def internvl_tokenizer():
    """:func:`tiny_tokenizer` with InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and ``<video>`` tokens,
    named as the InternVL processor reads them (``start_image_token``, ``context_image_token_id``, ...)."""
    from transformers import PreTrainedTokenizerFast

    base = tiny_tokenizer()
    named = {**INTERNVL_TOKENS, "video_token": VIDEO_TOKEN}
    base.add_special_tokens({"additional_special_tokens": list(named.values())})
    return PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=named,
        padding_side="left",
    )


def internvl_config(tokenizer, vision: dict, text: dict, **kwargs):
    """An ``InternVLConfig`` for ``tokenizer`` (:func:`internvl_tokenizer`): an InternViT tower with a [CLS]
    token (``vision``: its sizes, ``image_size`` the tile, ``patch_size``), a 0.5 pixel shuffle, the last
    layer's features; ``text``: the language model's config (``model_type`` and sizes); ``kwargs``: more
    ``InternVLConfig`` settings."""
    from transformers import InternVLConfig

    tokens = (int(vision["image_size"]) // int(vision["patch_size"]) // 2) ** 2
    return InternVLConfig(
        vision_config=vision,
        text_config=dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2, **text),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=tokens,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        **kwargs,
    )


def internvl_processor(tokenizer, tile_size: int, patch_size: int, min_patches: int, max_patches: int):
    """An ``InternVLProcessor`` cutting an image into ``min_patches`` to ``max_patches`` tiles of ``tile_size``
    px plus a thumbnail, ``(tile_size // patch_size // 2) ** 2`` tokens a tile; its video processor needs
    torchvision."""
    import transformers

    size = {"height": tile_size, "width": tile_size}
    image_cls = getattr(transformers, "GotOcr2ImageProcessorPil", None) or transformers.GotOcr2ImageProcessor
    return transformers.InternVLProcessor(
        image_processor=image_cls(size=size, crop_to_patches=True, min_patches=min_patches, max_patches=max_patches),
        tokenizer=tokenizer,
        video_processor=transformers.InternVLVideoProcessor(size=size),
        image_seq_length=(tile_size // patch_size // 2) ** 2,
    )
