"""[CLS] rows from q and k, and per-partition top-k."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hired.core.budget import largest_remainder
from hired.core.scores import cls_attention
from hired.core.select import region_of, region_topk, topk_mask


def test_cls_attention_equals_row_zero_of_full_attention_summed_over_heads():
    torch.manual_seed(0)
    b, n, h, d = 3, 17, 4, 8
    q = torch.randn(b, n, h * d)
    k = torch.randn(b, n, h * d)
    full = torch.softmax(
        q.view(b, n, h, d).transpose(1, 2) @ k.view(b, n, h, d).transpose(1, 2).transpose(-1, -2) / d**0.5, dim=-1
    )  # (b, h, n, n)
    expected = full[:, :, 0, :].sum(1)
    got = cls_attention(q[:, 0], k, num_heads=h)
    assert got.dtype == torch.float32 and got.shape == (b, n)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(-1), torch.full((b,), float(h)))


def test_cls_attention_is_fp32_for_half_inputs():
    q = torch.randn(2, 32, dtype=torch.bfloat16)
    k = torch.randn(2, 9, 32, dtype=torch.bfloat16)
    out = cls_attention(q, k, num_heads=2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cls_attention(q.float(), k.float(), num_heads=2))


@settings(max_examples=200)
@given(
    data=st.data(),
    n=st.integers(1, 6),
    t=st.integers(1, 40),
)
def test_topk_mask_keeps_exactly_k_best_valid(data, n, t):
    scores = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=n * t, max_size=n * t)), dtype=torch.float)
    scores = scores.view(n, t)  # small integers: many ties
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n * t, max_size=n * t))).view(n, t)
    k = torch.tensor(data.draw(st.lists(st.integers(0, t), min_size=n, max_size=n)))
    mask = topk_mask(scores, k, valid)
    for i in range(n):
        kept = mask[i]
        assert int(kept.sum()) == min(int(k[i]), int(valid[i].sum()))
        assert not bool((kept & ~valid[i]).any())
        if kept.any() and (valid[i] & ~kept).any():
            assert scores[i][kept].min() >= scores[i][valid[i] & ~kept].max()
        # ties: among equal scores the lower indices are kept
        if kept.any():
            lowest = scores[i][kept].min()
            tied = torch.nonzero((scores[i] == lowest) & valid[i]).flatten().tolist()
            kept_tied = [j for j in tied if kept[j]]
            assert kept_tied == tied[: len(kept_tied)]


@settings(max_examples=60)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), regions=st.integers(1, 4))
def test_region_of_cuts_nearly_equal_blocks_row_major(rows, cols, regions):
    region = region_of(rows, cols, regions).view(rows, cols)
    assert int(region.min()) >= 0 and int(region.max()) < regions**2
    row_block, col_block = region // regions, region % regions
    assert torch.equal(row_block, row_block[:, :1].expand(rows, cols))  # a block row is whole grid rows
    assert torch.equal(col_block, col_block[:1].expand(rows, cols))
    for blocks, n in ((row_block[:, 0], rows), (col_block[0], cols)):
        assert bool((blocks.diff() >= 0).all()) and bool((blocks.diff() <= 1).all())  # in order, none skipped
        sizes = torch.bincount(blocks).tolist()
        assert len(sizes) == min(regions, n) and max(sizes) - min(sizes) <= 1


def _region_topk_reference(select, early, region, valid, total, spread, regions):
    """Row by row, in plain Python: content counts, largest-remainder shares, per-region then global picks."""
    keep = torch.zeros_like(valid)
    for i in range(select.shape[0]):
        idx = [j for j in range(select.shape[1]) if valid[i, j]]
        by_early = sorted(idx, key=lambda j: (-float(early[i, j]), j))[: spread[i]]
        content = [sum(1 for j in by_early if region[i, j] == r) for r in range(regions)]
        room = [sum(1 for j in idx if region[i, j] == r) for r in range(regions)]
        shares = largest_remainder(spread[i], content, room)
        kept = set()
        for r in range(regions):
            kept |= set(
                sorted((j for j in idx if region[i, j] == r), key=lambda j: (-float(select[i, j]), j))[: shares[r]]
            )
        rest = sorted((j for j in idx if j not in kept), key=lambda j: (-float(select[i, j]), j))
        kept |= set(rest[: max(0, total[i] - len(kept))])
        keep[i, sorted(kept)] = True
    return keep


@settings(max_examples=80)
@given(data=st.data(), n=st.integers(1, 4), rows=st.integers(1, 7), cols=st.integers(1, 7), regions=st.integers(1, 3))
def test_region_topk_matches_a_plain_reference_and_keeps_the_total(data, n, rows, cols, regions):
    t = rows * cols
    draw = lambda: torch.tensor(
        data.draw(st.lists(st.integers(0, 4), min_size=n * t, max_size=n * t)),  # noqa: E731
        dtype=torch.float,
    ).view(n, t)  # small integers: many ties
    select, early = draw(), draw()
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n * t, max_size=n * t))).view(n, t)
    region = region_of(rows, cols, regions).expand(n, t)
    total = [data.draw(st.integers(0, int(v))) for v in valid.sum(1)]
    spread = [data.draw(st.integers(0, k)) for k in total]
    keep = region_topk(select, early, region, valid, total, spread, regions**2)
    assert keep.sum(1).tolist() == total and not bool((keep & ~valid).any())
    assert torch.equal(keep, _region_topk_reference(select, early, region, valid, total, spread, regions**2))
    if regions == 1:  # one region: the top `total` tokens, whatever the spread
        assert torch.equal(keep, topk_mask(select, torch.tensor(total), valid))
