"""The content-adaptive budget (``HiRED(adapt=...)``): the sharp-edge density against a plain loop over pixel
pairs, the budget rule, the two-pass counts on a tiny LLaVA-NeXT (batch == one by one), ``hired.calibrate``
and the refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import last_record, make_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import hired
from hired.adapters.calibrate import image_details
from hired.core.budget import adapted_budget, total_budget
from hired.core.detail import EDGE_STEP, edge_density, sharp_edges
from hired.core.grid import Layout

PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"


def slow_sharp_edges(luma: np.ndarray, valid: np.ndarray, patch: int, step: float) -> tuple[int, int]:
    """Pairs of 4-neighbours inside one valid patch, and those differing by more than ``step``: one loop."""
    h, w = luma.shape
    side = w // patch
    sharp = pairs = 0
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):
                y2, x2 = y + dy, x + dx
                if y2 >= h or x2 >= w or (y // patch, x // patch) != (y2 // patch, x2 // patch):
                    continue
                if not valid[(y // patch) * side + x // patch]:
                    continue
                pairs += 1
                sharp += abs(float(luma[y2, x2]) - float(luma[y, x])) > step
    return sharp, pairs


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),  # patches per side
    st.integers(2, 4),  # pixels per patch side
    st.integers(0, 2**31 - 1),
)
def test_sharp_edges_are_the_pairs_inside_valid_patches(side, patch, seed):
    rng = np.random.default_rng(seed)
    n = 2
    grey = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0], size=(n, side * patch, side * patch))
    valid = rng.random((n, side * side)) < 0.7
    mean, std = [0.5], [0.25]
    pixels = torch.tensor((grey - 0.5) / 0.25, dtype=torch.float32)[:, None]
    sharp, pairs = sharp_edges(pixels, torch.tensor(valid), mean, std)
    for i in range(n):
        assert (int(sharp[i]), int(pairs[i])) == slow_sharp_edges(grey[i], valid[i], patch, EDGE_STEP)


def test_rgb_luminance_and_normalisation_are_undone():
    """A white / black step is sharp; a red / black one (luminance 0.299, under 96/255) is not."""
    img = torch.zeros(1, 3, 2, 2)
    img[0, :, :, 1] = 1.0  # right column white
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]
    norm = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    sharp, pairs = sharp_edges(norm, torch.ones(1, 1, dtype=torch.bool), mean, std)
    assert (int(sharp), int(pairs)) == (2, 4)
    red = torch.zeros(1, 3, 2, 2)
    red[0, 0, :, 1] = 1.0
    norm = (red - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert int(sharp_edges(norm, torch.ones(1, 1, dtype=torch.bool), mean, std)[0]) == 0


def test_edge_density_reads_the_subimages_and_skips_padding():
    with_subs = Layout(image_size=(4, 8), side=2, grid=(1, 2), top=0, bottom=2, left=0, right=3)
    alone = Layout(image_size=(4, 4), side=2)
    pixels = torch.zeros(4, 1, 4, 4)
    pixels[0, 0, :, 1::2] = 1.0  # full image: every horizontal pair sharp (ignored: it has sub-images)
    pixels[1, 0, 0, 1] = 1.0  # sub-image 1: one pixel, two sharp pairs
    pixels[2, 0, :, 3] = 1.0  # sub-image 2: sharp pairs only in its padded right patches (column 3 of the canvas)
    pixels[3, 0, 0, 0] = 1.0  # the lone image: one corner pixel
    got = edge_density([with_subs, alone], pixels, [0.0], [1.0])
    valid_pairs = 4 * 4 + 2 * 4  # 4 pairs in a 2x2 patch: sub-image 1 whole (4 patches), sub-image 2 its left 2
    assert got == [2 / valid_pairs, 2 / 16]
    with pytest.raises(ValueError, match="partitions of pixels"):
        edge_density([with_subs], pixels, [0.0], [1.0])


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.01, 1.0),
    st.floats(0.0, 3.0),
    st.floats(0.0, 20.0),
    st.floats(0.0, 20.0),
    st.integers(1, 5),
    st.sampled_from([16, 64, 144]),
)
def test_adapted_budget_is_monotone_bounded_and_the_fixed_one_at_the_reference(rate, gamma, r1, r2, parts, tokens):
    lo, hi = sorted((r1, r2))
    a = adapted_budget(rate, gamma, lo, parts, tokens, parts * tokens)
    b = adapted_budget(rate, gamma, hi, parts, tokens, parts * tokens)
    assert 1 <= a <= b <= parts * tokens
    fixed = max(total_budget(rate, parts, tokens), 1)
    assert adapted_budget(rate, gamma, 1.0, parts, tokens, parts * tokens) == fixed
    assert adapted_budget(rate, 0.0, hi, parts, tokens, parts * tokens) == fixed


@pytest.mark.parametrize(
    "options, match",
    [
        ({"adapt": -0.5}, "adapt must be"),
        ({"adapt": float("nan")}, "adapt must be"),
        ({"adapt": float("inf")}, "adapt must be"),
        ({"reference": 0.0}, "reference must be"),
        ({"reference": float("nan")}, "reference must be"),
        ({"adapt": "1"}, "adapt must be a number"),
    ],
)
def test_bad_adaptive_options_name_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        hired.HiRED(**options)


def test_the_count_needs_the_detail_and_follows_the_rule():
    method = hired.HiRED(budget=0.2, adapt=1.0, reference=0.01)
    assert method.adaptive and method.reads_pixels() and not hired.HiRED().adaptive
    layout = Layout(image_size=(168, 168), side=6, grid=(2, 2), top=0, bottom=12, left=0, right=12)
    with pytest.raises(ValueError, match=r"prepare_inputs.*HiRED\(budget=0.2, adapt=0.0\)"):
        method.count(layout)
    fixed = hired.HiRED(budget=0.2).count(layout)
    assert method.count(dataclasses.replace(layout, detail=0.01)) == fixed
    assert method.count(dataclasses.replace(layout, detail=0.02)) == 2 * fixed
    assert method.count(dataclasses.replace(layout, detail=0.0)) == 1
    assert method.count(dataclasses.replace(layout, detail=1.0)) == layout.num_valid  # capped at every patch


def scenes() -> list[Image.Image]:
    """A smooth gradient, sharp black rectangles on white, and noise, at sizes of different grids."""
    grad = Image.fromarray(np.tile(np.linspace(0, 255, 170, dtype=np.uint8), (90, 1)), mode="L").convert("RGB")
    page = Image.new("RGB", (130, 60), "white")
    draw = ImageDraw.Draw(page)
    for x in range(4, 120, 12):
        draw.rectangle((x, 10, x + 5, 40), fill="black")
    return [grad, page, make_image(100, 220, seed=3), make_image(200, 70, seed=4)]


def test_two_pass_counts_follow_the_pixels_and_a_batch_equals_one_by_one(llava_next):
    model, processor = llava_next
    method = hired.HiRED(budget=0.2, adapt=1.0, reference=0.02)
    hired.apply(model, processor, method)
    with pytest.raises(ValueError, match="prepare_inputs"):
        processor(images=scenes(), text=[PROMPT] * 4, return_tensors="pt", padding=True)
    inputs = hired.prepare_inputs(
        model, processor, images=scenes(), text=[PROMPT] * 4, return_tensors="pt", padding=True
    )
    placeholders = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    layouts = last_record(model).layouts
    details = [lay.detail for lay in layouts]
    assert details == [lay.detail for lay in image_details(model, processor, scenes())]
    assert details[0] == 0.0 and details[1] > details[2] > 0  # gradient: no sharp step; black bars on white: many
    assert placeholders == [method.count(lay) for lay in layouts] == [s.num_tokens for s in hired.last_selection(model)]
    assert placeholders[0] == 1 and placeholders[1] > hired.HiRED(budget=0.2).count(layouts[1])
    with torch.no_grad():
        batch = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
    kept = [[p.kept for p in s.partitions] for s in hired.last_selection(model)]
    for i, img in enumerate(scenes()):
        one = hired.prepare_inputs(model, processor, images=[img], text=[PROMPT], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(model.generate(**one, max_new_tokens=3, do_sample=False)[:, -3:], batch[i : i + 1])
        assert [p.kept for p in hired.last_selection(model)[0].partitions] == kept[i]


def test_calibrate_holds_the_mean_count_at_the_fixed_budget(llava_next):
    model, processor = llava_next
    images = [*scenes(), *(make_image(60 + 20 * i, 200 - 15 * i, seed=10 + i) for i in range(6))]
    for budget in (0.1, 0.3):
        method = hired.HiRED(budget=budget, adapt=1.0)
        tuned = hired.calibrate(model, processor, images, method)
        assert tuned.adapt == 1.0 and tuned.budget == budget and tuned.reference > 0
        layouts = image_details(model, processor, images)
        fixed = [hired.HiRED(budget=budget).count(lay) for lay in layouts]
        counts = [tuned.count(lay) for lay in layouts]
        assert counts != fixed  # the counts follow the content ...
        # ... at the same mean: the closest any reference reaches (a small change either way moves it away)
        gap = abs(sum(counts) - sum(fixed))
        for factor in (0.98, 1.02):
            moved = dataclasses.replace(tuned, reference=tuned.reference * factor)
            assert gap <= abs(sum(moved.count(lay) for lay in layouts) - sum(fixed))
        assert gap <= max(max(counts), 1)
    assert hired.applied_method(model) is None  # calibration applies nothing


def test_calibrate_refuses_what_it_cannot_tune(llava_next):
    model, processor = llava_next
    with pytest.raises(ValueError, match="content-adaptive budget"):
        hired.calibrate(model, processor, scenes(), hired.HiRED(budget=0.2))
    with pytest.raises(ValueError, match="at least one image"):
        hired.calibrate(model, processor, [], hired.HiRED(adapt=1.0))
    with pytest.raises(ValueError, match="sharp edge"):
        hired.calibrate(model, processor, scenes()[:1], hired.HiRED(adapt=1.0))
