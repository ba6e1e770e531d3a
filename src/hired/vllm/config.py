"""The ``hired`` entry of a vLLM model's ``hf_overrides``: parsing and checking, without importing vLLM.

``LLM(model=..., hf_overrides={"hired": {"method": "hired", "budget": 0.2, "alpha": 0.5}})`` (or
``vllm serve MODEL --hf-overrides '{"hired": {...}}'``) puts the dict on the model's Hugging Face config
as ``config.hired``. :func:`spec_from_config` turns it into a :class:`Spec`, or ``None`` when the key is
absent (stock behaviour), and raises one ``ValueError`` naming the problem otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from hired.core.grid import Geometry, Layout, layout_for
from hired.methods.base import Method, ModelInfo, get_method, list_methods, num_image_tokens

KEY = "hired"
"""The ``hf_overrides`` key that turns a method on."""

_RESERVED = ("method", "oracle")


@dataclass(frozen=True)
class Spec:
    """A method applied to one vLLM model.

    ``family`` is ``"llava_next"`` or ``"llava"``; ``newline`` says whether image-newline tokens exist
    (LLaVA-NeXT). ``roles`` maps each score role of the method to its 0-based vision layer and
    ``key_roles`` each key role (merging methods). ``oracle`` (benchmarks only) feeds the same token count
    with no selection work: the first ``count`` patch features of every image in pack order.
    """

    method: Method
    family: str
    geometry: Geometry
    info: ModelInfo
    roles: Mapping[str, int]
    key_roles: Mapping[str, int]
    oracle: bool = False

    @property
    def newline(self) -> bool:
        return self.family == "llava_next"

    def layout(self, height: int, width: int) -> Layout:
        """Partition layout of an image of ``height x width`` pixels (LLaVA-1.5: always one crop)."""
        if self.family == "llava":
            height = width = self.geometry.crop_size
        return _layout(int(height), int(width), self.geometry)

    def num_tokens(self, height: int, width: int) -> int:
        """Placeholders (= features) for one image: the core's count, newline tokens included."""
        return num_image_tokens(self.method, self.layout(height, width), self.newline)


@lru_cache(maxsize=1024)
def _layout(height: int, width: int, geometry: Geometry) -> Layout:
    """One :class:`Layout` per image size and geometry, so that what a layout caches (valid mask, pack
    orders) is built once per size rather than once per image (layouts are immutable)."""
    return layout_for((height, width), geometry)


def fixed_budget_methods() -> list[str]:
    """Registered methods the plugin can run: a token count known before the vision tower runs, and no
    need of the prompt (vLLM's encoder never sees it)."""
    return [name for name in list_methods()
            if not getattr(get_method(name), "adaptive", False) and not getattr(get_method(name), "query_aware", False)]


def _error(message: str) -> ValueError:
    return ValueError(f"hf_overrides[{KEY!r}]: {message}")


def parse_method(entry: Any) -> tuple[Method, bool]:
    """``(method, oracle)`` from the override's value, e.g. ``{"method": "hired", "budget": 0.2}``."""
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
    if method.keep_positions:
        raise _error(
            "keep_positions is not available in vLLM: vLLM gives LLaVA's language model (1-D RoPE) consecutive "
            "positions, and its only interface for custom positions of pruned multimodal tokens "
            "(SupportsMultiModalPruning.recompute_mrope_positions) serves M-RoPE models with video pruning "
            "enabled; drop the option (packed positions, as the HiRED paper), or use the transformers adapter"
        )
    return method, oracle


def _reads_received(method: Method, info: ModelInfo) -> bool:
    """Whether ``method`` reads scores on this tower and they are the received-attention kind."""
    return bool(method.score_layers(info)) and method.score_kind(info) == "received"


def _hidden_index(layer: int, num_layers: int) -> int:
    idx = layer + num_layers + 1 if layer < 0 else layer
    if not 1 <= idx <= num_layers:
        raise _error(f"vision_feature_layer {layer} does not name one of the {num_layers} encoder layers' outputs")
    return idx


def spec_from_config(config, family: str) -> Spec | None:
    """The :class:`Spec` for a LLaVA-NeXT / LLaVA-1.5 Hugging Face ``config``, or ``None`` without ``hired``.

    Raises ``ValueError`` (one message, prefixed ``hf_overrides['hired']``) for a bad method or option, an
    adaptive method, a tower without [CLS], the ``"full"`` feature strategy or layers out of range.
    """
    entry = getattr(config, KEY, None)
    if entry is None:
        return None
    method, oracle = parse_method(entry)
    if family not in ("llava_next", "llava"):
        raise _error(f"family must be 'llava_next' or 'llava', got {family!r}")
    vc = config.vision_config
    if getattr(vc, "model_type", None) != "clip_vision_model":
        raise _error(
            f"needs a CLIP vision tower (a [CLS] token whose attention ranks patches); this model has "
            f"{getattr(vc, 'model_type', type(vc).__name__)!r}"
        )
    if config.vision_feature_select_strategy != "default":
        raise _error(
            "needs vision_feature_select_strategy='default' (a [CLS] token that is dropped from the features); "
            f"this model uses {config.vision_feature_select_strategy!r}"
        )
    num_layers, num_heads = int(vc.num_hidden_layers), int(vc.num_attention_heads)
    feature = config.vision_feature_layer
    layers = [feature] if isinstance(feature, int) else list(feature)
    top = max(_hidden_index(f, num_layers) for f in layers)
    info = ModelInfo(num_layers=num_layers, num_heads=num_heads, feature_layer=top - 1)
    if _reads_received(method, info):
        raise _error(
            "score='received' (attention received from all tokens) is not in the vLLM plugin yet; its hooks "
            "read the [CLS] row: use score='cls' or 'auto' here, or the transformers adapter"
        )
    roles = dict(method.score_layers(info))
    key_roles = dict(getattr(method, "key_layers", lambda _info: {})(info))
    for role, layer in {**roles, **key_roles}.items():
        if not 0 <= layer <= info.feature_layer:
            raise _error(
                f"{role} layer {layer} is out of range: vLLM builds the vision layers 0..{info.feature_layer} "
                "(up to the one feeding the projector); pick one of those with the method's layer option"
            )
    pins = None
    if family == "llava_next":
        pins = tuple(tuple(int(v) for v in p) for p in config.image_grid_pinpoints)
    geometry = Geometry(crop_size=int(vc.image_size), patch_size=int(vc.patch_size), grid_pinpoints=pins)
    return Spec(method, family, geometry, info, roles, key_roles, oracle)
