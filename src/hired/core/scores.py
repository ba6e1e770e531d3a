"""[CLS] attention rows, computed from q and k without an N x N attention map."""

from __future__ import annotations

import torch


def cls_attention(q_cls: torch.Tensor, keys: torch.Tensor, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """Attention of the [CLS] query over all tokens, summed over heads, in fp32.

    Args:
        q_cls: ``(B, H * D)`` projected query of the [CLS] token (position 0).
        keys: ``(B, N, H * D)`` projected keys of all N tokens.
        num_heads: H.
        scale: logit scale, ``D ** -0.5`` by default.

    Returns:
        ``(B, N)`` fp32; each row sums to H (one softmax per head).
    """
    batch, seq, width = keys.shape
    if width % num_heads:
        raise ValueError(f"key width {width} is not divisible by {num_heads} heads")
    head_dim = width // num_heads
    scale = head_dim**-0.5 if scale is None else scale
    q = q_cls.float().reshape(batch, num_heads, head_dim)
    k = keys.float().reshape(batch, seq, num_heads, head_dim)
    logits = torch.einsum("bhd,bnhd->bhn", q, k) * scale
    return logits.softmax(dim=-1).sum(dim=1)
