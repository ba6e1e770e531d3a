"""The dense question family: answers on the pixels, shapes that differ, placement against both mappings, sizes, determinism."""

import collections

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hired.core.grid import full_to_subimage, row_chunk_to_subimage
from hired.models import dense, task, tiny_vlm
from hired.models.geometry import geometry as tiny_geometry


@pytest.fixture(scope="module")
def split():
    return dense.make_split("test", 120, seed=0)


@pytest.fixture(scope="module")
def image_processor():
    import transformers

    from hired.models.dinov2 import IMAGE_MEAN, IMAGE_STD

    cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
    return cls(
        size={"shortest_edge": tiny_vlm.CROP},
        crop_size={"height": tiny_vlm.CROP, "width": tiny_vlm.CROP},
        image_grid_pinpoints=tiny_vlm.pinpoints(),
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )


def _through_processor(ip, mask):
    """``(P, T)``: the share of each patch of each partition that a white-on-black mask covers, per the processor."""
    pixels = ip(mask, return_tensors="pt")["pixel_values"][0]
    mean, std = torch.tensor(ip.image_mean).view(1, 3, 1, 1), torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return F.avg_pool2d((pixels * std + mean)[:, :1], tiny_vlm.PATCH).flatten(1).double()


def _mask(scene, boxes):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", scene.size[::-1], (0, 0, 0))
    for left, top, right, bottom in boxes:
        ImageDraw.Draw(img).rectangle([left, top, right - 1, bottom - 1], fill=(255, 255, 255))
    return img


