"""The result tables of ``hired bench`` and ``hired bench-vllm`` from the committed JSON under
``benchmarks/results/``: the public table functions (which the documentation's results hook also calls)
give the tables that the commands wrote beside that JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hired.bench import report
from hired.vllm import bench as vllm_bench

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _load(name: str) -> tuple[dict, str]:
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"  # names may hold dots (qwen3.5)
    if not json_path.is_file():
        pytest.skip(f"{name}.json is not in this checkout")
    return json.loads(json_path.read_text()), md_path.read_text()


@pytest.mark.parametrize(
    "name",
    [
        "cpu-small-methods",
        "cpu-small-amd-epyc-2vcpu",
        "cpu-qwen3-vl-small",
        "cpu-qwen3.5-small",
        "cpu-internvl-small",
    ],
)
def test_bench_table_is_the_markdown_table(name):
    result, written = _load(name)
    table = report.table(result["rows"])
    text = report.markdown(result)
    assert f"\n\n{table}\n\n" in text and table in written
    lines = table.splitlines()
    assert len(lines) == 2 + len(result["rows"])
    for line, row in zip(lines[2:], result["rows"]):
        assert line.startswith(f"| {row['batch']} | {row['label']} | ")
        assert line.endswith(f" | {report.vs_oracle(row)} |")


def test_bench_cells():
    assert report.milliseconds({"median": 0.01234}) == "12.3"
    assert report.vs_oracle({"overhead_vs_oracle": None}) == "-"
    assert report.vs_oracle({"overhead_vs_oracle": 0.0123, "overhead_vs_oracle_min": -0.004}) == "+1.2% / -0.4%"


@pytest.mark.parametrize("name", ["vllm/cpu-small", "vllm/cpu-small-spatial"])
def test_vllm_tables_are_the_markdown_tables(name):
    result, written = _load(name)
    assert vllm_bench.markdown(result) == written
    table = vllm_bench.table(result["rows"])
    assert f"\n\n{table}\n\n" in written and len(table.splitlines()) == 2 + len(result["rows"])
    over = vllm_bench.overhead_table(result["overheads"])
    assert f"\n\n{over}\n\n" in written and len(over.splitlines()) == 2 + len(result["overheads"])
