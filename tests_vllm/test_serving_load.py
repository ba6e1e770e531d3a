"""``benchmarks/serving/load.py``: the load and fault run of the OpenAI server, short (24 requests from 8
clients), in an environment with none of vLLM's memory variables set, and its checks on made-up answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[1] / "benchmarks" / "serving"


@pytest.fixture(scope="module")
def load():
    sys.path.insert(0, str(SERVING))
    try:
        import load as module
    finally:
        sys.path.remove(str(SERVING))
    return module


def answer(status=200, prompt_tokens=40, text="abc", error=None) -> dict:
    return {"status": status, "prompt_tokens": prompt_tokens, "text": text, "error": error, "ms": 1.0}


def test_the_checks_catch_wrong_answers(load):
    from cases import Case

    good = Case("1 image", "good", [], count=40, reference=answer())
    assert load.problem(good, answer()) is None
    assert load.problem(good, answer(prompt_tokens=41)).startswith("prompt_tokens 41, expected 40")
    assert load.problem(good, answer(text="abd")).startswith("text 'abd'")
    assert load.problem(good, answer(status=500, error="boom")) == "status 500: boom"
    assert load.problem(good, answer(status="timeout")).startswith("status timeout")

    bad = Case("budget 0", "bad", [], expect="budget must be in (0, 1]")
    assert load.problem(bad, answer(400, error="mm_processor_kwargs['hired']: budget must be in (0, 1], got 0")) is None
    assert "does not contain" in load.problem(bad, answer(400, error="something else"))
    assert "expected a 4xx" in load.problem(bad, answer(500, error="budget must be in (0, 1]"))
    assert "expected a 4xx" in load.problem(bad, answer(200))
    assert "expected a 4xx" in load.problem(bad, answer("200+error", error="budget must be in (0, 1]"))

    known = Case("15000x15000 image", "known", [], expect="decompression bomb")
    assert load.problem(known, answer(500, error="... could be decompression bomb DOS attack.")) is None
    assert load.problem(known, answer(400, error="... decompression bomb ...")) is None
    assert load.problem(known, answer(500, error="Internal Server Error")) is not None
    assert load.problem(known, answer("no answer", error="ConnectionResetError")) is not None

    served = Case("1x1 image", "edge", [], count=30, reference=answer(prompt_tokens=30))
    assert load.problem(served, answer(prompt_tokens=30)) is None
    assert load.problem(served, answer(prompt_tokens=31)) is not None
    refused = Case("1x1 image", "edge", [], reference=answer(400, error="too small"))
    assert load.problem(refused, answer(400, error="too small")) is None
    assert load.problem(refused, answer(500, error="boom")) is not None


def test_percentile_is_nearest_rank(load):
    values = list(range(1, 101))
    assert load.percentile(values, 50) == 50 and load.percentile(values, 99) == 99
    assert load.percentile([5.0], 99) == 5.0 and load.percentile([], 50) is None


def test_a_short_load_and_fault_run_passes_its_checks(tmp_path):
    out = tmp_path / "load.json"
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    cmd = [sys.executable, str(SERVING / "load.py"), "--requests", "24", "--concurrency", "8", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert all(ok for _, ok, _ in result["checks"]), result["checks"]
    s = result["summary"]
    assert s["requests_sent"] == 24 and s["faults_sent"] == 11
    assert s["good_served"] == s["good_sent"] == 13 and s["wrong_counts"] == s["different_outputs"] == 0
    kinds = {row["label"]: row["kind"] for row in result["rows"]}
    assert {"1 image", "2 images", "3 images", "text only"} <= set(kinds)
    assert [label for label, kind in kinds.items() if kind == "bad"] == [
        "truncated PNG",
        "bad base64",
        "unknown hired option",
        "budget 0",
        'budget "abc"',
        "text over max-model-len",
        "text + 3 images over max-model-len",
        "4 images (limit 3)",
    ]
    answers = [a for a in result["answers"] if a["kind"] == "good"]
    assert any(a["stream"] for a in answers) and any(not a["stream"] for a in answers)
    assert any(a["options"] for a in answers) and any(a["options"] is None for a in answers)
    assert all(a["prompt_tokens"] == a["expected_prompt_tokens"] for a in answers)
    assert result["memory"]["end"]["server_rss_mib"] > 0
