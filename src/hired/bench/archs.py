"""Known architectures with random weights, built locally (no download), for timing.

Timing does not depend on weight values, so a model with the real shapes and random weights reproduces a
checkpoint's cost offline. ``build_arch(name, device, dtype)`` returns ``(model, processor)``:

* ``llava-next-7b``: the shapes of ``llava-hf/llava-v1.6-vicuna-7b-hf`` (CLIP ViT-L/14 at 336 px, 24
  layers, 1024 wide, 16 heads; Vicuna-7B, 32 layers, 4096 wide, vocabulary 32064; anyres pinpoints up to
  672x672, 1008x336 and 336x1008; features from layer -2).
* ``llava-1.5-7b``: the shapes of ``llava-hf/llava-1.5-7b-hf`` (same tower and LLM, one 336 px crop).
* ``small``: a scaled-down LLaVA-NeXT for CPUs with the *same token geometry* (336 px crops of 14 px
  patches, so a 600x600 image gives 5 partitions of 576 patches) and, as in the 7B model, a language
  model that dominates the cost: about 14 times the vision tower's multiply-adds at full budget (21 times
  in the 7B model); measured on a CPU, its prefill takes 12-13 times as long as the tower.
* ``llava-onevision-7b``: the shapes of ``llava-hf/llava-onevision-qwen2-7b-ov-hf`` (SigLIP-so400m/14 at
  384 px without [CLS] or head: 27 layers, 1152 wide, 16 heads, intermediate 4304, 27x27 = 729 patches a
  crop; Qwen2-7B: 28 layers, 3584 wide, 28 heads, 4 key/value heads, intermediate 18944, vocabulary
  152064; features from the last layer, ``vision_feature_select_strategy="full"``, ``anyres_max_9``,
  pinpoints every grid 1x1 to 6x6 of 384 px crops).
* ``qwen3-vl-8b``: the shapes of ``Qwen/Qwen3-VL-8B-Instruct`` (ViT/16: 27 blocks, 1152 wide, 16 heads,
  intermediate 4304, full attention in every block, 48x48 learned positions, 2x2 merger, DeepStack from
  blocks 8, 16 and 24; Qwen3-8B: 36 layers, 4096 wide, 32 heads, 8 key/value heads of 128, intermediate
  12288, vocabulary 151936, interleaved M-RoPE).
* ``qwen3.5``: Qwen3.5's tower as transformers' ``Qwen3_5VisionConfig`` defaults give it (the config names
  ``Qwen/Qwen3.5-27B``: ViT/16, 27 blocks, 1152 wide, 16 heads, intermediate 4304, 48x48 learned positions,
  2x2 merger, no DeepStack) and as language model transformers' ``Qwen3_5TextConfig`` defaults (32 layers,
  4096 wide, 16 heads of 256, 4 key/value heads, intermediate 12288, vocabulary 248320, Gated DeltaNet in 3
  layers of 4; 9.4 billion parameters in all, a "Qwen3.5-9B style configuration" in transformers' own
  example), not a checkpoint's language model whose sizes could be checked here. Processor: Qwen3-VL's
  (torchvision needed, ``pip install "hired-vlm[qwen]"``).
* ``internvl3.5-8b``: the shapes of ``OpenGVLab/InternVL3.5-8B-HF`` (InternViT-300M: 24 layers, 1024 wide,
  16 heads, intermediate 4096, 448 px tiles of 14 px patches, layer norm, a [CLS] token; a 0.5 pixel
  shuffle, 256 tokens a tile; 1 to 12 tiles and a thumbnail; Qwen3-8B as for ``qwen3-vl-8b``, 1-D RoPE).
  Its processor needs torchvision (``pip install "hired-vlm[internvl]"``).
* ``onevision-small``: a scaled-down LLaVA-OneVision for CPUs with the OneVision token geometry (384 px
  crops of 14 px patches, 729 patches a crop, grids up to 6x6, ``anyres_max_9``: a 600x600 image gives 5
  partitions, 3645 patches, 3699 stock tokens) and ``small``'s widths, depths and vocabulary (SigLIP tower
  8x128, Qwen2 language model 8x512 with 2 key/value heads, 32064 ids: the output layer stays a minor
  part of a decode step, as in the 7B model). Its processor needs torchvision
  (``pip install "hired-vlm[onevision]"``), as every OneVision processor does.
* ``qwen2.5-vl-small``, ``qwen3-vl-small``, ``qwen3.5-small``, ``internvl-small``: the same scaled-down
  widths and depths with each family's token geometry: Qwen2.5-VL's 14 px patches, 112 px windows and full
  attention in blocks 3 and 7; Qwen3-VL's 16 px patches and DeepStack from blocks 2, 4 and 6; Qwen3.5's
  16 px patches and a hybrid language model (Gated DeltaNet in 3 layers of 4, as in Qwen3.5, with 4 key
  and 8 value heads of 64: half and all of the width, as in the real model; M-RoPE on a quarter of each
  head, the sections scaled); InternVL's 448 px tiles of 14 px patches with a [CLS] token, the 0.5 pixel
  shuffle (256 tokens a tile), 1 to 12 tiles and a thumbnail, a Qwen3 language model. Every language model
  (each family's own kind) has 8 layers, 512 wide, 2 key/value heads, vocabulary 32064.

The processor uses a small local byte-level tokenizer (``hired.builders.tiny_tokenizer``) that knows
``<image>`` and some English; its ids all lie inside the configs' vocabularies, so the embedding and
output layers have the real sizes while no tokenizer file is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ARCHS", "Arch", "build_arch", "list_archs"]

_PINPOINTS_336 = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # llava-v1.6, (height, width)
# llava-onevision-qwen2-*-ov: every grid from 1x1 to 6x6 of 384 px crops, rows outer, (height, width)
_PINPOINTS_384_6X6 = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


@dataclass(frozen=True)
class Arch:
    """Shapes of one architecture (``family`` is a :mod:`hired.families` name: ``"llava_next"``, ``"llava"``
    or ``"onevision"``, whose towers and language models are built in this module (OneVision: a SigLIP tower
    without [CLS] and a Qwen2 language model; the others a CLIP tower and a Llama language model), or one
    of :mod:`hired.bench.archs_vl`: Qwen2.5-VL, Qwen3-VL, Qwen3.5, InternVL)."""

    name: str
    family: str
    summary: str
    # vision tower (CLIP ViT)
    crop_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    # language model (Llama)
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    vocab_size: int
    vision_feature_layer: int = -2
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    max_position_embeddings: int = 4096
    text_kv_heads: int | None = None  # None: as many as text_heads
    vision_aspect_ratio: str | None = None  # OneVision: "anyres_max_N"
    # Qwen2.5-VL: window attention of window_size px in every block but fullatt_blocks; images resized to
    # at most max_pixels (the processor's default for the 7B model: 16384 merged tokens of 28x28 px)
    window_size: int = 112
    fullatt_blocks: tuple[int, ...] = ()
    max_pixels: int = 12845056
    deepstack_blocks: tuple[int, ...] = ()  # Qwen3-VL: the tower blocks whose outputs feed DeepStack
    max_tiles: int = 12  # InternVL: an image is cut into 1 to max_tiles tiles of crop_size px (+ a thumbnail)
    # Qwen3.5's Gated DeltaNet layers: (key heads, value heads, head width); None: transformers' defaults
    linear_heads: tuple[int, int, int] | None = None

    def vit_sizes(self) -> dict:
        """A ViT config's sizes (CLIP, SigLIP, InternViT: widths, depth, heads, crop and patch)."""
        return dict(
            hidden_size=self.vision_hidden,
            intermediate_size=self.vision_intermediate,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=self.crop_size,
            patch_size=self.patch_size,
        )

    def text_sizes(self) -> dict:
        """The language model config's sizes (widths, depth, heads, vocabulary, positions)."""
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.text_hidden,
            intermediate_size=self.text_intermediate,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            num_key_value_heads=self.text_kv_heads or self.text_heads,
            max_position_embeddings=self.max_position_embeddings,
        )


