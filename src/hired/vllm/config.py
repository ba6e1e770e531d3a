"""The ``hired`` entry of a vLLM model's ``hf_overrides``: parsing and checking, without importing vLLM.

``LLM(model=..., hf_overrides={"hired": {"method": "hired", "budget": 0.2, "alpha": 0.5}})`` (or
``vllm serve MODEL --hf-overrides '{"hired": {...}}'``) puts the dict on the model's Hugging Face config
as ``config.hired``. :func:`spec_from_config` turns it into a :class:`Spec`, or ``None`` when the key is
absent (stock behaviour), and raises one ``ValueError`` naming the problem otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hired.core.grid import Geometry, Layout
from hired.families import Family, get_family
from hired.methods.base import Method, ModelInfo, get_method, list_methods, num_image_tokens

KEY = "hired"
"""The ``hf_overrides`` key that turns a method on."""

_RESERVED = ("method", "oracle")


@dataclass(frozen=True)
class Spec:
    """A method applied to one vLLM model.

    ``family`` describes the model family (:mod:`hired.families`: LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision,
    Qwen2.5-VL);
    ``score_kind`` is the attention score the hooks compute (``"cls"``: the [CLS] row, ``"received"``: the
    attention each token receives). ``roles`` maps each score role of the method to its 0-based vision
    layer and ``key_roles`` each key role (merging methods). ``oracle`` (benchmarks only) feeds the same
    token count with no selection work: the first ``count`` patch features of every image in pack order.
    """

    method: Method
    family: Family
    geometry: Geometry
    info: ModelInfo
    roles: Mapping[str, int]
    key_roles: Mapping[str, int]
    oracle: bool = False
    score_kind: str = "cls"

    @property
    def newline(self) -> bool:
        """Whether the family has image-newline tokens (LLaVA-NeXT, OneVision)."""
        return self.family.newline

    def layout(self, height: int, width: int) -> Layout:
        """Partition layout of an image of ``height x width`` pixels (LLaVA-1.5: always one crop). vLLM
        cuts every image of a prompt the same way (OneVision too: each image of a multi-image prompt gets
        the full anyres grid), so no image is encoded as a lone crop here."""
        if not self.family.anyres:
            height = width = self.geometry.crop_size
        return _layout(self.family.name, int(height), int(width), self.geometry)

    def num_tokens(self, height: int, width: int) -> int:
        """Placeholders (= features) for one image: the core's count, newline tokens included."""
        return num_image_tokens(self.method, self.layout(height, width), self.newline)

    def grid_layout(self, grid_thw) -> Layout:
        """Qwen2.5-VL: the layout of one image of ``grid_thw = (1, h, w)`` patches (its merged tokens)."""
        return _grid_layout(self.family.name, tuple(int(v) for v in grid_thw), self.geometry)

    def grid_tokens(self, grid_thw) -> int:
        """Qwen2.5-VL: placeholders (= features) for one image of ``grid_thw``: ``floor(r * N)`` of its N
        merged tokens (the method's count)."""
        return num_image_tokens(self.method, self.grid_layout(grid_thw), False)

    def stock_tokens(self, layout: Layout) -> int:
        """Tokens the unmodified model gives an image of ``layout`` (the family's count)."""
        return self.family.stock_tokens(layout)


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


def _error(message: str) -> ValueError:
    return ValueError(f"hf_overrides[{KEY!r}]: {message}")


