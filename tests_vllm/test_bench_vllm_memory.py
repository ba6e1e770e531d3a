"""``hired bench-vllm`` on a CPU with none of vLLM's memory variables set: each engine gets a KV cache sized
from ``--max-model-len`` and ``--requests`` (vLLM-CPU's default reserves 92% of the machine's memory per
engine, so the second engine of a method / oracle pair could not start), and engines are shut down
before the next group starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from hired.vllm.bench import kv_cache_bytes, kv_cache_setting

MIB = 1 << 20


def options(**kw) -> SimpleNamespace:
    base = {"kv_cache_gib": None, "gpu_memory_utilization": None, "dtype": "float32", "max_model_len": 4096}
    return SimpleNamespace(**{**base, "requests": 8, **kw})


def test_kv_cache_bytes_of_the_tiny_model(next_path):
    # 2 layers x 2 KV heads x 32 dims x (key, value) x 4 bytes = 1 KiB per token
    assert kv_cache_bytes(next_path, "float32", 4096, 2) == 8 * MIB
    assert kv_cache_bytes(next_path, "bfloat16", 4096, 2) == 4 * MIB
    assert kv_cache_bytes(next_path, "float32", 100, 1) == MIB  # rounded up to a MiB


def test_kv_cache_setting_precedence(next_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    size, how = kv_cache_setting(options(), next_path)
    assert size == 32 * MIB and how == "0.03 GiB per engine (8 sequences of 4096 tokens)"
    assert kv_cache_setting(options(kv_cache_gib=0.5), next_path) == (512 * MIB, "0.5 GiB per engine (--kv-cache-gib)")
    assert kv_cache_setting(options(gpu_memory_utilization=0.3), next_path)[0] is None
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert kv_cache_setting(options(), next_path) == (None, "2 GiB per engine (VLLM_CPU_KVCACHE_SPACE)")
    with pytest.raises(ValueError, match="--kv-cache-gib must be positive"):
        kv_cache_setting(options(kv_cache_gib=0), next_path)


def test_bench_vllm_runs_with_nothing_set(next_path, tmp_path):
    """Stock vLLM, then HiRED and its oracle side by side, in one process with no memory setting."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    cmd = [sys.executable, "-m", "hired.cli.bench_vllm", "--model", next_path, "--budgets", "0.5", "--requests", "2"]
    cmd += ["--runs", "1", "--new-tokens", "2", "--image-size", "100", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["settings"]["kv_cache"] == "0.01 GiB per engine (2 sequences of 4096 tokens)"
    assert [row["config"] for row in result["rows"]] == ["stock vLLM", "hired 0.5", "oracle 0.5"]
    assert "- KV cache: 0.01 GiB per engine (2 sequences of 4096 tokens)" in proc.stdout
