"""The transformers adapter on a tiny random-weight LLaVA-OneVision (SigLIP tower without [CLS]).

Expected values come from transformers' own OneVision code, not from hired's geometry: grids from
``get_anyres_image_grid_shape``, the stock packing (unpadding, newlines, anyres_max interpolation) from
``pack_image_features`` run on features whose value is their own index, the received-attention score from
the stock tower's eager attention maps.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import make_image, placeholder_runs

import hired
from hired.methods.base import get_method, list_methods

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 36  # 84 px crops of 14 px patches
PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"
# (h, w) → whether the stock model interpolates its canvas (tiny config: anyres_max_4, grids up to 3x3)
SIZES = {
    (80, 80): False,  # 1x1
    (60, 130): False,  # 1x2
    (130, 60): False,  # 2x1
    (150, 150): False,  # 2x2
    (100, 220): False,  # 2x3 with a wide unpadded band: just under the threshold
    (220, 100): False,  # 3x2
    (60, 400): False,  # 1x3
    (90, 170): True,  # 2x3
    (200, 300): True,  # 2x3
    (250, 250): True,  # 3x3
    (240, 180): True,  # 3x3
}
FLAT = [s for s, interpolates in SIZES.items() if not interpolates]
SCALED = [s for s, interpolates in SIZES.items() if interpolates]


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _inputs(processor, images, texts, **kwargs):
    args = {"text": texts, "return_tensors": "pt", "padding": True, **kwargs}
    if images is not None:
        args["images"] = images
    return processor(**args)


def _stock_pack(model, size, aspect: str | None = None) -> list[int]:
    """Flat patch indices (partition * T + t) in the order the stock model packs one image, -1 for a
    newline; with ``aspect`` another vision_aspect_ratio (a huge N: the order before interpolation)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    cfg = model.config
    p = image_size_to_num_patches(list(size), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    feats = torch.arange(p * T, dtype=torch.float64).view(p, T, 1)
    packed, _ = model.model.pack_image_features(
        [feats],
        torch.tensor([list(size)]),
        image_newline=torch.tensor([-1.0], dtype=torch.float64),
        vision_aspect_ratio=aspect or cfg.vision_aspect_ratio,
    )
    return [round(v) for v in packed[0][:, 0].tolist()]


def test_sizes_cover_the_grids_and_the_interpolation(onevision):
    model, _ = onevision
    for size, interpolates in SIZES.items():
        before, stock = _stock_pack(model, size, "anyres_max_1000"), _stock_pack(model, size)
        assert (len(stock) != len(before)) == interpolates, size
    grids = {(len(_stock_pack(model, s, "anyres_max_1000")) - T) for s in SIZES}
    assert len(grids) >= 8


# ------------------------------------------------------------------------- budget 1.0 is the stock model


@pytest.mark.parametrize("multi", [False, True], ids=["one-per-prompt", "multi-image"])
def test_full_budget_with_newlines_is_bit_identical(onevision, multi):
    model, processor = onevision
    images = [make_image(h, w, seed=i) for i, (h, w) in enumerate(FLAT)]
    if multi:  # several images in one prompt: each encoded as one crop + one newline
        args = ([images[:3], images[3:5]], ["<image><image><image> compare", "<image> and <image> ?"])
    else:
        args = (images, [PROMPT] * len(images))
    stock_inputs = _inputs(processor, *args)
    stock = _logits(model, stock_inputs)

    hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=True))
    inputs = _inputs(processor, *args)
    assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, inputs), stock)
    sels = hired.last_selection(model)
    assert [s.num_tokens for s in sels] == [s.num_tokens_stock for s in sels]
    if multi:
        assert all(s.grid == (0, 0) and s.num_tokens == T + 1 for s in sels)

    hired.remove(model, processor)
    after = _inputs(processor, *args)
    assert torch.equal(after["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, after), stock)


def test_full_budget_on_interpolated_images_keeps_every_patch(onevision):
    """Where stock interpolates, the budget is of the P x T patches before it: 1.0 keeps all of them."""
    model, processor = onevision
    hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=True))
    for i, size in enumerate(SCALED):
        inputs = _inputs(processor, [make_image(*size, seed=i)], [PROMPT])
        _logits(model, inputs)
        (sel,) = hired.last_selection(model)
        before, stock = _stock_pack(model, size, "anyres_max_1000"), _stock_pack(model, size)
        assert sel.num_tokens == len(before) > sel.num_tokens_stock == len(stock)
        assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == [len(before)]


