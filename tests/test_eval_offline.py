"""`hired eval --offline --quick` on the packaged hired-tiny: every method, exact token counts, outputs."""

import json
import math

import pytest

import hired
from hired.cli import main
from hired.core.grid import Geometry, layout_for
from hired.eval import offline
from hired.models import task, tiny_vlm


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    code = main(["eval", "--offline", "--quick", "--no-progress", "--json", str(folder / "r.json"),
                 "--plot", str(folder / "r.png")])
    assert code == 0
    return json.loads((folder / "r.json").read_text()), folder


def test_every_method_and_budget_has_a_row(quick):
    payload, _ = quick
    rows = {(r["label"], r["budget"]) for r in payload["results"]}
    assert ("all tokens", None) in rows
    for name in hired.list_methods():
        for budget in offline.QUICK["budgets"]:
            assert (name, budget) in rows
    for budget in offline.QUICK["budgets"]:
        assert ("hired (reference mapping)", budget) in rows
    assert payload["questions"] == 4 * offline.QUICK["images"]


def test_accuracy_retention_and_token_counts(quick):
    payload, _ = quick
    results = payload["results"]
    full = next(r for r in results if r["label"] == "all tokens")
    split = task.make_split("test", offline.QUICK["images"], seed=0)
    geometry = Geometry(tiny_vlm.CROP, tiny_vlm.PATCH, tuple(map(tuple, tiny_vlm.pinpoints())))
    layouts = [layout_for(split.scenes[q.image].size, geometry) for q in split.questions]
    for r in results:
        if r["skipped"]:
            assert "adaptive" in r["label"]
            continue
        assert 0 <= r["accuracy"] <= 1
        assert set(r["by_kind"]) == set(task.KINDS)
        assert r["retention"] == pytest.approx(r["accuracy"] / full["accuracy"])
        if r["budget"] is not None:  # a fixed budget keeps floor(budget * P * T) patches, no newlines
            expected = sum(math.floor(r["budget"] * lay.num_partitions * lay.tokens) for lay in layouts) / len(layouts)
            assert r["visual_tokens"] == pytest.approx(expected), r["label"]
        elif r["label"] != "all tokens":  # adaptive: fewer than all
            assert r["visual_tokens"] < full["visual_tokens"]


def test_markdown_and_plot(quick, capsys):
    payload, folder = quick
    assert (folder / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = [offline.Result(**r) for r in payload["results"]]
    table = offline.markdown(results, offline.QUICK["budgets"])
    assert table.count("\n| ") >= len(hired.list_methods()) + 2
    for name in hired.list_methods():
        assert f"| {name} |" in table


@pytest.mark.parametrize("argv,message", [(["--budgets", "1.5"], "budget must be in (0, 1]"),
                                          (["--methods", "nope"], "unknown method"),
                                          ([], "only --offline")])
def test_bad_arguments(argv, message):
    args = ["eval", *([] if message == "only --offline" else ["--offline"]), *argv]
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        main(args)
