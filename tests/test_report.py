"""``hired report`` on small result folders in the layout lmms-eval 0.7.3 writes (no lmms-eval needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hired.cli import main
from hired.eval.report import PAPER_METRICS, build_table, find_runs, parse_metric_overrides


def write_run(
    root: Path,
    model_args: str,
    scores: dict[str, dict[str, float]],
    date: str = "20261125_120000",
    tokens: dict[str, tuple[float, float]] | None = None,
    samples: dict[str, list[tuple[int, int]]] | None = None,
    model: str = "hired_llava",
) -> Path:
    """One ``--output_path`` folder: ``<model>/<date>_results.json`` (+ ``_samples_<task>.jsonl``), as lmms-eval 0.7.3."""
    pretrained = dict(kv.split("=", 1) for kv in model_args.split(",")).get("pretrained", model)
    folder = root / pretrained.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    results = {
        task: {"alias": task, **{f"{m},none": v for m, v in metrics.items()},
               **{f"{m}_stderr,none": 0.01 for m in metrics}}
        for task, metrics in scores.items()
    }  # fmt: skip
    throughput = {"total_gen_tokens": 30, "total_elapsed_time": 0.5, "avg_speed": 60.0}
    for task, (kept, stock) in (tokens or {}).items():
        throughput[f"avg_visual_tokens_kept/{task}"] = kept
        throughput[f"avg_visual_tokens_stock/{task}"] = stock
    data = {
        "results": results,
        "group_subtasks": {t: [] for t in scores},
        "configs": {t: {"task": t} for t in scores},
        "n-samples": {t: {"original": 10, "effective": 10} for t in scores},
        "config": {"model": model, "model_args": model_args, "batch_size": "2"},
        "lmms_eval_version": "0.7.3",
        "date": date,
        "throughput": throughput,
        "model_source": model,
        "model_name": pretrained,
    }
    path = folder / f"{date}_results.json"
    path.write_text(json.dumps(data, indent=2))
    for task, rows in (samples or {}).items():
        lines = [
            json.dumps({"doc_id": i, "target": "x", "filtered_resps": "y", "exact_match": 0.0,
                        "token_counts": [{"input_tokens": 100 + k, "output_tokens": 3, "visual_tokens": k,
                                          "visual_tokens_stock": s}]})
            for i, (k, s) in enumerate(rows)
        ]  # fmt: skip
        (folder / f"{date}_samples_{task}.jsonl").write_text("\n".join(lines) + "\n")
    return path


PRE = "pretrained=llava-hf/llava-v1.6-vicuna-7b-hf"


@pytest.fixture
def paper_like(tmp_path) -> Path:
    """Full, HiRED 20% and HiRED 40% on TextVQA and MME (the HiRED paper's LLaVA-NeXT-7B numbers)."""
    write_run(tmp_path / "full", f"{PRE},method=full", {"textvqa_val": {"exact_match": 0.648}, "mme": {"mme_perception_score": 1519.0, "mme_cognition_score": 300.0}},
              tokens={"textvqa_val": (2000.0, 2000.0), "mme": (1800.0, 1800.0)})  # fmt: skip
    write_run(tmp_path / "h20", f"{PRE},method=hired,budget=0.2,alpha=0.5", {"textvqa_val": {"exact_match": 0.614}, "mme": {"mme_perception_score": 1483.0, "mme_cognition_score": 290.0}},
              tokens={"textvqa_val": (400.0, 2000.0), "mme": (360.0, 1800.0)})  # fmt: skip
    write_run(tmp_path / "h40", f"{PRE},method=hired,budget=0.4,alpha=0.5", {"textvqa_val": {"exact_match": 0.636}, "mme": {"mme_perception_score": 1474.0, "mme_cognition_score": 280.0}},
              tokens={"textvqa_val": (800.0, 2000.0), "mme": (720.0, 1800.0)})  # fmt: skip
    return tmp_path


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_scores_retention_and_tokens(paper_like):
    table = build_table(find_runs([paper_like]))
    header = table.splitlines()[0]
    assert header == "| method | visual tokens | TextVQA | MME | mean retention |"
    rows = _rows(table)
    assert list(rows) == ["full", "hired alpha=0.5 budget=0.2", "hired alpha=0.5 budget=0.4"]
    assert rows["full"] == ["1900 (100%)", "64.8 (100.0%)", "1519 (100.0%)", "100.0%"]
    # 61.4 / 64.8 = 94.75%, 1483 / 1519 = 97.63%; tokens (400 + 360) / 2 of (2000 + 1800) / 2
    assert rows["hired alpha=0.5 budget=0.2"] == ["380 (20%)", "61.4 (94.8%)", "1483 (97.6%)", "96.2%"]
    assert rows["hired alpha=0.5 budget=0.4"] == ["760 (40%)", "63.6 (98.1%)", "1474 (97.0%)", "97.6%"]
    assert "textvqa_val: exact_match x 100" in table and "mme: mme_perception_score." in table


def test_tokens_from_logged_samples_when_the_results_lack_them(tmp_path):
    write_run(
        tmp_path,
        f"{PRE},method=none",
        {"textvqa_val": {"exact_match": 0.5}},
        samples={"textvqa_val": [(100, 100), (300, 300)]},
    )
    write_run(tmp_path, f"{PRE},method=spatial,budget=0.4", {"textvqa_val": {"exact_match": 0.25}}, date="20261125_130000",
              samples={"textvqa_val": [(40, 100), (120, 300)]})  # fmt: skip
    rows = _rows(build_table(find_runs([tmp_path])))
    assert rows["full"][0] == "200 (100%)"
    assert rows["spatial budget=0.4"] == ["80 (40%)", "25.0 (50.0%)", "50.0%"]


def test_newest_run_wins_and_other_models_get_their_own_rows(tmp_path):
    write_run(
        tmp_path / "a",
        f"{PRE},method=full",
        {"pope": {"pope_f1_score": 0.80, "pope_accuracy": 0.9}},
        date="20261125_100000",
    )
    write_run(
        tmp_path / "b",
        f"{PRE},method=full",
        {"pope": {"pope_f1_score": 0.876, "pope_accuracy": 0.9}},
        date="20261125_110000",
    )
    write_run(
        tmp_path / "c", f"{PRE},method=hired,budget=0.2", {"pope": {"pope_f1_score": 0.87, "pope_accuracy": 0.88}}
    )
    write_run(
        tmp_path / "d",
        "pretrained=llava-hf/llava-1.5-7b-hf,method=full",
        {"pope": {"pope_f1_score": 0.85, "pope_accuracy": 0.86}},
    )
    write_run(
        tmp_path / "e",
        "pretrained=llava-hf/llava-1.5-7b-hf",
        {"pope": {"pope_f1_score": 0.85, "pope_accuracy": 0.5}},
        model="llava_hf",
    )
    table = build_table(find_runs([tmp_path]))
    assert table.splitlines()[0] == "| method | model | visual tokens | POPE | mean retention |"
    lines = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert lines == [
        "| full | llava-hf/llava-1.5-7b-hf | – | 85.0 (100.0%) | 100.0% |",
        "| llava_hf | llava-hf/llava-1.5-7b-hf | – | 85.0 (100.0%) | 100.0% |",
        "| full | llava-hf/llava-v1.6-vicuna-7b-hf | – | 87.6 (100.0%) | 100.0% |",
        "| hired budget=0.2 | llava-hf/llava-v1.6-vicuna-7b-hf | – | 87.0 (99.3%) | 99.3% |",
    ]
    over = build_table(
        find_runs([tmp_path / "b", tmp_path / "c"]), metrics=parse_metric_overrides(["pope=pope_accuracy*100"])
    )
    assert _rows(over)["hired budget=0.2"][1] == "88.0 (97.8%)"
    assert "pope: pope_accuracy x 100" in over


def test_other_baseline_and_missing_baseline(paper_like):
    rows = _rows(build_table(find_runs([paper_like]), baseline="hired alpha=0.5 budget=0.4"))
    assert list(rows)[0] == "hired alpha=0.5 budget=0.4"
    assert rows["full"][1] == "64.8 (101.9%)"
    table = build_table(find_runs([paper_like / "h20"]))
    assert _rows(table)["hired alpha=0.5 budget=0.2"][-1] == "–" and "No `full` run found" in table


def test_bad_input(tmp_path, paper_like):
    with pytest.raises(ValueError, match="no such file"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no lmms-eval results"):
        find_runs([tmp_path / "empty"])
    bad = tmp_path / "bad" / "x_results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="x_results.json"):
        find_runs([bad])
    bad.write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="no 'results' block"):
        find_runs([bad])
    with pytest.raises(ValueError, match="has no metric 'f1'.*exact_match"):
        build_table(find_runs([paper_like / "full"]), metrics=parse_metric_overrides(["textvqa_val=f1"]))
    for item in ("textvqa_val", "=f1", "pope=f1*two"):
        with pytest.raises(ValueError, match="--metric"):
            parse_metric_overrides([item])


def test_cli(paper_like, tmp_path, capsys):
    assert main(["report", str(paper_like)]) == 0
    printed = capsys.readouterr().out
    assert "| hired alpha=0.5 budget=0.2 | 380 (20%) | 61.4 (94.8%) |" in printed
    out = tmp_path / "table.md"
    assert main(["report", str(paper_like / "full"), str(paper_like / "h40"), "--out", str(out)]) == 0
    assert "| hired alpha=0.5 budget=0.4 | 760 (40%) | 63.6 (98.1%) |" in out.read_text()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no such file" in capsys.readouterr().err


def _paper_table_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy" / "paper_table.py"
    spec = importlib.util.spec_from_file_location("paper_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_table_script_commands(tmp_path, capsys):
    script = _paper_table_script()
    out = tmp_path / "acc"
    write_run(out / "full", f"{PRE},method=full", {"pope": {"pope_f1_score": 0.876}})  # already done: skipped
    assert (
        script.main(
            [
                "--dry-run",
                "--gpus",
                "8",
                "--out",
                str(out),
                "--only",
                "full,hired-20",
                "--run",
                "vz=method=visionzip,budget=0.2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[full] already done")
    assert printed[1].startswith("[hired-20] accelerate launch --num_processes 8 -m lmms_eval --model hired_llava ")
    assert (
        "--model_args pretrained=llava-hf/llava-v1.6-vicuna-7b-hf,method=hired,budget=0.2,alpha=0.5,dtype=float16"
        in printed[1]
    )
    assert f"--tasks {script.TASKS} --batch_size 4 --log_samples --output_path {out / 'hired-20'}" in printed[1]
    assert printed[2].startswith("[vz] ") and "method=visionzip,budget=0.2" in printed[2]
    assert "report" in printed[3] and str(out / "table.md") in printed[3]
    assert set(script.TASKS.split(",")) == set(PAPER_METRICS)  # the report knows each task's paper metric
    with pytest.raises(SystemExit, match="unknown run"):
        script.main(["--dry-run", "--only", "hired-30"])
    with pytest.raises(SystemExit, match="--run expects"):
        script.main(["--dry-run", "--run", "nomethod"])