# ------------------------------------------------------------------------------------------ counts


def _fixed_methods():
    out = []
    for name in list_methods():
        method = get_method(name, budget=0.2)
        if not method.adaptive:
            out.append(method)
    return out


@pytest.mark.parametrize("method", _fixed_methods(), ids=lambda m: m.name)
def test_counts_every_fixed_budget_method(onevision, method):
    """Placeholders == features == the promised count, for every grid and for interpolated images."""
    model, processor = onevision
    hired.apply(model, processor, method)
    sizes = list(SIZES)
    images = [make_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    inputs = _inputs(processor, images, [PROMPT] * len(images))
    _logits(model, inputs)  # the stock placeholder check passes: features == placeholders
    sels = hired.last_selection(model)
    runs = placeholder_runs(inputs["input_ids"], model.config.image_token_id)
    assert runs == [s.num_tokens for s in sels]
    keep_newline = getattr(method, "keep_newline", False)
    for size, sel in zip(sizes, sels):
        before = _stock_pack(model, size, "anyres_max_1000")
        p = (max(before) // T) + 1
        patches = [i for i in before if i >= 0]
        expected = min(math.floor(Fraction("0.2") * p * T), len(patches))
        assert sel.num_kept == expected, (method.name, size)
        assert sel.num_tokens == expected + (before.count(-1) if keep_newline else 0)
        assert sel.num_tokens_stock == len(_stock_pack(model, size))
        kept = {part_i * T + k for part_i, part in enumerate(sel.partitions) for k in part.kept}
        assert kept <= set(patches), "kept a padding patch"


def test_multi_image_prompt_counts(onevision):
    model, processor = onevision
    hired.apply(model, processor, hired.HiRED(budget=0.25, keep_newline=True))
    images = [make_image(*s, seed=i) for i, s in enumerate([(150, 150), (250, 250), (60, 130)])]
    inputs = _inputs(processor, [images[:2], images[2:]], ["<image> and <image> compare", PROMPT])
    _logits(model, inputs)
    sels = hired.last_selection(model)
    assert [s.grid for s in sels] == [(0, 0), (0, 0), (1, 2)]
    assert [s.num_tokens for s in sels[:2]] == [math.floor(0.25 * T) + 1] * 2
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == [s.num_tokens for s in sels]


# ---------------------------------------------------------------------------------------- batching


def _generate(model, inputs, n=5):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


def _video(seed=0, frames=4):
    import numpy as np

    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(frames, 84, 84, 3), dtype=np.uint8)


@pytest.mark.parametrize("keep_positions", [False, True], ids=["packed", "keep_positions"])
def test_batch_matches_one_by_one(onevision, keep_positions):
    """Mixed sizes (one interpolated), a multi-image prompt, a text-only prompt; then a video prompt."""
    model, processor = onevision
    a, b, c, d = (make_image(*s, seed=20 + i) for i, s in enumerate([(100, 220), (150, 150), (60, 130), (250, 250)]))
    prompts = [
        ("USER: <image>\nwhat is this? ASSISTANT:", [a]),
        ("USER: <image>\n<image>\ncompare the two images . ASSISTANT:", [b, c]),
        ("USER: describe the picture in detail . ASSISTANT:", []),
        ("USER: <image>\nhow many ? ASSISTANT:", [d]),
    ]
    hired.apply(model, processor, hired.HiRED(budget=0.3, alpha=0.4, keep_positions=keep_positions))
    singles, single_sels = [], []
    for text, imgs in prompts:
        inputs = _inputs(processor, [imgs] if imgs else None, [text])
        singles.append(_generate(model, inputs)[0])
        single_sels += hired.last_selection(model) if imgs else []
    assert hired.last_selection(model) != []  # the last prompt had an image

    batch = _inputs(processor, [imgs for _, imgs in prompts], [t for t, _ in prompts])
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1
    gen = _generate(model, batch)
    batch_sels = hired.last_selection(model)
    for i, single in enumerate(singles):
        assert torch.equal(gen[i], single), f"prompt {i}"
    strip = [s for s in batch_sels]
    assert [(s.grid, s.num_tokens, s.partitions) for s in strip] == [
        (s.grid, s.num_tokens, s.partitions) for s in single_sels
    ]
    assert [s.grid for s in batch_sels] == [(2, 3), (0, 0), (0, 0), (3, 3)]

    # a video prompt takes the stock video path; an image prompt next to it is still pruned
    video_text = "USER: <video>\nwhat happens ? ASSISTANT:"
    alone = _generate(model, processor(text=[video_text], videos=[_video()], return_tensors="pt"))[0]
    assert hired.last_selection(model) == []  # no image in that prompt
    mixed = processor(
        text=[video_text, prompts[0][0]], videos=[_video()], images=[a], return_tensors="pt", padding=True
    )
    out = _generate(model, mixed)
    assert torch.equal(out[0], alone)
    assert torch.equal(out[1], singles[0])
    assert hired.last_selection(model)[0].partitions == single_sels[0].partitions


def test_video_prompt_is_stock(onevision):
    model, processor = onevision
    inputs = processor(text=["USER: <video>\nwhat happens ? ASSISTANT:"], videos=[_video(1)], return_tensors="pt")
    stock = _logits(model, inputs)
    hired.apply(model, processor, hired.HiRED(budget=0.1))
    again = processor(text=["USER: <video>\nwhat happens ? ASSISTANT:"], videos=[_video(1)], return_tensors="pt")
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    assert torch.equal(_logits(model, again), stock)


def test_two_pass_inputs_match_one_pass(onevision):
    model, processor = onevision
    images = [make_image(*s, seed=30 + i) for i, s in enumerate([(200, 300), (80, 80)])]
    hired.apply(model, processor, hired.DivPrune(budget=0.25))
    one = _inputs(processor, [images], ["<image><image> compare"])
    two = hired.prepare_inputs(
        model, processor, images=[images], text=["<image><image> compare"], return_tensors="pt", padding=True
    )
    assert "batch_num_images" not in two and "pixel_values" not in two
    assert torch.equal(one["input_ids"], two["input_ids"])
    assert torch.equal(_logits(model, one), _logits(model, two))

    hired.apply(model, processor, hired.PruMerge())  # adaptive: only the two-pass path can size the prompt
    inputs = hired.prepare_inputs(model, processor, images=[images[:1]], text=[PROMPT], return_tensors="pt")
    _logits(model, inputs)
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == [
        hired.last_selection(model)[0].num_tokens
    ]


# ------------------------------------------------------------------------------------------ the score


@pytest.mark.parametrize("layers", [(0, None), (2, 1)], ids=["defaults", "budget2-select1"])
def test_received_score_equals_stock_attention_maps(onevision_eager, layers):
    """``score="auto"`` on SigLIP is the attention each patch receives: the stock tower's eager attention
    map (``output_attentions=True``) averaged over the queries and summed over the heads."""
    model, processor = onevision_eager
    budget_layer, selection_layer = layers
    method = hired.HiRED(budget=0.3, budget_layer=budget_layer, selection_layer=selection_layer)
    images = [make_image(*s, seed=40 + i) for i, s in enumerate([(150, 150), (250, 250)])]
    hired.apply(model, processor, method)
    inputs = _inputs(processor, images, [PROMPT] * 2)
    _logits(model, inputs)
    scores = hired.last_scores(model)
    layer_of = hired.score_layers(model)
    assert set(layer_of) == {"budget", "select"}
    hired.remove(model, processor)

    grids = [(2, 2), (3, 3)]
    for i, (image_scores, grid) in enumerate(zip(scores, grids)):
        p = 1 + grid[0] * grid[1]
        pv = inputs["pixel_values"][i][:p]
        with torch.no_grad():
            maps = model.model.vision_tower(pv, output_attentions=True).attentions
        for role, layer in layer_of.items():
            expected = maps[layer].float().mean(dim=2).sum(dim=1)  # (P, T): mean over queries, sum over heads
            torch.testing.assert_close(image_scores[role], expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------- bad configs


def test_cls_score_on_siglip_is_one_clear_error(onevision):
    model, processor = onevision
    with pytest.raises(ValueError, match=r"no \[CLS\] token; use score='received'"):
        hired.apply(model, processor, hired.HiRED(budget=0.2, score="cls"))
    assert hired.applied_method(model) is None


def test_bad_configs_are_refused(onevision):
    import copy

    model, processor = onevision
    bad = copy.deepcopy(model)
    bad.config.vision_feature_select_strategy = "default"
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        hired.apply(bad, None, hired.HiRED(budget=0.2))
    bad.config.vision_feature_select_strategy = "full"
    bad.config.vision_aspect_ratio = "anyres"
    with pytest.raises(ValueError, match="anyres_max_N"):
        hired.apply(bad, None, hired.HiRED(budget=0.2))
    other = copy.copy(processor)
    other.vision_aspect_ratio = "anyres_max_9"
    with pytest.raises(ValueError, match="vision_aspect_ratio"):
        hired.apply(model, other, hired.HiRED(budget=0.2))
    assert hired.applied_method(model) is None


def test_crop_not_a_multiple_of_the_patch():
    """SigLIP's 384 px crops of 14 px patches give 27 x 27 patches (6 px dropped): the same here, 90 / 14."""
    from conftest import require_torchvision

    from hired.testing import tiny_llava_onevision

    require_torchvision()

    model, processor = tiny_llava_onevision(seed=1, crop_size=90)
    images = [make_image(*s, seed=50 + i) for i, s in enumerate([(100, 220), (300, 300)])]
    stock_inputs = _inputs(processor, images[:1], [PROMPT])
    stock = _logits(model, stock_inputs)
    hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=True))
    inputs = _inputs(processor, images[:1], [PROMPT])
    assert torch.equal(_logits(model, inputs), stock)
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    inputs = _inputs(processor, images, [PROMPT] * 2)
    _logits(model, inputs)
    sels = hired.last_selection(model)
    assert all(part.grid == (6, 6) for s in sels for part in s.partitions)
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == [s.num_tokens for s in sels]
    hired.remove(model, processor)