# the CPU-sized architectures' widths and depths (small, onevision-small, qwen2.5-vl-small, qwen3-vl-small,
# qwen3.5-small, internvl-small): a language model that dominates the cost, as in the 7B models
_SMALL_SIZES = dict(
    vision_hidden=128,
    vision_intermediate=512,
    vision_layers=8,
    vision_heads=2,
    text_hidden=512,
    text_intermediate=1376,
    text_layers=8,
    text_heads=8,
)

# Qwen3-VL's tower (Qwen3.5's too: transformers' Qwen3_5VisionConfig defaults) and Qwen3-8B (Qwen3-VL-8B's and
# InternVL3.5-8B's language model)
_QWEN3_TOWER = dict(
    crop_size=32,
    patch_size=16,
    vision_hidden=1152,
    vision_intermediate=4304,
    vision_layers=27,
    vision_heads=16,
    vision_feature_layer=-1,
    max_pixels=16777216,
)
_QWEN3_8B = dict(
    text_hidden=4096, text_intermediate=12288, text_layers=36, text_heads=32, text_kv_heads=8, vocab_size=151936
)

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            name="llava-next-7b",
            family="llava_next",
            summary="llava-v1.6-vicuna-7b shapes: CLIP ViT-L/14-336 (24x1024) + Vicuna-7B (32x4096), anyres",
            crop_size=336,
            patch_size=14,
            vision_hidden=1024,
            vision_intermediate=4096,
            vision_layers=24,
            vision_heads=16,
            text_hidden=4096,
            text_intermediate=11008,
            text_layers=32,
            text_heads=32,
            vocab_size=32064,
            grid_pinpoints=_PINPOINTS_336,
        ),
        Arch(
            name="llava-1.5-7b",
            family="llava",
            summary="llava-1.5-7b shapes: CLIP ViT-L/14-336 (24x1024) + Vicuna-7B (32x4096), one 336 px crop",
            crop_size=336,
            patch_size=14,
            vision_hidden=1024,
            vision_intermediate=4096,
            vision_layers=24,
            vision_heads=16,
            text_hidden=4096,
            text_intermediate=11008,
            text_layers=32,
            text_heads=32,
            vocab_size=32064,
        ),
        Arch(
            name="small",
            family="llava_next",
            summary="CPU-sized LLaVA-NeXT: 336 px crops, 14 px patches (tower 8x128), LLM 8x512 dominating cost",
            crop_size=336,
            patch_size=14,
            **_SMALL_SIZES,
            vocab_size=32064,
            grid_pinpoints=_PINPOINTS_336,
        ),
        Arch(
            name="llava-onevision-7b",
            family="onevision",
            summary="llava-onevision-qwen2-7b-ov shapes: SigLIP-so400m/14-384 (27x1152) + Qwen2-7B (28x3584), "
            "anyres_max_9 up to 6x6",
            crop_size=384,
            patch_size=14,
            vision_hidden=1152,
            vision_intermediate=4304,
            vision_layers=27,
            vision_heads=16,
            text_hidden=3584,
            text_intermediate=18944,
            text_layers=28,
            text_heads=28,
            text_kv_heads=4,
            vocab_size=152064,
            vision_feature_layer=-1,
            grid_pinpoints=_PINPOINTS_384_6X6,
            vision_aspect_ratio="anyres_max_9",
            max_position_embeddings=32768,
        ),
        Arch(
            name="onevision-small",
            family="onevision",
            summary="CPU-sized LLaVA-OneVision: 384 px crops, 14 px patches, 729 a crop (SigLIP 8x128), "
            "Qwen2 8x512, anyres_max_9 up to 6x6",
            crop_size=384,
            patch_size=14,
            **_SMALL_SIZES,
            text_kv_heads=2,
            vocab_size=32064,  # small's: the output layer stays a minor cost of a decode step, as in the 7B model
            vision_feature_layer=-1,
            grid_pinpoints=_PINPOINTS_384_6X6,
            vision_aspect_ratio="anyres_max_9",
            max_position_embeddings=32768,
        ),
        Arch(
            name="qwen2.5-vl-7b",
            family="qwen2_5_vl",
            summary="Qwen2.5-VL-7B-Instruct shapes: native-resolution ViT/14 (32x1280, window attention, 2x2 "
            "merger) + Qwen2.5-7B (28x3584), M-RoPE",
            crop_size=28,
            patch_size=14,
            vision_hidden=1280,
            vision_intermediate=3420,
            vision_layers=32,
            vision_heads=16,
            text_hidden=3584,
            text_intermediate=18944,
            text_layers=28,
            text_heads=28,
            text_kv_heads=4,
            vocab_size=152064,
            vision_feature_layer=-1,
            max_position_embeddings=128000,
            fullatt_blocks=(7, 15, 23, 31),
        ),
        Arch(
            name="qwen3-vl-8b",
            family="qwen3_vl",
            summary="Qwen3-VL-8B-Instruct shapes: native-resolution ViT/16 (27x1152, full attention, 2x2 merger, "
            "DeepStack 8/16/24) + Qwen3-8B (36x4096), interleaved M-RoPE",
            **_QWEN3_TOWER,
            **_QWEN3_8B,
            max_position_embeddings=262144,
            deepstack_blocks=(8, 16, 24),
        ),
        Arch(
            name="qwen3.5",
            family="qwen3_5",
            summary="Qwen3.5's tower (transformers' Qwen3_5VisionConfig defaults: ViT/16 27x1152, 2x2 merger, no "
            "DeepStack); language model: transformers' Qwen3_5TextConfig defaults (32x4096, 3 of 4 layers Gated "
            "DeltaNet)",
            **_QWEN3_TOWER,
            text_hidden=4096,
            text_intermediate=12288,
            text_layers=32,
            text_heads=16,
            text_kv_heads=4,
            vocab_size=248320,
            max_position_embeddings=32768,
        ),
        Arch(
            name="internvl3.5-8b",
            family="internvl",
            summary="InternVL3.5-8B-HF shapes: InternViT-300M (24x1024, 448 px tiles of 14 px, [CLS]), 0.5 pixel "
            "shuffle (256 tokens a tile), 1-12 tiles + thumbnail, + Qwen3-8B (36x4096)",
            crop_size=448,
            patch_size=14,
            vision_hidden=1024,
            vision_intermediate=4096,
            vision_layers=24,
            vision_heads=16,
            **_QWEN3_8B,
            vision_feature_layer=-1,
            max_position_embeddings=40960,
            max_tiles=12,
        ),
        Arch(
            name="qwen2.5-vl-small",
            family="qwen2_5_vl",
            summary="CPU-sized Qwen2.5-VL: 14 px patches, 2x2 merger, 112 px windows (ViT 8x128, full attention "
            "in blocks 3 and 7), Qwen2 8x512, M-RoPE",
            crop_size=28,
            patch_size=14,
            **_SMALL_SIZES,
            text_kv_heads=2,
            vocab_size=32064,  # small's: the output layer stays a minor cost of a decode step
            vision_feature_layer=-1,
            max_position_embeddings=32768,
            fullatt_blocks=(3, 7),
        ),
        Arch(
            name="qwen3-vl-small",
            family="qwen3_vl",
            summary="CPU-sized Qwen3-VL: 16 px patches, 2x2 merger, full attention (ViT 8x128, DeepStack 2/4/6), "
            "Qwen3 8x512, interleaved M-RoPE",
            **{**_QWEN3_TOWER, **_SMALL_SIZES},
            text_kv_heads=2,
            vocab_size=32064,  # small's: the output layer stays a minor cost of a decode step
            max_position_embeddings=32768,
            deepstack_blocks=(2, 4, 6),
        ),
        Arch(
            name="qwen3.5-small",
            family="qwen3_5",
            summary="CPU-sized Qwen3.5: 16 px patches, 2x2 merger (ViT 8x128, no DeepStack), hybrid LLM 8x512 "
            "(3 of 4 layers Gated DeltaNet, 4 key / 8 value heads of 64)",
            **{**_QWEN3_TOWER, **_SMALL_SIZES},
            text_kv_heads=2,
            vocab_size=32064,
            max_position_embeddings=32768,
            linear_heads=(4, 8, 64),
        ),
        Arch(
            name="internvl-small",
            family="internvl",
            summary="CPU-sized InternVL: 448 px tiles of 14 px ([CLS], InternViT 8x128), 0.5 pixel shuffle (256 "
            "tokens a tile), 1-12 tiles + thumbnail, Qwen3 8x512",
            crop_size=448,
            patch_size=14,
            **_SMALL_SIZES,
            text_kv_heads=2,
            vocab_size=32064,
            vision_feature_layer=-1,
            max_position_embeddings=40960,
            max_tiles=12,
        ),
    )
}


