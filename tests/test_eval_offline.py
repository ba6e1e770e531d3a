"""`hired eval --offline --quick` on the packaged hired-tiny: every method, both question families reported
separately and together, exact token counts, outputs, merging old and new JSON."""

import json
import math

import pytest

import hired
from hired.cli import main
from hired.core.grid import Geometry, layout_for
from hired.eval import offline
from hired.models import dense, task, tiny_vlm


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    code = main(
        [
            "eval",
            "--offline",
            "--quick",
            "--no-progress",
            "--json",
            str(folder / "r.json"),
            "--plot",
            str(folder / "r.png"),
        ]
    )
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
    assert payload["task"] == "both"  # the default
    assert payload["questions"] == 2 * 4 * offline.QUICK["images"]
    for r in payload["results"]:
        assert {k: v["questions"] for k, v in r["families"].items()} == {"dense": 16, "first": 16}


def test_the_packaged_model_reads_the_image(quick):
    """With all tokens, hired-tiny answers far above the answer priors (chance is about 0.33 over the first
    family's four kinds, about 0.29 over the dense family's two: three shapes, four colours); at budget 1.0
    every method keeps every patch (only the newline tokens go), so all answer alike."""
    payload, _ = quick
    results = payload["results"]
    full = next(r for r in results if r["label"] == "all tokens")
    assert full["families"]["first"]["accuracy"] >= 0.7
    assert full["families"]["dense"]["accuracy"] >= 0.5
    at_one = {r["label"]: r["accuracy"] for r in results if r["budget"] == 1.0}
    assert len(at_one) == len(hired.list_methods()) + 1 and len(set(at_one.values())) == 1, at_one


def test_accuracy_retention_and_token_counts(quick):
    payload, _ = quick
    results = [offline.Result(**r) for r in payload["results"]]
    geometry = Geometry(tiny_vlm.CROP, tiny_vlm.PATCH, tuple(map(tuple, tiny_vlm.pinpoints())))
    views = offline.by_family(results, payload["task"])
    assert list(views) == ["first", "dense", "both"]
    kinds = {"first": set(task.KINDS), "dense": set(dense.KINDS), "both": set(task.KINDS) | set(dense.KINDS)}
    for name, rows in views.items():
        split = offline.make_split(name, offline.QUICK["images"], seed=0)
        layouts = [layout_for(split.scenes[q.image].size, geometry) for q in split.questions]
        full = next(r for r in rows if r.label == "all tokens")
        for r in rows:
            assert 0 <= r.accuracy <= 1
            assert set(r.by_kind) == kinds[name]
            assert r.retention == pytest.approx(r.accuracy / full.accuracy)
            assert len(r.correct) == len(split.questions) and r.correct.count("1") / len(r.correct) == pytest.approx(
                r.accuracy
            )
            if r.budget is not None:  # a fixed budget keeps floor(budget * P * T) patches, no newlines
                expected = sum(math.floor(r.budget * lay.num_partitions * lay.tokens) for lay in layouts) / len(layouts)
                assert r.visual_tokens == pytest.approx(expected), (name, r.label)
            elif r.label != "all tokens":  # adaptive: fewer than all
                assert r.visual_tokens < full.visual_tokens
    hired_row = next(r for r in views["dense"] if r.label == "hired" and r.budget == 0.1)
    diff, se, n = offline.paired(hired_row, views["dense"][0])
    assert n == 16 and diff == pytest.approx(hired_row.accuracy - views["dense"][0].accuracy) and se >= 0
    assert offline.paired(hired_row, hired_row) == (0.0, 0.0, 16)
    # together = the question-weighted mean of the two families
    for r, a, b in zip(views["both"], views["first"], views["dense"]):
        assert r.accuracy == pytest.approx((a.accuracy + b.accuracy) / 2)


