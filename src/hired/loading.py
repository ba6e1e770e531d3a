"""Loading a model and its processor from a local folder or a hub id: the checks that fail fast with one
clear message (``ValueError`` for a model that is not there or not supported, ``ImportError`` for a missing
optional dependency), the model class of a config, and the ``--dtype`` names.

torch, transformers and huggingface_hub are imported when used.
"""

from __future__ import annotations

import os
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The dtype names :func:`torch_dtype` takes; ``auto`` is float16 on CUDA, float32 elsewhere."""


def torch_dtype(name: str, device: str):
    """The torch dtype of a ``--dtype`` name (``auto``: float16 on CUDA, float32 elsewhere)."""
    import torch

    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


_TRUE = ("1", "true", "yes", "on")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def looks_like_path(model: str) -> bool:
    """Whether ``--model`` text names a local folder rather than a hub id ``org/name``: it starts with
    ``./``, ``../``, ``/`` or ``~``, has no ``/`` or more than one, has a backslash, or its first part is a
    local folder."""
    if model in (".", "..") or model.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        return True
    if "\\" in model or (os.sep != "/" and os.sep in model) or model.count("/") != 1:
        return True
    org, name = model.split("/")
    return not org or not name or Path(org).is_dir()


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (one quick TCP connection), or ``None`` if it can.

    With a proxy configured the check is left to the download itself (``None``)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{constants.ENDPOINT}: {err.strerror or err}"
    return None


def resolve_model(model: str) -> tuple[str, dict]:
    """``(source, from_pretrained kwargs)`` for ``--model``: a local folder, or a hub id ``org/name``.

    Fails fast with a ``ValueError`` for a path that does not exist ("no such model folder"), a
    file or a folder without ``config.json``, and for a hub id that is not in the local cache when
    ``HF_HUB_OFFLINE`` is set or the hub cannot be reached (instead of transformers' retries). A cached
    hub id with no hub in reach loads from the cache (``local_files_only``).
    """
    text = str(model).strip()
    if not text:
        raise ValueError("--model is empty: give a local model folder or a hub id org/name")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"--model {text} is a file, not a model folder (the output of save_pretrained)")
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {text} is not a model folder: it has no config.json")
        return str(path), {}
    if looks_like_path(text):
        hint = "" if "/" in text else " (a hub id has the form org/name)"
        raise ValueError(f"no such model folder: {text}{hint}")
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(text, "config.json"), str)
    if cached and _offline():
        return text, {"local_files_only": True}
    if _offline():
        raise ValueError(
            f"no such model folder: {text}, and HF_HUB_OFFLINE is set while the hub id {text} is not in the "
            "local Hugging Face cache; unset HF_HUB_OFFLINE to download it, or give a local model folder"
        )
    why = hub_unreachable()
    if why is not None:
        if cached:
            return text, {"local_files_only": True}
        raise ValueError(
            f"no such model folder: {text}, and the Hugging Face hub cannot be reached to download it "
            f"({why}); check the network, or give a local model folder"
        )
    return text, {}


def model_class_for(config, source: str = "the model"):
    """``(family, transformers model class)`` for a loaded ``config``, found through :mod:`hired.families`
    (the class of a family whose config's ``model_type`` is ``config.model_type`` and that holds the
    inner model: ``LlavaNextForConditionalGeneration``, ``LlavaForConditionalGeneration``,
    ``LlavaOnevisionForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
    ``Qwen3VLForConditionalGeneration``, ...). ``ValueError`` naming the supported types otherwise."""
    from hired.families import FAMILIES

    known = {}
    for family in FAMILIES.values():
        for cls, attr in family.model_classes().items():
            if attr is None:  # the inner model class (LlavaNextModel, ...): it has no language-model head
                continue
            model_type = getattr(cls.config_class, "model_type", None)
            known[model_type] = (family, cls)
    found = known.get(getattr(config, "model_type", None))
    if found is None:
        raise ValueError(
            f"{source} is a {getattr(config, 'model_type', None)!r} model; supported model types: "
            f"{', '.join(sorted(known))}"
        )
    return found


def need_torchvision(family, what: str = "") -> None:
    """One clear ``ImportError`` (``what``: its prefix) saying what to install when ``family``'s processor
    imports torchvision (``Family.torchvision_extra``) and it is not importable."""
    if family.torchvision_extra is None:
        return
    try:
        import torchvision  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"{what}{family.title}'s processor needs torchvision (its video processor imports it): "
            f'pip install "hired-vlm[{family.torchvision_extra}]"'
        ) from err


def load_processor(source: str, family, **kwargs):
    """``AutoProcessor.from_pretrained(source)``; for LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL, whose
    processors load a video processor built on torchvision, a missing torchvision is one clear
    ``ImportError`` saying what to install."""
    from transformers import AutoProcessor

    need_torchvision(family)
    return AutoProcessor.from_pretrained(source, **kwargs)


def load_model(model_id: str, device: str = "cpu", dtype: str = "auto"):
    """``(model, processor)`` for a supported folder or hub id (every family of :mod:`hired.families`) (see
    :func:`resolve_model`); the classes come from the config's ``model_type`` (:func:`model_class_for`).

    Raises ``ValueError`` for a model that cannot be found or is not of a supported type, and ``ImportError``
    naming what to install when the processor needs torchvision and it is missing."""
    source, kwargs = resolve_model(model_id)  # before importing the model classes: a bad path fails fast
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, **kwargs)
    family, cls = model_class_for(config, model_id)
    processor = load_processor(source, family, **kwargs)  # first: a missing torchvision fails before the weights load
    model = cls.from_pretrained(source, dtype=torch_dtype(dtype, device), **kwargs).to(device).eval()
    return model, processor
