"""The ``hired`` entry of a vLLM model's ``hf_overrides``: parsing and checking, without importing vLLM.

``LLM(model=..., hf_overrides={"hired": {"method": "hired", "budget": 0.2, "alpha": 0.5}})`` (or
``vllm serve MODEL --hf-overrides '{"hired": {...}}'``) puts the dict on the model's Hugging Face config
as ``config.hired``. :func:`spec_from_config` turns it into a :class:`Spec`, or ``None`` when the key is
absent (stock behaviour), and raises one ``ValueError`` naming the problem otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from hired.core.grid import Geometry, Layout
from hired.engine.plan import Plan, make_plan
from hired.families import get_family
from hired.methods.base import Method, get_method, list_methods

KEY = "hired"
"""The ``hf_overrides`` key that turns a method on."""

_RESERVED = ("method", "oracle")


@dataclass(frozen=True)
class Spec(Plan):
    """A method applied to one vLLM model: its :class:`~hired.engine.plan.Plan` (the method checked against
    the family, the tower layers it reads, the score kind) and the image layouts vLLM's processing asks for.

    ``oracle`` (benchmarks only) feeds the same token count with no selection work: the first ``count``
    patch features of every image in pack order.
    """

    oracle: bool = False

    def layout(self, height: int, width: int) -> Layout:
        """Partition layout of an image of ``height x width`` pixels (one-crop families: always one crop).
        vLLM cuts every image of a prompt the same way (OneVision too: each image of a multi-image prompt
        gets the full anyres grid), so no image is encoded as a lone crop here."""
        if not self.family.anyres:
            height = width = self.geometry.crop_size
        return _layout(self.family.name, int(height), int(width), self.geometry)

    def num_tokens(self, height: int, width: int) -> int:
        """Placeholders (= features) for one image: the core's count, newline tokens included."""
        return self.token_count(self.layout(height, width))

    def grid_layout(self, grid_thw) -> Layout:
        """Merged-grid families: the layout of one image of ``grid_thw = (1, h, w)`` patches."""
        return _grid_layout(self.family.name, tuple(int(v) for v in grid_thw), self.geometry)

    def grid_tokens(self, grid_thw) -> int:
        """Merged-grid families: placeholders (= features) for one image of ``grid_thw``: ``floor(r * N)``
        of its N merged tokens (the method's count)."""
        return self.token_count(self.grid_layout(grid_thw))


@lru_cache(maxsize=1024)
def _layout(family: str, height: int, width: int, geometry: Geometry) -> Layout:
    """One :class:`Layout` per family, image size and geometry, so that what a layout caches (valid mask,
    pack orders) is built once per size rather than once per image (layouts are immutable)."""
    return get_family(family).layout((height, width), geometry)


@lru_cache(maxsize=1024)
def _grid_layout(family: str, grid_thw: tuple[int, int, int], geometry: Geometry) -> Layout:
    return get_family(family).grid_layout(geometry, grid_thw)


def fixed_budget_methods() -> list[str]:
    """Registered methods the plugin can run: a token count known before the vision tower runs, and no
    need of the prompt (vLLM's encoder never sees it)."""
    return [
        name
        for name in list_methods()
        if not getattr(get_method(name), "adaptive", False) and not getattr(get_method(name), "query_aware", False)
    ]


def override_error(message: str) -> ValueError:
    """A ``ValueError`` about the ``hired`` entry of ``hf_overrides``, so prefixed."""
    return ValueError(f"hf_overrides[{KEY!r}]: {message}")


def request_error(message: str) -> ValueError:
    """A ``ValueError`` about a request's ``mm_processor_kwargs['hired']``, so prefixed."""
    return ValueError(f"mm_processor_kwargs[{KEY!r}]: {message}")


