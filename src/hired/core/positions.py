"""Stock position ids for a pruned sequence (``keep_positions``).

Dropping packs the kept visual tokens together, so every kept token and all text after an image get other
position ids than the stock (unpruned) model gives them. With the stock ids instead, a kept token sits
where it sat in the full sequence and text after an image continues after the image's *stock* length:

    stock id of a text token  = its packed id + sum over the images before it of (stock - kept) tokens
    stock id of a kept token  = the image's first stock id + the token's index in the stock sequence

Decoding continues from the stock ids: each row's packed ids plus that row's ``shift`` (the total
``stock - kept`` of its images).
"""

from __future__ import annotations

import torch


def stock_position_ids(
    position_ids: torch.Tensor,
    image_mask: torch.Tensor,
    stock_index: torch.Tensor,
    lengths: list[int],
    stock_lengths: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the packed position ids of a prompt batch onto the stock ones.

    Args:
        position_ids: ``(B, S)`` long, the packed ids (as ``generate`` derives them from the attention
            mask); ids inside one image's placeholder run must be consecutive.
        image_mask: ``(B, S)`` bool, the image placeholders; their flattened (row-major) order is the
            order of the images' tokens.
        stock_index: ``(L,)`` long, each placeholder token's index in its image's stock sequence.
        lengths: tokens of each image in the sequence (``sum == L``, each at least 1).
        stock_lengths: tokens each image has in the stock sequence.

    Returns:
        ``(B, S)`` long stock ids, and ``(B,)`` long ``shift`` = stock ids - packed ids after the prompt.
        No host-device synchronisation.
    """
    if len(lengths) != len(stock_lengths):
        raise ValueError(f"{len(lengths)} image lengths but {len(stock_lengths)} stock lengths")
    if any(n < 1 for n in lengths):
        raise ValueError("keep_positions needs at least one token per image (an image kept none)")
    device = position_ids.device
    total = sum(lengths)
    counts = torch.tensor(lengths, dtype=torch.long, device=device)
    first = torch.cumsum(counts, 0) - counts  # flat index of each image's first token
    local = torch.arange(total, device=device) - torch.repeat_interleave(first, counts, output_size=total)
    # the stock tokens an image drops are counted at its last token, so text after it moves on by them
    dropped = torch.zeros(total, dtype=torch.long, device=device)
    dropped[first + counts - 1] = torch.tensor(stock_lengths, dtype=torch.long, device=device) - counts
    delta = torch.zeros_like(position_ids).masked_scatter(image_mask, dropped)
    offset = torch.zeros_like(position_ids).masked_scatter(image_mask, stock_index.to(device) - local)
    before = torch.cumsum(delta, dim=1) - delta  # dropped tokens of the images before each token
    return position_ids + before + offset, delta.sum(dim=1)


def mrope_offsets(index: torch.Tensor, width: int) -> torch.Tensor:
    """Long ``(3, n)``: the (t, h, w) M-RoPE offsets of merged tokens ``index`` of an image ``width`` tokens
    wide (one temporal step), as transformers' ``get_vision_position_ids`` lays them out."""
    return torch.stack([torch.zeros_like(index), index // width, index % width])