def test_markdown_and_plot(quick, capsys):
    payload, folder = quick
    for name in ("r.png", "r-first.png", "r-dense.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = [offline.Result(**r) for r in payload["results"]]
    table = offline.markdown(results, offline.QUICK["budgets"])
    assert table.count("\n| ") >= len(hired.list_methods()) + 2
    for name in hired.list_methods():
        assert f"| {name} |" in table
    assert "| method | cell | colour | count | presence | quadrant | shape |" in table
    text = offline.report(results, offline.QUICK["budgets"], "both", offline.family_counts(results))
    assert text.count("All tokens: accuracy") == 3
    assert "### Family 'first'" in text and "### Family 'dense'" in text and "### Both families together, 32" in text
    assert "| method | cell | shape |" in text


def test_the_plot_keeps_its_title_over_the_panel_headings(quick, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    payload, _ = quick
    seen = []
    original = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda fig, text, **kw: (seen.append(text), original(fig, text, **kw))[1])
    results = [offline.Result(**r) for r in payload["results"]]
    offline.plot(results, tmp_path / "t.png", offline.QUICK["budgets"], "the run's title")
    assert seen == ["the run's title"]


def test_one_family_runs_alone(tmp_path):
    assert (
        main(
            [
                "eval",
                "--offline",
                "--task",
                "dense",
                "--images",
                "2",
                "--methods",
                "hired",
                "--budgets",
                "0.2",
                "--no-progress",
                "--json",
                str(tmp_path / "d.json"),
            ]
        )
        == 0
    )
    payload = json.loads((tmp_path / "d.json").read_text())
    assert payload["task"] == "dense" and payload["questions"] == 8
    assert [r["label"] for r in payload["results"]] == ["all tokens", "hired", "hired (reference mapping)"]
    assert all(set(r["by_kind"]) == set(dense.KINDS) for r in payload["results"])
    assert offline.make_split("first", 2).questions == task.make_split("test", 2).questions
    with pytest.raises(ValueError, match="task must be one of"):
        offline.make_split("all", 2)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--budgets", "1.5"], "budget must be in (0, 1]"),
        (["--methods", "nope"], "unknown method"),
        ([], "only --offline"),
    ],
)
def test_bad_arguments(argv, message):
    args = ["eval", *([] if message == "only --offline" else ["--offline"]), *argv]
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        main(args)


@pytest.mark.parametrize("name", ["none", "hired", "prumerge"])
def test_answers_equal_the_processor_path(name):
    """Encoding each image once and reusing its features gives the answers of ``generate(**processor(...))``
    (``hired.prepare_inputs`` for the adaptive PruMerge), token for token."""
    import torch

    model, processor = tiny_vlm.load_hired_tiny()
    split = task.make_split("test", 2, seed=3)
    images = [split.image(i) for i in range(2)]
    questions = [[q.question for q in split.questions if q.image == i] for i in range(2)]
    if name != "none":
        hired.apply(model, processor, hired.get_method(name, budget=None if name == "prumerge" else 0.2))
    try:
        got, counts = offline.answer(model, processor, images, questions, check_count=name != "prumerge")
        flat_images = [img for img, qs in zip(images, questions) for _ in qs]
        texts = [tiny_vlm.prompt(q) for qs in questions for q in qs]
        kwargs = dict(images=flat_images, text=texts, return_tensors="pt", padding=True)
        inputs = hired.prepare_inputs(model, processor, **kwargs) if name == "prumerge" else processor(**kwargs)
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
            )
        expected = [
            a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
        assert [a for qs in got for a in qs] == expected
        per_question = (inputs["input_ids"] == model.config.image_token_id).sum(-1).tolist()
        assert per_question == [c for c, qs in zip(counts, questions) for _ in qs]
    finally:
        if hired.applied_method(model) is not None:
            hired.remove(model, processor)


def test_variants_add_rows_with_the_options_in_the_same_run():
    from hired.eval.offline import configs

    cfgs = configs(
        (0.2, 1.0),
        ["hired", "spatial"],
        variants=[
            {"hired": {"keep_positions": True}, "spatial": {"keep_positions": True}},
            {"hired": {"score": "received"}},
        ],
    )
    labels = [c.label for c in cfgs]
    assert labels.count("hired (keep_positions=True)") == 2 and labels.count("spatial (keep_positions=True)") == 2
    assert labels.count("hired (reference mapping, keep_positions=True)") == 2
    assert labels.count("hired (score=received)") == 2 and "spatial (score=received)" not in labels
    by_label = {(c.label, c.budget): c.method for c in cfgs}
    assert by_label[("hired (keep_positions=True)", 0.2)] == hired.HiRED(budget=0.2, keep_positions=True)
    assert by_label[("hired (reference mapping, score=received)", 1.0)] == hired.HiRED(
        budget=1.0, mapping="reference", score="received"
    )
    assert by_label[("hired", 0.2)] == hired.HiRED(budget=0.2)


def test_variant_on_the_command_line_is_typed(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--offline", "--quick", "--methods", "spatial", "--variant", "keep_positions=maybe"])
    assert exit_.value.code == 2 and "keep_positions must be True or False, got 'maybe'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--offline", "--task", "shapes"])
    assert exit_.value.code == 2 and "invalid choice: 'shapes'" in capsys.readouterr().err


