"""``hired generate``, ``hired show`` and ``hired bench`` on a saved tiny InternVL folder (offline): 112 px
tiles of 14 px patches, a 0.5 pixel shuffle (16 tokens per tile), 1 to 6 tiles plus a thumbnail.

InternVL's processor loads a video processor that imports torchvision (``pip install "hired-vlm[internvl]"``);
the tests that build one skip where torchvision is not importable (CI requires it: conftest.require_torchvision).
Stock counts come from the saved processor's own placeholders.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import generate_compare, load_without_torchvision, require_torchvision
from PIL import Image

from hired.cli import main
from hired.loading import load_model, model_class_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 16  # tokens per tile
TILE = 112


@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory):
    require_torchvision()
    from hired.testing import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("internvl") / "tiny-internvl", family="internvl"))


def _stock_tokens(folder: str, image: Image.Image) -> int:
    """The stock processor's context tokens for one image (``image_seq_length`` per tile, thumbnail included)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    ids = processor(images=image, text=processor.image_token, return_tensors="pt")["input_ids"]
    return int((ids == processor.image_token_id).sum())


def test_config_picks_the_internvl_classes(internvl_dir):
    from transformers import AutoConfig, InternVLForConditionalGeneration, InternVLProcessor

    family, cls = model_class_for(AutoConfig.from_pretrained(internvl_dir))
    assert (family.name, cls) == ("internvl", InternVLForConditionalGeneration)
    model, processor = load_model(internvl_dir)
    assert type(model) is InternVLForConditionalGeneration and not model.training
    assert isinstance(processor, InternVLProcessor)


def test_internvl_without_torchvision_is_one_clear_error(tmp_path, monkeypatch):
    """The processor is loaded first, so a missing torchvision fails before the weights are read."""
    from transformers import InternVLConfig

    with pytest.raises(
        ImportError, match=r'InternVL.s processor needs torchvision.*pip install "hired-vlm\[internvl\]"'
    ):
        load_without_torchvision(InternVLConfig(), tmp_path / "internvl-config-only", monkeypatch)


@pytest.mark.parametrize("size, grid", [((120, 260), (1, 2)), ((300, 300), (2, 2)), ((90, 90), (0, 0))])
def test_generate_prints_the_internvl_counts(internvl_dir, tmp_path, size, grid, capsys, one_thread):
    out = generate_compare(internvl_dir, tmp_path, size, capsys)
    stock = _stock_tokens(internvl_dir, Image.open(tmp_path / "photo.png"))
    assert stock == T * (grid[0] * grid[1] + 1 if grid[0] else 1)  # the tiles and the thumbnail
    kept = math.floor(0.25 * stock)
    assert f"visual tokens: {stock}," in out  # the stock run's placeholders
    assert f"visual tokens: {stock} -> {kept} (" in out
    if grid[0]:
        assert f"{grid[0]}x{grid[1]} grid" in out


def test_show_draws_the_thumbnail_and_the_tiles(internvl_dir, tmp_path, monkeypatch, capsys, one_thread):
    """One panel per partition (the thumbnail, then the tiles), drawn at the tile's size in pixels, on a
    canvas the image fills (no padding); every kept token drawn once per panel and on the composite."""
    pytest.importorskip("matplotlib")
    from hired import viz

    calls = []
    plot = viz.plot_selection

    def spy(*args, **kwargs):
        calls.append((args, kwargs, plot(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(viz, "plot_selection", spy)
    image = tmp_path / "wide.png"
    Image.new("RGB", (330, 150), (10, 200, 90)).save(image)  # 1x2 tiles (+ thumbnail) of a 330x150 image
    out = tmp_path / "show.png"
    argv = ["show", "--model", internvl_dir, "--image", str(image), "--out", str(out), "--budget", "0.4", "--heatmap"]
    assert main([*argv, "--method", "hired,dart"]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG"
    printed = capsys.readouterr().out
    assert printed.count("1x2 grid, 19 patches kept") == 2  # floor(0.4 * 3 * 16)
    ((args, kwargs, fig),) = calls
    assert kwargs["patch_size"] == 2 * 14 and kwargs["stretched"] is True  # 4 merged tokens a side = 112 px
    sels = args[1]
    assert sum((ax.get_gid() or "").startswith("hired-partition-") for ax in fig.axes) == 2 * 3
    boxes = [p.get_gid() for ax in fig.axes for p in ax.patches]
    assert boxes.count("hired-kept") == boxes.count("hired-composite-kept") == sum(s.num_kept for s in sels)


def test_stretched_layout_is_the_whole_canvas(internvl_dir):
    """InternVL stretches the image over its tiles: every tile token is valid and the canvas is the image
    resized onto the tiles (LLaVA-NeXT's padded layout does not fit such a selection)."""
    import hired
    from hired import viz
    from hired.viz.geometry import canvas_image, selection_layout, sub_rects

    model, processor = load_model(internvl_dir)
    image = Image.new("RGB", (500, 40), (10, 200, 90))  # flatter than the widest grid, 1x6 tiles
    run = viz.run_method(model, processor, image, hired.HiRED(budget=1.0))
    sel = run.selection
    assert sel.grid == (1, 6) and all(p.valid == T for p in sel.partitions)
    layout = selection_layout(sel, stretched=True)
    assert (layout.top, layout.bottom, layout.left, layout.right) == (0, 4, 0, 24)
    assert canvas_image(image, layout, TILE, stretched=True).size == (6 * TILE, TILE)
    rects = [r for k, p in enumerate(sel.partitions[1:]) for r in sub_rects(p.kept, k, layout, image.size)]
    assert sum(w * h for *_, w, h in rects) == pytest.approx(500 * 40)  # the kept tiles cover the whole image
    with pytest.raises(ValueError, match="valid patch counts do not match"):
        selection_layout(sel)


def test_bench_runs_an_internvl_folder(internvl_dir, tmp_path, one_thread):
    report = tmp_path / "bench.json"
    argv = ["bench", "--model", internvl_dir, "--methods", "hired", "--budgets", "0.25", "--batch-sizes", "1"]
    argv += ["--runs", "1", "--warmup", "0", "--new-tokens", "2", "--no-progress", "--json", str(report)]
    assert main(argv) == 0
    result = json.loads(report.read_text())
    assert result["meta"]["model_class"] == "InternVLForConditionalGeneration"
    rows = {r["label"]: r for r in result["rows"]}
    n = rows["full"]["stock_tokens_per_image"]
    from hired.inference import demo_image

    assert n == _stock_tokens(internvl_dir, demo_image((600, 600)))
    assert rows["full"]["tokens_per_image"] == [n]
    assert rows["hired"]["tokens_per_image"] == rows["oracle(hired)"]["tokens_per_image"] == [math.floor(0.25 * n)]
