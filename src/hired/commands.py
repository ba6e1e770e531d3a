"""What the ``hired`` subcommands share: user errors, model loading, prompts, answers, option and list
parsing, dtype names, the demo image and a warmed-up timer.

The command modules (:mod:`hired.cli`, :mod:`hired.viz`, :mod:`hired.bench.cli`, :mod:`hired.eval.offline`,
:mod:`hired.vllm.bench`, ...) import from here; this module imports none of them, so :mod:`hired.cli` is
only the top layer that puts the subcommands together. torch and transformers are imported when used.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The ``--dtype`` choices; ``auto`` is float16 on CUDA, float32 elsewhere."""


# ------------------------------------------------------------------------------------------ errors


class CommandError(SystemExit):
    """A user error of a command: ``hired`` prints ``hired: error: <message>`` on stderr and exits with 2,
    as argparse does for a bad argument.

    It is a ``SystemExit`` (code 2) so that a command stops the same way wherever it is raised; ``str()``
    of it is the message.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.code = 2


_PREFIX = re.compile(r"^hired(?: [\w-]+)?: (?:error: )?")


def error_message(err: BaseException) -> str:
    """The message of a user error, without a ``hired:`` / ``hired bench:`` prefix it may carry."""
    text = err.message if isinstance(err, CommandError) else str(err.code if isinstance(err, SystemExit) else err)
    return _PREFIX.sub("", text.strip(), count=1)


def plain(text: str) -> str:
    """``text`` without reStructuredText backticks, for ``--help`` (``"``hired show``"`` → ``"hired show"``)."""
    return re.sub(r"`+([^`]*)`+", r"\1", text)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors read ``hired: error: <message>`` (exit 2) in every subcommand."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        import sys

        self.print_usage(sys.stderr)
        self.exit(2, f"hired: error: {message}\n")


# ------------------------------------------------------------------------------------------ models


def torch_dtype(name: str, device: str):
    """The torch dtype of a ``--dtype`` name (``auto``: float16 on CUDA, float32 elsewhere)."""
    import torch

    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise CommandError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
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

    Fails fast with a :class:`CommandError` for a path that does not exist ("no such model folder"), a
    file or a folder without ``config.json``, and for a hub id that is not in the local cache when
    ``HF_HUB_OFFLINE`` is set or the hub cannot be reached (instead of transformers' retries). A cached
    hub id with no hub in reach loads from the cache (``local_files_only``).
    """
    text = str(model).strip()
    if not text:
        raise CommandError("--model is empty: give a local model folder or a hub id org/name")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CommandError(f"--model {text} is a file, not a model folder (the output of save_pretrained)")
        if not (path / "config.json").is_file():
            raise CommandError(f"--model {text} is not a model folder: it has no config.json")
        return str(path), {}
    if looks_like_path(text):
        hint = "" if "/" in text else " (a hub id has the form org/name)"
        raise CommandError(f"no such model folder: {text}{hint}")
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(text, "config.json"), str)
    if cached and _offline():
        return text, {"local_files_only": True}
    if _offline():
        raise CommandError(
            f"no such model folder: {text}, and HF_HUB_OFFLINE is set while the hub id {text} is not in the "
            "local Hugging Face cache; unset HF_HUB_OFFLINE to download it, or give a local model folder"
        )
    why = hub_unreachable()
    if why is not None:
        if cached:
            return text, {"local_files_only": True}
        raise CommandError(
            f"no such model folder: {text}, and the Hugging Face hub cannot be reached to download it "
            f"({why}); check the network, or give a local model folder"
        )
    return text, {}


def model_class_for(config, source: str = "the model"):
    """``(family, transformers model class)`` for a loaded ``config``, found through :mod:`hired.families`
    (the class of a family whose config's ``model_type`` is ``config.model_type`` and that holds the
    inner model: ``LlavaNextForConditionalGeneration``, ``LlavaForConditionalGeneration``,
    ``LlavaOnevisionForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
    ``Qwen3VLForConditionalGeneration``). ``ValueError`` naming the supported types otherwise."""
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
    """``(model, processor)`` for a LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL folder or hub id (see
    :func:`resolve_model`); the classes come from the config's ``model_type`` (:func:`model_class_for`)."""
    source, kwargs = resolve_model(model_id)  # before importing the model classes: a bad path fails fast
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, **kwargs)
    try:
        family, cls = model_class_for(config, model_id)
    except ValueError as err:
        raise CommandError(str(err)) from None
    try:
        processor = load_processor(
            source, family, **kwargs
        )  # first: a missing torchvision fails before the weights load
    except ImportError as err:
        raise CommandError(str(err)) from None
    model = cls.from_pretrained(source, dtype=torch_dtype(dtype, device), **kwargs).to(device).eval()
    return model, processor


# ------------------------------------------------------------------------------------------ prompts, answers