def test_keep_positions_on_an_interpolated_image(onevision):
    """Kept tokens take the ids of the stock tokens nearest to them on the interpolated canvas; text after
    the image continues after the image's stock length."""
    model, processor = onevision
    size = (250, 250)  # 3x3 grid, 18 x 18 canvas interpolated to 12 x 12
    hired.apply(model, processor, hired.HiRED(budget=0.3, keep_newline=True, keep_positions=True))
    inputs = _inputs(processor, [make_image(*size, seed=60)], [PROMPT])
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=False)
    (sel,) = hired.last_selection(model)
    ids = sel.position_ids
    first = inputs["input_ids"][0].tolist().index(model.config.image_token_id)
    local = [i - first for i in ids]
    full = sorted(sel.partitions[0].kept)
    assert local[: len(full)] == full  # the full image is not interpolated: its ids are the stock ones
    canvas = local[len(full) :]
    stock_rows = [(i - T) // 13 for i in canvas]
    assert stock_rows == sorted(stock_rows)  # canvas rows in order (several may share a stock row)
    assert min(canvas) >= T and max(canvas) < sel.num_tokens_stock == T + 12 * 13
    # every kept canvas row ends in its newline, on the stock newline of the row it maps to
    assert sum(1 for i in canvas if (i - T) % 13 == 12) == 18
    assert out.logits.shape[1] == inputs["input_ids"].shape[1]
