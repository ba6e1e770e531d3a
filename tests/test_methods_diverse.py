"""The diversity methods (DivPrune, DART, CDPruner): each selection equals a slow reference written here from
the paper's definition (explicit loops, fp64, determinants for the DPP), exact counts for every grid, batched
equals one by one, CPU and CUDA, option errors, and end to end on the tiny LLaVA-NeXT / LLaVA-1.5: processor
path, two-pass path, one image serving several questions (re-selected per question), query awareness and
threads.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
import torch
from conftest import make_image
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.modeling_outputs import BaseModelOutputWithPooling

import hired
from hired.core.dpp import EXHAUSTED
from hired.core.grid import Geometry, layout_for
from hired.methods import DART, CDPruner, DivPrune, ModelInfo, Prompts, get_method, num_image_tokens
from hired.methods.base import OptionTypeError
from hired.testing import default_pinpoints

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NEXT = Geometry(84, 14, default_pinpoints(84))  # 6x6 patches per partition, grids 1x2 2x1 2x2 1x3 3x1
SINGLE = Geometry(84, 14)
INFO = ModelInfo(num_layers=4, num_heads=2, feature_layer=2)
SIZES = [(90, 170), (60, 130), (100, 220), (200, 70), (84, 84)]  # 2x2 padded, 1x2, 1x3, 3x1, 2x2
DIM = 48  # feature width: above every budget here, so the DPP kernels are never exhausted
CUDA = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def rate_count(rate: float, layout) -> int:
    floor = math.floor(Fraction(repr(float(rate))) * layout.num_partitions * layout.tokens)
    return min(max(floor, 1), layout.num_valid)  # every image keeps a token where it has one


def random_batch(layouts, seed=0, dim=DIM, text=5, rows=None):
    """Features ``(sum P, T, dim)``, keys, and prompts (one row per image unless ``rows`` maps images to rows)."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lay.num_partitions for lay in layouts)
    t = layouts[0].tokens
    feats = torch.randn(n, t, dim, generator=gen)
    keys = {"pivot": torch.randn(n, t, 8, generator=gen)}
    owner = torch.arange(len(layouts)) if rows is None else torch.tensor(rows)
    b = int(owner.max()) + 1
    embeds = torch.randn(b, text + 2, dim, generator=gen)
    mask = torch.ones(b, text + 2, dtype=torch.bool)
    mask[:, -2:] = False  # padding / placeholders: never read
    return feats, keys, Prompts(embeds=embeds, mask=mask, owner=owner)


def image_rows(layouts, values):
    """Per image: its ``(P * T, ...)`` slice of ``values`` ``(sum P, T, ...)``, and its valid list."""
    out, start = [], 0
    for lay in layouts:
        p = lay.num_partitions
        out.append((values[start : start + p].flatten(0, 1), lay.valid_mask.flatten().tolist()))
        start += p
    return out


def cos64(a, b) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------------------- slow references


def ref_divprune(x, valid, k) -> list[int]:
    """Greedy max-min with d = 1 - cos (the DivPrune paper): first argmax_j min_{i != j} d, then
    argmax_{j not in S} min_{i in S} d; scanning in index order, ties keep the lower index."""
    idx = [i for i, v in enumerate(valid) if v]
    d = {(i, j): 1.0 - cos64(x[i], x[j]) for i in idx for j in idx}
    chosen: list[int] = []
    for step in range(k):
        best, best_score = None, -math.inf
        for j in idx:
            if j in chosen:
                continue
            if step == 0:
                score = min((d[i, j] for i in idx if i != j), default=math.inf)
            else:
                score = min(d[i, j] for i in chosen)
            if score > best_score:
                best, best_score = j, score
        chosen.append(best)
    return chosen


