"""The `hired` command on a tiny local model folder (no download)."""

import pytest
from PIL import Image

from hired.cli import main
from hired.images import load_image
from hired.testing import save_tiny


def test_generate_prints_answer_and_token_counts(model_dir, image_path, capsys):
    rc = main(
        [
            "generate",
            "--model",
            model_dir,
            "--image",
            image_path,
            "--prompt",
            "What is this?",
            "--budget",
            "0.25",
            "--alpha",
            "0.5",
            "--max-new-tokens",
            "3",
            "--compare",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "[all tokens]" in out and "[hired]" in out
    # 120x260 on the tiny model: 1x3 grid, P = 4, T = 36 → floor(0.25 * 144) = 36 kept tokens
    assert "-> 36 (" in out
    assert "kept per partition" in out


def test_generate_on_llava_1_5_folder(tmp_path, image_path, capsys):
    folder = save_tiny(tmp_path / "llava", family="llava")
    assert (
        main(
            [
                "generate",
                "--model",
                str(folder),
                "--image",
                image_path,
                "--prompt",
                "hi",
                "--budget",
                "0.5",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    assert "36 -> 18 (" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--image", "missing.png"], "image not found"),
        (["--budget", "1.5"], "budget must be in (0, 1]"),
        (["--alpha", "-0.5"], "alpha must be in [0, 1]"),
        (["--method", "nope"], "unknown method"),
        (["--option", "budget_layer=99"], "out of range"),
    ],
)
def test_generate_bad_input_is_one_clear_error(model_dir, image_path, argv, message, capsys):
    args = ["generate", "--model", model_dir, "--image", image_path, "--prompt", "hi", *argv]
    try:
        rc = main(args)
    except SystemExit as exc:
        rc, text = 2, str(exc)
    else:
        text = capsys.readouterr().err
    assert rc != 0
    assert message in text


def test_load_image_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="empty"):
        load_image(empty)
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(junk)
    with pytest.raises(ValueError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))


def test_demo_runs_offline(tmp_path, capsys):
    figure = tmp_path / "demo.png"
    assert main(["demo", "--max-new-tokens", "2", "--out", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "stock LLaVA-NeXT" in out and "HiRED 20% budget" in out
    timed = [line for line in out.splitlines() if " visual tokens, " in line]
    assert len(timed) == 2 and all("s (median of 3)" in line for line in timed)  # warmed-up medians only
    assert figure.stat().st_size > 0


def test_methods_lists_hired(capsys):
    assert main(["methods"]) == 0
    assert "hired" in capsys.readouterr().out