def _read(img, scene, r, c):
    """What the pixels show at item ``(r, c)``: a colour name, or the shape its ink has (read from the ink
    box's corners and centre: a square inks all four corners, a triangle only the bottom two, a circle none)."""
    x0, y0, x1, y1 = scene.ink_box(r, c)
    if scene.kind == "cell":
        pixel = tuple(int(v) for v in img[(y0 + y1) // 2, (x0 + x1) // 2])
        return next(name for name, rgb in dense.COLOURS.items() if rgb == pixel)
    assert x1 - x0 == y1 - y0 >= 6  # a square ink box
    ink = {}
    for name, (y, x) in {
        "tl": (y0, x0),
        "tr": (y0, x1 - 1),
        "bl": (y1 - 1, x0),
        "br": (y1 - 1, x1 - 1),
        "centre": ((y0 + y1) // 2, (x0 + x1) // 2),
    }.items():
        pixel = tuple(int(v) for v in img[y, x])
        assert pixel in (dense.INK, dense.PANEL)
        ink[name] = pixel == dense.INK
    # the gap around the ink box is panel
    assert tuple(img[y0 - 1, x0 - 1]) == dense.PANEL and tuple(img[y1, x1]) == dense.PANEL
    assert ink["centre"]
    corners = (ink["tl"], ink["tr"], ink["bl"], ink["br"])
    found = {
        (True, True, True, True): "square",
        (False, False, True, True): "triangle",
        (False, False, False, False): "circle",
    }
    assert corners in found, corners
    return found[corners]


def test_shapes_differ_in_their_ink():
    """The three shapes drawn in the same box differ in many pixels, also at the smallest box size."""
    from PIL import Image, ImageDraw

    for side in (6, 9, 14):
        inks = []
        for name in dense.SHAPES:
            img = Image.new("RGB", (side + 4, side + 4), dense.PANEL)
            dense.draw_item(ImageDraw.Draw(img), "shape", name, (2, 2, 2 + side, 2 + side))
            inks.append((np.asarray(img) == dense.INK).all(-1))
        for i in range(3):
            for j in range(i + 1, 3):
                assert (inks[i] != inks[j]).sum() >= side
    with pytest.raises(ValueError, match="not a shape"):
        dense.draw_item(ImageDraw.Draw(Image.new("RGB", (8, 8))), "shape", "star", (0, 0, 6, 6))


def test_answers_are_right_on_the_rendered_pixels(split):
    for index in range(60):
        scene, img = split.scenes[index], np.asarray(split.image(index))
        assert img.shape[:2] == scene.size
        rows, cols = scene.table_shape
        for r in range(rows):
            for c in range(cols):
                assert _read(img, scene, r, c) == scene.answer(r, c)
        for q in split.questions:
            if q.image == index:
                assert _read(img, scene, *dense.asked_item(q)) == q.answer
        # outside the panel the image is plain: neighbouring pixels differ by a few levels at most
        left, top, right, bottom = scene.box
        outside = np.ones(scene.size, dtype=bool)
        outside[top:bottom, left:right] = False
        pixels = img.astype(int)
        dx = np.abs(np.diff(pixels, axis=1)).max(-1)[outside[:, 1:] & outside[:, :-1]]
        dy = np.abs(np.diff(pixels, axis=0)).max(-1)[outside[1:] & outside[:-1]]
        assert max(dx.max(), dy.max()) <= 10
        # and the panel is not: the table's edges are sharp
        assert np.abs(np.diff(pixels[top:bottom, left:right], axis=1)).max() > 100


def test_questions_read_distinct_items_and_balance_kinds(split):
    kinds = collections.Counter(q.kind for q in split.questions)
    assert kinds == {"shape": 240, "cell": 240}
    for index in range(len(split.scenes)):
        items = [dense.asked_item(q) for q in split.questions if q.image == index]
        assert len(items) == 4 and len(set(items)) == len(items)
        assert all(q.kind == split.scenes[index].kind for q in split.questions if q.image == index)


def test_split_is_a_function_of_its_seed(split):
    again = dense.make_split("test", 120, seed=0)
    assert again.scenes == split.scenes and again.questions == split.questions
    for i in (0, 1, 7):
        assert np.array_equal(np.asarray(again.image(i)), np.asarray(split.image(i)))
    assert dense.make_split("test", 120, seed=1).scenes != split.scenes
    train = dense.make_split("train", 120, seed=0)
    assert train.scenes != split.scenes
    photos = lambda s: {sc.photo for sc in s.scenes} - {None}  # noqa: E731
    assert photos(train) and photos(split) and photos(train).isdisjoint(photos(split))
    assert photos(train) <= set(task.TRAIN_PHOTOS) and photos(split) <= set(task.TEST_PHOTOS)
    # the first family's stream is untouched
    assert task.make_split("test", 5, seed=0).scenes == task.make_split("test", 5, seed=0).scenes


def test_vocabularies_are_closed(split):
    assert {q.question for q in split.questions} <= set(dense.questions())
    assert {q.answer for q in split.questions} <= set(dense.answers())
    assert {q.answer for q in split.questions if q.kind == "shape"} == set(task.SHAPES)
    assert {q.answer for q in split.questions if q.kind == "cell"} == set(task.COLOURS)
    assert len(set(dense.questions())) == len(dense.questions())
    joint = dense.all_answers()
    assert len(joint) == len(set(joint)) and set(joint) == set(task.answers()) | set(dense.answers())
    assert dense.all_questions()[: len(task.questions())] == task.questions()
    assert max(s.table_shape[0] for s in split.scenes) <= dense.MAX_ROWS
    assert max(s.table_shape[1] for s in split.scenes) <= dense.MAX_COLS


def test_items_are_below_a_full_image_patch_and_span_patches_in_sub_images(split):
    geometry = tiny_geometry()
    from hired.core.grid import layout_for

    for scene in split.scenes:
        assert layout_for(scene.size, geometry).grid == scene.grid
        sizes = dense.item_sizes(scene)
        assert max(sizes["full"]) < 0.9
        assert max(sizes["sub"]) > 1.45 and sizes["sub"][0] * sizes["sub"][1] > 1.1
        # a full-image patch holds parts of several items; in a sub-image an item covers more patch area
        assert sizes["sub"][0] * sizes["sub"][1] > 1.7 * sizes["full"][0] * sizes["full"][1]


def test_dense_region_lands_in_its_sub_image_and_the_mappings_disagree(split):
    seen = collections.defaultdict(set)
    for scene in split.scenes:
        shares = dense.subimage_shares(scene)
        assert shares[scene.target] == pytest.approx(1.0)
        two_d, row_chunk = dense.mapping_shares(scene.size, scene.grid, scene.box)
        assert two_d[scene.target] >= dense.MIN_2D
        assert row_chunk[scene.target] <= dense.MAX_ROW_CHUNK + 1e-9
        assert int(np.argmax(row_chunk)) != scene.target
        seen[scene.grid].add(scene.target)
    assert set(seen) == set(dense.GRIDS)
    assert seen[(2, 2)] == {0, 1, 2, 3} and seen[(1, 2)] == {0, 1} and {0, 2} <= seen[(1, 3)]


def test_placement_holds_on_the_processors_own_crops(split, image_processor):
    """Independent of the analytic geometry: the panel sent through LLaVA-NeXT's processor as a mask."""
    checked = collections.Counter()
    for scene in split.scenes:
        if checked[scene.grid] >= 4:
            continue
        checked[scene.grid] += 1
        cover = _through_processor(image_processor, _mask(scene, [scene.box]))  # (P, T)
        assert cover.shape[0] == 1 + scene.grid[0] * scene.grid[1]
        area = cover[1:].sum(1)
        assert area[scene.target] / area.sum() > 0.99
        lay = dense.layout(scene)
        shares = []
        for mapping in (full_to_subimage(lay), row_chunk_to_subimage(lay)):
            credit = torch.zeros(lay.num_subimages, dtype=torch.float64).index_add_(0, mapping, cover[0])
            shares.append(credit / credit.sum())
        assert shares[0][scene.target] > 0.93
        assert shares[1][scene.target] < 0.36 and int(shares[1].argmax()) != scene.target
    assert set(checked) == set(dense.GRIDS)


def test_left_out_grids_have_no_disagreement_to_test():
    from hired.core.grid import layout_for

    geometry = tiny_geometry()
    two_by_one = layout_for((400, 200), geometry)
    assert two_by_one.grid == (2, 1)
    assert torch.equal(full_to_subimage(two_by_one), row_chunk_to_subimage(two_by_one))
    three_by_one = layout_for((600, 200), geometry)
    assert three_by_one.grid == (3, 1)
    assert int((full_to_subimage(three_by_one) != row_chunk_to_subimage(three_by_one)).sum()) <= 5
    # where the family does place tables, the mappings differ on a large part of the full image
    for size in ((400, 400), (200, 400), (200, 600)):
        lay = layout_for(size, geometry)
        assert int((full_to_subimage(lay) != row_chunk_to_subimage(lay)).sum()) >= 24


def test_patch_labels_follow_the_processor(split, image_processor):
    for index in (0, 1, 2, 3):
        scene = split.scenes[index]
        rows, cols = scene.table_shape
        coverage = dense.item_coverage(scene)
        boxes = [scene.item_box(r, c) for r in range(rows) for c in range(cols)]
        # alternate items in one mask: the processor's blur only moves coverage across item edges a little
        for parity in (0, 1):
            chosen = [k for k in range(rows * cols) if (k // cols + k % cols) % 2 == parity]
            processed = _through_processor(image_processor, _mask(scene, [boxes[k] for k in chosen]))
            analytic = coverage.reshape(coverage.shape[0], coverage.shape[1], -1)[:, :, chosen].sum(-1)
            assert np.abs(processed.numpy() - analytic).max() < 0.12
        labels = dense.patch_labels(scene, coverage)
        P, T = coverage.shape[:2]
        assert labels.shape == (P, T, len(dense.LABELS)) and P == 1 + scene.grid[0] * scene.grid[1]
        assert (labels[..., 0 if scene.kind == "cell" else 1] == 0).all()  # the other kind's column
        assert (labels[1:, :, 2] == -100).all() and set(labels[0, :, 2].tolist()) == {1, 2, 3, 4}
        for j, n in enumerate(dense.LABEL_CLASSES):
            column = labels[..., j]
            assert int(column[column != -100].max()) < n
        hit = labels[..., 3] > 0
        assert hit[1 + scene.target].sum() >= rows * cols  # every item shows in its sub-image
        assert not hit[1:][torch.arange(P - 1) != scene.target].any()
        r, c = labels[..., 3][hit] - 1, labels[..., 4][hit] - 1
        names, column = (dense.SHAPES, 0) if scene.kind == "shape" else (list(dense.COLOURS), 1)
        value = labels[..., column][hit] - 1
        for rr, cc, vv in zip(r.tolist(), c.tolist(), value.tolist()):
            assert names[vv] == scene.values[rr][cc]
    assert {split.scenes[i].kind for i in (0, 1, 2, 3)} == {"shape", "cell"}
    padded = dense.pad_labels(torch.ones(3, 64, 3, dtype=torch.long))
    assert padded.shape == (3, 64, 5) and (padded[..., 3:] == 0).all()


def test_relevance_marks_the_asked_item(split):
    for q in split.questions[:80]:
        scene = split.scenes[q.image]
        marks = dense.relevance(q, scene)
        r, c = dense.asked_item(q)
        assert marks.shape[0] == 1 + scene.grid[0] * scene.grid[1]
        assert marks[1 + scene.target].sum() >= 1 and marks[0].sum() >= 1
        others = [p for p in range(1, marks.shape[0]) if p != 1 + scene.target]
        assert marks[others].sum() == 0
        # the marked sub-image patches are where that item is
        cover = dense.item_coverage(scene)[1 + scene.target, :, r, c]
        assert (cover[marks[1 + scene.target].bool().numpy()] >= dense.RELEVANT[1]).all()
    with pytest.raises(ValueError, match="not a question of the dense family"):
        dense.asked_item(task.Question(0, "count", "How many shapes are there?", "one"))


def test_combined_split_renders_either_family():
    first, second = task.make_split("test", 3, seed=0), dense.make_split("test", 2, seed=0)
    both = dense.combine(first, second)
    assert len(both.scenes) == 5 and len(both.questions) == len(first.questions) + len(second.questions)
    assert np.array_equal(np.asarray(both.image(1)), np.asarray(first.image(1)))
    assert np.array_equal(np.asarray(both.image(4)), np.asarray(second.image(1)))
    assert both.questions[-1].image == 4 and both.questions[-1].question == second.questions[-1].question


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        dense.make_split("val")
    with pytest.raises(ValueError, match="positive"):
        dense.make_split("test", 0)
