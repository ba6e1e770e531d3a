"""Write a transformers LLaVA / LLaVA-NeXT model in the layout vLLM's weight loader reads.

transformers 5.x ``save_pretrained`` names the CLIP tower's weights ``vision_tower.*``; vLLM (like the
llava-hf checkpoints on the hub) expects ``vision_tower.vision_model.*``. Used for locally built models.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' or part['type'] == 'image_url' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""A minimal LLaVA-style chat template (``USER: <image>\\n... ASSISTANT:``) for models that have none."""


def save_for_vllm(model, processor, path: str | Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """Save ``model`` and ``processor`` to ``path`` with the tower weights under ``vision_tower.vision_model``.

    ``chat_template`` is stored with the tokenizer and processor when they have none (``None``: leave as is).
    """
    from safetensors.torch import load_file, save_file

    path = Path(path)
    if chat_template is not None:
        for obj in (processor, getattr(processor, "tokenizer", None)):
            if obj is not None and not getattr(obj, "chat_template", None):
                obj.chat_template = chat_template
    model.save_pretrained(path)
    processor.save_pretrained(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"save_pretrained wrote no .safetensors file to {path}")
    index = path / "model.safetensors.index.json"
    renamed = {}
    for file in files:
        state = load_file(file)
        if not any(k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") for k in state):
            continue
        new = {}
        for key, value in state.items():
            if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
                key = "vision_tower.vision_model." + key[len("vision_tower.") :]
                renamed[key] = file.name
            new[key] = value.contiguous()
        save_file(new, file, metadata={"format": "pt"})
    if index.exists() and renamed:
        import json

        data = json.loads(index.read_text())
        weight_map = data.get("weight_map", {})
        for old in [
            k for k in weight_map if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
        ]:
            weight_map["vision_tower.vision_model." + old[len("vision_tower.") :]] = weight_map.pop(old)
        index.write_text(json.dumps(data, indent=2))
    return path
