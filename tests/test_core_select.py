"""[CLS] rows from q and k, and per-partition top-k."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hired.core.scores import cls_attention
from hired.core.select import topk_mask


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
