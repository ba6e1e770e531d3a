"""The second question family, "dense": one small table of fine detail on an otherwise plain image.

HiRED's budget distribution matters when detail is dense in a few regions and absent elsewhere (the paper's
Table 5: documents and charts). Every image here is plain (a blank page colour, or a heavily smoothed crop
of a scikit-image photo: sky, wall) except for one white panel holding a table of ``R x C`` items inside a
single sub-image of LLaVA-NeXT's anyres grid. Items are either small dark shapes (``task.SHAPES``: a
filled circle, square or triangle) or coloured cells (``task.COLOURS``). Questions read one item (answers
are one word):

- ``shape``: "What shape is in row 2, column 3?" → circle | square | triangle
- ``cell``:  "What colour is the cell in row 1, column 4?" → red | green | blue | yellow

Shapes replace the digits (3x5-pixel glyphs) of an earlier version, which the trained model never learnt
to read (held-out digit accuracy 0.07-0.22 over a whole training run). A two-layer probe (512 hidden
units, 30-40 epochs, 80/20 split of the labelled patches, full image and sub-images) on the frozen DINOv2-S
features told the digit under a patch in 38% of held-out patches (400 digit tables of the training split),
50% with glyphs twice as tall (2x2 grids only, 120 tables), and the shape in 90% (120 shape tables): a
digit table measured the tower's reading of glyphs more than the methods. (A one-off measurement, not
part of the package.)

**Sizes** (hired-tiny: ``CROP`` = 112, ``PATCH`` = 14; the full image is the picture squashed to one crop,
the sub-images show it at ``rows x cols`` crops). An item is one table cell, its pitch set in sub-image
(canvas) pixels per grid, times a random 0.9-1.0, then rounded down to whole image pixels. Measured on
``make_split("test")`` (:func:`item_sizes`; height x width in patches):

====  =================  ========================  ==========================
grid  pitch (canvas px)  item, full image          item, sub-image
====  =================  ========================  ==========================
2x2   24 x 24            0.76-0.87 x 0.76-0.88     1.52-1.70 x 1.52-1.71
1x2   12 x 24            0.74-0.85 x 0.76-0.85     0.74-0.85 x 1.51-1.70
1x3   12 x 33            0.73-0.88 x 0.70-0.81     0.73-0.85 x 2.10-2.35
====  =================  ========================  ==========================

So in the full image every item is below one patch in both directions (generation asserts < 0.9) and a
full-image patch mixes parts of up to four items, while in the sub-images an item spans one and a half to
two and a half patches. A shape is a square of the item's shorter side, inset by a gap: on 2x2 about a
patch and a half in a sub-image and three quarters of one in the full image. On 1x2 and 1x3 the full
image keeps the vertical resolution of the sub-images and only the width gains (2x, 3x): shapes there are
as tall in the full image as in the sub-images, and squeezed to a half or a third of their width.

**Placement.** The panel lies inside one sub-image (the *target*), placed where the reference row-chunk
mapping (:func:`hired.core.grid.row_chunk_to_subimage`) credits it to other sub-images: for every scene the
2-D mapping (:func:`hired.core.grid.full_to_subimage`) gives the target at least ``MIN_2D`` (95%) of the
panel's full-image area, the row-chunk mapping at most ``MAX_ROW_CHUNK`` (1/3), and its largest share goes
to another sub-image. Grids used, where such places exist: 2x2 (any of the four sub-images, e.g. the
bottom rows of the bottom-left one, which row chunks give to the bottom-right), 1x2 (bottom of the left,
top of the right sub-image) and 1x3 (mostly the lower left and the upper right sub-image, at times a corner
of the middle one). Left out:
2x1, where the two mappings are identical, and 3x1, where they differ only on parts of two full-image rows.

Everything is a function of ``(split, seed, index)``, nothing is stored; the train and test splits use
different photos (those of :mod:`hired.models.task`) and seeds. For training, :func:`patch_labels` and
:func:`relevance` give per-patch targets like ``hired.models.train``'s for the first family.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import torch
from PIL import Image, ImageDraw

from hired.core.grid import Layout, full_to_subimage, layout_for, row_chunk_to_subimage
from hired.models import task
from hired.models.geometry import CROP, PATCH, geometry

KINDS = ("shape", "cell")
SHAPES = task.SHAPES
COLOURS = task.COLOURS
GRIDS = ((2, 2), (1, 2), (1, 3))  # (rows, cols): grids where the two mappings can disagree
PITCH = {(2, 2): (24, 24), (1, 2): (12, 24), (1, 3): (12, 33)}  # item (height, width) in canvas px
MAX_ROWS, MAX_COLS = 5, 5  # table rows and columns (questions count them from 1)
FULL_MAX = 0.9  # an item is below this many patches of the full image, in both directions
MIN_2D = 0.95  # the 2-D mapping's share of the panel for the target sub-image, at least
MAX_ROW_CHUNK = 1 / 3  # the row-chunk mapping's share for the target, at most
SPLITS = {"train": (task.TRAIN_PHOTOS, 0), "test": (task.TEST_PHOTOS, 1)}
TEMPLATES = {
    "shape": "What shape is in row {row}, column {col}?",
    "cell": "What colour is the cell in row {row}, column {col}?",
}
INK = (20, 20, 20)
PANEL = (252, 252, 250)

# the joint per-patch label columns: the first three are hired.models.train.patch_labels' for the first family
LABELS = ("shape", "colour", "quadrant", "row", "column")
LABEL_CLASSES = (1 + len(task.SHAPES), 1 + len(COLOURS), 1 + len(task.QUADRANTS), 1 + MAX_ROWS, 1 + MAX_COLS)
SUB_COVER = 0.3  # a patch shows an item when the item covers this share of it (sub-images), as in train.py
FULL_COVER = 0.15  # the same on the full image
RELEVANT = (0.1, 0.2)  # relevance: the asked item covers this share of a patch (full image, sub-images)


@dataclasses.dataclass(frozen=True)
class Scene:
    """One image: a plain background and a table of ``len(values) x len(values[0])`` items.

    Item ``(r, c)`` (0-based) is the table cell ``[left + c * pitch_w, + pitch_w) x [top + r * pitch_h, +
    pitch_h)`` in image pixels; its ink (the shape, or the coloured square) is :meth:`ink_box`. ``box`` is the
    panel (the dense region), ``target`` the sub-image (0-based, row-major) that holds it.
    """

    kind: str  # "shape" or "cell"
    size: tuple[int, int]  # (height, width)
    grid: tuple[int, int]  # (rows, cols) the size was drawn for
    target: int
    photo: str | None  # None: a blank page of colour ``page``
    page: tuple[int, int, int]
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) in the photo
    flip: bool
    origin: tuple[int, int]  # (left, top) of item (0, 0)
    pitch: tuple[int, int]  # (height, width) of an item
    margin: int  # panel margin around the table
    values: tuple[tuple, ...]  # per row: shape names or colour names

    @property
    def table_shape(self) -> tuple[int, int]:
        return len(self.values), len(self.values[0])

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The panel ``(left, top, right, bottom)``: the table and its margin."""
        (x, y), (ph, pw), (rows, cols), m = self.origin, self.pitch, self.table_shape, self.margin
        return x - m, y - m, x + cols * pw + m, y + rows * ph + m

    def item_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        (x, y), (ph, pw) = self.origin, self.pitch
        return x + c * pw, y + r * ph, x + (c + 1) * pw, y + (r + 1) * ph

    def ink_box(self, r: int, c: int) -> tuple[int, int, int, int]:
        """Where item ``(r, c)`` is drawn: the cell inset by a gap, or for a shape the centred square of the
        inset cell's shorter side."""
        left, top, right, bottom = self.item_box(r, c)
        gap = max(1, min(self.pitch) // 8)
        left, top, right, bottom = left + gap, top + gap, right - gap, bottom - gap
        if self.kind == "shape":
            side = min(right - left, bottom - top)
            x, y = left + (right - left - side) // 2, top + (bottom - top - side) // 2
            return x, y, x + side, y + side
        return left, top, right, bottom

    def answer(self, r: int, c: int) -> str:
        return self.values[r][c]


@dataclasses.dataclass(frozen=True)
class Split(task.Split):
    """Scenes of either family (this module's or :mod:`hired.models.task`'s) and their questions."""

    def image(self, index: int) -> Image.Image:
        return render_any(self.scenes[index])


def combine(*splits: task.Split) -> Split:
    """One split of several (e.g. both families): scenes concatenated, questions re-indexed."""
    scenes, questions = [], []
    for split in splits:
        questions += [dataclasses.replace(q, image=q.image + len(scenes)) for q in split.questions]
        scenes += list(split.scenes)
    return Split(scenes, questions)


def render_any(scene) -> Image.Image:
    """The image of a scene of either family."""
    return render(scene) if isinstance(scene, Scene) else task.render(scene)


def canvas_map(size: tuple[int, int], grid: tuple[int, int], crop: int | None = None):
    """``(scale_y, scale_x, paste_y, paste_x)``: image pixel ``(y, x)`` lands at canvas pixel ``(paste_y +
    y * scale_y, paste_x + x * scale_x)``, as LLaVA-NeXT's processor resizes (aspect kept) and pads."""
    import math

    crop = crop or _crop()
    h, w = size
    th, tw = grid[0] * crop, grid[1] * crop
    if tw / w < th / h:
        nw, nh = tw, min(math.ceil(h * tw / w), th)
    else:
        nh, nw = th, min(math.ceil(w * th / h), tw)
    return nh / h, nw / w, (th - nh) // 2, (tw - nw) // 2


def _crop() -> int:
    return CROP


def _patch() -> int:
    return PATCH


def layout(scene: Scene) -> Layout:
    """The scene's partition layout for hired-tiny."""
    return layout_for(scene.size, geometry())


def _overlap(lo: np.ndarray, hi: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(len(lo), len(edges) - 1)``: length of ``[lo, hi)`` inside each interval of ``edges``."""
    return np.clip(np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1]), 0, None)


def box_coverage(size: tuple[int, int], grid: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """``(P, side, side, N)``: the share of every patch of every partition (full image first) covered by each
    of ``N`` boxes ``(left, top, right, bottom)`` in image pixels (area overlap, as if resampled by box filter)."""
    crop, patch = _crop(), _patch()
    side = crop // patch
    h, w = size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    edges = np.arange(side + 1, dtype=np.float64) * patch
    out = []
    # the full image: squashed to one crop
    oy = _overlap(boxes[:, 1] * crop / h, boxes[:, 3] * crop / h, edges)  # (N, side)
    ox = _overlap(boxes[:, 0] * crop / w, boxes[:, 2] * crop / w, edges)
    out.append(np.einsum("nu,nv->uvn", oy, ox) / patch**2)
    sy, sx, py, px = canvas_map(size, grid, crop)
    for i in range(grid[0]):
        for j in range(grid[1]):
            oy = _overlap(py + boxes[:, 1] * sy - i * crop, py + boxes[:, 3] * sy - i * crop, edges)
            ox = _overlap(px + boxes[:, 0] * sx - j * crop, px + boxes[:, 2] * sx - j * crop, edges)
            out.append(np.einsum("nu,nv->uvn", oy, ox) / patch**2)
    return np.stack(out)


@functools.lru_cache(maxsize=4096)
def _mappings(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    lay = layout_for(size, geometry())
    return full_to_subimage(lay).numpy(), row_chunk_to_subimage(lay).numpy()


def _shares(size, cover_full: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    weight = cover_full.reshape(-1)
    shares = []
    for mapping in _mappings(tuple(size)):
        credit = np.bincount(mapping, weights=weight, minlength=n)
        shares.append(credit / credit.sum())
    return shares[0], shares[1]


def mapping_shares(size: tuple[int, int], grid: tuple[int, int], box) -> tuple[np.ndarray, np.ndarray]:
    """``(two_d, row_chunk)``: the share of ``box``'s full-image area that each mapping credits to each
    sub-image (:func:`full_to_subimage`, :func:`row_chunk_to_subimage` of :func:`layout_for`)."""
    cover = box_coverage(size, grid, np.asarray([box]))[0, :, :, 0]
    return _shares(size, cover, grid[0] * grid[1])


def subimage_shares(scene: Scene) -> np.ndarray:
    """``(rows * cols,)``: the share of the panel's pixels that lands in each sub-image."""
    area = box_coverage(scene.size, scene.grid, np.asarray([scene.box]))[1:, :, :, 0].sum((1, 2))
    return area / area.sum()


def placement_ok(size, grid, target: int, box) -> bool:
    """The placement rule (see the module docstring), plus: the panel lies wholly inside sub-image ``target``
    (on the canvas, with the processor's resizing and padding)."""
    crop, patch = _crop(), _patch()
    left, top, right, bottom = box
    sy, sx, py, px = canvas_map(size, grid, crop)
    i, j = divmod(int(target), grid[1])
    inside = (
        i * crop <= py + top * sy
        and py + bottom * sy <= (i + 1) * crop
        and j * crop <= px + left * sx
        and px + right * sx <= (j + 1) * crop
    )
    if not inside:
        return False
    h, w = size
    edges = np.arange(crop // patch + 1, dtype=np.float64) * patch
    oy = _overlap(np.array([top * crop / h]), np.array([bottom * crop / h]), edges)[0]
    ox = _overlap(np.array([left * crop / w]), np.array([right * crop / w]), edges)[0]
    two_d, row_chunk = _shares(size, np.outer(oy, ox), grid[0] * grid[1])
    return bool(two_d[target] >= MIN_2D and row_chunk[target] <= MAX_ROW_CHUNK and int(np.argmax(row_chunk)) != target)


def _size(rng: np.random.Generator, grid: tuple[int, int]) -> tuple[int, int]:
    rows, cols = grid
    unit = int(rng.integers(170, 251))
    while True:  # a slightly jittered aspect ratio, as long as anyres still picks this grid
        h = int(round(rows * unit * rng.uniform(0.97, 1.03)))
        w = int(round(cols * unit * rng.uniform(0.97, 1.03)))
        if layout_for((h, w), geometry()).grid == grid:
            return h, w


def _place(rng, size, grid, pitch, margin, table):
    """A random target and panel origin satisfying :func:`placement_ok`, or ``None``."""
    crop = _crop()
    sy, sx, py, px = canvas_map(size, grid, crop)
    h, w = size
    rows, cols = table
    bw, bh = cols * pitch[1] + 2 * margin, rows * pitch[0] + 2 * margin
    targets = rng.permutation(grid[0] * grid[1])
    for target in targets:
        i, j = divmod(int(target), grid[1])
        # the target's canvas square in image pixels, within the picture, 2 canvas px inside its edges
        x0 = max(0.0, (j * crop + 2 - px) / sx)
        x1 = min(float(w), ((j + 1) * crop - 2 - px) / sx)
        y0 = max(0.0, (i * crop + 2 - py) / sy)
        y1 = min(float(h), ((i + 1) * crop - 2 - py) / sy)
        lo_x, hi_x, lo_y, hi_y = int(np.ceil(x0)), int(x1 - bw), int(np.ceil(y0)), int(y1 - bh)
        if hi_x < lo_x or hi_y < lo_y:
            continue
        for _ in range(40):
            left = int(rng.integers(lo_x, hi_x + 1))
            top = int(rng.integers(lo_y, hi_y + 1))
            box = (left, top, left + bw, top + bh)
            if placement_ok(size, grid, int(target), box):
                return int(target), (left + margin, top + margin)
    return None


def _scene(rng: np.random.Generator, photos: tuple[str, ...], kind: str) -> Scene:
    grid = GRIDS[rng.integers(len(GRIDS))]
    patch = _patch()
    while True:
        size = _size(rng, grid)
        h, w = size
        sy, sx, _, _ = canvas_map(size, grid)
        jitter = rng.uniform(0.9, 1.0)
        pitch = (int(PITCH[grid][0] * jitter / sy), int(PITCH[grid][1] * jitter / sx))
        # below one patch in the full image (squashed to one crop), in both directions
        if pitch[0] * _crop() / h >= FULL_MAX * patch or pitch[1] * _crop() / w >= FULL_MAX * patch:
            raise RuntimeError(f"items of {pitch} px are not below a full-image patch at size {size}")
        margin = max(2, int(round(3 / sx)))
        table = (int(rng.integers(2, MAX_ROWS + 1)), int(rng.integers(2, MAX_COLS + 1)))
        placed = None
        while placed is None and table[0] * table[1] >= 4:
            placed = _place(rng, size, grid, pitch, margin, table)
            if placed is None:  # shrink the larger side
                table = (table[0] - 1, table[1]) if table[0] >= table[1] else (table[0], table[1] - 1)
        if placed is not None:
            break
    target, origin = placed
    rows, cols = table
    names = list(SHAPES) if kind == "shape" else list(COLOURS)
    values = tuple(tuple(names[int(v)] for v in rng.integers(0, len(names), cols)) for _ in range(rows))
    page = tuple(int(v) for v in rng.integers(200, 241, 3))
    name, crop_box, flip = None, (0, 0, 0, 0), False
    if rng.integers(2):  # a smooth crop of a photo, else a blank page
        name = photos[rng.integers(len(photos))]
        ph, pw = task.photo(name).shape[:2]
        scale = min(ph / h, pw / w) * rng.uniform(0.3, 0.7)
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop_box, flip = (left, top, left + cw, top + ch), bool(rng.integers(2))
    return Scene(kind, size, grid, target, name, page, crop_box, flip, origin, pitch, margin, values)


def draw_item(draw: ImageDraw.ImageDraw, kind: str, value: str, box: tuple[int, int, int, int]) -> None:
    """Draw one item in its :meth:`Scene.ink_box` ``(left, top, right, bottom)``: a coloured cell filling
    it, or a dark shape: the square fills it, the circle is inscribed, the triangle stands on its bottom
    edge with its apex at the top centre."""
    x0, y0, x1, y1 = box
    if kind == "cell":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLOURS[value])
    elif value == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=INK)
    elif value == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=INK)
    elif value == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=INK)
    else:
        raise ValueError(f"not a shape: {value!r}")