def ref_dart(x, norms, valid, k, pivots) -> tuple[list[int], set[int]]:
    """Pivots: the p = min(pivots, k) valid tokens of largest L1 key norm; then each pivot in turn takes its
    even share of the k - p others, the remaining valid tokens least cosine-similar to it."""
    idx = [i for i, v in enumerate(valid) if v]
    p = min(pivots, k)
    piv = sorted(idx, key=lambda i: (-float(norms[i]), i))[:p]
    kept = set(piv)
    rest = k - p
    for j, pv in enumerate(piv):
        share = rest // p + (1 if j < rest % p else 0)
        cand = sorted((i for i in idx if i not in kept), key=lambda i: (cos64(x[pv], x[i]), i))
        kept |= set(cand[:share])
    return piv, kept


def ref_relevance(layouts, feats, prompts, invert=False) -> list[torch.Tensor]:
    """Per partition ``(T,)`` fp64: mean cosine of each patch to its image's prompt text tokens, min-max
    normalised over the image's valid patches, ``(r - min + 1e-6) / (max - min)``."""
    out, start = [], 0
    for i, lay in enumerate(layouts):
        row = int(prompts.owner[i])
        text = [prompts.embeds[row, s] for s in range(prompts.embeds.shape[1]) if prompts.mask[row, s]]
        raw = {}
        for p in range(lay.num_partitions):
            for t in range(lay.tokens):
                if lay.valid_mask[p, t]:
                    r = sum(cos64(feats[start + p, t], e) for e in text) / len(text)
                    raw[p, t] = -r if invert else r
        lo, hi = min(raw.values()), max(raw.values())
        for p in range(lay.num_partitions):
            out.append(
                torch.tensor(
                    [(raw[p, t] - lo + 1e-6) / (hi - lo) if (p, t) in raw else 0.0 for t in range(lay.tokens)],
                    dtype=torch.float64,
                )
            )
        start += lay.num_partitions
    return out


def ref_dpp(x, w, valid, k) -> list[int]:
    """Greedy MAP of the DPP with L[i, j] = w_i cos(x_i, x_j) w_j: each step the candidate maximising
    det(L[S + j]) / det(L[S]) (fp64 determinants), gains at or below EXHAUSTED * max diag counting as zero,
    ties to the lower index."""
    idx = [i for i, v in enumerate(valid) if v]
    n = len(valid)
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    sim = unit @ unit.T
    sim.fill_diagonal_(1.0)  # cos(x, x) = 1
    kernel = w.double()[:, None] * sim * w.double()[None, :]
    tol = EXHAUSTED * max(float(kernel[i, i]) for i in idx)
    chosen: list[int] = []
    base = 1.0
    for _ in range(k):
        best, best_gain = None, -math.inf
        for j in idx:
            if j in chosen:
                continue
            sub = chosen + [j]
            gain = float(torch.linalg.det(kernel[sub][:, sub])) / base
            gain = gain if gain > tol else 0.0
            if gain > best_gain:
                best, best_gain = j, gain
        chosen.append(best)
        base = float(torch.linalg.det(kernel[chosen][:, chosen]))
    assert len(set(chosen)) == len(chosen) and all(0 <= c < n for c in chosen)
    return chosen


