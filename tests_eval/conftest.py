"""Fixtures of the lmms-eval tests: a tiny local model folder and the local ``hired_easyvqa`` task.

Everything is built on the spot; the hub is switched off for this process and every child it starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from easyvqa import build_task  # noqa: E402

NUM_DOCS = 10


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random-weight LLaVA-NeXT written with ``hired.testing.save_tiny``."""
    from hired.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llava-next", "llava_next")


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    """The ``hired_easyvqa`` task (YAML, helpers, parquet data) for lmms-eval's ``--include_path``."""
    return build_task(tmp_path_factory.mktemp("tasks") / "hired_easyvqa", num_docs=NUM_DOCS)


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """An empty Hugging Face cache for the lmms-eval runs (datasets caches the parquet file there)."""
    return tmp_path_factory.mktemp("hf_home")
