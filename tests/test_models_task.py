"""The synthetic high-resolution question task: deterministic, correct answers, the grids it promises."""

import collections

import numpy as np
import pytest

from hired.core.grid import Geometry, layout_for
from hired.models import task, tiny_vlm


@pytest.fixture(scope="module")
def test_split():
    return task.make_split("test", 250, seed=0)


def test_split_is_a_function_of_its_seed(test_split):
    again = task.make_split("test", 250, seed=0)
    assert again.questions == test_split.questions and again.scenes == test_split.scenes
    assert np.array_equal(np.asarray(again.image(3)), np.asarray(test_split.image(3)))
    other = task.make_split("test", 250, seed=1)
    assert other.scenes != test_split.scenes


def test_default_test_split_has_1000_balanced_questions(test_split):
    assert len(test_split.questions) == 1000
    kinds = collections.Counter(q.kind for q in test_split.questions)
    assert kinds == {kind: 250 for kind in task.KINDS}
    presence = collections.Counter(q.answer for q in test_split.questions if q.kind == "presence")
    assert 0.35 < presence["yes"] / 250 < 0.65
    assert set(q.answer for q in test_split.questions) <= set(task.answers())


def test_train_and_test_use_different_photos():
    train = task.make_split("train", 60, seed=0)
    test = task.make_split("test", 60, seed=0)
    assert {s.photo for s in train.scenes}.isdisjoint({s.photo for s in test.scenes})


def test_every_grid_occurs_and_is_the_one_llava_next_picks(test_split):
    geometry = Geometry(tiny_vlm.CROP, tiny_vlm.PATCH, tuple(map(tuple, tiny_vlm.pinpoints())))
    grids = collections.Counter()
    for scene in test_split.scenes:
        assert layout_for(scene.size, geometry).grid == scene.grid
        grids[scene.grid] += 1
    assert set(grids) == set(task.GRIDS)


def test_answers_follow_from_the_scene(test_split):
    for q in test_split.questions:
        scene = test_split.scenes[q.image]
        by_shape = {s.shape: s for s in scene.shapes}
        if q.kind == "count":
            assert q.answer == task.COUNTS[len(scene.shapes) - 1]
        elif q.kind == "colour":
            shape = q.question.split()[-1].rstrip("?")
            assert by_shape[shape].colour == q.answer
        elif q.kind == "quadrant":
            s = by_shape[q.question.split()[-1].rstrip("?")]
            h, w = scene.size
            assert q.answer == ("top" if s.center[1] < h / 2 else "bottom") + " " + (
                "left" if s.center[0] < w / 2 else "right"
            )
        else:
            colour, shape = q.question.split()[-2], q.question.split()[-1].rstrip("?")
            assert (q.answer == "yes") == any(s.colour == colour and s.shape == shape for s in scene.shapes)


def test_shapes_are_drawn_where_the_scene_says_and_are_small(test_split):
    for index in range(40):
        scene, img = test_split.scenes[index], np.asarray(test_split.image(index)).astype(int)
        assert img.shape[:2] == scene.size
        rows, cols = scene.grid
        for s in scene.shapes:
            x, y = int(s.center[0]), int(s.center[1])
            assert np.abs(img[y, x] - task.COLOURS[s.colour]).max() <= 1
            # in the full image squashed to one crop a shape spans about a patch or less
            scale = tiny_vlm.CROP / max(scene.size[0] / rows, scene.size[1] / cols) / max(rows, cols)
            assert s.size * scale <= 1.3 * tiny_vlm.PATCH
        assert 1 <= len(scene.shapes) <= 3 and len({s.shape for s in scene.shapes}) == len(scene.shapes)


def test_tokenizer_covers_every_prompt_and_answer():
    tok = tiny_vlm.build_tokenizer()
    for q in task.questions():
        ids = tok(tiny_vlm.prompt(q), add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == tiny_vlm.prompt(q)
    for a in task.answers():
        assert len(tok.tokenize(" " + a)) == len(a.split())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        task.make_split("val")
    with pytest.raises(ValueError, match="positive"):
        task.make_split("test", 0)
