"""The received-attention score's cheaper forms (in-place softmax, a query subset, segments batched by
length) give the scores they claim, and the vision-step benchmark (``hired bench --tower-only``) runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_torchvision
from hypothesis import given
from hypothesis import strategies as st

import hired
from hired.bench import build_arch
from hired.bench.tower import build_tower, tower_benchmark, tower_markdown
from hired.cli import main
from hired.core.scores import query_subset, received_attention, stride_for
from hired.engine.scores import LayerScores
from hired.inference import demo_image
from hired.testing import tiny_internvl, tiny_qwen3_5


def _naive(q: torch.Tensor, k: torch.Tensor, heads: int, rows=slice(None)) -> torch.Tensor:
    """Column means of the full ``(B, H, N, N)`` softmax map over the query rows ``rows``, summed over heads."""
    b, n, w = q.shape
    d = w // heads
    qh = q.double().reshape(b, n, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, n, heads, d).transpose(1, 2)
    probs = (qh @ kh.transpose(-1, -2) * d**-0.5).softmax(dim=-1)  # (B, H, N, N)
    return probs[:, :, rows].mean(dim=2).sum(dim=1).float()


@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 40),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 6),
    chunk=st.integers(1, 50),
    stride=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_received_attention_is_the_mean_over_its_query_subset(batch, seq, heads, head_dim, chunk, stride, seed):
    """Over every ``stride``-th query (all of them for stride 1) the score is the full map's column mean over
    exactly those rows, whatever the chunk; rows still sum to H."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, heads * head_dim, generator=g) * 3
    k = torch.randn(batch, seq, heads * head_dim, generator=g) * 3
    got = received_attention(q, k, heads, None, chunk, stride=stride)
    torch.testing.assert_close(got, _naive(q, k, heads, query_subset(seq, stride)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.full((batch,), float(heads)), rtol=1e-5, atol=1e-5)
    if stride == 1:
        torch.testing.assert_close(got, _naive(q, k, heads), rtol=1e-5, atol=1e-6)


def test_large_logits_do_not_overflow_and_half_inputs_give_fp32():
    """The in-place softmax subtracts each row's maximum (logits in the thousands stay finite)."""
    q, k = torch.randn(2, 17, 8) * 60, torch.randn(2, 17, 8) * 60
    got = received_attention(q, k, 2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, _naive(q, k, 2), rtol=1e-4, atol=1e-5)
    qh, kh = (q / 30).half(), (k / 30).half()
    half = received_attention(qh, kh, 2)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, received_attention(qh.float(), kh.float(), 2))


def test_query_subset_and_stride_for():
    assert query_subset(10, 1) == slice(0, None, 1)
    assert list(range(10))[query_subset(10, 4)] == [1, 5, 9]  # the middle of each run of 4
    assert list(range(2))[query_subset(2, 5)] == [1]  # never past the last query
    assert stride_for(5184, None) == 1 and stride_for(5184, 1024) == 6 and stride_for(100, 1024) == 1
    for seq, cap in ((5184, 1024), (1000, 999), (7, 2), (64, 64)):
        used = len(range(seq)[query_subset(seq, stride_for(seq, cap))])
        assert 1 <= used <= cap
    with pytest.raises(ValueError, match="positive integer"):
        query_subset(10, 0)
    with pytest.raises(ValueError, match="max_queries"):
        LayerScores({"s": 0}, None, 2, "received", max_queries=0)


def test_max_queries_at_or_above_the_length_is_the_exact_score():
    torch.manual_seed(0)
    q, k = torch.randn(2, 30, 8), torch.randn(2, 30, 8)
    exact = LayerScores({"s": 0}, None, 2, "received").score(q, k)
    assert torch.equal(LayerScores({"s": 0}, None, 2, "received", max_queries=30).score(q, k), exact)
    estimate = LayerScores({"s": 0}, None, 2, "received", max_queries=10).score(q, k)
    torch.testing.assert_close(estimate, _naive(q, k, 2, query_subset(30, 3)), rtol=1e-5, atol=1e-6)


