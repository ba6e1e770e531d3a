"""InternVL videos in the transformers adapter, on the tiny random-weight InternVL (112 px tiles, 16 tokens
each). The stock processor writes every video frame as one tile (``<img>``, 16 context tokens, ``</img>``)
and joins the frames into ``pixel_values`` among the images' tiles in the prompts' order; with a method
applied the frames must reach the language model exactly as in the stock model while the images beside
them are pruned.

Expected values come from stock runs: input ids, logits, greedy answers, the embeddings the language model
receives at the frames' placeholders and the position ids of a stock run of the same prompts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_image
from test_internvl import PROMPT, TILE, _generate, _image_runs, _inputs, _logits, _Positions

import hired

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 16
VIDEO = "USER: <video> what happens ? ASSISTANT:"
IMAGE_THEN_VIDEO = "USER: <IMG_CONTEXT> and then <video> what changed ? ASSISTANT:"
VIDEO_THEN_IMAGE = "USER: <video> and later <IMG_CONTEXT> is it the same place ? ASSISTANT:"
FRAME = [TILE, TILE, 0, 0]  # a video frame's row of image_sizes


def _video(seed: int = 0, frames: int = 3) -> np.ndarray:
    return np.random.RandomState(100 + seed).randint(0, 256, size=(frames, TILE, TILE, 3), dtype=np.uint8)


class _Embeds:
    """The ``inputs_embeds`` of each language-model call."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self._handle = model.model.language_model.register_forward_pre_hook(
            lambda _m, _a, kw: self.calls.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True
        )

    def close(self):
        self._handle.remove()


def _prompt_embeds(model, inputs) -> torch.Tensor:
    rec = _Embeds(model)
    try:
        _logits(model, inputs)
    finally:
        rec.close()
    return rec.calls[0]


def _runs(embeds: torch.Tensor, input_ids: torch.Tensor, ctx: int, lengths: list[int]) -> list[torch.Tensor]:
    """The embeddings at the context tokens, row-major, cut into runs of ``lengths``."""
    return list(embeds[input_ids == ctx].split(lengths))


METHODS = [
    hired.HiRED(budget=0.3),
    hired.DART(budget=0.25),
    hired.CDPruner(budget=0.3),
    hired.HiRED(budget=0.3, keep_positions=True),
]


@pytest.mark.parametrize("frames", [1, 4])
def test_video_prompt_is_stock_with_every_kind_of_method(internvl, frames):
    """Ids, logits and greedy answer of a video prompt are the stock ones bit for bit (one frame too: one
    tile, which without the frames' marks would pass for an image of one tile), and it has no selection."""
    model, processor = internvl
    stock_inputs = processor(text=[VIDEO], videos=[_video(frames=frames)], return_tensors="pt")
    stock, stock_gen = _logits(model, stock_inputs), _generate(model, stock_inputs)
    image = make_image(150, 230, seed=5)
    for method in METHODS:
        hired.apply(model, processor, method)
        _logits(model, _inputs(processor, [image], [PROMPT]))
        assert hired.last_selection(model) != []
        inputs = processor(text=[VIDEO], videos=[_video(frames=frames)], return_tensors="pt")
        assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
        assert inputs["image_sizes"].tolist() == [FRAME] * frames
        assert torch.equal(_logits(model, inputs), stock), method
        assert hired.last_selection(model) == []  # no image in that prompt
        assert torch.equal(_generate(model, inputs), stock_gen), method
        # and an image prompt is still pruned
        inputs = _inputs(processor, [image], [PROMPT])
        _logits(model, inputs)
        assert _image_runs(processor, inputs["input_ids"]) == [math.floor(method.budget * 7 * T)]
        hired.remove(model, processor)
    after = processor(text=[VIDEO], videos=[_video(frames=frames)], return_tensors="pt")
    assert set(after) == set(stock_inputs)  # no image_sizes once removed


