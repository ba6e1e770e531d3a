"""Where kept patches lie on the original image: a selection's layout, the canvas and full-image views the
model sees, and the rectangles of kept patches in original pixels (no matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from hired.core.grid import Geometry, Layout, layout_for
from hired.selection import ImageSelection

PAD_COLOR = (0.55, 0.55, 0.55)  # padded canvas pixels


def selection_layout(selection: ImageSelection, stretched: bool = False) -> Layout:
    """The selection's partition layout (valid region in canvas patches), rebuilt from its sizes;
    ``stretched``: the image fills the whole canvas (InternVL's tiles), else it is padded (LLaVA-NeXT)."""
    side = selection.partitions[0].grid[0]
    rows, cols = selection.grid
    if rows * cols == 0:
        return Layout(image_size=selection.image_size, side=side)
    if stretched:
        layout = Layout(selection.image_size, side, (rows, cols), bottom=rows * side, right=cols * side)
    else:
        geometry = Geometry(crop_size=side, patch_size=1, grid_pinpoints=((rows * side, cols * side),))
        layout = layout_for(selection.image_size, geometry)
    if layout.valid_counts != tuple(p.valid for p in selection.partitions):
        raise ValueError("the selection's valid patch counts do not match its image size and grid")
    return layout


def canvas_image(image: Image.Image, layout: Layout, crop: int, stretched: bool = False) -> Image.Image:
    """The image resized into the ``rows x cols`` canvas of ``crop``-pixel crops and centrally padded,
    as LLaVA-NeXT's processor does (padding shown grey instead of black); ``stretched``: resized onto the
    whole canvas, as InternVL's processor does."""
    rows, cols = layout.grid
    target_h, target_w = rows * crop, cols * crop
    if stretched:
        return image.resize((target_w, target_h), Image.BICUBIC)
    w, h = image.size
    if target_w / w < target_h / h:
        new_w, new_h = target_w, min(math.ceil(h * target_w / w), target_h)
    else:
        new_w, new_h = min(math.ceil(w * target_h / h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), tuple(int(255 * c) for c in PAD_COLOR))
    canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def full_image_view(image: Image.Image, crop: int, mode: str) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The full-image partition as the model sees it and the region ``(x0, y0, w, h)`` of the original it shows."""
    w, h = image.size
    if mode == "squash":
        return image.resize((crop, crop), Image.BICUBIC), (0.0, 0.0, float(w), float(h))
    s = min(w, h)
    x0, y0 = (w - s) / 2, (h - s) / 2
    view = image.crop((round(x0), round(y0), round(x0) + s, round(y0) + s)).resize((crop, crop), Image.BICUBIC)
    return view, (x0, y0, float(s), float(s))


def full_rects(kept: Sequence[int], side: int, region) -> list[tuple[float, float, float, float]]:
    """Original-image rectangles ``(x, y, w, h)`` of kept full-image patches."""
    x0, y0, rw, rh = region
    pw, ph = rw / side, rh / side
    return [(x0 + (t % side) * pw, y0 + (t // side) * ph, pw, ph) for t in kept]


def sub_rects(
    kept: Sequence[int], k: int, layout: Layout, size: tuple[int, int]
) -> list[tuple[float, float, float, float]]:
    """Original-image rectangles of kept patches of sub-image ``k``: canvas patch → valid region → pixels."""
    w, h = size
    side, cols = layout.side, layout.grid[1]
    if layout.right <= layout.left or layout.bottom <= layout.top:  # no valid patch (extreme aspect ratio)
        return []
    pw, ph = w / (layout.right - layout.left), h / (layout.bottom - layout.top)
    out = []
    for t in kept:
        row = (k // cols) * side + t // side
        col = (k % cols) * side + t % side
        out.append(((col - layout.left) * pw, (row - layout.top) * ph, pw, ph))
    return out


def subimage_bounds(layout: Layout, size: tuple[int, int]) -> tuple[list[float], list[float]]:
    """x and y positions (original pixels) of the inner sub-image borders that fall inside the image."""
    w, h = size
    side, (rows, cols) = layout.side, layout.grid
    if layout.right <= layout.left or layout.bottom <= layout.top:  # no valid patch: no borders to draw
        return [], []
    xs = [(c * side - layout.left) * w / (layout.right - layout.left) for c in range(1, cols)]
    ys = [(r * side - layout.top) * h / (layout.bottom - layout.top) for r in range(1, rows)]
    return [x for x in xs if 0 < x < w], [y for y in ys if 0 < y < h]


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
