"""``hired.viz.plot_selection`` and ``hired show`` on tiny random-weight models (offline, CPU)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import matplotlib  # noqa: F401  (a test dependency: the suite fails loudly without it)
import pytest
import torch
from PIL import Image

import hired
from hired import viz
from hired.cli import main
from hired.cli.show import methods_from_args
from hired.inference import demo_image
from hired.testing import save_tiny

# (height, width) → sub-image grid (rows, cols) with the tiny models' pinpoints
SHAPES = {(120, 120): (2, 2), (100, 300): (1, 3), (300, 100): (3, 1), (60, 300): (1, 3)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("viz") / "tiny-llava-next", seed=0))


def _axes(fig, prefix: str) -> list:
    return [ax for ax in fig.axes if (ax.get_gid() or "").startswith(prefix)]


def _boxes(fig, gid: str) -> list:
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == gid]


def _box(ax) -> tuple[float, float, float, float]:
    b = ax.get_position()
    return b.x0, b.y0, b.width, b.height


@pytest.mark.parametrize("size", list(SHAPES))
def test_panels_and_boxes_match_selection(next_pair, size):
    model, processor = next_pair
    image = demo_image(size)
    run = viz.run_method(model, processor, image, hired.HiRED(budget=0.3))
    sel = run.selection
    assert sel.grid == SHAPES[size]
    assert hired.applied_method(model) is None  # run_method leaves the model stock

    fig = viz.plot_selection(image, sel, scores=run.scores, score_layers=run.layers)
    panels = _axes(fig, "hired-partition-")
    assert len(panels) == len(sel.partitions)
    assert len(_boxes(fig, "hired-kept")) == sel.num_kept
    assert len(_boxes(fig, "hired-composite-kept")) == sel.num_kept
    for k, part in enumerate(sel.partitions):  # each panel outlines exactly its partition's kept patches
        ax = next(a for a in panels if a.get_gid() == f"hired-partition-{k}")
        assert sum(p.get_gid() == "hired-kept" for p in ax.patches) == len(part.kept)
    # one select map per partition plus the budget map on the full image
    assert len(_axes(fig, "hired-heatmap-")) == len(sel.partitions) + 1

    # the sub-image panels sit in the grid's real layout: rows share y, columns share x
    rows, cols = sel.grid
    pos = [_box(next(a for a in panels if a.get_gid() == f"hired-partition-{k}")) for k in range(1, rows * cols + 1)]
    for k, (x0, y0, _w, h) in enumerate(pos):
        r, c = divmod(k, cols)
        assert x0 == pytest.approx(pos[c][0]) and y0 == pytest.approx(pos[r * cols][1])
        if c:
            assert x0 > pos[k - 1][0] + pos[k - 1][2]  # right of its left neighbour, no overlap
        if r:
            assert y0 + h < pos[k - cols][1]  # below the panel above (figure y grows upwards)


@pytest.mark.parametrize("size", [(60, 300), (300, 100)])
def test_composite_boxes_lie_on_the_image(next_pair, size):
    model, processor = next_pair
    image = demo_image(size)
    run = viz.run_method(model, processor, image, hired.HiRED(budget=0.5, alpha=0.2))
    fig = viz.plot_selection(image, run.selection)
    h, w = size
    for box in _boxes(fig, "hired-composite-kept"):
        x, y = box.get_xy()
        assert -1e-6 <= x and x + box.get_width() <= w + 1e-6
        assert -1e-6 <= y and y + box.get_height() <= h + 1e-6
    assert not _axes(fig, "hired-heatmap-")  # no scores, no heatmaps


def test_llava_single_partition(llava_pair):
    model, processor = llava_pair
    image = demo_image((90, 160))
    run = viz.run_method(model, processor, image, hired.HiRED(budget=0.25))
    fig = viz.plot_selection(image, run.selection, scores=run.scores)
    assert len(_axes(fig, "hired-partition-")) == 1
    assert len(_boxes(fig, "hired-kept")) == run.selection.num_kept == len(_boxes(fig, "hired-composite-kept"))
    assert len(_axes(fig, "hired-heatmap-")) == 1  # no sub-images, so no budget map


def test_several_methods_one_row_each(next_pair):
    model, processor = next_pair
    image = demo_image((100, 300))
    methods = [hired.HiRED(budget=0.3, alpha=0.2), hired.HiRED(budget=0.3, alpha=0.8)]
    runs = [viz.run_method(model, processor, image, m) for m in methods]
    assert runs[0].selection.partitions[0].budget < runs[1].selection.partitions[0].budget
    fig = viz.plot_selection(
        image,
        [r.selection for r in runs],
        scores=[r.scores for r in runs],
        labels=[viz.method_label(m) for m in methods],
    )
    assert len(_axes(fig, "hired-partition-")) == sum(len(r.selection.partitions) for r in runs)
    assert len(_boxes(fig, "hired-kept")) == sum(r.selection.num_kept for r in runs)
    texts = [t.get_text() for t in fig.texts]
    assert any(t.startswith("hired(budget=0.3, alpha=0.2)") for t in texts)
    assert any(t.startswith("hired(budget=0.3, alpha=0.8)") for t in texts)


def test_heatmap_line_names_the_score_kind_per_row(next_pair):
    model, processor = next_pair
    image = demo_image((100, 300))
    methods = [hired.HiRED(budget=0.3), hired.HiRED(budget=0.3, score="received")]
    runs = [viz.run_method(model, processor, image, m) for m in methods]
    assert [r.kind for r in runs] == ["cls", "received"]  # from the applied state: "auto" is [CLS] on CLIP
    fig = viz.plot_selection(
        image, [r.selection for r in runs], scores=[r.scores for r in runs], score_kind=[r.kind for r in runs]
    )
    lines = [t.get_text() for t in fig.texts if " the method used (" in t.get_text()]
    assert len(lines) == 2
    assert lines[0].startswith("[CLS] attention") and lines[1].startswith("received attention")
    unknown = viz.plot_selection(image, runs[0].selection, scores=runs[0].scores)
    assert any(t.get_text().startswith("attention scores the method used") for t in unknown.texts)
    with pytest.raises(ValueError, match="score_kind must be"):
        viz.plot_selection(image, runs[0].selection, scores=runs[0].scores, score_kind="max")
    with pytest.raises(ValueError, match="2 score kinds for 1 selections"):
        viz.plot_selection(image, runs[0].selection, scores=runs[0].scores, score_kind=["cls", "cls"])


def test_last_scores_match_the_selection(next_pair):
    model, processor = next_pair
    image = demo_image((120, 120))
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    try:
        assert hired.last_scores(model) == []
        inputs = processor(
            images=[image, demo_image((100, 300))], text=["<image> a", "<image> b"], return_tensors="pt", padding=True
        )
        with torch.no_grad():
            model(**inputs)
        sels, scores = hired.last_selection(model), hired.last_scores(model)
    finally:
        hired.remove(model, processor)
    assert len(scores) == len(sels) == 2
    for sel, sc in zip(sels, scores):
        assert set(sc) == {"budget", "select"}
        assert sc["select"].shape == (len(sel.partitions), 36) and sc["select"].dtype == torch.float32
        for k, part in enumerate(sel.partitions):  # kept = top-k of the select scores over valid patches
            top = torch.sort(sc["select"][k], descending=True, stable=True).indices[: part.budget]
            if part.valid == 36:
                assert sorted(top.tolist()) == part.kept


def test_selection_for_another_image_is_refused(next_pair):
    model, processor = next_pair
    run = viz.run_method(model, processor, demo_image((120, 120)), hired.HiRED())
    with pytest.raises(ValueError, match="made on a 120x120 image"):
        viz.plot_selection(demo_image((100, 300)), run.selection)
    with pytest.raises(ValueError, match="needs scores"):
        viz.plot_selection(demo_image((120, 120)), run.selection, heatmap=True)


def test_cli_writes_a_png(model_dir, tmp_path, monkeypatch, capsys):
    figures = []
    plot = viz.plot_selection

    def spy(*args, **kwargs):
        figures.append((args, kwargs, plot(*args, **kwargs)))
        return figures[-1][2]

    monkeypatch.setattr(viz, "plot_selection", spy)
    image = tmp_path / "wide.png"
    demo_image((100, 300)).save(image)
    out = tmp_path / "figs" / "sel.png"
    argv = [
        "show",
        "--model",
        model_dir,
        "--image",
        str(image),
        "--out",
        str(out),
        "--budget",
        "0.3",
        "--method",
        "hired,hired:mapping=reference",
        "--heatmap",
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as png:
        png.verify()
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 600 and png.height > 400

    ((args, kwargs, fig),) = figures
    sels = args[1]
    assert [s.grid for s in sels] == [(1, 3), (1, 3)]
    assert len(_axes(fig, "hired-partition-")) == 2 * 4
    assert len(_boxes(fig, "hired-kept")) == sum(s.num_kept for s in sels)
    assert len(_axes(fig, "hired-heatmap-")) == 2 * (4 + 1)


def test_cli_tall_grid_without_heatmap(model_dir, tmp_path, capsys):
    image = tmp_path / "tall.jpg"
    demo_image((300, 100)).save(image)
    out = tmp_path / "tall.png"
    assert main(["show", "--model", model_dir, "--image", str(image), "--out", str(out)]) == 0
    assert "3x1 grid" in capsys.readouterr().out
    with Image.open(out) as png:
        png.verify()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.png", "image not found"),
        (lambda p: (p / "junk.png").write_bytes(b"not an image") and p / "junk.png", "cannot decode image"),
        (lambda p: (p / "empty.png").write_bytes(b"") or p / "empty.png", "empty"),
    ],
)
def test_cli_bad_image(tmp_path, capsys, make, message):
    image = make(tmp_path)
    out = tmp_path / "x.png"
    assert main(["show", "--model", "unused", "--image", str(image), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_bad_arguments(tmp_path, capsys):
    image = tmp_path / "ok.png"
    demo_image((60, 60)).save(image)
    assert main(["show", "--model", "unused", "--image", str(image), "--out", str(tmp_path / "x.nope")]) == 2
    assert "cannot write a 'nope' figure" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown method 'nosuch'"):
        main(["show", "--model", "unused", "--image", str(image), "--out", "x.png", "--method", "hired,nosuch"])
    with pytest.raises(SystemExit, match="no chosen method has the option frobnicate"):
        main(["show", "--model", "unused", "--image", str(image), "--out", "x.png", "--option", "frobnicate=1"])


def test_cli_without_matplotlib(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.patches", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(SystemExit, match=r"pip install 'hired-vlm\[viz\]'"):
        main(["show", "--model", "unused", "--image", "x.png", "--out", str(tmp_path / "x.png")])


def test_methods_from_args_share_and_override_options():
    args = SimpleNamespace(
        method="hired, hired:mapping=reference:alpha=0.9", budget=0.3, alpha=0.4, option=["budget_layer=1"]
    )
    a, b = methods_from_args(args)
    assert (a.budget, a.alpha, a.budget_layer, a.mapping) == (0.3, 0.4, 1, "2d")
    assert (b.budget, b.alpha, b.budget_layer, b.mapping) == (0.3, 0.9, 1, "reference")
    assert viz.method_label(b) == "hired(budget=0.3, alpha=0.9, budget_layer=1, mapping='reference')"
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        methods_from_args(SimpleNamespace(method="hired:alpha", budget=None, alpha=None, option=None))


def test_importing_hired_leaves_matplotlib_alone():
    code = "import sys, hired, hired.viz, hired.cli; hired.cli.build_parser(); print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