def _mixed(seed: int = 0):
    """Four prompts: image then video, video alone, video then image, image alone (videos of 3 frames)."""
    a, b, c = (make_image(*s, seed=seed + i) for i, s in enumerate([(150, 230), (100, 100), (60, 130)]))
    prompts = [
        (IMAGE_THEN_VIDEO, [a], [_video(seed)]),
        (VIDEO, [], [_video(seed + 1)]),
        (VIDEO_THEN_IMAGE, [b], [_video(seed + 2)]),
        (PROMPT, [c], []),
    ]
    return prompts, [(7, (2, 3)), (1, (0, 0)), (3, (1, 2))]  # tiles and grid of a, b, c


def _batch(processor, prompts):
    images = [im for _, imgs, _ in prompts for im in imgs]
    videos = [v for *_, vids in prompts for v in vids]
    return _inputs(processor, images, [t for t, *_ in prompts], **({"videos": videos} if videos else {}))


def test_mixed_prompts_prune_the_images_and_keep_the_frames_stock(internvl):
    model, processor = internvl
    prompts, tiles = _mixed()
    stock_inputs = _batch(processor, prompts)
    stock, stock_embeds = _logits(model, stock_inputs), _prompt_embeds(model, stock_inputs)
    ctx = processor.image_token_id

    hired.apply(model, processor, hired.HiRED(budget=1.0))
    full = _batch(processor, prompts)
    assert torch.equal(full["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, full), stock)  # every frame and tile in its stock place, bit for bit

    hired.apply(model, processor, hired.HiRED(budget=0.3, alpha=0.4))
    inputs = _batch(processor, prompts)
    (h0, w0), (h1, w1), (h2, w2) = [(150, 230), (100, 100), (60, 130)]
    assert inputs["image_sizes"].tolist() == [
        [h0, w0, 2, 3],
        *[FRAME] * 3,  # the first prompt's video, after its image
        *[FRAME] * 6,  # the second's video, the third's video
        [h1, w1, 1, 1],
        [h2, w2, 1, 2],
    ]
    counts = [math.floor(0.3 * n * T) for n, _ in tiles]
    runs = [counts[0], *[T] * 9, counts[1], counts[2]]
    assert _image_runs(processor, inputs["input_ids"]) == runs
    embeds = _prompt_embeds(model, inputs)
    sels = hired.last_selection(model)
    assert [(s.num_tokens, s.grid) for s in sels] == [(n, g) for n, (_, g) in zip(counts, tiles)]
    stock_runs = _runs(stock_embeds, stock_inputs["input_ids"], ctx, [7 * T, *[T] * 9, T, 3 * T])
    got = _runs(embeds, inputs["input_ids"], ctx, runs)
    for k in range(1, 10):  # the frames reach the language model exactly as in the stock model
        assert torch.equal(got[k], stock_runs[k]), f"frame run {k}"

    gen = _generate(model, inputs)
    single_sels = []
    for i, (text, imgs, vids) in enumerate(prompts):
        one = _inputs(processor, imgs, [text], **({"videos": vids} if vids else {}))
        assert torch.equal(gen[i], _generate(model, one)[0]), f"prompt {i}"
        single_sels += hired.last_selection(model)
    assert single_sels == sels


def test_query_aware_method_reads_each_image_prompt_beside_frames(internvl):
    """CDPruner finds each image's prompt among placeholders of frames too: batched as one by one."""
    model, processor = internvl
    prompts, _ = _mixed(seed=10)
    prompts = [prompts[0], prompts[2], prompts[3]]
    hired.apply(model, processor, hired.CDPruner(budget=0.3))
    singles, single_sels = [], []
    for text, imgs, vids in prompts:
        singles.append(_generate(model, _inputs(processor, imgs, [text], **({"videos": vids} if vids else {})))[0])
        single_sels += hired.last_selection(model)
    batch = _batch(processor, prompts)
    gen = _generate(model, batch)
    assert all(torch.equal(gen[i], single) for i, single in enumerate(singles))
    assert hired.last_selection(model) == single_sels
    _logits(model, batch)  # one forward, whose own get_image_features call has the prompts
    assert hired.last_selection(model) == single_sels


def _stock_offsets(sel) -> list[int]:
    """The kept tokens' indices in the image's stock sequence (tiles, then the thumbnail)."""
    n = len(sel.partitions) - 1
    index = [(p - 1) * T + k for p, part in enumerate(sel.partitions) if p for k in part.kept]
    return sorted(index + [n * T + k for k in sel.partitions[0].kept])


def test_keep_positions_gives_text_frames_and_kept_tokens_their_stock_ids(internvl):
    model, processor = internvl
    image = make_image(200, 200, seed=30)
    ctx = processor.image_token_id
    for text in (IMAGE_THEN_VIDEO, VIDEO_THEN_IMAGE):
        stock_inputs = _inputs(processor, [image], [text], videos=[_video(4)])
        rec = _Positions(model)
        _generate(model, stock_inputs, n=3)
        rec.close()
        stock_calls, stock_ids = rec.calls, stock_inputs["input_ids"][0].tolist()

        hired.apply(model, processor, hired.HiRED(budget=0.3, keep_positions=True))
        inputs = _inputs(processor, [image], [text], videos=[_video(4)])
        rec = _Positions(model)
        _generate(model, inputs, n=3)
        rec.close()
        (sel,) = hired.last_selection(model)
        ids = inputs["input_ids"][0].tolist()
        # where each token of this prompt sits in the stock one: text in order, frames whole, kept tokens
        where = dict(zip([i for i, t in enumerate(ids) if t != ctx], [i for i, t in enumerate(stock_ids) if t != ctx]))
        runs = [i for i, t in enumerate(ids) if t == ctx and ids[i - 1] != ctx]
        stock_runs = [i for i, t in enumerate(stock_ids) if t == ctx and stock_ids[i - 1] != ctx]
        image_run = 0 if text == IMAGE_THEN_VIDEO else 3
        image_pos = []
        for r, (start, stock_start) in enumerate(zip(runs, stock_runs)):
            offsets = _stock_offsets(sel) if r == image_run else range(T)
            where.update({start + k: stock_start + o for k, o in enumerate(offsets)})
            image_pos += [start + k for k in range(len(offsets))] if r == image_run else []
        assert sorted(where) == list(range(len(ids)))
        prompt, stock_prompt = rec.calls[0][0], stock_calls[0][0]
        assert [int(prompt[i]) for i in range(len(ids))] == [int(stock_prompt[where[i]]) for i in range(len(ids))]
        for step in range(1, 3):
            assert torch.equal(rec.calls[step], stock_calls[step]), f"decode step {step}"
        assert sel.position_ids == [int(prompt[i]) for i in image_pos]
        rec = _Positions(model)  # one forward, whose own get_image_features call encodes (no generate)
        _logits(model, inputs)
        rec.close()
        assert torch.equal(rec.calls[0][0], prompt)
        assert hired.last_selection(model) == [sel]
        hired.remove(model, processor)


def test_two_pass_inputs_take_videos_alone_and_refuse_the_mix(internvl):
    model, processor = internvl
    stock_inputs = processor(text=[VIDEO], videos=[_video(5)], return_tensors="pt")
    stock = _logits(model, stock_inputs)
    hired.apply(model, processor, hired.DART(budget=0.25))
    two = hired.prepare_inputs(model, processor, text=[VIDEO], videos=[_video(5)], return_tensors="pt")
    assert torch.equal(two["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, two), stock)
    with pytest.raises(ValueError, match="cannot take images and videos together for InternVL"):
        hired.prepare_inputs(
            model, processor, images=[make_image(100, 100)], text=[IMAGE_THEN_VIDEO], videos=[_video(5)]
        )


def test_frames_marked_without_their_tiles_are_refused(internvl):
    model, processor = internvl
    hired.apply(model, processor, hired.HiRED(budget=0.3))
    inputs = _inputs(processor, [make_image(100, 100)], [IMAGE_THEN_VIDEO], videos=[_video(6)])
    sizes = inputs["image_sizes"]
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=sizes)
        assert out.pooler_output.shape[0] == math.floor(0.3 * T) + 3 * T  # the image's kept tokens, then the frames
        with pytest.raises(ValueError, match="image_sizes imply 4"):
            model.model.get_image_features(pixel_values=inputs["pixel_values"][:3], image_sizes=sizes)
        with pytest.raises(ValueError, match=r"\(height, width, 0, 0\) of a video frame"):
            model.model.get_image_features(
                pixel_values=inputs["pixel_values"], image_sizes=torch.tensor([[100, 100, 1, 0], *[FRAME] * 3])
            )
