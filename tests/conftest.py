"""Shared fixtures: tiny random-weight LLaVA models built once per session, kept stock between tests.

Session models are expensive-ish to build (~1 s each), so they are shared. Every test that applies
hired to one of them must get it through the function-scoped ``llava_next`` / ``llava`` /
``llava_next_eager`` fixtures: their teardown removes any method still applied and then checks that
no hired attribute survived on the model or the processor, so no test can leak state into the next.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

import hired
from hired.testing import save_tiny, tiny_llava, tiny_llava_next

# property tests check results, not speed: no per-example deadline (CI machines may be busy)
settings.register_profile("hired", deadline=None)
settings.load_profile("hired")

_PATCHED_ATTRS = ("get_image_features", "get_placeholder_mask", "_hired_state")
_PROC_ATTRS = (
    "replace_image_token",
    "_process_images",
    "_process_videos",
    "get_text_with_replacements",
    "_hired_state",
)


def make_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """A deterministic random RGB image of height ``h`` and width ``w``."""
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny LLaVA-NeXT saved with ``save_pretrained`` (for the command-line tests)."""
    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "llava-next"))


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A random 120x260 PNG on disk."""
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (120, 260, 3), np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="session")
def image_factory():
    """``image_factory(h, w, seed=0)`` → deterministic random PIL image."""
    return make_image


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the runs of ``token_id`` in ``input_ids``, row by row, left to right (one per image
    when images are separated by other tokens)."""
    runs = []
    for row in input_ids.tolist():
        n = 0
        for tok in row + [None]:
            if tok == token_id:
                n += 1
            elif n:
                runs.append(n)
                n = 0
    return runs


def last_record(model):
    """The calling thread's last vision step on ``model`` (layouts, selection, scores): adapter internals."""
    from hired.adapters.context import recall
    from hired.adapters.transformers import applied_state

    return recall(applied_state(model))


def leftovers(model, processor) -> list[str]:
    inner = model.model
    left = [f"model.{a}" for a in _PATCHED_ATTRS if a in inner.__dict__]
    left += [f"processor.{a}" for a in _PROC_ATTRS if a in processor.__dict__]
    left += [
        f"hired hook on {name or 'model'}"
        for name, m in model.named_modules()
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
        if _is_hired(hook)
    ]
    return left


def _is_hired(hook) -> bool:
    fn = getattr(hook, "func", hook)  # functools.partial
    return getattr(fn, "__module__", "").startswith("hired")


def _clean(model, processor) -> None:
    """Teardown: remove whatever is still applied, then insist that the pair is stock again."""
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)
    left = leftovers(model, processor)
    # force the pair back to stock so later tests are not poisoned, then report the leak
    for attr in _PATCHED_ATTRS:
        model.model.__dict__.pop(attr, None)
    for attr in _PROC_ATTRS:
        processor.__dict__.pop(attr, None)
    assert not left, f"hired state leaked past remove(): {left}"


@pytest.fixture(scope="session")
def _llava_next_session():
    with torch.no_grad():
        return tiny_llava_next(seed=0)


@pytest.fixture(scope="session")
def _llava_next_eager_session():
    with torch.no_grad():
        return tiny_llava_next(seed=0, attn_implementation="eager")


@pytest.fixture(scope="session")
def _llava_session():
    with torch.no_grad():
        return tiny_llava(seed=0)


def _kept_stock(pair):
    """Yield a shared ``(model, processor)`` pair, checking it is stock before and after the test."""
    model, processor = pair
    _clean(model, processor)
    yield model, processor
    _clean(model, processor)


@pytest.fixture
def llava_next(_llava_next_session):
    """The shared tiny LLaVA-NeXT (sdpa) ``(model, processor)``, guaranteed stock before and after."""
    yield from _kept_stock(_llava_next_session)


@pytest.fixture
def llava_next_eager(_llava_next_eager_session):
    """The shared tiny LLaVA-NeXT with eager attention, same weights as ``llava_next``."""
    yield from _kept_stock(_llava_next_eager_session)