def render(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    h, w = scene.size
    if scene.photo is None:
        img = Image.new("RGB", (w, h), scene.page)
    else:  # smooth: down to a few pixels, back up bicubically (sky, wall)
        small = (
            Image.fromarray(task.photo(scene.photo))
            .crop(scene.crop)
            .resize((max(2, w // 40), max(2, h // 40)), Image.BOX)
        )
        img = small.resize((w, h), Image.BICUBIC)
        if scene.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = scene.box
    draw.rectangle([left, top, right - 1, bottom - 1], fill=PANEL)
    rows, cols = scene.table_shape
    for r in range(rows):
        for c in range(cols):
            draw_item(draw, scene.kind, scene.values[r][c], scene.ink_box(r, c))
    return img


def _questions(rng: np.random.Generator, index: int, scene: Scene, count: int) -> list[task.Question]:
    rows, cols = scene.table_shape
    order = rng.permutation(rows * cols)
    out = []
    for j in range(count):  # distinct items while they last
        r, c = divmod(int(order[j % len(order)]), cols)
        text = TEMPLATES[scene.kind].format(row=r + 1, col=c + 1)
        out.append(task.Question(index, scene.kind, text, scene.answer(r, c)))
    return out


def make_split(split: str = "test", num_images: int = 250, seed: int = 0, questions_per_image: int = 4) -> Split:
    """``num_images`` scenes of ``split`` ("train" or "test"), half shape tables and half coloured cells
    (alternating from a random start), each with ``questions_per_image`` questions about distinct items."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if num_images < 1 or questions_per_image < 1:
        raise ValueError("num_images and questions_per_image must be positive")
    photos, split_id = SPLITS[split]
    rng = np.random.default_rng([seed, split_id, 104729])
    start = int(rng.integers(len(KINDS)))
    scenes, questions = [], []
    for i in range(num_images):
        scene = _scene(rng, photos, KINDS[(start + i) % len(KINDS)])
        scenes.append(scene)
        questions.extend(_questions(rng, i, scene, questions_per_image))
    return Split(scenes, questions)


def answers() -> list[str]:
    """Every possible answer of this family."""
    return [*SHAPES, *COLOURS]


def questions() -> list[str]:
    """Every question this family's templates can produce."""
    return [
        TEMPLATES[k].format(row=r, col=c) for k in KINDS for r in range(1, MAX_ROWS + 1) for c in range(1, MAX_COLS + 1)
    ]


def all_answers() -> list[str]:
    """Both families' answers, each once (the first family's first)."""
    return list(dict.fromkeys([*task.answers(), *answers()]))


def all_questions() -> list[str]:
    """Both families' questions (the first family's first)."""
    return [*task.questions(), *questions()]


def item_coverage(scene: Scene) -> np.ndarray:
    """``(P, T, R, C)``: the share of each patch of each partition covered by each table cell."""
    rows, cols = scene.table_shape
    boxes = np.array([scene.item_box(r, c) for r in range(rows) for c in range(cols)])
    cover = box_coverage(scene.size, scene.grid, boxes)
    return cover.reshape(cover.shape[0], -1, rows, cols)


def patch_labels(scene: Scene, coverage: np.ndarray | None = None) -> torch.Tensor:
    """``(P, T, 5)`` long in the columns of ``LABELS``: per patch, the item covering most of it (if it covers
    ``SUB_COVER`` of it, ``FULL_COVER`` on the full image): its row and column (0 = none, else 1 + index),
    its shape (1 + index in ``SHAPES``, shape tables; the first family's shape column) or colour (1 + index
    in ``COLOURS``, cell tables), and ``quadrant`` as in ``hired.models.train.patch_labels`` (full image
    only, -100 elsewhere), so the first family's labels join these with two zero columns (:func:`pad_labels`)."""
    cover = item_coverage(scene) if coverage is None else coverage
    P, T, rows, cols = cover.shape
    flat = torch.from_numpy(cover.reshape(P, T, rows * cols))
    best, which = flat.max(-1)
    threshold = torch.full((P, 1), SUB_COVER, dtype=best.dtype)
    threshold[0] = FULL_COVER
    hit = best >= threshold
    r, c = torch.div(which, cols, rounding_mode="floor"), which % cols
    labels = torch.zeros(P, T, len(LABELS), dtype=torch.long)
    labels[..., 3] = torch.where(hit, r + 1, 0)
    labels[..., 4] = torch.where(hit, c + 1, 0)
    names, column = (SHAPES, 0) if scene.kind == "shape" else (list(COLOURS), 1)
    value = torch.tensor([[names.index(v) + 1 for v in row] for row in scene.values]).flatten()
    labels[..., column] = torch.where(hit, value[which], 0)
    side = int(round(T**0.5))
    u, v = torch.div(torch.arange(T), side, rounding_mode="floor"), torch.arange(T) % side
    labels[..., 2] = -100
    labels[0, :, 2] = 1 + 2 * (u >= side // 2).long() + (v >= side // 2).long()
    return labels


def pad_labels(labels: torch.Tensor) -> torch.Tensor:
    """The first family's ``(P, T, 3)`` labels (``hired.models.train.patch_labels``) in the joint columns."""
    zeros = torch.zeros(*labels.shape[:-1], len(LABELS) - labels.shape[-1], dtype=labels.dtype)
    return torch.cat([labels, zeros], dim=-1)


_ITEM = re.compile(r"row (\d+), column (\d+)")


def asked_item(question: task.Question) -> tuple[int, int]:
    """``(r, c)``, 0-based: the item a question of this family reads."""
    match = _ITEM.search(question.question)
    if match is None:
        raise ValueError(f"not a question of the dense family: {question.question!r}")
    return int(match.group(1)) - 1, int(match.group(2)) - 1


def relevance(question: task.Question, scene: Scene, coverage: np.ndarray | None = None) -> torch.Tensor:
    """``(P, T)`` float: 1 on the patches the question is about, those the asked item covers at least
    ``RELEVANT`` of (full image, sub-images). Unlike the argmax labels this marks every item somewhere,
    also where items are smaller than a patch."""
    cover = item_coverage(scene) if coverage is None else coverage
    r, c = asked_item(question)
    share = torch.from_numpy(cover[:, :, r, c])
    threshold = torch.full((share.shape[0], 1), RELEVANT[1], dtype=share.dtype)
    threshold[0] = RELEVANT[0]
    return (share >= threshold).float()


def item_sizes(scene: Scene) -> dict[str, tuple[float, float]]:
    """An item's ``(height, width)`` in patches: ``full`` (the full image) and ``sub`` (a sub-image)."""
    patch, crop = _patch(), _crop()
    (ph, pw), (h, w) = scene.pitch, scene.size
    sy, sx, _, _ = canvas_map(scene.size, scene.grid)
    return {"full": (ph * crop / h / patch, pw * crop / w / patch), "sub": (ph * sy / patch, pw * sx / patch)}
