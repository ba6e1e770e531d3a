"""Partitions of an image, their valid (unpadded) patches, and full-image → sub-image mapping.

LLaVA-NeXT ("anyres") encodes an image as P = 1 + rows * cols partitions of ``side x side`` patches:
partition 0 is the whole image squashed to one crop; partitions 1.. are the crops of a canvas of
``rows x cols`` crops onto which the image is resized (aspect kept) and centrally padded. The padding
is removed again in feature space ("unpadding"), so only a central band of canvas patches is *valid*.
LLaVA-1.5 is the special case P = 1 (no sub-image grid). LLaVA-OneVision cuts images the same way and
adds one step in feature space ("anyres_max_N"): when the unpadded canvas holds more than about N crops'
worth of patches, the stock model shrinks it by bilinear interpolation; :attr:`Layout.scaled` records the
shape it shrinks to, which decides the stock token count and the stock positions (never which patches a
method may keep: methods choose among the patches before interpolation).

Coordinates: partitions are numbered full image first, then the sub-image grid row-major, which is the
order LLaVA-NeXT stacks them. Inside a partition, patch ``t`` sits at row ``t // side``, column
``t % side``. Canvas coordinates count patches over the whole ``rows*side x cols*side`` canvas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

NEWLINE = -1
"""Marker for an image-newline token in a pack order."""


@dataclass(frozen=True)
class Geometry:
    """How a model cuts images into partitions.

    Args:
        crop_size: side of one partition in pixels (the vision tower's ``image_size``, e.g. 336).
        patch_size: side of one ViT patch in pixels (e.g. 14). A crop holds ``crop_size // patch_size``
            patches a side: SigLIP's 384 px crops of 14 px patches give 27 (its patch embedding drops the
            remaining 6 px).
        grid_pinpoints: the anyres canvas resolutions ``(height, width)`` in pixels, or ``None`` for a
            single-partition model (LLaVA-1.5).
        max_crops: LLaVA-OneVision's ``anyres_max_N``: the stock model interpolates an unpadded canvas of
            ``h x w`` patches down to ``int(h // r) x int(w // r)`` where ``r = sqrt(h * w / (N * side**2))``
            exceeds 1.1; ``None`` (LLaVA-NeXT) never interpolates.
    """

    crop_size: int
    patch_size: int
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    max_crops: int | None = None

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.crop_size < self.patch_size:
            raise ValueError(
                f"crop_size ({self.crop_size}) must be at least patch_size ({self.patch_size}), both positive"
            )
        if self.grid_pinpoints is not None:
            pins = tuple((int(h), int(w)) for h, w in self.grid_pinpoints)
            if not pins:
                raise ValueError("grid_pinpoints must not be empty")
            for h, w in pins:
                if h <= 0 or w <= 0 or h % self.crop_size or w % self.crop_size:
                    raise ValueError(f"grid pinpoint {(h, w)} is not a positive multiple of crop_size {self.crop_size}")
            object.__setattr__(self, "grid_pinpoints", pins)
        if self.max_crops is not None and (
            isinstance(self.max_crops, bool) or not isinstance(self.max_crops, int) or self.max_crops < 1
        ):
            raise ValueError(f"max_crops must be a positive integer or None, got {self.max_crops!r}")

    @property
    def side(self) -> int:
        """Patches along one side of a partition (24 for CLIP ViT-L/14 at 336 px, 27 for SigLIP at 384 px)."""
        return self.crop_size // self.patch_size

    @property
    def tokens(self) -> int:
        """T: patch tokens per partition (576 for CLIP ViT-L/14 at 336 px)."""
        return self.side * self.side


def best_resolution(image_size: tuple[int, int], pinpoints: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The anyres canvas ``(height, width)`` LLaVA-NeXT picks for an image of ``image_size = (h, w)``.

    Most effective (downscaled) resolution first, then least wasted area; the first pinpoint wins ties.
    """
    height, width = image_size
    best, best_effective, best_waste = None, 0, float("inf")
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_h, cand_w), effective, waste
    if best is None:
        raise ValueError(f"no grid pinpoint fits image size {image_size}")
    return best


