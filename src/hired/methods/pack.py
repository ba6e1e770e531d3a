"""Packing a selection into the token sequence the language model sees (framework-free).

One implementation for every adapter: the kept patches of each image, in LLaVA's order (full image, then
the stitched sub-image canvas row by row, with image-newline slots where the method keeps them), merged
first when the method merges. The per-image lengths are the counts the processor was promised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hired.core.grid import NEWLINE, Layout
from hired.methods.base import Method, Selection, newline_tokens


@dataclass(frozen=True)
class Packed:
    """Pre-projector features of the kept tokens of a batch.

    ``features`` is ``(L, Dv)``, every image's tokens one after another; rows where ``is_newline`` is True
    are image-newline slots holding a placeholder row (the adapter puts the model's newline embedding
    there after projecting). ``lengths[i]`` is image i's share of L. ``stock_index`` ``(L,)`` long: each
    token's index in its image's stock (unpruned) token sequence, of ``stock_lengths[i]`` tokens.
    """

    features: torch.Tensor
    is_newline: torch.Tensor
    lengths: list[int]
    stock_index: torch.Tensor
    stock_lengths: list[int]


def feature_inputs(method: Method, features: torch.Tensor, project) -> dict:
    """The ``features`` argument of ``method.select`` for the patch features ``(sum P, T, Dv)`` of a batch:
    none, the features themselves (``feature_space() == "vision"``), or ``project(features)`` without
    autograd (``"projected"``, the language model's input space). Shared by every adapter."""
    space = method.feature_space()
    if space is None:
        return {}
    if space == "vision":
        return {"features": features.detach()}
    if space == "projected":
        with torch.no_grad():
            return {"features": project(features)}
    raise ValueError(
        f"{type(method).__name__}.feature_space() returned {space!r}: expected None, 'vision' or 'projected'"
    )


def keeps_newline(method: Method, newline: bool) -> bool:
    """Whether image-newline tokens go to the LLM (LLaVA-NeXT with a method that keeps them)."""
    return newline and method.keep_newline


def pack_order(
    method: Method,
    layouts: list[Layout],
    selection: Selection,
    newline: bool,
    device: torch.device,
    check: bool = True,
) -> tuple[torch.Tensor, list[int], torch.Tensor, list[int]]:
    """The kept tokens of a batch in pack order.

    Returns flat indices into ``(sum P * T)`` of the kept patches (``NEWLINE`` markers where newlines are
    kept), the number of tokens of each image, each kept token's index in its image's stock token
    sequence (``(L,)`` long: LLaVA's order with a newline per canvas row where the family has them), and
    the length of each image's stock sequence. For fixed-count methods the kept count is known on the
    host (it is the promised count), so this needs no device sync; on a CPU the kept count is checked
    against it (``check=False``: the caller checks a whole batch at once, :func:`check_kept`).
    """
    with_newline = keeps_newline(method, newline)
    tokens = layouts[0].tokens
    pieces, maps, offset, lengths, stock_lengths = [], [], 0, [], []
    for layout, budgets in zip(layouts, selection.budgets):
        if not method.adaptive and sum(budgets) != method.count(layout):
            raise RuntimeError(
                f"{type(method).__name__} allotted {sum(budgets)} tokens to a {layout.image_size} image "
                f"but promised {method.count(layout)}; its select() disagrees with its count()"
            )
        order = layout.pack_order(newline)  # every patch (and newline) the stock model packs
        pieces.append(torch.where(order != NEWLINE, order + offset, order))
        maps.append(layout.stock_map(newline))
        offset += layout.num_partitions * tokens
        lengths.append(sum(budgets) + (newline_tokens(layout) if with_newline else 0))
        stock_lengths.append(layout.stock_length(newline))
    order = torch.cat(pieces).to(device, non_blocking=True)
    is_token = order != NEWLINE
    # score-free methods (spatial, random) decide on the CPU: bring their mask to the features' device
    kept = selection.keep.to(device, non_blocking=True).flatten()[order.clamp(min=0)]
    keep = (~is_token & with_newline) | (is_token & kept)
    total = sum(lengths)
    if check:
        check_kept(method, keep.sum(), total)
    # positions of the kept entries in the concatenated stock sequences, without a data-dependent shape
    positions = torch.sort((~keep).to(torch.uint8), stable=True).indices[:total]
    stock_map = torch.cat(maps).to(device, non_blocking=True)  # each entry's index in its image's stock sequence
    return order[positions], lengths, stock_map[positions], stock_lengths


def check_kept(method: Method, kept: torch.Tensor, total: int) -> None:
    """On a CPU, raise unless ``kept`` (a 0-d count of kept tokens) is ``total``, the count promised to the
    processor (on an accelerator the check would cost a device sync per batch, so it is skipped)."""
    if kept.device.type == "cpu" and int(kept) != total:
        raise RuntimeError(
            f"{type(method).__name__} kept {int(kept)} tokens but its budgets add up to {total}; "
            "its select() returned inconsistent budgets"
        )


def pack_features(
    method: Method,
    layouts: list[Layout],
    selection: Selection,
    features: torch.Tensor,
    newline: bool,
    check: bool = True,
) -> Packed:
    """Gather (and merge) the kept tokens of ``features`` ``(sum P, T, Dv)`` in pack order (``check``: see
    :func:`pack_order`)."""
    order, lengths, stock_index, stock_lengths = pack_order(method, layouts, selection, newline, features.device, check)
    if selection.weights is not None:
        features = torch.bmm(selection.weights.to(features.device, features.dtype), features)
    kept = features.flatten(0, 1)[order.clamp(min=0)]  # (L, Dv); newline slots hold a placeholder row
    return Packed(kept, order == NEWLINE, lengths, stock_index, stock_lengths)
