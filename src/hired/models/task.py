"""A synthetic high-resolution question task: small shapes pasted on real photos, templated questions.

Every image is a crop of a photo that ships with scikit-image, at a size and aspect ratio that makes
LLaVA-NeXT's anyres pick a 2x2, 1x2, 2x1, 1x3 or 3x1 grid, with one to three small solid shapes (circle,
square, triangle; distinct shapes per image) drawn on it. The shapes are small (about a fifth of a grid
cell), so in the downscaled full image each covers about one patch: answering well needs the sub-images.

Questions (answers are one or two words):

- ``colour``:   "What colour is the circle?" → red | green | blue | yellow
- ``presence``: "Is there a blue square?" → yes | no  (half of them no, with a near miss: a present shape in
  another colour, or a present colour on another shape)
- ``count``:    "How many shapes are there?" → one | two | three
- ``quadrant``: "Where is the triangle?" → top left | top right | bottom left | bottom right

Everything is a function of ``(split, seed, index)``: nothing is stored. The train and test splits use
different photos, seeds and hence positions.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageDraw

from hired.core.grid import layout_for
from hired.models.geometry import geometry

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 30, 30), "green": (30, 170, 50), "blue": (35, 75, 225), "yellow": (240, 215, 25)}
COUNTS = ("one", "two", "three")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
KINDS = ("colour", "presence", "count", "quadrant")
GRIDS = ((2, 2), (1, 2), (2, 1), (1, 3), (3, 1))  # (rows, cols)

# scikit-image sample photos that are part of the wheel (no download)
TRAIN_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "grass",
    "brick",
    "moon",
    "coins",
    "immunohistochemistry",
)
TEST_PHOTOS = ("stereo_motorcycle", "hubble_deep_field", "retina", "gravel", "clock")
SPLITS = {"train": (TRAIN_PHOTOS, 0), "test": (TEST_PHOTOS, 1)}

TEMPLATES = {
    "colour": "What colour is the {shape}?",
    "presence": "Is there a {colour} {shape}?",
    "count": "How many shapes are there?",
    "quadrant": "Where is the {shape}?",
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """One pasted shape: its kind, colour name, centre ``(x, y)`` and side in pixels of the image."""

    shape: str
    colour: str
    center: tuple[float, float]
    size: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to render one image deterministically."""

    photo: str
    size: tuple[int, int]  # (height, width)
    grid: tuple[int, int]  # the anyres grid (rows, cols) the size was drawn for
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) in the photo
    flip: bool
    shapes: tuple[Shape, ...]

    def quadrant(self, item: Shape) -> str:
        h, w = self.size
        x, y = item.center
        return f"{'top' if y < h / 2 else 'bottom'} {'left' if x < w / 2 else 'right'}"


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about image ``image`` of a split (an index into ``Split.scenes``)."""

    image: int
    kind: str
    question: str
    answer: str


@dataclasses.dataclass(frozen=True)
class Split:
    scenes: list[Scene]
    questions: list[Question]

    def image(self, index: int) -> Image.Image:
        return render(self.scenes[index])


@functools.cache
def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8: a scikit-image sample photo, grey ones repeated over three channels."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("the task's photos come from scikit-image: pip install 'hired-vlm[bench]'") from err
    if name == "stereo_motorcycle":
        array = data.stereo_motorcycle()[0]
    else:
        array = getattr(data, name)()
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3]).astype(np.uint8)


def _scene(rng: np.random.Generator, photos: tuple[str, ...]) -> Scene:
    rows, cols = GRIDS[rng.integers(len(GRIDS))]
    unit = int(rng.integers(150, 231))
    while True:  # a slightly jittered aspect ratio, as long as anyres still picks this grid
        h = int(round(rows * unit * rng.uniform(0.97, 1.03)))
        w = int(round(cols * unit * rng.uniform(0.97, 1.03)))
        if layout_for((h, w), geometry()).grid == (rows, cols):
            break
    name = photos[rng.integers(len(photos))]
    ph, pw = photo(name).shape[:2]
    scale = min(ph / h, pw / w) * rng.uniform(0.55, 1.0)
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))

    n = int(rng.integers(1, 4))
    kinds = rng.permutation(len(SHAPES))[:n]
    names = list(COLOURS)
    shapes: list[Shape] = []
    for k in kinds:
        size = unit * rng.uniform(0.17, 0.23)
        for _ in range(200):  # rejection sampling: inside the image, apart, clear of the quadrant lines
            x = rng.uniform(size, w - size)
            y = rng.uniform(size, h - size)
            clear = abs(x - w / 2) > 0.6 * size + 0.03 * w and abs(y - h / 2) > 0.6 * size + 0.03 * h
            apart = all(np.hypot(x - s.center[0], y - s.center[1]) > 1.6 * (size + s.size) / 2 for s in shapes)
            if clear and apart:
                break
        shapes.append(Shape(SHAPES[k], names[rng.integers(len(names))], (float(x), float(y)), float(size)))
    return Scene(name, (h, w), (rows, cols), (left, top, left + cw, top + ch), bool(rng.integers(2)), tuple(shapes))


def render(scene: Scene) -> Image.Image:
    """The RGB image of a scene."""
    h, w = scene.size
    img = Image.fromarray(photo(scene.photo)).crop(scene.crop).resize((w, h), Image.BICUBIC)
    if scene.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for s in scene.shapes:
        draw_shape(img, s, COLOURS[s.colour], (20, 20, 20))
    return img


def draw_shape(img: Image.Image, s: Shape, fill, outline) -> None:
    """Draw one shape on ``img`` in place (``outline=None``: fill only, as for masks)."""
    draw = ImageDraw.Draw(img)
    x, y, r = s.center[0], s.center[1], s.size / 2
    width = 2 if outline is not None else 0
    if s.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)
    elif s.shape == "square":
        q = r * 0.9
        draw.rectangle([x - q, y - q, x + q, y + q], fill=fill, outline=outline, width=width)
    else:
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill, outline=outline, width=width)


def _questions(rng: np.random.Generator, index: int, scene: Scene, kinds: tuple[str, ...]) -> list[Question]:
    out = []
    present = {(s.colour, s.shape) for s in scene.shapes}
    for kind in kinds:
        item = scene.shapes[rng.integers(len(scene.shapes))]
        if kind == "colour":
            out.append(Question(index, kind, TEMPLATES[kind].format(shape=item.shape), item.colour))
        elif kind == "quadrant":
            out.append(Question(index, kind, TEMPLATES[kind].format(shape=item.shape), scene.quadrant(item)))
        elif kind == "count":
            out.append(Question(index, kind, TEMPLATES[kind], COUNTS[len(scene.shapes) - 1]))
        else:
            colour, shape = item.colour, item.shape
            if rng.integers(2):  # a near miss: change the colour or the shape of a present object
                while (colour, shape) in present:
                    if rng.integers(2):
                        colour = list(COLOURS)[rng.integers(len(COLOURS))]
                    else:
                        shape = SHAPES[rng.integers(len(SHAPES))]
            answer = "yes" if (colour, shape) in present else "no"
            out.append(Question(index, kind, TEMPLATES[kind].format(colour=colour, shape=shape), answer))
    return out


def make_split(split: str = "test", num_images: int = 250, seed: int = 0, questions_per_image: int = 4) -> Split:
    """``num_images`` scenes of ``split`` ("train" or "test") and their questions.

    Each image gets ``questions_per_image`` questions, cycling through the four kinds starting at a random
    one (4 → one of each kind). The default test split has 250 images and 1000 questions.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if num_images < 1 or questions_per_image < 1:
        raise ValueError("num_images and questions_per_image must be positive")
    photos, split_id = SPLITS[split]
    rng = np.random.default_rng([seed, split_id, 7919])
    scenes, questions = [], []
    for i in range(num_images):
        scene = _scene(rng, photos)
        start = int(rng.integers(len(KINDS)))
        kinds = tuple(KINDS[(start + j) % len(KINDS)] for j in range(questions_per_image))
        scenes.append(scene)
        questions.extend(_questions(rng, i, scene, kinds))
    return Split(scenes, questions)


def answers() -> list[str]:
    """Every possible answer."""
    return [*COLOURS, "yes", "no", *COUNTS, *QUADRANTS]


def questions() -> list[str]:
    """Every question the templates can produce."""
    lines = [TEMPLATES["count"]]
    for shape in SHAPES:
        lines += [TEMPLATES["colour"].format(shape=shape), TEMPLATES["quadrant"].format(shape=shape)]
        lines += [TEMPLATES["presence"].format(colour=c, shape=shape) for c in COLOURS]
    return lines
