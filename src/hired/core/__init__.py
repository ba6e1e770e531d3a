"""The HiRED math as small tensor functions. Nothing here knows about transformers or vLLM."""

from hired.core.budget import allocate, even_split, largest_remainder, total_budget
from hired.core.grid import Geometry, Layout, best_resolution, full_to_subimage, layout_for, row_chunk_to_subimage
from hired.core.scores import cls_attention
from hired.core.select import lattice_indices, topk_mask

__all__ = [
    "Geometry",
    "Layout",
    "allocate",
    "best_resolution",
    "cls_attention",
    "even_split",
    "full_to_subimage",
    "largest_remainder",
    "lattice_indices",
    "layout_for",
    "row_chunk_to_subimage",
    "topk_mask",
    "total_budget",
]
