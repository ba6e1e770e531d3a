"""Attention scores of vision tokens from q and k, without an N x N attention map: the [CLS] row, or the
attention each token receives (for towers without [CLS])."""

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
    q = q_cls.float().reshape(batch, 1, num_heads, head_dim)
    k = keys.float().reshape(batch, seq, num_heads, head_dim)
    # multiply-and-sum reads the keys where they lie (an einsum would copy them into (B, H, N, D) first)
    logits = (k * q).sum(dim=-1) * scale  # (B, N, H)
    return logits.softmax(dim=1).sum(dim=2)


def received_attention(
    queries: torch.Tensor, keys: torch.Tensor, num_heads: int, scale: float | None = None, chunk: int = 256
) -> torch.Tensor:
    """Attention each token *receives*: softmax attention averaged over all N queries, summed over heads,
    in fp32. Needs no [CLS] token (SigLIP towers); the queries are taken ``chunk`` at a time, so no
    N x N map is ever held (``chunk x N`` per head).

    Args:
        queries: ``(B, N, H * D)`` projected queries of all N tokens.
        keys: ``(B, N, H * D)`` projected keys.
        num_heads: H.
        scale: logit scale, ``D ** -0.5`` by default.
        chunk: queries per step.

    Returns:
        ``(B, N)`` fp32; each row sums to H (every query's softmax sums to one, per head).
    """
    batch, seq, width = keys.shape
    if width % num_heads:
        raise ValueError(f"key width {width} is not divisible by {num_heads} heads")
    if queries.shape != keys.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} differ in shape")
    head_dim = width // num_heads
    scale = head_dim**-0.5 if scale is None else scale
    q = queries.float().reshape(batch, seq, num_heads, head_dim).transpose(1, 2)  # (B, H, N, D)
    k = keys.float().reshape(batch, seq, num_heads, head_dim).transpose(1, 2)
    received = torch.zeros(batch, num_heads, seq, dtype=torch.float32, device=keys.device)
    for start in range(0, seq, chunk):
        logits = torch.matmul(q[:, :, start : start + chunk], k.transpose(-1, -2)) * scale  # (B, H, c, N)
        received += logits.softmax(dim=-1).sum(dim=2)
    return received.sum(dim=1) / seq


def pool_to_merged(values: torch.Tensor, unit: int, order: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-patch ``values`` ``(seq, ...)``, ``unit`` consecutive patches per merged token, → one value per merged
    token ``(sum N, ...)`` (``reduce``: ``"sum"``, or ``"mean"`` in fp32), in the order ``order`` ``(sum N,)``
    gives (e.g. raster order from a tower's window order)."""
    grouped = values.reshape(values.shape[0] // unit, unit, *values.shape[1:])
    pooled = grouped.sum(dim=1) if reduce == "sum" else grouped.float().mean(dim=1)
    return pooled[order.to(pooled.device)]
