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
    queries: torch.Tensor,
    keys: torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    chunk: int = 256,
    *,
    stride: int = 1,
) -> torch.Tensor:
    """Attention each token *receives*: softmax attention averaged over the queries, summed over heads, in
    fp32. Needs no [CLS] token (SigLIP towers); the queries are taken ``chunk`` at a time, so no N x N map
    is ever held (``chunk x N`` per head).

    Args:
        queries: ``(B, N, H * D)`` projected queries of all N tokens.
        keys: ``(B, N, H * D)`` projected keys.
        num_heads: H.
        scale: logit scale, ``D ** -0.5`` by default.
        chunk: queries per step.
        stride: average over every ``stride``-th query only (:func:`query_subset`), an estimate of the mean
            over all N at ``1 / stride`` of the cost; ``1`` (the default) is the exact mean.

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
    used = query_subset(seq, stride)
    # the scale goes on the (few) queries, not on the chunk x N logits; a copy in fp32 either way
    q = (queries.reshape(batch, seq, num_heads, head_dim)[:, used].float() * scale).transpose(1, 2)  # (B, H, n, D)
    k_t = keys.float().reshape(batch, seq, num_heads, head_dim).permute(0, 2, 3, 1)  # (B, H, D, N), a view in fp32
    received = torch.zeros(batch, num_heads, 1, seq, dtype=torch.float32, device=keys.device)
    for start in range(0, q.shape[2], chunk):
        # softmax in place: exp(logits - row max), then each row's 1 / sum weighs it in one matrix product
        probs = torch.matmul(q[:, :, start : start + chunk], k_t)  # (B, H, c, N) logits
        probs -= probs.amax(dim=-1, keepdim=True)
        probs.exp_()
        inverse = probs.sum(dim=-1, keepdim=True).reciprocal_()  # (B, H, c, 1)
        received += torch.matmul(inverse.transpose(-1, -2), probs)  # (B, H, 1, N): the chunk's column sums
    return received.sum(dim=(1, 2)) / q.shape[2]


def query_subset(seq: int, stride: int) -> slice:
    """The queries :func:`received_attention` averages over for ``stride``: every ``stride``-th of ``seq``,
    the middle one of each run of ``stride`` (a regular lattice over the tower's token order); ``stride=1``:
    all of them."""
    if stride < 1:
        raise ValueError(f"query stride must be a positive integer, got {stride!r}")
    return slice(min((stride - 1) // 2, max(seq - 1, 0)), None, stride)


def stride_for(seq: int, max_queries: int | None) -> int:
    """The smallest stride that averages over at most ``max_queries`` of ``seq`` queries (``None``: 1, all)."""
    if max_queries is None:
        return 1
    if max_queries < 1:
        raise ValueError(f"max_queries must be a positive integer or None, got {max_queries!r}")
    return max(1, -(-seq // max_queries))


def pool_to_merged(values: torch.Tensor, unit: int, order: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-patch ``values`` ``(seq, ...)``, ``unit`` consecutive patches per merged token, → one value per merged
    token ``(sum N, ...)`` (``reduce``: ``"sum"``, or ``"mean"`` in fp32), in the order ``order`` ``(sum N,)``
    gives (e.g. raster order from a tower's window order)."""
    grouped = values.reshape(values.shape[0] // unit, unit, *values.shape[1:])
    pooled = grouped.sum(dim=1) if reduce == "sum" else grouped.float().mean(dim=1)
    return pooled[order.to(pooled.device)]
