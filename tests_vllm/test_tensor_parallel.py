"""Tensor parallelism splits the vision tower's heads over ranks: the score rows ([CLS] or received) must be
summed across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import IMAGE_SIZES, ONEVISION_SIZES, greedy, make_image
from conftest import request as image_request

_TP2 = r"""
import json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from conftest import greedy, make_image, make_llm, request

def main():
    llm = make_llm(sys.argv[1], json.loads(sys.argv[3]), tensor_parallel_size=2, distributed_executor_backend="mp")
    outs = llm.generate([request(make_image(h, w, seed=21)) for h, w in json.loads(sys.argv[4])], greedy(8))
    print("RESULT " + json.dumps([[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in outs]))

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("family", ["llava_next", "onevision"])
def test_two_ranks_select_as_one(engines, request, family):
    """LLaVA-NeXT: [CLS] rows; OneVision: received-attention rows (one head per rank), summed across ranks."""
    path = request.getfixturevalue("next_path" if family == "llava_next" else "onevision_path")
    sizes = IMAGE_SIZES if family == "llava_next" else ONEVISION_SIZES[::2]
    entry = {"method": "hired", "budget": 0.3}
    # two CPU workers, one core each (vLLM's automatic binding wants one NUMA node per worker)
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _TP2, path, __file__, json.dumps(entry), json.dumps(sizes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    two_ranks = json.loads(lines[-1][len("RESULT ") :])
    llm = engines(path, entry)
    outs = llm.generate([image_request(make_image(h, w, seed=21)) for h, w in sizes], greedy(8))
    assert [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in outs] == two_ranks
