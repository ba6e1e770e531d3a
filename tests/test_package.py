"""The installed distribution: its name, version and entry points (what ``pip install hired-vlm`` gives)."""

from __future__ import annotations

from importlib.metadata import distribution

import hired

DIST = "hired-vlm"


def test_distribution_name_and_version():
    dist = distribution(DIST)
    assert dist.metadata["Name"] == DIST
    assert dist.version == hired.__version__


def test_entry_points_belong_to_the_distribution():
    points = {(ep.group, ep.name): ep.value for ep in distribution(DIST).entry_points}
    assert points[("console_scripts", "hired")] == "hired.cli:main"
    assert points[("vllm.general_plugins", "hired")] == "hired.vllm:register"
    assert points[("lmms_eval.models", "hired_llava")] == "hired.eval.lmms:lmms_eval_models"


def test_extras_name_the_distribution_itself():
    requires = distribution(DIST).requires or []
    own = [r for r in requires if r.replace(" ", "").startswith("hired")]
    assert own and all(r.replace(" ", "").startswith(f"{DIST}[") for r in own), own
