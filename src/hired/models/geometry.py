"""hired-tiny's image geometry: 112 px crops of 14 px patches and the anyres grids 1x2, 2x1, 2x2, 1x3, 3x1.

:mod:`hired.models.task`, :mod:`hired.models.dense` and :mod:`hired.models.tiny_vlm` all read it from here
(it imports none of them).
"""

from __future__ import annotations

import functools

from hired.core.grid import Geometry

CROP = 112
"""Side of hired-tiny's crops (the full image and every sub-image), in pixels."""
PATCH = 14
"""Side of a DINOv2-S/14 patch, in pixels."""


def pinpoints(crop: int = CROP) -> list[list[int]]:
    """Grids 1x2, 2x1, 2x2, 1x3, 3x1 as ``(height, width)`` in pixels."""
    return [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop], [crop, 3 * crop], [3 * crop, crop]]


@functools.cache
def geometry() -> Geometry:
    """hired-tiny's :class:`~hired.core.grid.Geometry` (crop, patch, pinpoints)."""
    return Geometry(CROP, PATCH, tuple(tuple(p) for p in pinpoints()))
