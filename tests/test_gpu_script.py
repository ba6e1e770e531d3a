"""benchmarks/gpu/run.sh: its CPU mode (--dry-run) runs every step and writes real measured files; a
failing step is recorded and the next one still runs; the CUDA tests are found; the FLOP bound."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"
DRY_STEPS = ["env", "nvidia-smi", "tests", "bench-small-b1", "bench-tiny-llava-b1", "sync-check", "report"]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", ROOT / "benchmarks" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-results")
    proc = _run(out)
    return out, proc


def test_dry_run_succeeds_and_lists_every_step(dry_run):
    out, proc = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert summary["finished"] and summary["ok"] and summary["exit_code"] == 0
    assert [s["name"] for s in summary["steps"]] == DRY_STEPS
    for step in summary["steps"]:
        assert step["status"] in ("ok", "n/a"), step
        assert step["seconds"] >= 0
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["nvidia-smi"] in ("ok", "n/a") and status["bench-small-b1"] == "ok"
    md = (out / "summary.md").read_text()
    for name in DRY_STEPS:
        assert f"| {name} | {status[name]} |" in md
    assert "## Findings" in md and "FLOP bound" in md


def test_dry_run_benchmarks_hold_measured_rows(dry_run):
    out, _ = dry_run
    for stem in ("bench-small-b1", "bench-small", "bench-tiny-llava-b1"):
        result = json.loads((out / f"{stem}.json").read_text())
        rows = result["rows"]
        assert {r["kind"] for r in rows} == {"full", "method", "oracle", "reference"}, stem
        assert {r["budget"] for r in rows if r["kind"] != "full"} == {0.2}
        assert {r["batch"] for r in rows} == {1}
        assert result["meta"]["device"] == "cpu" and result["meta"]["new_tokens"] == 2
        for r in rows:
            assert len(r["runs"]) == 1
            ttft = r["summary"]["ttft"]["median"]
            assert 0 < ttft < 120 and r["summary"]["peak_memory"]["median"] > 0
        method = next(r for r in rows if r["kind"] == "method")
        full = next(r for r in rows if r["kind"] == "full")
        assert method["tokens_per_image"][0] < full["tokens_per_image"][0]
        table = (out / f"{stem}.md").read_text()
        assert "| 1 | hired | 0.2 |" in table and "oracle(hired)" in table
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    small = json.loads((out / "bench-small-b1.json").read_text())
    assert small["meta"]["model"] == "small (random weights)"
    assert next(r for r in small["rows"] if r["kind"] == "full")["tokens_per_image"] == [2928]
    assert json.loads((out / "bench-tiny-llava-b1.json").read_text())["meta"]["model_class"] == (
        "LlavaForConditionalGeneration"
    )


def test_dry_run_writes_tests_versions_and_sync_check(dry_run):
    import torch
    import transformers

    out, _ = dry_run
    log = (out / "pytest.log").read_text()
    assert "test_end_to_end_on_cuda" in log and "test_merging_on_cuda_matches_the_cpu_count" in log
    assert " passed" in log and "SKIPPED" in log
    assert (out / "pytest-junit.xml").is_file()
    versions = json.loads((out / "versions.json").read_text())
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert Path(versions["hired_file"]).resolve() == ROOT / "src" / "hired" / "__init__.py"
    assert versions["git_commit"]
    sync = json.loads((out / "sync-check.json").read_text())
    assert sync["counted"] is False and set(sync["sync_counts"]) == {"stock", "hired@0.2", "cls_topk@0.2"}
    findings = (out / "findings.md").read_text()
    assert "| bench-small | 1 | hired | 0.2 |" in findings and "576 of 2928" in findings
    assert "== bench-small-b1" in (out / "run.log").read_text()


def test_a_failing_step_is_recorded_and_the_next_still_runs(tmp_path):
    proc = _run(tmp_path, "--only", "bench-small-b1,report", "--budgets", "1.5")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == DRY_STEPS and summary["ok"] is False and summary["exit_code"] == 1
    assert steps["bench-small-b1"]["status"] == "failed" and steps["bench-small-b1"]["rc"] not in (0, None)
    assert steps["report"]["status"] == "ok" and "no results from bench-small-b1" in steps["report"]["note"]
    assert all(steps[n]["status"] == "n/a" for n in ("env", "tests", "sync-check"))
    log = (tmp_path / "bench-small-b1.log").read_text()
    assert "budget" in log and "1.5" in log
    assert not (tmp_path / "bench-small-b1.json").exists()


def test_the_cuda_tests_are_found_and_their_skips_counted(tmp_path):
    run = _module("run")
    ids = run.cuda_tests(ROOT)
    assert "tests/test_methods_simple.py::test_end_to_end_on_cuda" in ids
    assert "tests/test_methods_merging.py::test_merging_on_cuda_matches_the_cpu_count" in ids
    assert not any("test_core_" in i or "test_gpu_script" in i for i in ids)
    xml = tmp_path / "junit.xml"
    xml.write_text(
        "<testsuites><testsuite>"
        '<testcase classname="tests.test_methods_simple" name="test_end_to_end_on_cuda[Spatial]"/>'
        '<testcase classname="tests.test_methods_simple" name="test_end_to_end_on_cuda[Random]">'
        '<skipped message="needs a CUDA device"/></testcase>'
        '<testcase classname="tests.test_methods_simple" name="test_other"><failure/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = run._junit(xml, ["tests/test_methods_simple.py::test_end_to_end_on_cuda"])
    assert counts["total"] == 3 and counts["failure"] == 1
    assert (counts["cuda_total"], counts["cuda_passed"], counts["cuda_skipped"]) == (2, 1, 1)


def test_flop_bound_of_the_readme():
    from hired.bench.archs import ARCHS

    report = _module("report")
    bound = report.speedup_bound(ARCHS["llava-next-7b"], (600, 600), 576, 2928, 2880)
    assert 4.3 < bound < 4.5
    assert report.speedup_bound(ARCHS["llava-next-7b"], (600, 600), 2880, 2928, 2880) == pytest.approx(1.0, rel=0.02)
    one = report.prefill_flops(ARCHS["llava-1.5-7b"], 1, 576, 576)
    assert 0.2e12 < one["vision"] < 0.5e12 and 7e12 < one["llm"] < 8.5e12


def test_the_gpu_plan_runs_the_issue_s_benches(tmp_path, monkeypatch):
    """GPU mode, with every command recorded instead of run: the steps, in order, and hired bench's flags."""
    run = _module("run")
    args, steps = run.parse_args([str(tmp_path)])
    assert [s.name for s in steps] == [
        "env",
        "nvidia-smi",
        "tests",
        "bench-llava-next-7b-b1",
        "bench-llava-next-7b-b2",
        "bench-llava-next-7b-b4",
        "bench-llava-1.5-7b-b1",
        "sync-check",
        "report",
    ]
    assert args.time_limit == run.GPU_DEADLINE < 8 * 60
    args.only = ",".join(s.name for s in steps if s.name.startswith(("bench-", "sync")))
    r = run.Runner(args)
    calls = []

    def fake_call(cmd, log, timeout, append=False):
        cmd = [str(c) for c in cmd]
        calls.append(cmd)
        if "hired.cli" in cmd:
            budgets = [float(b) for b in cmd[cmd.index("--budgets") + 1].split(",")]
            result = {"rows": [{"kind": "method", "budget": b} for b in budgets]}
        else:
            result = {"counted": True, "extra_syncs_per_added_image": {"hired@0.2": 0.0}}
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(result))
        return 0, " ".join(cmd)

    monkeypatch.setattr(r, "call", fake_call)
    monkeypatch.setattr(r, "have", lambda module: True)
    assert r.execute([s for s in steps if s.name != "report"])
    bench = [c for c in calls if "bench" in c]
    assert len(bench) == 4
    for cmd, (arch, batch) in zip(
        bench, [("llava-next-7b", 1), ("llava-next-7b", 2), ("llava-next-7b", 4), ("llava-1.5-7b", 1)]
    ):
        text = " ".join(cmd)
        assert cmd[:4] == [sys.executable, "-m", "hired.cli", "bench"]
        assert f"--arch {arch} --random-weights" in text and f"--batch-sizes {batch} " in text
        for flag in (
            "--budgets 1.0,0.4,0.2,0.1",
            "--device cuda",
            "--dtype float16",
            "--runs 5",
            "--warmup 1",
            "--new-tokens 15",
            "--no-progress",
        ):
            assert flag in text
        assert "--no-oracle" not in text and "--no-reference-attention" not in text and "--no-full" not in text
        for flag, suffix in (("--json", ".json"), ("--markdown", ".md"), ("--plot", ".png")):
            assert Path(cmd[cmd.index(flag) + 1]).parent == tmp_path and cmd[cmd.index(flag) + 1].endswith(suffix)
    sync = next(c for c in calls if c[1].endswith("sync_check.py"))
    assert sync[sync.index("--device") + 1] == "cuda" and sync[sync.index("--batch-sizes") + 1] == "1,4"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["n/a"] * 3 + ["ok"] * 5