def parse_method(entry: Any, mrope: bool = False) -> tuple[Method, bool]:
    """``(method, oracle)`` from the override's value, e.g. ``{"method": "hired", "budget": 0.2}``.
    ``mrope``: the model gives every kept token its own (t, h, w) id anyway (Qwen2.5-VL), so
    ``keep_positions`` is accepted (and changes nothing)."""
    if not isinstance(entry, Mapping):
        raise _error(f"expected a dict such as {{'method': 'hired', 'budget': 0.2}}, got {entry!r}")
    options = {str(k): v for k, v in entry.items() if k not in _RESERVED}
    name = entry.get("method", "hired")
    if not isinstance(name, str):
        raise _error(f"'method' must be a method name, got {name!r}")
    oracle = entry.get("oracle", False)
    if not isinstance(oracle, bool):
        raise _error(f"'oracle' must be true or false, got {oracle!r}")
    try:
        method = get_method(name, **options)
    except (TypeError, ValueError) as err:
        raise _error(str(err)) from None
    if getattr(method, "adaptive", False):
        raise _error(
            f"method {method.name!r} keeps a content-dependent number of tokens, but vLLM sizes the prompt "
            f"from the image size before the vision tower runs; use a fixed-budget method: "
            f"{', '.join(fixed_budget_methods())}, or give it a budget: "
            f"{{'method': {method.name!r}, 'budget': 0.2}}"
        )
    if getattr(method, "query_aware", False):
        raise _error(
            f"method {method.name!r} reads the prompt to choose the image's tokens, but vLLM's encoder never "
            f"sees the prompt; use one of {', '.join(fixed_budget_methods())}, or the transformers adapter"
        )
    if method.keep_positions and not mrope:
        raise _error(
            "keep_positions is not available in vLLM: vLLM gives LLaVA's language model (1-D RoPE) consecutive "
            "positions, and its only interface for custom positions of pruned multimodal tokens "
            "(SupportsMultiModalPruning.recompute_mrope_positions) serves M-RoPE models with video pruning "
            "enabled; drop the option (packed positions, as the HiRED paper), or use the transformers adapter"
        )
    return method, oracle


_TOWERS = {"clip_vision_model": True, "siglip_vision_model": False}
"""Vision towers the plugin can hook (vLLM's ``CLIPVisionModel`` and ``SiglipVisionModel``, both with a fused
``qkv_proj``) → whether the tower prepends a [CLS] token."""


def spec_from_config(config, family: str) -> Spec | None:
    """The :class:`Spec` for a Hugging Face ``config`` of ``family`` (``"llava_next"``, ``"llava"`` or
    ``"onevision"``), or ``None`` without ``hired``.

    Raises ``ValueError`` (one message, prefixed ``hf_overrides['hired']``) for a bad method or option, an
    adaptive or query-aware method, a vision tower other than CLIP or SigLIP, a configuration the family
    refuses (e.g. LLaVA-NeXT with the ``"full"`` feature strategy), ``score='cls'`` on a tower without
    [CLS], or layers out of range.
    """
    entry = getattr(config, KEY, None)
    if entry is None:
        return None
    try:
        fam = get_family(family)
    except ValueError as err:
        raise _error(str(err)) from None
    method, oracle = parse_method(entry, mrope=getattr(fam, "mrope", False))
    if fam.mrope:
        return _mrope_spec(config, fam, method, oracle)
    vc = config.vision_config
    tower = getattr(vc, "model_type", None)
    if tower not in _TOWERS:
        raise _error(
            f"needs a CLIP or SigLIP vision tower (the plugin hooks their fused qkv projections to score "
            f"patches); this model has {tower or type(vc).__name__!r}"
        )
    has_cls = _TOWERS[tower]
    try:
        fam.check_config(config, has_cls)
        geometry = fam.geometry(config)
        info, _ = fam.model_info(config, has_cls)  # feature_layer: the one feeding the projector
        roles = dict(method.score_layers(info))
        key_roles = dict(method.key_layers(info))
        kind = method.score_kind(info) if roles else "cls"
    except ValueError as err:
        raise _error(str(err)) from None
    for role, layer in {**roles, **key_roles}.items():
        if not 0 <= layer <= info.feature_layer:
            raise _error(
                f"{role} layer {layer} is out of range: vLLM builds the vision layers 0..{info.feature_layer} "
                "(up to the one feeding the projector); pick one of those with the method's layer option"
            )
    return Spec(method, fam, geometry, info, roles, key_roles, oracle, kind)


def _mrope_spec(config, fam: Family, method: Method, oracle: bool) -> Spec:
    """The :class:`Spec` of a Qwen2.5-VL config: its own ViT (no [CLS], received-attention scores from
    the rotary q/k of every block vLLM builds, 0..depth-1), one partition of merged tokens per image."""
    try:
        fam.check_method(method)
        fam.check_config(config, False)
        geometry = fam.geometry(config)
        info, _ = fam.model_info(config, False)
        kind = method.score_kind(info)
        roles = dict(method.score_layers(info))
        key_roles = dict(method.key_layers(info))
    except ValueError as err:
        raise _error(str(err)) from None
    for role, layer in {**roles, **key_roles}.items():
        if not 0 <= layer < info.num_layers:
            raise _error(
                f"{role} layer {layer} is out of range: the vision tower has the blocks 0..{info.num_layers - 1}"
            )
    return Spec(method, fam, geometry, info, roles, key_roles, oracle, kind if roles else "received")