@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    heads=st.integers(1, 2),
    max_queries=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**16),
)
def test_segments_scored_together_equal_each_segment_alone(lengths, heads, max_queries, seed):
    """Segments of equal length batched in one call give what each segment gives alone, in place (empty
    segments included); ``max_queries`` applies per segment."""
    g = torch.Generator().manual_seed(seed)
    seq = sum(lengths)
    q, k = torch.randn(seq, heads * 4, generator=g), torch.randn(seq, heads * 4, generator=g)
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    scores = LayerScores({"s": 0}, None, heads, "received", max_queries)
    got = scores.score(q, k, segments=torch.tensor(bounds).tolist())
    assert got.shape == (seq,) and got.dtype == torch.float32
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            alone = _naive(q[a:b][None], k[a:b][None], heads, query_subset(b - a, stride_for(b - a, max_queries)))
            torch.testing.assert_close(got[a:b], alone[0], rtol=1e-5, atol=1e-6)


def test_qwen3_vl_8b_has_the_checkpoint_shapes():
    require_torchvision()
    model, processor = build_arch("qwen3-vl-8b", device="meta", dtype=torch.bfloat16)
    vc, tc = model.config.vision_config, model.config.text_config
    assert (vc.depth, vc.hidden_size, vc.num_heads, vc.intermediate_size, vc.patch_size) == (27, 1152, 16, 4304, 16)
    assert (vc.spatial_merge_size, list(vc.deepstack_visual_indexes), vc.num_position_embeddings) == (
        2,
        [8, 16, 24],
        2304,
    )
    assert vc.out_hidden_size == 4096
    assert (tc.num_hidden_layers, tc.hidden_size, tc.num_attention_heads, tc.num_key_value_heads) == (36, 4096, 32, 8)
    assert (tc.head_dim, tc.intermediate_size, tc.vocab_size) == (128, 12288, 151936)
    assert processor.image_processor.patch_size == 16


def test_qwen3_5_has_the_tower_defaults_and_the_text_defaults_of_transformers():
    require_torchvision()
    from transformers import Qwen3_5TextConfig, Qwen3_5VisionConfig

    model, processor = build_arch("qwen3.5", device="meta", dtype=torch.bfloat16)
    vc, tc = model.config.vision_config, model.config.text_config
    assert (vc.depth, vc.hidden_size, vc.num_heads, vc.intermediate_size, vc.patch_size) == (27, 1152, 16, 4304, 16)
    assert (vc.spatial_merge_size, vc.num_position_embeddings, vc.out_hidden_size) == (2, 2304, 4096)
    vision_defaults, text_defaults = Qwen3_5VisionConfig(), Qwen3_5TextConfig()
    for key in ("depth", "hidden_size", "num_heads", "intermediate_size", "patch_size", "num_position_embeddings"):
        assert getattr(vc, key) == getattr(vision_defaults, key), key
    for key in (
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "layer_types",
        "linear_num_value_heads",
        "rope_parameters",
    ):
        assert getattr(tc, key) == getattr(text_defaults, key), key
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration" and processor.image_processor.patch_size == 16


def test_internvl3_5_8b_has_the_checkpoint_shapes():
    require_torchvision()
    model, processor = build_arch("internvl3.5-8b", device="meta", dtype=torch.bfloat16)
    vc, tc = model.config.vision_config, model.config.text_config
    assert (vc.num_hidden_layers, vc.hidden_size, vc.num_attention_heads, vc.intermediate_size) == (24, 1024, 16, 4096)
    assert (list(vc.image_size), list(vc.patch_size), vc.norm_type, vc.use_qk_norm) == (
        [448, 448],
        [14, 14],
        "layer_norm",
        False,
    )
    assert model.config.downsample_ratio == 0.5 and model.config.image_seq_length == processor.image_seq_length == 256
    assert tc.model_type == "qwen3"
    assert (tc.num_hidden_layers, tc.hidden_size, tc.num_attention_heads, tc.num_key_value_heads) == (36, 4096, 32, 8)
    assert (tc.head_dim, tc.intermediate_size, tc.vocab_size) == (128, 12288, 151936)
    ip = processor.image_processor
    assert (ip.size["height"], ip.min_patches, ip.max_patches, ip.crop_to_patches) == (448, 1, 12, True)
    tower = model.model.vision_tower
    assert tower.embeddings.cls_token.shape[-1] == 1024  # InternViT's [CLS]


