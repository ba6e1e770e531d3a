"""``benchmarks/accuracy/paper_table.py``'s argument handling and dry run with LLaVA-OneVision rows (no
lmms-eval, no model: the dry run prints the commands only)."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy" / "paper_table.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("paper_table_ov", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(printed: list[str]) -> dict[str, list[str]]:
    """``[tag] command`` lines → tag → argv."""
    out = {}
    for line in printed:
        if line.startswith("[") and "] " in line and "already done" not in line:
            tag, cmd = line[1:].split("] ", 1)
            out[tag] = shlex.split(cmd)
    return out


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_onevision_short_name_runs_the_onevision_checkpoint(script, tmp_path, capsys):
    assert script.MODELS["onevision-7b"] == script.ONEVISION_MODEL == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    out = tmp_path / "acc"
    assert script.main(["--dry-run", "--model", "onevision-7b", "--out", str(out), "--only", "full,hired-20"]) == 0
    printed = capsys.readouterr().out.splitlines()
    cmds = _commands(printed)
    assert list(cmds) == ["full", "hired-20"]  # one model: the folders stay <out>/<run>
    args = _arg(cmds["hired-20"], "--model_args")
    assert args == "pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,method=hired,budget=0.2,alpha=0.5,dtype=float16"
    assert _arg(cmds["hired-20"], "--model") == "hired_llava"
    assert _arg(cmds["full"], "--output_path") == str(out / "full")
    report = shlex.split(printed[-1])
    assert report[-2:] == ["--out", str(out / "table.md")] and str(out / "hired-20") in report


def test_two_models_get_one_folder_each_and_one_report(script, tmp_path, capsys):
    out = tmp_path / "acc"
    done = out / "onevision-7b" / "full" / "x"
    done.mkdir(parents=True)
    (done / "r_results.json").write_text(json.dumps({"results": {}}))  # that run is done: skipped
    assert (
        script.main(
            [
                "--dry-run",
                "--model",
                "llava-next-7b",
                "--model",
                "onevision-7b",
                "--out",
                str(out),
                "--only",
                "full,spatial-40",
                "--run",
                "vz=method=visionzip,budget=0.2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    cmds = _commands(printed)
    assert list(cmds) == [
        "llava-next-7b/full",
        "llava-next-7b/spatial-40",
        "llava-next-7b/vz",
        "onevision-7b/spatial-40",
        "onevision-7b/vz",
    ]
    assert any(line.startswith("[onevision-7b/full] already done") for line in printed)
    for tag, argv in cmds.items():
        model, run = tag.split("/")
        assert _arg(argv, "--output_path") == str(out / model / run)
        assert _arg(argv, "--model_args").startswith(f"pretrained={script.MODELS[model]},")
    report = shlex.split(printed[-1])
    folders = [a for a in report if a.startswith(str(out)) and not a.endswith("table.md")]
    assert folders == [
        str(out / m / r) for m in ("llava-next-7b", "onevision-7b") for r in ("full", "spatial-40", "vz")
    ]


def test_a_folder_or_hub_id_is_named_by_its_last_part(script, tmp_path, capsys):
    local = tmp_path / "my-onevision"
    assert (
        script.main(
            [
                "--dry-run",
                "--model",
                str(local) + "/",
                "--model",
                "org/other-model",
                "--out",
                str(tmp_path / "o"),
                "--only",
                "full",
            ]
        )
        == 0
    )
    cmds = _commands(capsys.readouterr().out.splitlines())
    assert list(cmds) == ["my-onevision/full", "other-model/full"]
    assert _arg(cmds["my-onevision/full"], "--model_args").startswith(f"pretrained={local}/,method=full")


def test_default_model_is_the_papers(script, tmp_path, capsys):
    assert script.main(["--dry-run", "--out", str(tmp_path), "--only", "full"]) == 0
    cmds = _commands(capsys.readouterr().out.splitlines())
    assert _arg(cmds["full"], "--model_args") == f"pretrained={script.MODEL},method=full,dtype=float16"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "onevision-7b", "--model", "onevision-7b"], "given twice"),
        (["--model", "onevision-7b", "--model", "llava-hf/llava-onevision-qwen2-7b-ov-hf"], "given twice"),
        (["--model", "a/x", "--model", "b/x"], "share the folder name 'x'"),
        (["--model", " "], "--model is empty"),
        (["--gpus", "0"], "must be positive"),
    ],
)
def test_bad_model_arguments_are_one_clear_error(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--dry-run", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_qwen_runs_what_its_family_serves_and_says_why_it_skips_the_rest(script, tmp_path, capsys):
    assert script.MODELS["qwen2.5-vl-7b"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    local = tmp_path / "my-qwen"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    out = tmp_path / "acc"
    assert script.main(["--dry-run", "--model", "qwen2.5-vl-7b", "--model", str(local), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    cmds = _commands(printed)
    skipped = {line[1:].split("] ")[0]: line for line in printed if "] skipped: " in line}
    for model in ("qwen2.5-vl-7b", "my-qwen"):
        # adaptive counts are refused by the family, with hired's own reason
        assert f"{model}/prumerge" in skipped and f"{model}/prumerge_plus" in skipped
        assert "only fixed-budget methods run yet" in skipped[f"{model}/prumerge"]
        for run in ("full", "hired-20", "hired-40", "spatial-40", "divprune-20", "dart-20", "cdpruner-20"):
            assert f"{model}/{run}" in cmds
    assert _arg(cmds["qwen2.5-vl-7b/hired-20"], "--model_args").startswith("pretrained=Qwen/Qwen2.5-VL-7B-Instruct,")
    report = shlex.split(printed[-1])
    assert str(out / "qwen2.5-vl-7b" / "prumerge") not in report and str(out / "my-qwen" / "full") in report
    # a LLaVA-NeXT model runs them all
    assert script.refused("llava_next", script.RUNS["prumerge"]) is None
    assert script.refused(None, script.RUNS["prumerge"]) is None


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_5", "internvl"])
def test_the_newer_families_are_known_by_short_name_and_by_config(script, tmp_path, model_type):
    """Every short name's model has a family of hired, and a local folder's config names it too."""
    from hired.families import FAMILIES

    assert set(script.FAMILIES) == set(script.MODELS.values())
    assert set(script.FAMILIES.values()) <= set(FAMILIES)
    local = tmp_path / f"my-{model_type}"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert script.model_family(str(local)) == model_type
