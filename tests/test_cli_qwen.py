"""``hired generate`` and ``hired bench`` on saved tiny Qwen2.5-VL and Qwen3-VL folders (offline); ``hired
show`` refuses them.

Qwen2.5-VL's processor loads a video processor that imports torchvision (``pip install "hired-vlm[qwen]"``);
the tests that build one skip where torchvision is not importable (CI requires it: conftest.require_torchvision).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import generate_compare, load_without_torchvision, require_torchvision
from PIL import Image

from hired.cli import main
from hired.cli.common import CommandError
from hired.loading import load_model, model_class_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def qwen_dir(request, tmp_path_factory):
    """A tiny Qwen2.5-VL (patch 14), Qwen3-VL (patch 16, DeepStack) or Qwen3.5 (hybrid decoder), 2x2 merge, at most 64 merged tokens
    per image, saved with ``save_pretrained``."""
    require_torchvision()
    from hired.testing import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("qwen") / f"tiny-{request.param}", family=request.param))


def _merged_tokens(folder: str, image: Image.Image) -> int:
    """The stock placeholder count of one image: ``t * h * w / merge**2`` of the processor's ``image_grid_thw``."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    t, h, w = processor.image_processor(images=image, return_tensors="pt")["image_grid_thw"][0].tolist()
    return t * h * w // 4


def test_config_picks_the_qwen_classes(qwen_dir):
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(qwen_dir)
    prefix = {"qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL", "qwen3_5": "Qwen3_5"}[config.model_type]
    expected = getattr(transformers, f"{prefix}ForConditionalGeneration")
    family, cls = model_class_for(config)
    assert (family.name, cls) == (config.model_type, expected)
    model, processor = load_model(qwen_dir)
    assert type(model) is expected and not model.training
    processor_prefix = "Qwen3VL" if prefix == "Qwen3_5" else prefix  # Qwen3.5 uses Qwen3-VL's processor
    assert isinstance(processor, getattr(transformers, f"{processor_prefix}Processor"))


def test_qwen_without_torchvision_is_one_clear_error(tmp_path, monkeypatch):
    """The processor is loaded first, so a missing torchvision fails before the weights are read."""
    from transformers import Qwen2_5_VLConfig

    with pytest.raises(ImportError, match=r'Qwen2.5-VL.s processor needs torchvision.*pip install "hired-vlm\[qwen\]"'):
        load_without_torchvision(Qwen2_5_VLConfig(), tmp_path / "qwen-config-only", monkeypatch)


@pytest.mark.parametrize("size", [(120, 260), (300, 300)])
def test_generate_prints_the_qwen_counts(qwen_dir, tmp_path, size, capsys, one_thread):
    out = generate_compare(qwen_dir, tmp_path, size, capsys)
    stock = _merged_tokens(qwen_dir, Image.open(tmp_path / "photo.png"))
    kept = math.floor(0.25 * stock)
    assert f"visual tokens: {stock}," in out  # the stock run's placeholders
    assert f"visual tokens: {stock} -> {kept} (" in out
    assert f"kept per partition (full image first; kept/valid): {kept}/{stock}" in out


def test_show_refuses_qwen_before_running_it(qwen_dir, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (200, 120), (10, 200, 90)).save(image)
    out = tmp_path / "show.png"
    with pytest.raises(
        CommandError, match=r"hired show draws LLaVA partitions; Qwen(2\.5-VL|3-VL|3\.5) images are one grid"
    ):
        main(["show", "--model", qwen_dir, "--image", str(image), "--out", str(out)])
    assert not out.exists()
    assert "hired: error: hired show draws LLaVA partitions" in capsys.readouterr().err


def test_plot_selection_refuses_a_merged_token_grid(qwen_dir):
    pytest.importorskip("matplotlib")
    import hired
    from hired import viz

    model, processor = load_model(qwen_dir)
    image = Image.new("RGB", (260, 120), (10, 200, 90))
    run = viz.run_method(model, processor, image, hired.HiRED(budget=0.3))
    with pytest.raises(ValueError, match=r"draws square partitions.*one \d+x\d+ grid of merged tokens"):
        viz.plot_selection(image, run.selection)


def test_bench_runs_a_qwen_folder(qwen_dir, tmp_path, one_thread):
    report = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                qwen_dir,
                "--methods",
                "hired",
                "--budgets",
                "0.25",
                "--batch-sizes",
                "1",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--new-tokens",
                "2",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    rows = {r["label"]: r for r in json.loads(report.read_text())["rows"]}
    n = rows["full"]["stock_tokens_per_image"]
    assert n == _merged_tokens(qwen_dir, _bench_image())
    assert rows["full"]["tokens_per_image"] == [n]
    assert rows["hired"]["tokens_per_image"] == rows["oracle(hired)"]["tokens_per_image"] == [math.floor(0.25 * n)]


def _bench_image():
    from hired.inference import demo_image

    return demo_image((600, 600))
