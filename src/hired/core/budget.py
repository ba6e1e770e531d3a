"""Budget arithmetic: exact totals, largest-remainder shares, caps and redistribution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


def _exact(x: float) -> Fraction:
    """The decimal a user wrote (0.29 → 29/100), so floor(0.29 * 100) is 29, not 28."""
    return Fraction(repr(float(x)))


def scaled_floor(rate: float, n: int) -> int:
    """``floor(rate * n)`` computed on the decimal value of ``rate``."""
    return math.floor(_exact(rate) * n)


def total_budget(rate: float, partitions: int, tokens: int) -> int:
    """B = floor(r * P * T): the visual tokens one image may keep."""
    return scaled_floor(rate, partitions * tokens)


def adapted_budget(rate: float, gamma: float, ratio: float, partitions: int, tokens: int, valid: int) -> int:
    """A content-adaptive image budget: ``floor(min(1, rate * ratio ** gamma) * P * T)``, at least one token
    where the image has one (``valid`` patches). ``ratio``: the image's content statistic over the one
    that keeps exactly ``rate`` (``>= 0``)."""
    if ratio < 0 or gamma < 0:
        raise ValueError(f"ratio and gamma must be non-negative, got {ratio!r} and {gamma!r}")
    scaled = min(1.0, rate * ratio**gamma)
    return max(scaled_floor(scaled, partitions * tokens), min(1, valid))


def largest_remainder(total: int, weights: Sequence[float], caps: Sequence[int] | None = None) -> list[int]:
    """Split ``total`` into integers proportional to ``weights``, none above its cap.

    Shares that would exceed their cap are fixed at the cap and the rest is split again among the others
    by weight (water-filling; by remaining room when no positive weight is left). The final split uses
    Hamilton's method once: floors of the exact quotas, then one more unit to the largest remainders
    (ties go to the lower index). The result sums to ``min(total, sum(caps))``.
    """
    n = len(weights)
    caps = [math.inf] * n if caps is None else list(caps)
    if len(caps) != n:
        raise ValueError(f"{n} weights but {len(caps)} caps")
    if total < 0 or any(c < 0 for c in caps) or any(w < 0 or w != w for w in weights):
        raise ValueError("total, weights and caps must be non-negative")
    alloc = [0] * n
    remaining = total if math.isinf(sum(caps)) else min(total, int(sum(caps)))
    open_ = [i for i in range(n) if caps[i] > 0]
    while remaining > 0:
        # water-filling: fix every share whose exact quota reaches its cap, then round the rest once
        w = {i: Fraction(weights[i]) for i in open_ if weights[i] > 0}
        if not w:  # no content left among those with room: share by room
            w = {i: Fraction(1) if math.isinf(caps[i]) else Fraction(caps[i]) for i in open_}
        norm = sum(w.values())
        quotas = {i: remaining * wi / norm for i, wi in w.items()}
        capped = [i for i, q in quotas.items() if q >= caps[i]]
        if capped:
            for i in capped:
                alloc[i] = int(caps[i])
                remaining -= alloc[i]
                open_.remove(i)
            continue
        share = {i: math.floor(q) for i, q in quotas.items()}
        extra = remaining - sum(share.values())
        for i in sorted(quotas, key=lambda i: (-(quotas[i] - share[i]), i))[:extra]:
            share[i] += 1
        for i, s in share.items():
            alloc[i] = s
        remaining = 0
    return alloc


def even_split(budget: int, valid: Sequence[int]) -> list[int]:
    """Split an image's ``budget`` evenly over its partitions, none above its valid patches.

    Every partition gets the same quota ``budget / P``; a partition with fewer valid patches keeps all
    of them and what it frees is shared evenly by the others. Integer shares come from
    :func:`largest_remainder` (one extra unit to the lower partition indices on ties). The total is
    ``min(budget, sum(valid))``, a function of the layout alone.

    Args:
        budget: B, the image's total token budget.
        valid: valid patches per partition, full image first.
    """
    if budget < 0:
        raise ValueError(f"budget must be non-negative, got {budget}")
    if not valid:
        raise ValueError("an image has at least one partition")
    return largest_remainder(budget, [1] * len(valid), valid)


def allocate(budget: int, alpha: float, valid: Sequence[int], content: Sequence[float]) -> list[int]:
    """HiRED's per-partition budgets (full image first).

    The full image takes ``min(floor(alpha * budget), valid[0])``; the sub-images share the rest in
    proportion to ``content`` (one weight per sub-image), each capped at its valid patches. Whatever the
    caps leave over returns to the full image while it has room. The total is
    ``min(budget, sum(valid))`` whatever ``content`` is, which makes the token count a function of the
    image size alone.

    Args:
        budget: B, the image's total token budget.
        alpha: share of B for the full image, in [0, 1].
        valid: valid patches per partition, ``len(valid) == P``.
        content: visual-content weight per sub-image, ``len(content) == P - 1``.
    """
    if len(content) != len(valid) - 1:
        raise ValueError(f"{len(valid)} partitions need {len(valid) - 1} content weights, got {len(content)}")
    if len(valid) == 1:
        return [min(budget, valid[0])]
    full = min(scaled_floor(alpha, budget), valid[0])
    subs = largest_remainder(budget - full, content, valid[1:])
    full += min(budget - full - sum(subs), valid[0] - full)
    return [full, *subs]