# -------------------------------------------------------------------------------- against the references


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_divprune_greedy_order_equals_the_reference(seed, rate):
    layouts = [layout_for(s, NEXT) for s in SIZES[:3]] + [layout_for((84, 84), NEXT)]
    feats, _, _ = random_batch(layouts, seed)
    method = DivPrune(budget=rate)
    order, _ = method.order(layouts, feats)
    sel = method.select(layouts, {}, INFO, features=feats)
    for i, ((x, valid), (keep, _), lay) in enumerate(
        zip(image_rows(layouts, feats), image_rows(layouts, sel.keep), layouts)
    ):
        k = rate_count(rate, lay)
        expected = ref_divprune(x, valid, k)
        assert order[i, :k].tolist() == expected
        assert torch.all(order[i, k:] == -1)
        assert set(torch.nonzero(keep).flatten().tolist()) == set(expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rate, pivots", [(0.05, 4), (0.2, 4), (0.5, 3), (0.2, 1), (0.02, 8)])
def test_dart_pivots_and_kept_set_equal_the_reference(seed, rate, pivots):
    layouts = [layout_for(s, NEXT) for s in SIZES[:4]]
    feats, keys, _ = random_batch(layouts, seed)
    method = DART(budget=rate, pivots=pivots)
    keep, piv, _ = method.pivots_and_keep(layouts, feats, keys)
    norms = keys["pivot"].abs().sum(dim=-1)
    for i, ((x, valid), (nrm, _), lay) in enumerate(
        zip(image_rows(layouts, feats), image_rows(layouts, norms), layouts)
    ):
        k = rate_count(rate, lay)
        exp_piv, exp_kept = ref_dart(x, nrm, valid, k, pivots)
        assert [p for p in piv[i].tolist() if p >= 0] == exp_piv
        assert set(torch.nonzero(keep[i]).flatten().tolist()) == exp_kept


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("theta, invert", [(None, False), (None, True), (0.5, False), (0.0, False)])
def test_cdpruner_greedy_map_equals_the_reference(seed, theta, invert):
    layouts = [layout_for(s, NEXT) for s in SIZES[:3]]
    # two images share prompt row 1; row 0 belongs to the first image
    feats, _, prompts = random_batch(layouts, seed, rows=[0, 1, 1])
    method = CDPruner(budget=0.2, theta=theta, invert_relevance=invert)
    order, budgets = method.order(layouts, feats, prompts)
    relevance = ref_relevance(layouts, feats, prompts, invert)
    torch.testing.assert_close(
        method.relevance(layouts, feats, prompts).double(), torch.stack(relevance), rtol=1e-4, atol=1e-5
    )
    flat_budgets = [b for per in budgets for b in per]
    valid = torch.cat([lay.valid_mask for lay in layouts])
    for p, (r, k) in enumerate(zip(relevance, flat_budgets)):
        w = r if theta is None else torch.exp(theta / (2 * (1 - theta)) * r)
        assert order[p, :k].tolist() == ref_dpp(feats[p], w, valid[p].tolist(), k), f"partition {p}"
        assert torch.all(order[p, k:] == -1)


def test_cdpruner_without_a_prompt_is_a_plain_similarity_dpp():
    layouts = [layout_for(s, NEXT) for s in SIZES[:2]]
    feats, _, _ = random_batch(layouts, 4)
    method = CDPruner(budget=0.3)
    order, budgets = method.order(layouts, feats, None)
    assert torch.equal(method.relevance(layouts, feats, None), torch.cat([lay.valid_mask for lay in layouts]).float())
    valid = torch.cat([lay.valid_mask for lay in layouts])
    for p, k in enumerate(b for per in budgets for b in per):
        assert order[p, :k].tolist() == ref_dpp(feats[p], torch.ones(36), valid[p].tolist(), k)
    # a prompt without text tokens is the same
    _, _, prompts = random_batch(layouts, 4)
    empty = Prompts(embeds=prompts.embeds, mask=torch.zeros_like(prompts.mask), owner=prompts.owner)
    assert torch.equal(method.order(layouts, feats, empty)[0], order)


def test_cdpruner_exhausted_kernel_keeps_exact_counts_in_index_order():
    """Features of rank 2: after two picks every gain is rounding noise; the rest follow in index order."""
    layout = layout_for((84, 84), SINGLE)
    gen = torch.Generator().manual_seed(0)
    feats = (torch.randn(36, 2, generator=gen) @ torch.randn(2, 16, generator=gen))[None]
    order, budgets = CDPruner(budget=0.5).order([layout], feats, None)
    picked = order[0].tolist()
    assert budgets == [[18]] and len(set(picked)) == 18 and -1 not in picked
    assert picked[2:] == sorted(set(range(36)) - set(picked[:2]))[:16]
    assert not torch.isnan(CDPruner(budget=0.5).relevance([layout], feats, None)).any()


# ------------------------------------------------------------------------------------------ counts, batching


def every_grid_sizes():
    """Image sizes that give every pinpoint's grid, exactly and with padding rows or columns."""
    out = []
    for h, w in NEXT.grid_pinpoints:
        out += [(h, w), (h, int(w * 0.7)), (int(h * 0.7), w), (h // 3, w // 3)]
    return out


METHODS = [DivPrune, DART, CDPruner]


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("rate", [0.01, 0.05, 0.098, 0.222, 0.5, 0.99, 1.0])
def test_counts_are_exact_for_every_grid(cls, rate):
    sizes = every_grid_sizes()
    layouts = [layout_for(s, NEXT) for s in sizes]
    grids = {lay.grid for lay in layouts}
    assert {(h // 84, w // 84) for h, w in NEXT.grid_pinpoints} <= grids
    assert any(lay.num_valid < lay.num_partitions * lay.tokens for lay in layouts)  # padded ones too
    feats, keys, prompts = random_batch(layouts, 1, dim=16)
    method = cls(budget=rate)
    sel = method.select(layouts, {}, INFO, keys=keys, features=feats, prompts=prompts)
    valid = torch.cat([lay.valid_mask for lay in layouts])
    assert not torch.any(sel.keep & ~valid)
    start = 0
    for lay, budgets in zip(layouts, sel.budgets):
        p = lay.num_partitions
        assert method.count(lay) == sum(budgets) == rate_count(rate, lay), lay.grid
        assert sel.keep[start : start + p].sum(dim=1).tolist() == budgets
        start += p


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 600), st.integers(1, 600)), min_size=1, max_size=3),
    st.floats(0.01, 1.0),
    st.sampled_from(METHODS),
    st.sampled_from([NEXT, SINGLE]),
    st.integers(0, 100),
)
def test_counts_and_batched_equals_one_by_one(sizes, rate, cls, geometry, seed):
    layouts = [layout_for(s, geometry) for s in sizes]
    feats, keys, prompts = random_batch(layouts, seed, dim=12)
    method = cls(budget=rate)
    sel = method.select(layouts, {}, INFO, keys=keys, features=feats, prompts=prompts)
    start = 0
    for i, lay in enumerate(layouts):
        p = lay.num_partitions
        assert sum(sel.budgets[i]) == method.count(lay) == rate_count(rate, lay)
        part = slice(start, start + p)
        one_prompt = Prompts(
            embeds=prompts.embeds[i : i + 1], mask=prompts.mask[i : i + 1], owner=torch.zeros(1, dtype=torch.long)
        )
        one = method.select(
            [lay], {}, INFO, keys={"pivot": keys["pivot"][part]}, features=feats[part], prompts=one_prompt
        )
        assert torch.equal(one.keep, sel.keep[part]) and one.budgets == [sel.budgets[i]]
        start += p


@pytest.mark.parametrize("device", ["cpu", *CUDA])
@pytest.mark.parametrize("cls", METHODS)
def test_works_on_the_device_with_fp16_features(device, cls):
    layouts = [layout_for(s, NEXT) for s in SIZES]
    feats, keys, prompts = random_batch(layouts, 2)
    method = cls(budget=0.2)
    expected = method.select(layouts, {}, INFO, keys=keys, features=feats, prompts=prompts)
    dev = lambda t: t.to(device)  # noqa: E731
    moved = Prompts(embeds=dev(prompts.embeds), mask=dev(prompts.mask), owner=dev(prompts.owner))
    got = method.select(layouts, {}, INFO, keys={"pivot": dev(keys["pivot"])}, features=dev(feats), prompts=moved)
    assert got.keep.device.type == device
    assert torch.equal(got.keep.cpu(), expected.keep) and got.budgets == expected.budgets
    # half-precision features (the model's dtype on a GPU) are computed in fp32: exact counts, valid patches
    half = method.select(
        layouts,
        {},
        INFO,
        keys={"pivot": dev(keys["pivot"]).half()},
        features=dev(feats).half(),
        prompts=Prompts(embeds=moved.embeds.half(), mask=moved.mask, owner=moved.owner),
    )
    assert [sum(b) for b in half.budgets] == [method.count(lay) for lay in layouts]
    assert not torch.any(half.keep.cpu() & ~torch.cat([lay.valid_mask for lay in layouts]))


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (DivPrune, {"budget": 0.0}, "budget"),
        (DivPrune, {"budget": 1.5}, "budget"),
        (DivPrune, {"space": "keys"}, "space"),
        (DivPrune, {"budget": float("nan")}, "budget"),
        (DART, {"pivots": 0}, "pivots"),
        (DART, {"pivots": 2.5}, "pivots"),
        (DART, {"pivot_layer": -1}, "pivot_layer"),
        (DART, {"budget": -0.1}, "budget"),
        (DART, {"space": 1}, "space"),
        (CDPruner, {"theta": 1.0}, "theta"),
        (CDPruner, {"theta": -0.1}, "theta"),
        (CDPruner, {"theta": "0.5"}, "theta"),
        (CDPruner, {"invert_relevance": "yes"}, "invert_relevance"),
        (CDPruner, {"budget": 2}, "budget"),
        (CDPruner, {"keep_newline": 1}, "keep_newline"),
    ],
)
def test_bad_options_get_one_clear_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_type_errors_are_option_type_errors():
    with pytest.raises(OptionTypeError, match="option pivots must be an integer"):
        DART(pivots=2.5)
    with pytest.raises(OptionTypeError, match="option space must be 'projected' or 'vision'"):
        DivPrune(space="keys")


