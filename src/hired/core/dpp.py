"""Conditional determinantal point processes: CDPruner's relevance-weighted kernel and the fast greedy MAP
inference of Chen et al. (NeurIPS 2018), batched over rows (framework-free).

The kernel of a row of N tokens with features ``x`` and relevance ``w`` is
``L[i, j] = w_i * cos(x_i, x_j) * w_j``: positive semi-definite, its diagonal is ``w_i^2``. The greedy MAP
picks, step by step, the token that most increases ``log det L[S, S]``; with the Cholesky-style update it
costs O(k N) per step and never forms a determinant.
"""

from __future__ import annotations

import torch

from hired.core.diverse import unit_rows

#: a conditional gain ``det L[S + j] / det L[S]`` at or below this share of the row's largest diagonal entry
#: counts as zero (the kernel is exhausted there: fp32 rounding, not information, would rank the tokens)
EXHAUSTED = 1e-6


def minmax(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CDPruner's relevance normalisation over the valid entries of each row: ``(v - min + 1e-6) / (max - min)``,
    in (0, 1]; a row whose valid entries are all equal gets 1 everywhere. Invalid entries become 0."""
    v = values.float()
    lo = v.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    hi = v.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)  # all equal (or no valid entry)
    out = (v - lo + 1e-6) / torch.where(flat, torch.ones_like(span), span)
    out = torch.where(flat, torch.ones_like(out), out)
    return out.masked_fill(~valid, 0.0)


def conditional_kernel(features: torch.Tensor, weights: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """``(R, N, N)`` fp32 kernel ``w_i * cos(x_i, x_j) * w_j`` of ``features`` ``(R, N, D)`` (unit rows already
    with ``normalized``) and ``weights`` ``(R, N)``; its diagonal is exactly ``w_i^2``."""
    unit = features.float() if normalized else unit_rows(features)
    w = weights.float()
    kernel = unit @ unit.transpose(1, 2)
    # cos(x, x) is 1 by definition (0 for a zero vector): exact, so equal weights tie exactly on the diagonal
    diag = kernel.diagonal(dim1=1, dim2=2)
    diag.copy_(diag > 0.5)  # about 1 for a unit row, 0 for a zero one
    return kernel.mul_(w[:, :, None] * w[:, None, :])


def greedy_map(kernel: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Greedy MAP of the DPP with ``kernel`` ``(R, N, N)`` over each row's valid tokens, ``k[r]`` of them.

    Step i takes the valid, not yet chosen token j with the largest conditional gain
    ``d_j^2 = det L[S + j, S + j] / det L[S, S]`` (the squared residual of its Cholesky row), lower index
    on ties; gains at or below ``EXHAUSTED`` times the row's largest valid diagonal entry count as zero, so
    a numerically exhausted kernel continues in index order and the count stays exact.

    Returns:
        ``(R, max k)`` long token indices in the order chosen; ``-1`` after a row's ``k``.
    """
    r, n, _ = kernel.shape
    device = kernel.device
    k = k.to(device)
    steps = int(k.max()) if r else 0
    order = torch.empty(r, steps, dtype=torch.long, device=device)
    if steps == 0:
        return order
    kernel = kernel.float()
    rows = torch.arange(r, device=device)
    gains = torch.diagonal(kernel, dim1=1, dim2=2).masked_fill(~valid, float("-inf"))  # d_j^2, -inf: not a candidate
    tol = EXHAUSTED * gains.amax(dim=1).clamp(min=0)  # (R,)
    chol = torch.zeros(steps, r, n, device=device)  # Cholesky rows c_t of the chosen tokens
    for step in range(steps):
        # exhausted gains count as zero; chosen and invalid tokens are -inf
        score = torch.where(gains > tol[:, None], gains, 0.0).masked_fill_(gains.isneginf(), float("-inf"))
        j = score.argmax(dim=1)
        order[:, step] = j
        dj = gains[rows, j]
        live = dj > tol
        # e = (L[j, :] - sum_t c_t[j] c_t) / sqrt(d_j^2)
        e = kernel[rows, j]
        if step:
            e = e - torch.einsum("tr,trn->rn", chol[:step, rows, j], chol[:step])
        e = e * (live / torch.sqrt(torch.where(live, dj, 1.0)))[:, None]
        chol[step] = e
        gains = gains - e * e
        gains[rows, j] = float("-inf")
    return torch.where(torch.arange(steps, device=device)[None, :] < k[:, None], order, -1)
