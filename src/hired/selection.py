"""What a method kept, as returned by ``hired.last_selection``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionSelection:
    """One partition (the full image or one sub-image).

    ``kept``: indices of the kept patches, row-major in the partition's ``grid = (rows, cols)`` of
    patches, ascending. ``budget``: tokens allotted. ``valid``: patches that survive unpadding.
    """

    kept: list[int]
    budget: int
    grid: tuple[int, int]
    valid: int


@dataclass(frozen=True)
class ImageSelection:
    """One image: ``partitions[0]`` is the full image, then the sub-image grid row-major.

    ``grid = (rows, cols)`` of sub-images, ``(0, 0)`` for LLaVA-1.5. ``num_tokens`` is what the
    language model receives for this image (newline tokens included); ``num_tokens_stock`` is what the
    unmodified model would receive. ``position_ids``: with ``keep_positions``, the position id each of
    the image's ``num_tokens`` tokens was given (their stock ids, in order), else ``None`` (packed); on
    Qwen2.5-VL (M-RoPE, always the stock ids) one ``[t, h, w]`` triple per token.
    """

    image_size: tuple[int, int]
    grid: tuple[int, int]
    partitions: list[PartitionSelection]
    num_tokens: int
    num_tokens_stock: int
    position_ids: list[int] | list[list[int]] | None = None

    @property
    def num_kept(self) -> int:
        """Patch tokens kept over all partitions."""
        return sum(len(p.kept) for p in self.partitions)
