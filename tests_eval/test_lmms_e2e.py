"""lmms-eval end to end through the ``lmms_eval.models`` entry point: tiny model, local task, no hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NUM_DOCS
from easyvqa import TASK_NAME

import hired
from hired.core.grid import Geometry, layout_for
from hired.methods.base import num_image_tokens
from hired.testing import default_pinpoints

BUDGET = 0.5
CROP, PATCH = 84, 14  # hired.testing defaults


def _env(hf_home: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra)
    return env


def _lmms_eval(launcher: list, model_args: str, task_dir: Path, out: Path, env: dict) -> tuple[dict, list]:
    """Run lmms-eval, return ``(results json, logged samples)``."""
    cmd = launcher + [
        "-m", "lmms_eval",
        "--model", "hired_llava",
        "--model_args", model_args,
        "--tasks", TASK_NAME,
        "--include_path", str(task_dir),
        "--batch_size", "2",
        "--output_path", str(out),
        "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted(out.rglob("*_results.json"))
    samples = sorted(out.rglob(f"*_samples_{TASK_NAME}.jsonl"))
    assert len(results) == 1 and len(samples) == 1, f"lmms-eval wrote {list(out.rglob('*'))}\n{proc.stderr[-3000:]}"
    rows = [json.loads(line) for line in samples[0].read_text().splitlines() if line.strip()]
    return json.loads(results[0].read_text()), sorted(rows, key=lambda r: r["doc_id"])


def _expected_tokens(tiny_folder: Path, task_dir: Path, method) -> list[tuple[int, int]]:
    """``(kept, stock)`` visual tokens of every document: kept from the core count alone (no model),
    stock from the placeholders the unmodified processor writes."""
    import datasets
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_folder)
    docs = datasets.load_dataset("parquet", data_files=str(task_dir / f"{TASK_NAME}.parquet"), split="train")
    geometry = Geometry(CROP, PATCH, tuple(tuple(p) for p in default_pinpoints(CROP)))
    out = []
    for doc in docs:
        image = doc["image"].convert("RGB")
        ids = processor(images=image, text=f"{processor.image_token} x", return_tensors="pt")["input_ids"]
        stock = int((ids == processor.image_token_id).sum())
        layout = layout_for((image.height, image.width), geometry)
        out.append((num_image_tokens(method, layout, newline=True), stock))
    return out


@pytest.fixture(scope="module")
def single_run(tiny_folder, task_dir, hf_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_single")
    args = f"pretrained={tiny_folder},method=hired,budget={BUDGET}"
    return _lmms_eval([sys.executable], args, task_dir, out, _env(hf_home))


def test_results_file_holds_score_and_visual_tokens(single_run, tiny_folder, task_dir):
    results, samples = single_run
    assert results["config"]["model"] == "hired_llava"
    assert [s["doc_id"] for s in samples] == list(range(NUM_DOCS))

    # the score is the mean of the per-document scores of the task's own metric
    score = results["results"][TASK_NAME]["exact_match,none"]
    per_doc = [float(s["filtered_resps"][0].strip().lower().rstrip(".") == s["target"].lower()) for s in samples]
    assert [s["exact_match"] for s in samples] == per_doc
    assert score == pytest.approx(sum(per_doc) / NUM_DOCS)

    # per sample: what the language model received and what the stock model would have received
    expected = _expected_tokens(tiny_folder, task_dir, hired.HiRED(budget=BUDGET))
    got = [(s["token_counts"][0]["visual_tokens"], s["token_counts"][0]["visual_tokens_stock"]) for s in samples]
    assert got == expected
    assert all(kept < stock for kept, stock in got)
    for s in samples:
        tc = s["token_counts"][0]
        assert tc["input_tokens"] > tc["visual_tokens"] and 1 <= tc["output_tokens"] <= 3

    # per task, in the results file itself
    thr = results["throughput"]
    assert thr[f"avg_visual_tokens_kept/{TASK_NAME}"] == pytest.approx(sum(k for k, _ in expected) / NUM_DOCS)
    assert thr[f"avg_visual_tokens_stock/{TASK_NAME}"] == pytest.approx(sum(s for _, s in expected) / NUM_DOCS)
    assert thr["total_gen_tokens"] == sum(s["token_counts"][0]["output_tokens"] for s in samples)


def test_data_parallel_two_processes_match_one(single_run, tiny_folder, task_dir, hf_home, tmp_path):
    """lmms-eval's own sharding over 2 ranks (gloo on CPU here; NCCL under ``accelerate launch`` on GPUs)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    args = f"pretrained={tiny_folder},method=hired,budget={BUDGET}"
    results, samples = _lmms_eval(launcher, args, task_dir, tmp_path, _env(hf_home, ACCELERATE_USE_CPU="true"))
    one_results, one_samples = single_run
    assert [s["doc_id"] for s in samples] == list(range(NUM_DOCS))
    assert [s["token_counts"] for s in samples] == [s["token_counts"] for s in one_samples]
    assert [s["filtered_resps"] for s in samples] == [s["filtered_resps"] for s in one_samples]
    for key in (f"avg_visual_tokens_kept/{TASK_NAME}", f"avg_visual_tokens_stock/{TASK_NAME}"):
        assert results["throughput"][key] == pytest.approx(one_results["throughput"][key])
    assert results["results"][TASK_NAME]["exact_match,none"] == one_results["results"][TASK_NAME]["exact_match,none"]
