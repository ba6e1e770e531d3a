"""``hired generate``, ``hired show`` and ``hired bench`` on a saved tiny LLaVA-OneVision folder (offline).

OneVision's processor loads a video processor that imports torchvision (``pip install "hired-vlm[onevision]"``);
the tests that build one skip where torchvision is not importable (CI requires it: conftest.require_torchvision).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import generate_compare, load_without_torchvision, require_torchvision
from PIL import Image

import hired
from hired.cli import main
from hired.families import get_family
from hired.loading import load_model, model_class_for
from hired.testing import save_tiny


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory):
    """A tiny LLaVA-OneVision (SigLIP without [CLS], 84 px crops of 14 px patches, grids up to 3x3,
    anyres_max_4) saved with ``save_pretrained``."""
    require_torchvision()
    return str(save_tiny(tmp_path_factory.mktemp("ov") / "tiny-onevision", family="onevision"))


def _layout(folder: str, size: tuple[int, int]):
    """The OneVision family's layout of an image of ``size = (height, width)`` on the saved model's config."""
    from transformers import AutoConfig

    family = get_family("onevision")
    return family, family.layout(size, family.geometry(AutoConfig.from_pretrained(folder)))


def test_config_picks_the_onevision_classes(ov_dir):
    from transformers import AutoConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    config = AutoConfig.from_pretrained(ov_dir)
    family, cls = model_class_for(config)
    assert (family.name, cls) == ("onevision", LlavaOnevisionForConditionalGeneration)
    model, processor = load_model(ov_dir)
    assert type(model) is LlavaOnevisionForConditionalGeneration and not model.training
    assert isinstance(processor, LlavaOnevisionProcessor)


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"'bert' model; supported model types: ") as err:
        load_model(str(folder))
    assert {"llava", "llava_next", "llava_onevision"} <= set(str(err.value).split(": ")[-1].split(", "))


def test_onevision_without_torchvision_is_one_clear_error(tmp_path, monkeypatch):
    """The processor is loaded first, so a missing torchvision fails before the weights are read."""
    from transformers import LlavaOnevisionConfig

    with pytest.raises(ImportError, match=r'needs torchvision.*pip install "hired-vlm\[onevision\]"'):
        load_without_torchvision(LlavaOnevisionConfig(), tmp_path / "ov-config-only", monkeypatch)


@pytest.mark.parametrize("size", [(120, 260), (300, 300)])
def test_generate_prints_the_onevision_counts(ov_dir, tmp_path, size, capsys, one_thread):
    out = generate_compare(ov_dir, tmp_path, size, capsys)
    family, layout = _layout(ov_dir, size)
    kept = math.floor(0.25 * layout.num_partitions * layout.tokens)  # taken of the patches before interpolation
    stock = family.stock_tokens(layout)
    assert f"visual tokens: {stock}," in out  # the stock run's placeholders
    assert f"visual tokens: {stock} -> {kept} (" in out
    assert f"{layout.grid[0]}x{layout.grid[1]} grid" in out


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def test_show_heatmap_names_the_received_score(ov_dir, tmp_path, monkeypatch, capsys, one_thread):
    from hired import viz

    figures = []
    plot = viz.plot_selection

    def spy(*args, **kwargs):
        figures.append(plot(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(viz, "plot_selection", spy)
    image = tmp_path / "photo.png"
    Image.new("RGB", (260, 120), (10, 200, 90)).save(image)
    out = tmp_path / "show.png"
    assert (
        main(
            [
                "show",
                "--model",
                ov_dir,
                "--image",
                str(image),
                "--out",
                str(out),
                "--budget",
                "0.3",
                "--method",
                "hired,spatial",
                "--heatmap",
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert printed.count("patches kept") == 2
    (fig,) = figures
    texts = _texts(fig)
    assert any(t.startswith("received attention the method used") for t in texts)
    assert not any("[CLS] attention" in t for t in texts)
    assert "(this method reads no attention scores)" in texts  # spatial reads none


def test_show_heatmap_says_cls_on_a_cls_tower(model_dir, image_path, tmp_path, monkeypatch, one_thread):
    from hired import viz

    figures = []
    plot = viz.plot_selection
    monkeypatch.setattr(viz, "plot_selection", lambda *a, **k: figures.append(plot(*a, **k)) or figures[-1])
    assert (
        main(["show", "--model", model_dir, "--image", image_path, "--out", str(tmp_path / "s.png"), "--heatmap"]) == 0
    )
    texts = _texts(figures[0])
    assert any(t.startswith("[CLS] attention the method used") for t in texts)
    assert not any(t.startswith("received attention") for t in texts)


def test_bench_on_a_onevision_folder(ov_dir, tmp_path, capsys):
    args = [
        "bench",
        "--model",
        ov_dir,
        "--budgets",
        "0.5,0.2",
        "--batch-sizes",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--new-tokens",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["meta"]["model_class"] == "LlavaOnevisionForConditionalGeneration"
    assert result["meta"]["family"] == "onevision"
    assert "the attention each patch receives" in out
    rows = result["rows"]
    assert [r["kind"] for r in rows] == ["full"] + ["method", "oracle", "reference"] * 2
    family, layout = _layout(ov_dir, (600, 600))
    stock = family.stock_tokens(layout)
    assert rows[0]["tokens_per_image"] == [stock] and rows[0]["stock_tokens_per_image"] == stock
    for budget in (0.5, 0.2):
        method, orc, ref = [r for r in rows if r["budget"] == budget]
        kept = math.floor(budget * layout.num_partitions * layout.tokens)
        assert method["kept_per_image"] == ref["kept_per_image"] == [kept]
        assert orc["features_per_image"] == orc["tokens_per_image"] == method["tokens_per_image"] == [kept]
        assert method["score_kind"] == ref["score_kind"] == "received"
    assert hired.__version__ in out
