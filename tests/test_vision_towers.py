"""[CLS] rows read by hooks equal the towers' own attention maps, for CLIP and DINOv2, and DINOv2 runs end to end."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

import hired
from hired.adapters.vision import ScoreHooks, encoder_layers, has_cls_token
from hired.testing import default_pinpoints, tiny_llava_next


def _clip():
    cfg = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=56, patch_size=14
    )
    return CLIPVisionModel(cfg), cfg


def _dinov2():
    cfg = Dinov2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=56, patch_size=14
    )
    return Dinov2Model(cfg), cfg


@pytest.mark.parametrize("build", [_clip, _dinov2])
def test_hooked_cls_rows_equal_row_zero_of_eager_attention(build):
    torch.manual_seed(0)
    tower, cfg = build()
    tower.eval().set_attn_implementation("eager")
    pixels = torch.randn(2, 3, 56, 56)
    hooks = ScoreHooks(
        encoder_layers(tower, cfg.num_hidden_layers), cfg.num_attention_heads, {"early": 0, "late": 2}, {"keys": 2}
    )
    with torch.no_grad():
        idle = tower(pixels)  # outside a recording the hooks record nothing
        with hooks.recording() as rec:
            out = tower(pixels, output_attentions=True)
    hooks.remove()
    for role, layer in (("early", 0), ("late", 2)):
        expected = out.attentions[layer][:, :, 0, :].sum(dim=1)
        torch.testing.assert_close(rec.rows[role], expected.float(), rtol=1e-5, atol=1e-6)
    assert rec.keys["keys"].shape[:2] == out.attentions[2].shape[::2][:2] and not rec.pending
    torch.testing.assert_close(out.last_hidden_state, idle.last_hidden_state)
    assert has_cls_token(tower)


def test_hooks_are_installed_once_and_removed():
    tower, cfg = _clip()
    hooks = ScoreHooks(encoder_layers(tower, cfg.num_hidden_layers), cfg.num_attention_heads, {"select": 1})
    assert sum(len(m._forward_hooks) for m in tower.modules()) == 2  # q and k of layer 1
    with hooks.recording():
        pass
    assert sum(len(m._forward_hooks) for m in tower.modules()) == 2
    hooks.remove()
    hooks.remove()
    assert all(not m._forward_hooks for m in tower.modules())


def test_llava_next_with_a_dinov2_tower():
    base, processor = tiny_llava_next()
    vc = Dinov2Config(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128, image_size=84, patch_size=14
    )
    config = LlavaNextConfig(
        vision_config=vc,
        text_config=base.config.text_config,
        image_token_id=base.config.image_token_id,
        image_grid_pinpoints=default_pinpoints(84),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (100, 220, 3), np.uint8))
    prompt = "USER: <image>\nwhat? ASSISTANT:"
    with torch.no_grad():
        stock = model(**processor(images=image, text=prompt, return_tensors="pt")).logits
        hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=True))
        assert torch.equal(model(**processor(images=image, text=prompt, return_tensors="pt")).logits, stock)
        hired.apply(model, processor, hired.HiRED(budget=0.2))
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    sel = hired.last_selection(model)[0]
    assert sel.num_kept == int(0.2 * 4 * 36) == int((inputs["input_ids"] == processor.image_token_id).sum())
    hired.remove(model, processor)


@pytest.mark.parametrize("build", [_clip, _dinov2])
@pytest.mark.parametrize("chunk", [1, 5, 256])
def test_received_scores_equal_the_mean_column_of_eager_attention(build, chunk, monkeypatch):
    """The attention each token receives (mean over queries, summed over heads), from the hooked q and k,
    equals the eager attention maps' column means, whatever the query chunk."""
    import hired.core.scores as scores

    monkeypatch.setattr(scores.received_attention, "__defaults__", (None, chunk))
    torch.manual_seed(0)
    tower, cfg = build()
    tower.eval().set_attn_implementation("eager")
    pixels = torch.randn(2, 3, 56, 56)
    hooks = ScoreHooks(
        encoder_layers(tower, cfg.num_hidden_layers), cfg.num_attention_heads, {"early": 0, "late": 2}, kind="received"
    )
    with torch.no_grad(), hooks.recording() as rec:
        out = tower(pixels, output_attentions=True)
    hooks.remove()
    for role, layer in (("early", 0), ("late", 2)):
        expected = out.attentions[layer].mean(dim=2).sum(dim=1)  # (B, N): mean over queries, sum over heads
        torch.testing.assert_close(rec.rows[role], expected.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rec.rows[role].sum(-1), torch.full((2,), float(cfg.num_attention_heads)))


def test_score_kind_resolves_auto_and_refuses_cls_without_a_cls_token():
    from hired.methods import ModelInfo

    with_cls, without = ModelInfo(4, 2, 2), ModelInfo(4, 2, 2, has_cls=False)
    assert hired.HiRED().score_kind(with_cls) == "cls" and hired.HiRED().score_kind(without) == "received"
    assert hired.ClsTopK(score="received").score_kind(with_cls) == "received"
    with pytest.raises(ValueError, match=r"score='cls'\) reads \[CLS\] attention, but this vision tower has no"):
        hired.VisionZip(score="cls").score_kind(without)
    with pytest.raises(TypeError, match="option score must be 'auto' or 'cls' or 'received'"):
        hired.HiRED(score="mean")


@pytest.mark.parametrize(
    "method",
    [hired.HiRED(budget=0.3, score="received"), hired.ClsTopK(budget=0.3, score="received")],
    ids=lambda m: m.name,
)
def test_methods_rank_by_received_attention_end_to_end(llava_next_eager, method):
    """With score='received' the scores a method used are the stock tower's eager attention column means
    over each partition's patches."""
    model, processor = llava_next_eager
    image = Image.fromarray(np.random.RandomState(1).randint(0, 255, (150, 150, 3), np.uint8))
    with torch.no_grad():
        hired.apply(model, processor, method)
        inputs = processor(images=image, text="USER: <image>\nwhat? ASSISTANT:", return_tensors="pt")
        maps = model.model.vision_tower(inputs["pixel_values"][0], output_attentions=True).attentions
        model(**inputs)
    scores, sel = hired.last_scores(model)[0], hired.last_selection(model)[0]
    layers = hired.score_layers(model)
    for role, layer in layers.items():
        expected = maps[layer].mean(dim=2).sum(dim=1)[:, 1:]  # (P, T): patches only
        torch.testing.assert_close(scores[role], expected.float(), rtol=1e-5, atol=1e-6)
    assert sel.num_kept == int(0.3 * len(sel.partitions) * 36)