def parse_method(
    entry: Any, mrope: bool = False, error: Callable[[str], ValueError] = override_error
) -> tuple[Method, bool]:
    """``(method, oracle)`` from the override's value, e.g. ``{"method": "hired", "budget": 0.2}``.
    ``mrope``: the model gives every kept token its own (t, h, w) id anyway (Qwen2.5-VL), so
    ``keep_positions`` is accepted (and changes nothing). ``error`` builds the ``ValueError`` (its prefix
    names where the entry came from)."""
    if not isinstance(entry, Mapping):
        raise error(f"expected a dict such as {{'method': 'hired', 'budget': 0.2}}, got {entry!r}")
    options = {str(k): v for k, v in entry.items() if k not in _RESERVED}
    name = entry.get("method", "hired")
    if not isinstance(name, str):
        raise error(f"'method' must be a method name, got {name!r}")
    oracle = entry.get("oracle", False)
    if not isinstance(oracle, bool):
        raise error(f"'oracle' must be true or false, got {oracle!r}")
    try:
        method = get_method(name, **options)
    except (TypeError, ValueError) as err:
        raise error(str(err)) from None
    if getattr(method, "adaptive", False):
        raise error(
            f"method {method.name!r} keeps a content-dependent number of tokens, but vLLM sizes the prompt "
            f"from the image size before the vision tower runs; use a fixed-budget method: "
            f"{', '.join(fixed_budget_methods())}, or its fixed form: "
            f"{ {'method': method.name, **method.fixed_options()} }"
        )
    if getattr(method, "query_aware", False):
        raise error(
            f"method {method.name!r} reads the prompt to choose the image's tokens, but vLLM's encoder never "
            f"sees the prompt; use one of {', '.join(fixed_budget_methods())}, or the transformers adapter"
        )
    if method.keep_positions and not mrope:
        raise error(
            "keep_positions is not available in vLLM: vLLM gives a 1-D RoPE language model consecutive "
            "positions, and its only interface for custom positions of pruned multimodal tokens "
            "(SupportsMultiModalPruning.recompute_mrope_positions) serves M-RoPE models with video pruning "
            "enabled; drop the option (packed positions, as the HiRED paper), or use the transformers adapter"
        )
    return method, oracle


def spec_from_config(config, family: str) -> Spec | None:
    """The :class:`Spec` for a Hugging Face ``config`` of ``family`` (a name of :mod:`hired.families`), or
    ``None`` without ``hired``.

    Raises ``ValueError`` (one message, prefixed ``hf_overrides['hired']``) for a bad method or option, an
    adaptive or query-aware method, a vision tower the plugin cannot hook (it reads the fused qkv
    projections of vLLM's CLIP, SigLIP and Qwen ViTs), a configuration the family refuses (e.g. LLaVA-NeXT
    with the ``"full"`` feature strategy), ``score='cls'`` on a tower without [CLS], or layers out of range
    (vLLM builds the tower up to the layer feeding the projector).
    """
    entry = getattr(config, KEY, None)
    if entry is None:
        return None
    return _build(entry, config, family, override_error)


def _build(entry: Any, config, family: str, error: Callable[[str], ValueError]) -> Spec:
    try:
        fam = get_family(family)
    except ValueError as err:
        raise error(str(err)) from None
    method, oracle = parse_method(entry, mrope=fam.mrope, error=error)
    has_cls = fam.config_has_cls(config)
    if has_cls is None:
        vc = config.vision_config
        raise error(
            f"needs a CLIP or SigLIP vision tower (the plugin hooks their fused qkv projections to score "
            f"patches); this model has {getattr(vc, 'model_type', None) or type(vc).__name__!r}"
        )
    try:
        plan = make_plan(method, fam, config, has_cls, truncated_by="vLLM")
    except ValueError as err:
        raise error(str(err)) from None
    return Spec(**{f.name: getattr(plan, f.name) for f in fields(Plan)}, oracle=oracle)


def request_entry(kwargs: Mapping[str, object] | None) -> str | None:
    """The ``hired`` entry of a request's ``mm_processor_kwargs`` as canonical JSON (sorted keys), or
    ``None`` when the request has none. Raises ``ValueError`` for something that is not a dict of JSON
    values or that sets ``oracle`` (benchmarks set it per model)."""
    value = (kwargs or {}).get(KEY)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise request_error(f"expected a dict such as {{'budget': 0.1}}, got {value!r}")
    if "oracle" in value:
        raise request_error("'oracle' is set per model (hf_overrides), not per request")
    try:
        return json.dumps({str(k): v for k, v in value.items()}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise request_error(f"options must be JSON values (numbers, strings, true/false), got {value!r}") from None


def request_spec(config, family: str, entry: str | None) -> Spec | None:
    """The :class:`Spec` a request runs with: the model's (:func:`spec_from_config`) when ``entry`` (from
    :func:`request_entry`) is ``None``, else the model's ``hired`` entry updated with the request's keys. A
    request naming a method other than the model's starts from that method's defaults. Raises one
    ``ValueError`` prefixed ``mm_processor_kwargs['hired']``, with the message start-up would give for
    the same entry, and for a request to a model started without ``hired``."""
    if entry is None:
        return spec_from_config(config, family)
    base = getattr(config, KEY, None)
    if base is None:
        raise request_error(
            "this model was started without hired; start it with hf_overrides={'hired': {...}} (or "
            "--hf-overrides '{\"hired\": {}}') to set options per request"
        )
    options = json.loads(entry)
    same = options.get("method", base.get("method", "hired")) == base.get("method", "hired")
    merged = {**base, **options} if same else {"oracle": base.get("oracle", False), **options}
    return _build(merged, config, family, request_error)