def test_registry_interface_and_missing_inputs():
    names = hired.list_methods()
    for name, cls in (("divprune", DivPrune), ("dart", DART), ("cdpruner", CDPruner)):
        assert name in names and names[name] and "arXiv" in cls.__doc__ and "Budget semantics" in cls.__doc__
        assert getattr(hired, cls.__name__) is cls and get_method(name) == cls()
    assert CDPruner.query_aware and not DivPrune.query_aware and not DART.query_aware and not hired.HiRED.query_aware
    assert DivPrune().feature_space() == "projected" and DART(space="vision").feature_space() == "vision"
    assert CDPruner().feature_space() == "projected" and hired.HiRED().feature_space() is None
    assert DART().key_layers(INFO) == {"pivot": 2} and DART(pivot_layer=1).key_layers(INFO) == {"pivot": 1}
    assert (DivPrune().budget, DART().budget, DART().pivots, CDPruner().budget) == (0.098, 0.222, 4, 0.222)
    layouts = [layout_for((90, 170), NEXT)]
    feats, keys, _ = random_batch(layouts)
    for method in (DivPrune(), DART(), CDPruner()):
        with pytest.raises(ValueError, match="features"):
            method.select(layouts, {}, INFO, keys=keys)
        with pytest.raises(ValueError, match="shape"):
            method.select(layouts, {}, INFO, keys=keys, features=feats[:2])
    with pytest.raises(ValueError, match="keys"):
        DART().select(layouts, {}, INFO, features=feats)