def build_prompt(processor, question: str) -> str:
    """The question with one image: the processor's chat template if it has one, else ``USER: <image>
    ... ASSISTANT:`` with the family's placeholder (Qwen2.5-VL wraps it in its vision start / end tokens)."""
    from hired.families import family_of_processor

    token = processor.image_token
    if token in question:
        return question
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    family = family_of_processor(processor)
    placeholder = family.image_placeholder(processor) if family is not None else token
    return f"USER: {placeholder}\n{question} ASSISTANT:"


def answer(model, processor, image, prompt: str, max_new_tokens: int) -> tuple[str, int, float]:
    """Greedy answer, the number of prompt tokens that were ``<image>`` placeholders, and the seconds taken
    (preprocessing and generation, one run: see :func:`median_time` for timings to compare). Adaptive
    methods (PruMerge without a budget) go through ``hired.prepare_inputs``."""
    import torch

    import hired

    start = time.perf_counter()
    method = hired.applied_method(model)
    if method is not None and method.adaptive:  # the count is known only after encoding: two passes
        inputs = hired.prepare_inputs(model, processor, images=image, text=prompt, return_tensors="pt")
    else:
        inputs = processor(images=image, text=prompt, return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    n_image = int((inputs["input_ids"] == processor.image_token_id).sum())
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    text = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    return text.strip(), n_image, seconds


def median_times(
    fns: Mapping[str, Callable[[], Any]],
    runs: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    setup: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, tuple[Any, float, list[float]]]:
    """Time several configurations fairly: each of ``fns`` is called ``warmup`` times untimed, then all are
    called in turn ``runs`` rounds over (interleaved, so a change of machine load hits all alike).
    ``setup[name]``, if given, runs untimed before every call of ``fns[name]`` (e.g. applying a method).

    Returns name → ``(last result, median seconds, the timed seconds)``. One-shot timings of a first call
    (lazy initialisation, cold caches) are not comparable; medians after a warm-up are.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"timing needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    setup = setup or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            setup.get(name, _nothing)()
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for _ in range(runs):
        for name, fn in fns.items():
            setup.get(name, _nothing)()
            start = clock()
            results[name] = fn()
            times[name].append(clock() - start)
    return {name: (results[name], statistics.median(times[name]), times[name]) for name in fns}


def _nothing() -> None:
    pass


def median_time(
    fn: Callable[[], Any], runs: int = 3, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> tuple[Any, float, list[float]]:
    """:func:`median_times` of one function: ``(last result, median seconds, the timed seconds)``."""
    return median_times({"fn": fn}, runs, warmup, clock)["fn"]


def print_selection(model) -> None:
    """One line per image of the last forward: kept/valid patches per partition."""
    import hired

    for sel in hired.last_selection(model):
        parts = ", ".join(f"{len(p.kept)}/{p.valid}" for p in sel.partitions)
        grid = f"{sel.grid[0]}x{sel.grid[1]} grid, " if sel.partitions[1:] else ""
        print(f"  kept per partition (full image first; kept/valid): {grid}{parts}")


def demo_image(size: tuple[int, int] = (300, 560)):
    """A synthetic picture (gradient sky, ground, a few shapes) so the demo needs no file."""
    from PIL import Image, ImageDraw

    h, w = size
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        shade = int(120 + 100 * y / h)
        draw.line([(0, y), (w, y)], fill=(shade // 2, shade // 2 + 40, 255) if y < h * 0.6 else (40, shade, 60))
    draw.ellipse([w * 0.72, h * 0.08, w * 0.86, h * 0.30], fill=(255, 220, 40))
    draw.rectangle([w * 0.12, h * 0.45, w * 0.30, h * 0.80], fill=(200, 30, 30))
    draw.polygon([(w * 0.45, h * 0.85), (w * 0.55, h * 0.55), (w * 0.65, h * 0.85)], fill=(250, 250, 250))
    return img


# ------------------------------------------------------------------------------------------ method options


def method_class(name: str):
    """The registered method class called ``name``, or a :class:`CommandError` listing the methods."""
    from hired.methods.base import method_class as lookup

    try:
        return lookup(str(name))
    except ValueError as err:
        raise CommandError(str(err)) from None


def option_value(cls, key: str, text: str, where: str = "--option"):
    """The text of option ``key`` of method class ``cls`` parsed by its declared type
    (:func:`hired.methods.base.parse_option`), or a :class:`CommandError` naming the option."""
    from hired.methods.base import parse_option

    try:
        return parse_option(cls, key, str(text))
    except ValueError as err:
        raise CommandError(f"{where}: {err}") from None


def split_option(item: str, where: str = "--option", targeted: bool = True) -> tuple[str | None, str, str]:
    """``[NAME:]KEY=VALUE`` → ``(NAME or None, key, value text)``; keys take ``-`` or ``_``."""
    target, sep, rest = item.partition(":")
    if not targeted or not sep or "=" in target:
        target, rest = None, item
    key, eq, value = rest.partition("=")
    if not eq or not key.strip() or (target is not None and not target.strip()):
        form = "[NAME:]KEY=VALUE" if targeted else "KEY=VALUE"
        raise CommandError(f"{where} expects {form}, got {item!r}")
    return (target.strip() if target else None), key.strip().replace("-", "_"), value


def assign_options(
    items: Sequence[str] | None, methods: Sequence[str], where: str = "--option", methods_flag: str = "--method"
) -> list[dict]:
    """Typed options for each of ``methods`` (names, repeats allowed) from ``[NAME:]KEY=VALUE`` items.

    ``NAME:KEY=VALUE`` goes to every chosen method called NAME, ``KEY=VALUE`` to every chosen method that
    has the option KEY; each value is parsed by that method's declared type. A NAME that was not chosen,
    or a KEY no chosen method has, is a :class:`CommandError`.
    """
    from hired.methods.base import option_types

    classes = [method_class(n) for n in methods]
    out: list[dict] = [{} for _ in methods]
    for item in items or []:
        target, key, text = split_option(item, where)
        if target is not None:
            cls = method_class(target)
            chosen = [i for i, c in enumerate(classes) if c is cls]
            if not chosen:
                raise CommandError(f"{where} {item!r} names {target!r}, which is not in {methods_flag}")
        else:
            chosen = [i for i, c in enumerate(classes) if key in option_types(c)]
            if not chosen:
                raise CommandError(f"no chosen method has the option {key} ({where} {item!r})")
        for i in chosen:
            out[i][key] = option_value(classes[i], key, text, f"{where} {item!r}")
    return out


def parse_method_options(method: str, options: dict) -> dict:
    """``options`` of ``method`` with every string value parsed by the option's declared type (values that
    are not strings are kept); for option strings such as lmms-eval's ``--model_args``. Raises
    ``ValueError`` for an unknown method or option, or text that is not of the option's type."""
    from hired.methods.base import method_class as lookup
    from hired.methods.base import parse_option

    cls = lookup(str(method))

    return {k: parse_option(cls, k, v) if isinstance(v, str) else v for k, v in options.items()}


