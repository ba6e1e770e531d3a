"""The accuracy plots' line styles (hired.eval.style): one colour and marker per method, HiRED emphasised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hired.eval import style

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "benchmarks" / "results" / "offline"

METHODS = [
    "hired",
    "cls_topk",
    "spatial",
    "random",
    "prumerge",
    "prumerge_plus",
    "visionzip",
    "divprune",
    "dart",
    "cdpruner",
]
VARIANTS = [
    "hired (reference mapping)",
    "hired (score=received)",
    "hired (reference mapping, score=received)",
    "hired (alpha=1.0)",
    "hired (reference mapping, alpha=1.0)",
    "hired (keep_positions=True)",
    "hired (reference mapping, keep_positions=True)",
    "cls_topk (score=received)",
    "cls_topk (keep_positions=True)",
    "visionzip (score=received)",
]


def committed_label_sets() -> list[list[str]]:
    """The line labels of every committed offline run (what ``plot`` draws: budgeted rows, no all-tokens)."""
    sets = []
    for path in sorted(OFFLINE.glob("*.json")):
        rows = json.loads(path.read_text())["results"]
        sets.append(list(dict.fromkeys(r["label"] for r in rows if r["budget"] is not None)))
    return sets


LABEL_SETS = [METHODS, METHODS + VARIANTS, VARIANTS[::-1] + METHODS, *committed_label_sets()]


@pytest.mark.parametrize("labels", LABEL_SETS, ids=range(len(LABEL_SETS)))
def test_no_two_methods_share_a_colour_and_a_marker(labels):
    got = style.styles(labels)
    assert list(got) == list(dict.fromkeys(labels))
    pairs = [(kw["color"], kw["marker"]) for kw in got.values()]
    assert len(set(pairs)) == len(pairs), pairs


@pytest.mark.parametrize("labels", LABEL_SETS, ids=range(len(LABEL_SETS)))
def test_hired_is_emphasised_and_drawn_on_top(labels):
    got = style.styles(labels)
    if "hired" not in got:
        pytest.skip("no HiRED line in this set")
    hired = got["hired"]
    for label, kw in got.items():
        if label == "hired":
            continue
        assert hired["linewidth"] > kw["linewidth"], label
        assert hired["zorder"] > kw["zorder"], label
    assert hired["linestyle"] == "-"


def test_hired_variants_are_red_and_told_apart_by_line_style():
    got = style.styles(METHODS + VARIANTS)
    family = {style.HIRED_COLOUR, *style.HIRED_FAMILY}
    others = {kw["color"] for label, kw in got.items() if not style.is_hired(label)}
    assert not family & others  # no other method is drawn in HiRED's colours
    for label in VARIANTS:
        if style.is_hired(label):
            assert got[label]["color"] in style.HIRED_FAMILY, label
            assert got[label]["linestyle"] != "-", label
    assert got["hired (reference mapping)"]["linestyle"] == "--"
    assert got["hired (score=received)"]["linestyle"] == ":"
    assert got["cls_topk (score=received)"]["color"] == got["cls_topk"]["color"]


def test_every_method_keeps_its_style_across_figures():
    alone = {label: style.style(label) for label in METHODS}
    together = style.styles(METHODS + VARIANTS)
    for label in METHODS:
        assert alone[label] == together[label], label


def test_unknown_methods_still_get_distinct_styles():
    labels = [f"method_{i}" for i in range(30)] + METHODS
    got = style.styles(labels)
    pairs = [(kw["color"], kw["marker"]) for kw in got.values()]
    assert len(set(pairs)) == len(pairs)


def test_every_registered_method_has_a_fixed_style():
    import hired

    assert set(hired.list_methods()) - {style.HIRED} <= set(style.METHODS)
    adaptive = style.style("hired (adapt=1.0)")
    assert adaptive["color"] in style.HIRED_FAMILY and adaptive["linestyle"] == (0, (1, 1))