@pytest.fixture
def llava(_llava_session):
    """The shared tiny LLaVA-1.5 ``(model, processor)``, guaranteed stock before and after."""
    yield from _kept_stock(_llava_session)


@pytest.fixture
def models(request, next_pair, llava_pair):
    """``(model, processor, newline)`` of the tiny family named by the indirect parameter
    (``"llava_next"`` or ``"llava"``); removes what the test applied."""
    model, processor = next_pair if request.param == "llava_next" else llava_pair
    yield model, processor, request.param == "llava_next"
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)


@pytest.fixture(scope="session")
def next_pair(_llava_next_session):
    """The session's tiny LLaVA-NeXT ``(model, processor)``; tests using it must leave it stock."""
    return _llava_next_session


@pytest.fixture(scope="session")
def llava_pair(_llava_session):
    """The session's tiny LLaVA-1.5 ``(model, processor)``; tests using it must leave it stock."""
    return _llava_session


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a CPU shared with other jobs, two threads stall each other on tiny ops."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generate_compare(model: str, folder, size: tuple[int, int], capsys) -> str:
    """``hired generate --compare`` (HiRED at budget 0.25, 2 new tokens) on a flat ``size = (height, width)``
    image saved in ``folder``; checks both runs printed and returns the output."""
    from hired.cli import main

    image = folder / "photo.png"
    Image.new("RGB", (size[1], size[0]), (200, 40, 90)).save(image)
    rc = main(
        [
            "generate",
            "--model",
            model,
            "--image",
            str(image),
            "--prompt",
            "What is this?",
            "--budget",
            "0.25",
            "--max-new-tokens",
            "2",
            "--compare",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "[all tokens]" in out and "[hired]" in out
    return out


def load_without_torchvision(config, folder, monkeypatch) -> None:
    """Save ``config`` alone in ``folder`` (no weights: loading them would fail otherwise) and ``load_model``
    it with ``import torchvision`` failing."""
    import sys

    from hired.loading import load_model

    config.save_pretrained(folder)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision → ImportError
    load_model(str(folder))


def require_torchvision() -> None:
    """Skip the calling test where torchvision is not importable (LLaVA-OneVision's and Qwen2.5-VL's
    processors load a video processor built on it: ``hired-vlm[onevision]``). With ``HIRED_REQUIRE_TORCHVISION=1``
    (CI sets it) a missing torchvision fails the test instead, so CI can never pass by skipping them."""
    if os.environ.get("HIRED_REQUIRE_TORCHVISION") == "1":
        import torchvision  # noqa: F401
    else:
        pytest.importorskip(
            "torchvision", reason='these processors need torchvision: pip install "hired-vlm[onevision]"'
        )


@pytest.fixture(scope="session")
def _onevision_session():
    require_torchvision()
    from hired.testing import tiny_llava_onevision

    with torch.no_grad():
        return tiny_llava_onevision(seed=0)


@pytest.fixture(scope="session")
def _onevision_eager_session():
    require_torchvision()
    from hired.testing import tiny_llava_onevision

    with torch.no_grad():
        return tiny_llava_onevision(seed=0, attn_implementation="eager")


@pytest.fixture
def onevision(_onevision_session):
    """The shared tiny LLaVA-OneVision (SigLIP, sdpa) ``(model, processor)``, stock before and after."""
    yield from _kept_stock(_onevision_session)


@pytest.fixture
def onevision_eager(_onevision_eager_session):
    """The shared tiny LLaVA-OneVision with eager attention, same weights as ``onevision``."""
    yield from _kept_stock(_onevision_eager_session)


@pytest.fixture(scope="session")
def _internvl_session():
    require_torchvision()
    from hired.testing import tiny_internvl

    with torch.no_grad():
        return tiny_internvl(seed=0)


@pytest.fixture
def internvl(_internvl_session):
    """The shared tiny InternVL (112 px tiles, 16 tokens each, up to 6 tiles plus a thumbnail; sdpa)
    ``(model, processor)``, stock before and after."""
    yield from _kept_stock(_internvl_session)