# ------------------------------------------------------------------------------------------- end to end

ONE = "USER: <image>\nwhat is this? ASSISTANT:"
PROMPTS = [
    "USER: <image>\nwhat is this? ASSISTANT:",
    "USER: <image>\nwhere is the small red cat in the corner? ASSISTANT:",
    "USER: count them <image> ASSISTANT:",
]
TWO = "USER: <image>\nand <image>\nwhich is brighter? ASSISTANT:"
TEXT = "USER: hello there ASSISTANT:"
E2E = [
    DivPrune(budget=0.3),
    DART(budget=0.3, space="vision"),
    CDPruner(budget=0.3),
    CDPruner(budget=0.2, keep_newline=True, keep_positions=True),
    DivPrune(budget=0.25, keep_positions=True),
]


def kept(model):
    return [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]


def generate(model, inputs, n=3):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False)[:, -n:]


def batch_images():
    return [make_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES[:3])]


@pytest.mark.parametrize("models", ["llava_next", "llava"], indirect=True)
@pytest.mark.parametrize("method", E2E, ids=lambda m: f"{m.name}-{m.budget}-{m.keep_positions}")
def test_end_to_end_processor_two_pass_and_one_by_one(models, method):
    model, processor, newline = models
    hired.apply(model, processor, method)
    images = batch_images()
    inputs = processor(images=images, text=PROMPTS, return_tensors="pt", padding=True)
    layouts = [layout_for(s if newline else (84, 84), NEXT if newline else SINGLE) for s in SIZES[:3]]
    placeholders = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == [num_image_tokens(method, lay, newline) for lay in layouts]
    batch = generate(model, inputs)
    batch_kept = kept(model)
    assert [sum(len(p) for p in k) for k in batch_kept] == [method.count(lay) for lay in layouts]
    two = hired.prepare_inputs(model, processor, images=images, text=PROMPTS, return_tensors="pt", padding=True)
    assert kept(model) == batch_kept
    assert torch.equal(two["input_ids"], inputs["input_ids"]) and torch.equal(generate(model, two), batch)
    for i, (image, prompt) in enumerate(zip(images, PROMPTS)):
        one = processor(images=[image], text=[prompt], return_tensors="pt")
        assert torch.equal(generate(model, one), batch[i : i + 1])
        assert kept(model)[0] == batch_kept[i]
        if method.keep_positions:
            assert hired.last_selection(model)[0].position_ids is not None


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_cdpruner_follows_the_prompt_of_each_image(models):
    """Two images in one prompt share it; a text-only row and the other rows do not count; the same image
    under different prompts keeps different tokens."""
    model, processor, _ = models
    hired.apply(model, processor, CDPruner(budget=0.3))
    image_a, image_b, image_c = batch_images()
    texts = [TWO, TEXT, PROMPTS[1]]
    inputs = processor(images=[image_a, image_b, image_c], text=texts, return_tensors="pt", padding=True)
    generate(model, inputs)
    together = kept(model)
    generate(model, processor(images=[image_a, image_b], text=[TWO], return_tensors="pt"))
    assert kept(model) == together[:2]
    generate(model, processor(images=[image_c], text=[PROMPTS[1]], return_tensors="pt"))
    assert kept(model) == together[2:]
    per_prompt = []
    for prompt in PROMPTS:
        generate(model, processor(images=[image_a], text=[prompt], return_tensors="pt"))
        per_prompt.append(kept(model)[0])
    assert per_prompt[0] != per_prompt[1] and per_prompt[1] != per_prompt[2]
    # left padding changes nothing
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"
    try:
        generate(model, processor(images=[image_a, image_b, image_c], text=texts, return_tensors="pt", padding=True))
    finally:
        processor.tokenizer.padding_side = side
    assert kept(model) == together


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_prepare_inputs_query_text_selects_for_other_texts(models):
    """``query_text``: score a continuation while the tokens are chosen for the prompt alone."""
    model, processor, _ = models
    hired.apply(model, processor, CDPruner(budget=0.3))
    images = batch_images()[:2]
    prompts = PROMPTS[:2]
    generate(model, processor(images=images, text=prompts, return_tensors="pt", padding=True))
    expected = kept(model)
    fulls = [p + " a red cat sitting on the mat" for p in prompts]
    hired.prepare_inputs(
        model, processor, images=images, text=fulls, query_text=prompts, return_tensors="pt", padding=True
    )
    assert kept(model) == expected
    hired.prepare_inputs(model, processor, images=images, text=fulls, return_tensors="pt", padding=True)
    assert kept(model) != expected  # the continuation is part of the query otherwise
    with pytest.raises(ValueError, match="placeholders"):
        hired.prepare_inputs(
            model, processor, images=images, text=fulls, query_text=[prompts[0]], return_tensors="pt", padding=True
        )


