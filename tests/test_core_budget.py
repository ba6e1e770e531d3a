"""Budget arithmetic: exact totals, caps, redistribution (property-based)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hired.core.budget import allocate, largest_remainder, scaled_floor, total_budget

weights_caps = st.integers(1, 8).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 50), min_size=n, max_size=n),
        st.lists(st.integers(0, 40), min_size=n, max_size=n),
    )
)


@given(total=st.integers(0, 400), wc=weights_caps)
def test_largest_remainder_sums_to_what_fits_and_respects_caps(total, wc):
    weights, caps = wc
    alloc = largest_remainder(total, weights, caps)
    assert sum(alloc) == min(total, sum(caps))
    assert all(0 <= a <= c for a, c in zip(alloc, caps))


@given(total=st.integers(0, 400), weights=st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_largest_remainder_uncapped_is_within_one_of_quota(total, weights):
    alloc = largest_remainder(total, weights)
    assert sum(alloc) == total
    for a, w in zip(alloc, weights):
        quota = total * w / sum(weights)
        assert math.floor(quota) <= a <= math.ceil(quota)


def test_largest_remainder_gives_freed_budget_to_the_others_by_weight():
    # the first share (60) is capped at 10; the 50 it frees go 2:3 to the others
    assert largest_remainder(100, [6, 2, 2], [10, 100, 100]) == [10, 45, 45]
    # 90 split 1:3 is 22.5 : 67.5; the tied remainder goes to the lower index
    assert largest_remainder(100, [6, 1, 3], [10, 100, 100]) == [10, 23, 67]
    assert largest_remainder(100, [7, 1, 2], [10, 100, 100]) == [10, 30, 60]


def test_largest_remainder_ties_go_to_lower_index_and_zero_weights_share_by_room():
    assert largest_remainder(1, [1, 1, 1]) == [1, 0, 0]
    assert largest_remainder(5, [0, 0], [1, 9]) == [1, 4]


def test_largest_remainder_rejects_bad_input():
    with pytest.raises(ValueError):
        largest_remainder(3, [1, -1])
    with pytest.raises(ValueError):
        largest_remainder(3, [1, 1], [1])


@pytest.mark.parametrize(
    "rate,n,expected", [(0.2, 2880, 576), (0.29, 100, 29), (0.1, 30, 3), (1.0, 576, 576), (0.7, 10, 7)]
)
def test_total_budget_uses_the_decimal_rate(rate, n, expected):
    assert scaled_floor(rate, n) == expected
    assert total_budget(rate, 1, n) == expected


partitions = st.integers(1, 7).flatmap(
    lambda p: st.tuples(
        st.integers(1, 64),  # T
        st.lists(st.integers(0, 64), min_size=p - 1, max_size=p - 1),  # valid of sub-images (capped below)
        st.lists(st.integers(0, 30), min_size=p - 1, max_size=p - 1),  # content
    )
)


@settings(max_examples=300)
@given(rate=st.floats(0.01, 1.0), alpha=st.floats(0.0, 1.0), parts=partitions)
def test_allocate_total_is_independent_of_content(rate, alpha, parts):
    tokens, sub_valid, content = parts
    valid = [tokens] + [min(v, tokens) for v in sub_valid]
    budget = total_budget(rate, len(valid), tokens)
    alloc = allocate(budget, alpha, valid, content)
    uniform = allocate(budget, alpha, valid, [0] * len(content))
    assert sum(alloc) == sum(uniform) == min(budget, sum(valid))
    assert all(0 <= a <= v for a, v in zip(alloc, valid))


def test_allocate_full_image_share_is_alpha():
    # P = 5, T = 576, r = 0.2: B = 576, full image floor(0.5 * 576) = 288, sub-images share 288
    alloc = allocate(576, 0.5, [576] * 5, [10, 0, 0, 0])
    assert alloc == [288, 288, 0, 0, 0]
    alloc = allocate(576, 0.25, [576] * 5, [1, 1, 1, 1])
    assert alloc == [144, 108, 108, 108, 108]


def test_allocate_returns_what_caps_leave_to_the_full_image():
    # sub-images can hold only 10 + 10; the full image takes the rest up to its 100 patches
    assert allocate(150, 0.2, [100, 10, 10], [5, 5]) == [100, 10, 10]
    assert allocate(60, 0.2, [100, 10, 10], [5, 5]) == [40, 10, 10]