def list_archs() -> dict[str, str]:
    """Architecture names with a one-line description each."""
    return {name: arch.summary for name, arch in ARCHS.items()}


def _config(arch: Arch, image_token_id: int, pad_token_id: int, video_token_id: int | None = None):
    if arch.family == "onevision":
        return _onevision_config(arch, image_token_id, pad_token_id, video_token_id)
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

    vision = CLIPVisionConfig(
        **arch.vit_sizes(),
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        **arch.text_sizes(),
        rms_norm_eps=1e-5,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=arch.vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    if arch.family == "llava_next":
        return LlavaNextConfig(image_grid_pinpoints=[list(p) for p in arch.grid_pinpoints], **common)
    return LlavaConfig(**common)


def _onevision_config(arch: Arch, image_token_id: int, pad_token_id: int, video_token_id: int | None):
    """llava-onevision-qwen2-*-ov-hf's config at ``arch``'s sizes: SigLIP without head, Qwen2, "full" features."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        **arch.vit_sizes(),
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    text = Qwen2Config(
        **arch.text_sizes(),
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        video_token_id=video_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=arch.vision_feature_layer,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=arch.vision_aspect_ratio,
        image_grid_pinpoints=[list(p) for p in arch.grid_pinpoints],
        tie_word_embeddings=False,
    )


def _processor(arch: Arch, tokenizer):
    import transformers

    from hired.bench import archs_vl

    if arch.family == "onevision":
        return _onevision_processor(arch, tokenizer)
    if arch.family in archs_vl.FAMILIES:
        _need_torchvision(arch)
        return archs_vl.processor(arch, tokenizer)
    size = {"shortest_edge": arch.crop_size}
    crop = {"height": arch.crop_size, "width": arch.crop_size}
    common = dict(
        tokenizer=tokenizer,
        patch_size=arch.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the [CLS] token
    )
    if arch.family == "llava_next":
        cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
        image_processor = cls(size=size, crop_size=crop, image_grid_pinpoints=[list(p) for p in arch.grid_pinpoints])
        return transformers.LlavaNextProcessor(image_processor=image_processor, **common)
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return transformers.LlavaProcessor(image_processor=cls(size=size, crop_size=crop), **common)


def _need_torchvision(arch: Arch) -> None:
    from hired.families import get_family
    from hired.loading import need_torchvision

    need_torchvision(get_family(arch.family), f"{arch.name}: ")


def _onevision_processor(arch: Arch, tokenizer):
    """The OneVision processor (its video processor needs torchvision: a clear error without it)."""
    import transformers

    _need_torchvision(arch)
    cls = getattr(transformers, "LlavaOnevisionImageProcessorPil", None) or transformers.LlavaOnevisionImageProcessor
    size = {"height": arch.crop_size, "width": arch.crop_size}
    return transformers.LlavaOnevisionProcessor(
        image_processor=cls(size=size, image_grid_pinpoints=[list(p) for p in arch.grid_pinpoints]),
        tokenizer=tokenizer,
        video_processor=transformers.LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(arch.crop_size // arch.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=arch.vision_aspect_ratio,
    )


def build_arch(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """``(model, processor)``: architecture ``name`` (see ``ARCHS``) with random weights, in eval mode.

    The weights are created and initialised directly on ``device`` in ``dtype`` (a 7B model in float16
    needs about 14 GB there; ``device="meta"`` builds the shapes only, without memory, for inspection).
    Nothing is downloaded. The processor emits the stock placeholder count; ``hired.apply`` changes it.
    """
    from hired.bench import archs_vl
    from hired.builders import IMAGE_TOKEN, VIDEO_TOKEN, tiny_tokenizer
    from hired.families import get_family

    arch = ARCHS.get(name)
    if arch is None:
        raise ValueError(f"unknown architecture {name!r}; available: {', '.join(ARCHS)}")
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        dtype = getattr(torch, dtype)
    vl = arch.family in archs_vl.FAMILIES
    tokenizer = archs_vl.tokenizer(arch) if vl else tiny_tokenizer()
    video_token_id = None
    if arch.family == "onevision":
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
        video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if len(tokenizer) > arch.vocab_size:
        raise ValueError(f"the local tokenizer has {len(tokenizer)} ids, more than {name}'s vocabulary")
    processor = _processor(arch, tokenizer)  # first: a processor without torchvision fails before any weight exists
    if vl:
        config = archs_vl.config(arch, tokenizer)
    else:
        config = _config(arch, image_token_id, tokenizer.pad_token_id, video_token_id)
    cls = next(c for c, attr in get_family(arch.family).model_classes().items() if attr is not None)
    if torch.device(device).type != "meta":
        _check_memory(name, cls, config, torch.device(device), dtype)
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def _available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info``; CPU: Linux MemAvailable), or ``None`` if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _check_memory(name: str, cls, config, device: torch.device, dtype: torch.dtype) -> None:
    """Raise a clear error when the weights alone would not fit in the free memory of ``device``."""
    with torch.device("meta"):
        shapes = cls._from_config(config, dtype=dtype)
    need = sum(p.numel() for p in shapes.parameters()) * torch.finfo(dtype).bits // 8
    free = _available_bytes(device)
    if free is not None and need > free:
        raise ValueError(
            f"{name} needs about {need / 1e9:.1f} GB for its {str(dtype).replace('torch.', '')} weights but "
            f"{device} has {free / 1e9:.1f} GB free; use a larger device (e.g. --device cuda) or a CPU-sized "
            f"--arch ({', '.join(n for n in ARCHS if n.endswith('small'))})"
        )