@pytest.mark.parametrize("models", ["llava_next", "llava"], indirect=True)
@pytest.mark.parametrize("keep_positions", [False, True])
def test_one_encoding_serves_several_questions_reselected_per_question(models, keep_positions):
    """As ``hired eval --offline`` does: encode an image once (no prompt), then answer several questions with
    those features; each question's tokens are selected for it, as the processor path selects them."""
    model, processor, _ = models
    hired.apply(model, processor, CDPruner(budget=0.3, keep_positions=keep_positions))
    image = batch_images()[0]
    expected, expected_kept = [], []
    for prompt in PROMPTS:
        expected.append(generate(model, processor(images=[image], text=[prompt], return_tensors="pt"))[0])
        expected_kept.append(kept(model)[0])
    pixels = processor.image_processor([image], return_tensors="pt")
    extra = {"image_sizes": pixels["image_sizes"]} if "image_sizes" in pixels else {}
    with torch.no_grad():
        encoded = model.model.get_image_features(pixel_values=pixels["pixel_values"], **extra)
    count = len(encoded.pooler_output[0])
    texts = [p.replace("<image>", "<image>" * count) for p in PROMPTS]
    tokens = processor.tokenizer(texts, return_tensors="pt", padding=True)
    mm = BaseModelOutputWithPooling(pooler_output=[encoded.pooler_output[0]] * len(PROMPTS))
    with torch.no_grad():
        out = model.generate(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            mm_encoder_outputs={"image": mm},
            max_new_tokens=3,
            do_sample=False,
        )[:, -3:]
    assert kept(model) == expected_kept
    assert all(torch.equal(out[i], expected[i]) for i in range(len(PROMPTS)))
    assert len(mm.pooler_output) == 3 and mm.pooler_output[0] is encoded.pooler_output[0]  # the caller's untouched


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_full_budget_gives_the_tokens_any_method_keeping_everything_gives(models):
    """The kept patches are projected from the projector's input again, so at budget 1.0 the logits are the
    ones HiRED keeping everything gives, bit for bit."""
    model, processor, _ = models
    hired.apply(model, processor, hired.HiRED(budget=1.0))
    with torch.no_grad():
        reference = model(**processor(images=batch_images(), text=PROMPTS, return_tensors="pt", padding=True)).logits
    for method in (DivPrune(budget=1.0), DART(budget=1.0), CDPruner(budget=1.0)):
        hired.apply(model, processor, method)
        with torch.no_grad():
            assert torch.equal(
                model(**processor(images=batch_images(), text=PROMPTS, return_tensors="pt", padding=True)).logits,
                reference,
            ), method.name


def test_threads_each_get_their_own_prompt(next_pair):
    model, processor = next_pair
    hired.apply(model, processor, CDPruner(budget=0.3))
    try:
        images = batch_images()

        def run(k):
            texts = [PROMPTS[(k + j) % 3] for j in range(2)]
            out = generate(model, processor(images=images[:2], text=texts, return_tensors="pt", padding=True))
            return out, kept(model)

        alone = [run(k) for k in range(3)]
        barrier = threading.Barrier(3)

        def worker(k):
            barrier.wait()
            return [run(k) for _ in range(2)]

        with ThreadPoolExecutor(3) as pool:
            results = [f.result() for f in [pool.submit(worker, k) for k in range(3)]]
        for k, per_thread in enumerate(results):
            for out, k_kept in per_thread:
                assert torch.equal(out, alone[k][0]) and k_kept == alone[k][1]
    finally:
        hired.remove(model, processor)