def guess_value(text: str):
    """Option text whose method is not known here, as ``true``/``false``, ``none``, an int, a float or the
    text; the method config then checks it against the declared type (and refuses what does not fit).
    Prefer :func:`option_value` / :func:`assign_options`, which parse by the declared type."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_method(name: str, options: dict):
    """``hired.get_method(name, **options)``, its errors as a :class:`CommandError`."""
    import hired

    try:
        return hired.get_method(name, **options)
    except (TypeError, ValueError) as err:
        raise CommandError(str(err)) from None


# ------------------------------------------------------------------------------------------ lists


def number_list(cast: Callable[[str], Any] = float, what: str = "numbers") -> Callable[[str], tuple]:
    """An argparse ``type``: numbers separated by commas and/or spaces (``"0.2,0.4"``, ``"0.2 0.4"``)."""

    def parse(text: str) -> tuple:
        parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
        try:
            return tuple(cast(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} separated by commas or spaces, got {text!r}") from None

    return parse


floats = number_list(float, "numbers")
ints = number_list(int, "integers")


class _ListAction(argparse.Action):
    """``nargs="+"`` of :func:`number_list` values flattened into one tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        flat = tuple(x for part in values for x in part)
        if not flat:
            parser.error(f"{option_string} expects at least one value")
        setattr(namespace, self.dest, flat)


def add_list_argument(p: argparse.ArgumentParser, flag: str, cast: Callable[[str], Any] = float, **kwargs):
    """``flag`` taking numbers separated by commas and/or spaces (``--budgets 0.2,0.4`` = ``--budgets 0.2 0.4``)."""
    what = "integers" if cast is int else "numbers"
    kwargs.setdefault("metavar", "N")
    return p.add_argument(flag, nargs="+", type=number_list(cast, what), action=_ListAction, **kwargs)


def add_method_args(p: argparse.ArgumentParser) -> None:
    """``--method``, ``--budget``, ``--alpha`` and ``--option`` for a command that runs one method."""
    p.add_argument("--method", default="hired", help="method name (see 'hired methods'), default: hired")
    p.add_argument("--budget", type=float, default=None, help="token budget rate in (0, 1] (default 0.2)")
    p.add_argument("--alpha", type=float, default=None, help="full-image share of the budget (HiRED, default 0.5)")
    p.add_argument(
        "--option",
        action="append",
        metavar="[NAME:]KEY=VALUE",
        help="any other method option, parsed by its type; repeatable",
    )


def method_from_args(args):
    """The one method of ``--method``/``--budget``/``--alpha``/``--option`` (see :func:`add_method_args`)."""
    from hired.methods.base import option_types

    cls = method_class(args.method)
    options = assign_options(args.option, [args.method])[0]
    for name in ("budget", "alpha"):
        value = getattr(args, name, None)
        if value is not None:
            if name not in option_types(cls):
                raise CommandError(f"method {cls.name!r} has no option {name!r}")
            options[name] = value
    return build_method(args.method, options)