@dataclass(frozen=True)
class Layout:
    """The partitions of one image.

    ``grid = (rows, cols)`` of sub-images, ``(0, 0)`` for a single-partition model. The valid canvas
    region is ``[top, bottom) x [left, right)`` in canvas patch coordinates. ``scaled = (rows, cols)`` is
    the shape the stock model interpolates that region to (LLaVA-OneVision's anyres_max), ``None`` if it
    keeps it as it is. ``shape = (rows, cols)``: a single partition that is not ``side x side`` (a
    native-resolution tower such as Qwen2.5-VL's, whose one partition is the image's grid of merged tokens).
    ``detail``: the image's sharp-edge density (:func:`hired.core.detail.edge_density`), set by the vision
    step for a content-adaptive budget, ``None`` otherwise.
    """

    image_size: tuple[int, int]
    side: int
    grid: tuple[int, int] = (0, 0)
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0
    scaled: tuple[int, int] | None = None
    shape: tuple[int, int] | None = None
    detail: float | None = None

    def __post_init__(self) -> None:
        if self.shape is not None and self.grid != (0, 0):
            raise ValueError("a Layout with a shape has one partition (grid (0, 0))")

    @property
    def partition_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of patches in one partition: ``shape``, or ``(side, side)``."""
        return self.shape if self.shape is not None else (self.side, self.side)

    @property
    def tokens(self) -> int:
        """T: patch tokens per partition."""
        rows, cols = self.partition_shape
        return rows * cols

    @property
    def num_subimages(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_partitions(self) -> int:
        """P: the full image plus the sub-images."""
        return 1 + self.num_subimages

    @property
    def valid_rows(self) -> int:
        """Rows of the unpadded canvas (each gets one image-newline token in LLaVA-NeXT)."""
        return self.bottom - self.top

    @cached_property
    def valid_mask(self) -> torch.Tensor:
        """Bool ``(P, T)``: which patches of each partition survive unpadding (all of the full image)."""
        rows, cols = self.grid
        side = self.side
        full = torch.ones(1, self.tokens, dtype=torch.bool)
        if not self.num_subimages:
            return full
        canvas = torch.zeros(rows * side, cols * side, dtype=torch.bool)
        canvas[self.top : self.bottom, self.left : self.right] = True
        sub = canvas.view(rows, side, cols, side).permute(0, 2, 1, 3).reshape(rows * cols, self.tokens)
        return torch.cat([full, sub], dim=0)

    @cached_property
    def valid_counts(self) -> tuple[int, ...]:
        """Valid patches per partition, full image first."""
        return tuple(self.valid_mask.sum(dim=1).tolist())

    @property
    def num_valid(self) -> int:
        return sum(self.valid_counts)

    def pack_order(self, newline: bool) -> torch.Tensor:
        """Long ``(L,)``: flat indices into the ``(P * T)`` patches in the order LLaVA packs them.

        The full image comes first in raster order, then the valid canvas in raster order (the sub-image
        grid stitched together). With ``newline`` a ``NEWLINE`` marker ends every canvas row, as
        LLaVA-NeXT's image-newline token does (a single-partition LLaVA-NeXT image gets one at the end).
        """
        return self._pack_order_newline if newline else self._pack_order_plain

    @cached_property
    def _pack_order_plain(self) -> torch.Tensor:
        order = self._canvas_order()
        return order[order != NEWLINE]

    @cached_property
    def _pack_order_newline(self) -> torch.Tensor:
        return self._canvas_order()

    def stock_length(self, newline: bool) -> int:
        """Tokens the unmodified model gives this image (with ``newline``: image-newline tokens included)."""
        if self.scaled is None:
            return len(self.pack_order(newline))
        rows, cols = self.scaled
        return self.tokens + rows * (cols + int(newline))

    def stock_map(self, newline: bool) -> torch.Tensor:
        """Long ``(len(pack_order(newline)),)``: where each entry of the pack order sits in the stock sequence.

        The identity unless the stock model interpolates the canvas (:attr:`scaled`); then canvas patch
        ``(r, c)`` of the unpadded ``h x w`` region maps to the stock token nearest to its centre,
        ``(floor((r + 0.5) * h' / h), floor((c + 0.5) * w' / w))``, and a row's newline to that stock row's.
        """
        return self._stock_map_newline if newline else self._stock_map_plain

    @cached_property
    def _stock_map_plain(self) -> torch.Tensor:
        return self._stock_map(False)

    @cached_property
    def _stock_map_newline(self) -> torch.Tensor:
        return self._stock_map(True)

    def _stock_map(self, newline: bool) -> torch.Tensor:
        order = self.pack_order(newline)
        if self.scaled is None:
            return torch.arange(len(order))
        tokens, (rows, cols) = self.tokens, self.scaled
        h, w = self.valid_rows, self.right - self.left
        r = torch.arange(h, dtype=torch.float64)
        c = torch.arange(w, dtype=torch.float64)
        stock_r = ((r + 0.5) * rows / h).floor().long().clamp_(max=rows - 1)
        stock_c = ((c + 0.5) * cols / w).floor().long().clamp_(max=cols - 1)
        width = cols + int(newline)
        canvas = tokens + stock_r[:, None] * width + stock_c[None, :]  # (h, w)
        if newline:
            canvas = torch.cat([canvas, (tokens + stock_r * width + cols)[:, None]], dim=1)
        return torch.cat([torch.arange(tokens), canvas.flatten()])

    def _canvas_order(self) -> torch.Tensor:
        tokens, side = self.tokens, self.side
        full = torch.arange(tokens)
        if not self.num_subimages:  # a lone crop: LLaVA-NeXT / OneVision end it with one newline
            return torch.cat([full, torch.tensor([NEWLINE])])
        _, cols = self.grid
        r = torch.arange(self.top, self.bottom)[:, None]
        c = torch.arange(self.left, self.right)[None, :]
        partition = 1 + (r // side) * cols + c // side
        flat = partition * tokens + (r % side) * side + c % side
        marker = torch.full((flat.shape[0], 1), NEWLINE, dtype=flat.dtype)
        return torch.cat([full, torch.cat([flat, marker], dim=1).flatten()])


def layout_for(image_size: tuple[int, int], geometry: Geometry, *, single: bool = False) -> Layout:
    """The partition layout of an image of ``image_size = (height, width)`` pixels.

    Reproduces LLaVA-NeXT's canvas choice and its feature-space unpadding exactly (and OneVision's
    interpolation, :attr:`Geometry.max_crops`), so the valid patches here are the ones the stock model
    keeps. ``single``: the image is encoded as one crop (LLaVA-1.5; OneVision's multi-image prompts).
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got (height, width) = {(height, width)}")
    side = geometry.side
    if geometry.grid_pinpoints is None or single:
        return Layout(image_size=(height, width), side=side)
    best_h, best_w = best_resolution((height, width), geometry.grid_pinpoints)
    rows, cols = best_h // geometry.crop_size, best_w // geometry.crop_size
    canvas_h, canvas_w = rows * side, cols * side
    top, bottom, left, right = 0, canvas_h, 0, canvas_w
    if width / height > canvas_w / canvas_h:
        new_h = int(round(height * (canvas_w / width), 7))
        pad = (canvas_h - new_h) // 2
        top, bottom = pad, canvas_h - pad
    else:
        new_w = int(round(width * (canvas_h / height), 7))
        pad = (canvas_w - new_w) // 2
        left, right = pad, canvas_w - pad
    scaled = None
    if geometry.max_crops is not None:
        h, w = bottom - top, right - left
        ratio = math.sqrt(h * w / (geometry.max_crops * side**2))
        if ratio > 1.1:
            scaled = (int(h // ratio), int(w // ratio))
    return Layout(
        image_size=(height, width),
        side=side,
        grid=(rows, cols),
        top=top,
        bottom=bottom,
        left=left,
        right=right,
        scaled=scaled,
    )


def full_to_subimage(layout: Layout) -> torch.Tensor:
    """Long ``(T,)``: the sub-image (0-based, row-major in the grid) covering each full-image patch.

    The full image is the whole picture squashed to one crop, so patch ``(u, v)`` has its centre at
    ``((u + 0.5) / side, (v + 0.5) / side)`` of the picture. On the canvas the picture fills the valid
    region, so that point lands in canvas patch row ``top + y * (bottom - top)`` (likewise columns),
    and the sub-image is that position divided by ``side``. This is a true 2-D mapping for every grid.
    """
    if not layout.num_subimages:
        raise ValueError("a single-partition layout has no sub-images")
    side = layout.side
    rows, cols = layout.grid
    centre = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    canvas_r = layout.top + centre * layout.valid_rows
    canvas_c = layout.left + centre * (layout.right - layout.left)
    sub_r = (canvas_r // side).long().clamp_(0, rows - 1)
    sub_c = (canvas_c // side).long().clamp_(0, cols - 1)
    return (sub_r[:, None] * cols + sub_c[None, :]).flatten()


def row_chunk_to_subimage(layout: Layout) -> torch.Tensor:
    """Long ``(T,)``: the reference implementation's mapping, kept for comparison.

    The reference reshapes the full-image score vector into one contiguous chunk per sub-image, so
    sub-image ``k`` is credited with raster positions ``[k*T/n, (k+1)*T/n)``: runs of whole rows, not
    the 2-D region the sub-image covers.
    """
    n = layout.num_subimages
    if not n:
        raise ValueError("a single-partition layout has no sub-images")
    t = torch.arange(layout.tokens)
    return (t * n) // layout.tokens
