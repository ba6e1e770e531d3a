"""Sharp-edge density: how much of an image is small, high-contrast detail (strokes, glyphs, table rules),
read from the pixels the vision tower is given. A content-adaptive budget scales each image's budget by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hired.core.grid import Layout

EDGE_STEP = 96 / 255
"""The luminance step (on a 0..1 scale) between two neighbouring pixels that counts as a sharp edge."""

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def sharp_edges(
    pixels: torch.Tensor,
    valid: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    step: float = EDGE_STEP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sharp edges and neighbour pairs inside the valid patches of each partition.

    Args:
        pixels: ``(N, C, H, W)`` partitions as the tower takes them, normalised by ``mean`` and ``std``
            (one value per channel); RGB (C = 3) or one grey channel.
        valid: ``(N, rows * cols)`` bool: the partitions' valid patches in raster order, on a square grid
            (``rows == cols``) of patches of ``H / rows`` pixels.
        step: the luminance difference (0..1 scale) above which a pair of neighbours is a sharp edge.

    Returns:
        ``(sharp, pairs)``, each ``(N,)`` long: horizontally or vertically adjacent pixel pairs inside one
        valid patch whose luminance differs by more than ``step``, and all such pairs.
    """
    n, c, h, w = pixels.shape
    side = int(round(valid.shape[1] ** 0.5))
    if side * side != valid.shape[1] or h % side or w % side:
        raise ValueError(f"{valid.shape[1]} patches do not tile a {h}x{w} partition on a square grid")
    if len(mean) != c or len(std) != c or c not in (1, 3):
        raise ValueError(f"{c} channels need one grey or three RGB mean and std values, got {len(mean)} and {len(std)}")
    x = pixels.detach().float() * torch.tensor(std, device=pixels.device).view(1, c, 1, 1)
    x = x + torch.tensor(mean, device=pixels.device).view(1, c, 1, 1)
    luma = x[:, 0] if c == 1 else sum(wt * x[:, i] for i, wt in enumerate(_LUMA))  # (N, H, W)
    ph, pw = h // side, w // side
    inside = valid.view(n, side, side).to(pixels.device)
    inside = inside.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)  # (N, H, W): pixel in a valid patch
    cols = torch.arange(w - 1, device=pixels.device)
    rows = torch.arange(h - 1, device=pixels.device)
    across = (inside[:, :, 1:] & ((cols + 1) % pw != 0)) & inside[:, :, :-1]  # pairs within one patch
    down = (inside[:, 1:, :] & ((rows + 1) % ph != 0)[:, None]) & inside[:, :-1, :]
    dx = (luma[:, :, 1:] - luma[:, :, :-1]).abs() > step
    dy = (luma[:, 1:, :] - luma[:, :-1, :]).abs() > step
    sharp = (dx & across).sum(dim=(1, 2)) + (dy & down).sum(dim=(1, 2))
    pairs = across.sum(dim=(1, 2)) + down.sum(dim=(1, 2))
    return sharp, pairs


def edge_density(
    layouts: Sequence[Layout],
    pixels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    step: float = EDGE_STEP,
) -> list[float]:
    """Per image: the share of neighbouring pixel pairs that are sharp edges (:func:`sharp_edges`), over
    its sub-images (the high-resolution view; the full image when it has none). ``pixels`` is
    ``(sum P, C, H, W)``, every partition of every image in order, full image first."""
    expected = sum(lay.num_partitions for lay in layouts)
    if pixels.shape[0] != expected:
        raise ValueError(f"{pixels.shape[0]} partitions of pixels for layouts of {expected}")
    valid = torch.cat([lay.valid_mask for lay in layouts])
    sharp, pairs = sharp_edges(pixels, valid, mean, std, step)
    sharp, pairs = sharp.tolist(), pairs.tolist()
    out, start = [], 0
    for lay in layouts:
        first = start + (1 if lay.num_subimages else 0)
        end = start + lay.num_partitions
        total = sum(pairs[first:end])
        out.append(sum(sharp[first:end]) / total if total else 0.0)
        start = end
    return out