def test_merge_labels_option_runs_and_refuses_mismatched_runs(tmp_path, capsys):
    from hired.eval.offline import combine

    def run(options, rows, questions=1000, full=0.9):
        return {
            "model": "m",
            "questions": questions,
            "seed": 0,
            "budgets": [0.2, 1.0],
            "options": options,
            "date": "2026-12-02T00:00:00+00:00",
            "results": [
                {
                    "label": "all tokens",
                    "budget": None,
                    "accuracy": full,
                    "by_kind": {"a": full},
                    "visual_tokens": 100.0,
                    "retention": 1.0,
                },
                *(
                    {
                        "label": label,
                        "budget": b,
                        "accuracy": acc,
                        "by_kind": {"a": acc},
                        "visual_tokens": 20.0,
                        "retention": acc / full,
                    }
                    for label, b, acc in rows
                ),
            ],
        }

    packed = run(
        {}, [("hired", 0.2, 0.7), ("hired (reference mapping)", 0.2, 0.71), ("prumerge (adaptive)", None, 0.3)]
    )
    kept = run(
        {"hired": {"keep_positions": True}, "prumerge": {"keep_positions": True}},
        [("hired", 0.2, 0.85), ("hired (reference mapping)", 0.2, 0.86), ("prumerge (adaptive)", None, 0.35)],
    )
    results, budgets = combine([packed, kept])
    labels = [(r.label, r.budget, r.accuracy) for r in results]
    assert labels[0] == ("all tokens", None, 0.9) and budgets == [0.2, 1.0]
    assert ("hired (keep_positions=True)", 0.2, 0.85) in labels and ("hired", 0.2, 0.7) in labels
    assert ("hired (reference mapping, keep_positions=True)", 0.2, 0.86) in labels
    assert ("prumerge (adaptive, keep_positions=True)", None, 0.35) in labels
    with pytest.raises(ValueError, match="differ in questions"):
        combine([packed, run({}, [], questions=16)])
    with pytest.raises(ValueError, match="all-token accuracies differ"):
        combine([packed, run({"hired": {"keep_positions": True}}, [], full=0.5)])
    with pytest.raises(ValueError, match="two runs hold 'hired' at budget 0.2"):
        combine([packed, packed])
    for i, payload in enumerate((packed, kept)):
        (tmp_path / f"{i}.json").write_text(json.dumps(payload))
    assert (
        main(
            ["eval", "--merge", str(tmp_path / "0.json"), str(tmp_path / "1.json"), "--json", str(tmp_path / "m.json")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| hired (keep_positions=True) | 0.850 (0.94) | — |" in out
    assert len(json.loads((tmp_path / "m.json").read_text())["results"]) == 7


def test_merge_of_runs_of_both_families_keeps_each_family(tmp_path, capsys):
    """JSON of ``--task both`` runs merges into one table per family and one together; runs of different
    tasks are refused, and JSON written before the dense family existed (no ``task``) counts as ``first``."""
    from hired.eval.offline import by_family, combine

    def row(label, budget, first, dense_):
        return {
            "label": label,
            "budget": budget,
            "accuracy": (first + dense_) / 2,
            "by_kind": {"colour": first, "shape": dense_},
            "visual_tokens": 60.0,
            "retention": (first + dense_) / 1.75,
            "families": {
                "first": {"accuracy": first, "visual_tokens": 50.0, "questions": 4},
                "dense": {"accuracy": dense_, "visual_tokens": 70.0, "questions": 4},
            },
        }

    def run(options, rows, task="both"):
        return {
            "model": "m",
            "task": task,
            "questions": 8,
            "seed": 0,
            "budgets": [0.2],
            "options": options,
            "date": "2026-12-02T00:00:00+00:00",
            "results": [row("all tokens", None, 1.0, 0.75), *rows],
        }

    packed = run({}, [row("hired", 0.2, 0.5, 0.25)])
    kept = run({"hired": {"keep_positions": True}}, [row("hired", 0.2, 0.75, 0.5)])
    results, _ = combine([packed, kept])
    views = by_family(results, "both")
    dense_rows = {r.label: (r.accuracy, r.retention, r.visual_tokens, set(r.by_kind)) for r in views["dense"]}
    assert dense_rows["hired (keep_positions=True)"] == (0.5, pytest.approx(0.5 / 0.75), 70.0, {"shape"})
    assert {r.label: r.accuracy for r in views["first"]}["hired"] == 0.5
    assert {r.label: r.accuracy for r in views["both"]}["hired"] == 0.375
    old = {k: v for k, v in run({}, []).items() if k != "task"}
    with pytest.raises(ValueError, match="differ in task: 'both' and 'first'"):
        combine([packed, old])
    assert list(by_family(combine([old])[0], "first")) == ["first"]
    with pytest.raises(ValueError, match="no per-question results"):
        offline.paired(*views["dense"][:2])
    for i, payload in enumerate((packed, kept)):
        (tmp_path / f"{i}.json").write_text(json.dumps(payload))
    assert (
        main(
            [
                "eval",
                "--merge",
                str(tmp_path / "0.json"),
                str(tmp_path / "1.json"),
                "--json",
                str(tmp_path / "m.json"),
                "--plot",
                str(tmp_path / "m.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "task both" in out and out.count("All tokens: accuracy") == 3
    assert "| hired (keep_positions=True) | 0.500 (0.67) |" in out
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["task"] == "both" and merged["results"][1]["families"]["dense"]["accuracy"] in (0.25, 0.5)
    assert (tmp_path / "m-dense.png").is_file() and (tmp_path / "m-first.png").is_file()


def test_adaptive_rows_are_calibrated_to_the_fixed_rows_mean_count():
    """A ``hired (adapt=...)`` row spends the fixed row's tokens on average, more on the tables than on the
    photos, and records the reference it was calibrated to."""
    model, processor = tiny_vlm.load_hired_tiny()
    split = offline.make_split("both", 6, seed=1)
    cfgs = [
        c for c in offline.configs((0.1,), ["hired"], variants=[{"hired": {"adapt": 1.0}}]) if "mapping" not in c.label
    ]
    results = {r.label: r for r in offline.evaluate(model, processor, split, cfgs, batch_size=24, progress=False)}
    fixed, adaptive = results["hired"], results["hired (adapt=1.0)"]
    assert fixed.reference is None and adaptive.reference > 0
    tokens = {name: figures["visual_tokens"] for name, figures in adaptive.families.items()}
    assert tokens["dense"] > fixed.families["dense"]["visual_tokens"] > tokens["first"]
    # the closest mean any reference gives: here within one token in all over the 12 images
    assert abs(adaptive.visual_tokens - fixed.visual_tokens) <= 1 / 12
    images = [split.image(i) for i in range(len(split.scenes))]
    expected = hired.calibrate(model, processor, images, hired.HiRED(budget=0.1, adapt=1.0))
    assert adaptive.reference == expected.reference
    text = offline.report(list(results.values()), (0.1,), "both")
    assert "Variant `hired (adapt=1.0)` against base `hired`" in text and "| 0.1 | dense (24) |" in text


def test_adaptive_rows_find_their_fixed_rows():
    labels = [
        "all tokens",
        "hired",
        "hired (adapt=0.5)",
        "hired (keep_positions=True)",
        "hired (keep_positions=True, adapt=1.0)",
    ]
    labels += ["hired (adapt=0.0)", "pool (adapt=1.0)"]  # adapt 0 is fixed; no fixed pool row
    rows = [offline.Result(label, 0.1) for label in labels]
    assert offline.adaptive_pairs(rows) == [
        ("hired", "hired (adapt=0.5)"),
        ("hired (keep_positions=True)", "hired (keep_positions=True, adapt=1.0)"),
    ]


def test_comparison_table_pairs_the_rows_per_family():
    def row(label, accuracy, correct, first, dense):
        """A row of 2 + 2 questions; ``first`` / ``dense``: (accuracy, visual tokens) of each family."""
        families = {
            n: {"accuracy": a, "visual_tokens": t, "questions": 2} for n, (a, t) in (("first", first), ("dense", dense))
        }
        return offline.Result(label, 0.1, accuracy, {}, 5.0, families=families, correct=correct)

    rows = [
        offline.Result("all tokens", None, 1.0, {}, 10.0, families={}, correct="1111"),
        row("hired", 0.5, "1010", (0.5, 5.0), (0.5, 5.0)),
        row("hired (adapt=1.0)", 0.75, "1011", (0.5, 3.0), (1.0, 7.0)),
    ]
    table = offline.comparison(rows, "hired", "hired (adapt=1.0)").splitlines()
    assert table[2] == "| 0.1 | first (2) | 5.0 / 3.0 | 0.500 | 0.500 | +0.000 ± 0.000 |"
    assert table[3] == "| 0.1 | dense (2) | 5.0 / 7.0 | 0.500 | 1.000 | +0.500 ± 0.500 |"
    # together: differences (0, 0, 0, 1): mean 0.25, sample variance 0.25, SE sqrt(0.25 / 4)
    assert table[4] == "| 0.1 | together (4) | 5.0 / 5.0 | 0.500 | 0.750 | +0.250 ± 0.250 |"
    with pytest.raises(ValueError, match="no rows"):
        offline.comparison(rows, "hired", "pool")