@pytest.mark.parametrize("arch", ["internvl3.5-8b", "qwen3.5"])
def test_build_tower_rebuilds_the_vision_step_on_the_cpu(arch):
    require_torchvision()
    model, _ = build_tower(arch)
    inner = model.model
    assert all(p.device.type == "meta" for p in inner.language_model.parameters())
    vision = [inner.vision_tower, inner.multi_modal_projector] if arch.startswith("internvl") else [inner.visual]
    assert all(p.device.type == "cpu" for m in vision for p in m.parameters())


@pytest.mark.parametrize("build", [tiny_internvl, tiny_qwen3_5], ids=["internvl", "qwen3_5"])
def test_tower_benchmark_on_tiled_and_hybrid_models(build):
    """InternVL's vision step needs each image's tile grid (``image_sizes``, from the family's processor
    inputs); the oracle feeds pixel-shuffled tokens. A 300x300 image: 2x2 tiles + thumbnail of 16 tokens
    each (InternVL), 8x8 merged tokens (Qwen3.5); HiRED keeps a fifth."""
    require_torchvision()
    model, processor = build()
    result = tower_benchmark(model, processor, demo_image((300, 300)), [hired.HiRED(budget=0.2)], runs=1, warmup=0)
    (row,) = result["rows"]
    assert row["kept_per_image"] == [16 if build is tiny_internvl else 12]
    if build is tiny_internvl:
        assert result["pixel_values"] == [5, 3, 112, 112]
    method = row["runs"]["method"][0]
    assert 0 < method["score"] < method["tower"] <= method["step"]


@pytest.mark.parametrize("arch", ["small", "qwen2.5-vl-small"])
def test_tower_benchmark_times_the_vision_step_against_its_oracle(arch):
    if arch.startswith("qwen"):
        require_torchvision()
    model, processor = build_tower(arch)
    assert all(p.device.type == "meta" for p in model.model.language_model.parameters())
    labels = []
    result = tower_benchmark(
        model, processor, demo_image((300, 300)), [hired.HiRED(budget=0.2)], runs=2, warmup=0, progress=labels.append
    )
    assert hired.applied_method(model) is None
    assert len(labels) == 4 and labels[0].endswith("method run 1")
    (row,) = result["rows"]
    assert len(row["runs"]["method"]) == len(row["runs"]["oracle"]) == 2 and row["kept_per_image"][0] > 0
    method, oracle = row["runs"]["method"][0], row["runs"]["oracle"][0]
    assert 0 < method["score"] < method["tower"] <= method["step"] and oracle["score"] == 0
    assert result["machine"]["torch_threads"] == torch.get_num_threads()
    assert "| hired @ 0.2 |" in tower_markdown(result)


def test_cli_tower_only(tmp_path, capsys):
    path = tmp_path / "tower.json"
    argv = ["bench", "--arch", "small", "--random-weights", "--tower-only", "--budgets", "0.2", "--runs", "1"]
    assert main([*argv, "--warmup", "0", "--image-size", "200", "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    result = json.loads(path.read_text())
    assert "--tower-only" in result["command"] and "--image-size 200" in result["command"]
    assert "--new-tokens" not in result["command"] and "| hired @ 0.2 |" in out
    with pytest.raises(SystemExit) as err:
        main([*argv, "--plot", str(tmp_path / "x.png")])
    assert err.value.code == 2 and "leave it out with --tower-only" in capsys.readouterr().err
