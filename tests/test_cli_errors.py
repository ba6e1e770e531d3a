"""The rough edges of the ``hired`` command: extreme aspect ratios, model and image paths, ``--help``, one
error style, typed options, comma/space lists, warmed-up timings and the module layout."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from hired import inference, loading
from hired.cli import build_parser, main
from hired.cli.common import CommandError, error_message
from hired.methods import options

SRC = Path(__file__).resolve().parents[1] / "src" / "hired"
SUBCOMMANDS = ("generate", "show", "bench", "bench-vllm", "report", "eval", "demo", "methods")


def run(argv, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``hired argv``, whether main returns or raises ``SystemExit``."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err: str, message: str) -> None:
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.startswith("hired")]
    assert lines and lines[-1].startswith("hired: error: "), err
    assert message in lines[-1], err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ hired show


@pytest.mark.parametrize("size", [(6000, 200), (200, 6000)])
@pytest.mark.parametrize("heatmap", [False, True])
def test_show_on_an_extreme_aspect_ratio_writes_a_figure(model_dir, tmp_path, capsys, size, heatmap):
    image = tmp_path / "panorama.png"
    Image.new("RGB", size, (90, 140, 200)).save(image)
    out = tmp_path / "figure.png"
    argv = ["show", "--model", model_dir, "--image", str(image), "--out", str(out)] + (["--heatmap"] if heatmap else [])
    code, printed, err = run(argv, capsys)
    assert code == 0, err
    assert "0/0" in printed  # sub-images with no valid patch: the case that divided by zero
    with Image.open(out) as png:
        png.verify()


def test_sub_rects_of_a_subimage_without_valid_patches():
    from hired.core.grid import Layout
    from hired.viz.geometry import sub_rects as _sub_rects
    from hired.viz.geometry import subimage_bounds as _subimage_bounds

    empty = Layout(image_size=(200, 6000), side=6, grid=(1, 3), top=3, bottom=3, left=0, right=18)
    assert _sub_rects([], 0, empty, (6000, 200)) == []
    assert _subimage_bounds(empty, (6000, 200)) == ([], [])


# ------------------------------------------------------------------------------------------ model and image paths


@pytest.mark.parametrize("model", ["no-such-folder", "./no-such-folder", "../no/such/folder", "~/no-such-folder-hired"])
def test_a_missing_model_folder_fails_fast_and_says_so(image_path, capsys, model):
    start = time.perf_counter()
    code, _, err = run(["generate", "--model", model, "--image", image_path, "--prompt", "hi"], capsys)
    assert time.perf_counter() - start < 5
    assert_user_error(code, err, f"no such model folder: {model}")


def test_a_model_path_inside_an_existing_folder_is_a_folder(tmp_path, image_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    code, _, err = run(["generate", "--model", "models/missing", "--image", image_path, "--prompt", "hi"], capsys)
    assert_user_error(code, err, "no such model folder: models/missing")


def test_a_file_or_a_folder_without_config_is_not_a_model_folder(tmp_path, image_path, capsys):
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        ["show", "--model", str(tmp_path / "weights.bin"), "--image", image_path, "--out", str(tmp_path / "x.png")],
        capsys,
    )
    assert_user_error(code, err, "is a file, not a model folder")
    code, _, err = run(
        ["generate", "--model", str(tmp_path / "empty"), "--image", image_path, "--prompt", "hi"], capsys
    )
    assert_user_error(code, err, "has no config.json")


def test_a_hub_id_offline_and_not_cached_fails_fast(image_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code, _, err = run(
        ["generate", "--model", "hired-test/not-cached", "--image", image_path, "--prompt", "hi"], capsys
    )
    assert time.perf_counter() - start < 5
    assert_user_error(code, err, "HF_HUB_OFFLINE is set")


def test_a_hub_id_without_a_reachable_hub_fails_fast(image_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_offline", lambda: False)
    monkeypatch.setattr(loading, "hub_unreachable", lambda timeout=3.0: "https://huggingface.co: no route")
    code, _, err = run(
        ["generate", "--model", "hired-test/not-cached", "--image", image_path, "--prompt", "hi"], capsys
    )
    assert_user_error(code, err, "cannot be reached")


def test_a_hub_id_goes_to_the_hub_when_it_is_reachable(monkeypatch):
    monkeypatch.setattr(loading, "_offline", lambda: False)
    monkeypatch.setattr(loading, "hub_unreachable", lambda timeout=3.0: None)
    assert loading.resolve_model("llava-hf/llava-v1.6-vicuna-7b-hf") == ("llava-hf/llava-v1.6-vicuna-7b-hf", {})


def test_an_image_path_that_is_a_directory_says_so(model_dir, tmp_path, capsys):
    code, _, err = run(["generate", "--model", model_dir, "--image", str(tmp_path), "--prompt", "hi"], capsys)
    assert_user_error(code, err, "is a directory")
    code, _, err = run(
        ["show", "--model", model_dir, "--image", str(tmp_path), "--out", str(tmp_path / "x.png")], capsys
    )
    assert_user_error(code, err, "is a directory")


# ------------------------------------------------------------------------------------------ help and error style


def test_help_lists_every_subcommand_in_plain_text(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    listed = set(build_parser()._subparsers._group_actions[0].choices)
    assert listed == set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name
    assert "`" not in out


def test_help_names_every_supported_family(capsys):
    from hired.families import FAMILIES

    code, out, _ = run(["--help"], capsys)
    assert code == 0
    text = " ".join(out.split())  # argparse wraps the description
    missing = [f.title for f in FAMILIES.values() if f.title not in text]
    assert missing == [], f"hired --help does not name {missing}"


@pytest.mark.parametrize("command", ["generate", "show", "bench", "report", "eval", "demo", "methods"])
def test_subcommand_help_has_no_backticks(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: hired {command}")
    assert "`" not in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "--model", "m"], "the following arguments are required"),
        (["generate", "--model", "m", "--image", "x.png", "--prompt", "hi", "--method", "nope"], "unknown method"),
        (["generate", "--model", "m", "--image", "x.png", "--prompt", "hi", "--option", "alpha"], "KEY=VALUE"),
        (["show", "--model", "m", "--image", "x.png", "--out", "x.png", "--method", "nope"], "unknown method"),
        (["show", "--model", "m", "--image", "x.png", "--out", "x.png", "--option", "frob=1"], "no chosen method"),
        (["bench", "--arch", "small"], "add --random-weights"),
        (["bench", "--model", "m", "--budgets", "a,b"], "separated by commas or spaces"),
        (["bench", "--model", "m", "--runs", "0", "--no-progress"], "runs must be at least 1"),
        (["bench-vllm", "--model", "m", "--option", "alpha"], "KEY=VALUE"),
        (["report", "/no/such/results"], "no such file"),
        (["eval"], "only --offline"),
        (["eval", "--offline", "--budgets", "1.5"], "budget must be in (0, 1]"),
        (["eval", "--offline", "--option", "budget=0.3"], "--budgets"),
        (["demo", "--kind", "colours"], "invalid choice"),
        (["methods", "--bogus"], "unrecognized arguments"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_user_errors_read_hired_error_and_exit_2(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert_user_error(code, err, message)


def test_the_console_command_exits_2_with_one_error_line(image_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hired.cli",
            "generate",
            "--model",
            "no-such-folder",
            "--image",
            image_path,
            "--prompt",
            "hi",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "hired: error: no such model folder: no-such-folder (a hub id has the form org/name)"
    ]


def test_error_message_strips_old_prefixes():
    assert error_message(SystemExit("hired bench-vllm: --option expects KEY=VALUE")) == "--option expects KEY=VALUE"
    assert error_message(CommandError("plain")) == "plain"
    assert error_message(ValueError("hired: error: x")) == "x"
    err = CommandError("m")
    assert isinstance(err, SystemExit) and err.code == 2 and str(err) == "m"


# ------------------------------------------------------------------------------------------ typed options


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", "hi"],
        ["show", "--out", "{tmp}/x.png"],
        ["bench", "--no-progress"],
    ],
)
def test_option_values_are_parsed_by_type(argv, model_dir, image_path, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] != "bench":
        argv += ["--image", image_path]
    code, _, err = run([*argv, "--model", model_dir, "--option", "keep_newline=maybe"], capsys)
    assert_user_error(code, err, "keep_newline must be True or False, got 'maybe'")


def test_eval_option_values_are_parsed_by_type(capsys):
    code, _, err = run(["eval", "--offline", "--methods", "hired", "--option", "keep_newline=maybe"], capsys)
    assert_user_error(code, err, "keep_newline must be True or False, got 'maybe'")


def test_a_typed_option_works_in_generate_and_show(model_dir, image_path, tmp_path, capsys):
    code, out, err = run(
        [
            "generate",
            "--model",
            model_dir,
            "--image",
            image_path,
            "--prompt",
            "hi",
            "--option",
            "alpha=0.5",
            "--option",
            "keep_newline=yes",
            "--max-new-tokens",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert "[hired]" in out
    figure = tmp_path / "x.png"
    code, out, err = run(
        [
            "show",
            "--model",
            model_dir,
            "--image",
            image_path,
            "--out",
            str(figure),
            "--method",
            "hired,spatial",
            "--option",
            "alpha=0.5",
            "--option",
            "hired:mapping=reference",
        ],
        capsys,
    )
    assert code == 0, err
    assert "hired(budget=0.2, alpha=0.5, mapping='reference')" in out and figure.exists()


def test_assign_options_parses_by_each_methods_declared_type():
    per = options.assign_options(
        ["keep_newline=on", "hired:selection_layer=none", "hired:mapping=reference", "seed=7"], ["hired", "random"]
    )
    assert per == [
        {"keep_newline": True, "selection_layer": None, "mapping": "reference"},
        {"keep_newline": True, "seed": 7},
    ]
    assert type(per[1]["seed"]) is int
    with pytest.raises(ValueError, match="alpha must be a number, got 'high'"):
        options.assign_options(["alpha=high"], ["hired"])
    with pytest.raises(ValueError, match="names 'spatial', which is not in --methods"):
        options.assign_options(["spatial:seed=1"], ["hired"], methods_flag="--methods")
    with pytest.raises(ValueError, match="no chosen method has the option seed"):
        options.assign_options(["seed=1"], ["hired"])


def test_methods_from_args_refuse_untyped_text():
    args = SimpleNamespace(method="hired:keep_newline=maybe", budget=None, alpha=None, option=None)
    from hired.cli.show import methods_from_args

    with pytest.raises(SystemExit, match="keep_newline must be True or False"):
        methods_from_args(args)


def test_bench_specs_are_typed():
    from hired.cli.bench import method_specs

    args = SimpleNamespace(methods="hired,prumerge", option=["alpha=0.25", "prumerge:budget=none", "neighbours=8"])
    hired_spec, prumerge_spec = method_specs(args)
    assert hired_spec.options == {"alpha": 0.25}
    assert prumerge_spec.options == {"budget": None, "neighbours": 8}


def test_model_args_of_lmms_eval_are_parsed_by_type():
    parsed = options.parse_method_options("random", {"keep_newline": "yes", "budget": "0.3", "seed": 1})
    assert parsed == {"keep_newline": True, "budget": 0.3, "seed": 1}  # non-strings are kept as given
    with pytest.raises(ValueError, match="keep_newline must be True or False"):
        options.parse_method_options("hired", {"keep_newline": "maybe"})
    with pytest.raises(ValueError, match="unknown method"):
        options.parse_method_options("hird", {})


# ------------------------------------------------------------------------------------------ lists


@pytest.mark.parametrize("budgets", [["0.1,0.2"], ["0.1", "0.2"], ["0.1, 0.2"], ["0.1,", "0.2"]])
def test_budgets_take_commas_and_spaces_in_bench_and_eval(budgets):
    parser = build_parser()
    assert parser.parse_args(["bench", "--model", "m", "--budgets", *budgets]).budgets == (0.1, 0.2)
    assert parser.parse_args(["eval", "--offline", "--budgets", *budgets]).budgets == (0.1, 0.2)
    assert parser.parse_args(["bench", "--model", "m", "--batch-sizes", "1", "2,4"]).batch_sizes == (1, 2, 4)


def test_eval_options_reach_every_configuration():
    from hired.eval.offline import configs

    cfgs = configs((0.2,), ["hired", "prumerge"], {"hired": {"keep_newline": True}, "prumerge": {"neighbours": 4}})
    hired_rows = [c for c in cfgs if c.label.startswith("hired")]
    assert len(hired_rows) == 2 and all(c.method.keep_newline for c in hired_rows)
    assert [c.method.mapping for c in hired_rows] == ["2d", "reference"]
    assert all(c.method.neighbours == 4 for c in cfgs if c.label.startswith("prumerge"))


# ------------------------------------------------------------------------------------------ timings


def test_median_times_warm_up_before_timing_and_take_turns():
    calls: list[str] = []
    durations = {"a": iter([100.0, 5.0, 1.0, 2.0]), "b": iter([50.0, 3.0, 3.0, 30.0])}
    now = [0.0]

    def fn(name):
        def call():
            calls.append(name)
            now[0] += next(durations[name])
            return name

        return call

    out = inference.median_times({"a": fn("a"), "b": fn("b")}, runs=3, warmup=1, clock=lambda: now[0])
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-ups first, then the rounds interleaved
    assert out["a"] == ("a", 2.0, [5.0, 1.0, 2.0])  # the 100 s first call is not timed
    assert out["b"] == ("b", 3.0, [3.0, 3.0, 30.0])
    with pytest.raises(ValueError):
        inference.median_time(lambda: None, runs=0)


def test_median_times_run_setup_untimed():
    now = [0.0]
    order = []

    def setup():
        order.append("setup")
        now[0] += 1000.0

    def fn():
        order.append("fn")
        now[0] += 1.0

    _, median, times = inference.median_times({"x": fn}, runs=2, warmup=1, clock=lambda: now[0], setup={"x": setup})[
        "x"
    ]
    assert order == ["setup", "fn"] * 3 and times == [1.0, 1.0] and median == 1.0


# ------------------------------------------------------------------------------------------ layout


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_module_imports_the_command_line_top_layer():
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if (SRC / "cli") not in p.parents
        if any(m == "hired.cli" or m.startswith("hired.cli.") for m in _imports(p))
    ]
    assert offenders == []


def test_the_shared_modules_import_no_command_module():
    command_modules = ("hired.cli", "hired.viz", "hired.bench", "hired.eval", "hired.vllm")
    shared = ("hired.loading", "hired.inference", "hired.methods.options")
    for name in shared:
        imported = _imports(SRC.joinpath(*name.split(".")[1:]).with_suffix(".py"))
        assert not [m for m in imported if m.startswith(command_modules)], name
    code = (
        f"import sys, {', '.join(shared)}; print(sorted(m for m in sys.modules if m.startswith({command_modules!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
