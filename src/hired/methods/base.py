"""The method interface and the registry every token-reduction method lives in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from hired.core.grid import Layout
from hired.core.select import topk_mask

_REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method config available by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> dict[str, str]:
    """Registered method names with a one-line description each."""
    return {name: cls.summary for name, cls in sorted(_REGISTRY.items())}


def get_method(name: str, **options) -> "Method":
    """Build a method config from its registry name and options (``get_method("hired", budget=0.2)``)."""
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[key]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(unknown)}; options: {', '.join(sorted(fields))}")
    return cls(**options)


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about the vision tower (filled in by the adapter)."""

    num_layers: int  # L, encoder layers of the vision tower
    num_heads: int
    feature_layer: int  # attention layer (0-based) whose output feeds the projector


@dataclass(frozen=True)
class Selection:
    """What a method decided for a batch of images.

    ``keep`` is ``(sum P, T)`` bool over every partition of every image in order; ``budgets`` holds the
    per-partition number of kept tokens of each image (host integers). Merging methods add ``weights``,
    ``(sum P, T, T)`` fp32: the token kept at slot ``t`` of partition ``p`` is
    ``sum_s weights[p, t, s] * feature[p, s]`` (convex rows; see :mod:`hired.core.merge`). Kept tokens
    keep LLaVA's spatial order either way.
    """

    keep: torch.Tensor
    budgets: list[list[int]]
    weights: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    """Base of every method config. Subclasses are frozen dataclasses with a ``name`` and ``summary``.

    A method says which [CLS]-attention rows it needs (``score_layers``), how many patch tokens it keeps
    for an image layout before any pixel is seen (``count``), and which ones (``select``).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: whether the token count depends on the image content (known only after the vision tower ran);
    #: such a method cannot tell the processor its placeholder count: use ``hired.prepare_inputs``
    adaptive: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option."""

    def score_layers(self, info: ModelInfo) -> Mapping[str, int]:
        """Role → 0-based vision encoder layer whose [CLS] attention row the method reads."""
        return {}

    def key_layers(self, info: ModelInfo) -> Mapping[str, int]:
        """Role → 0-based encoder layer whose keys ``(sum P, T, H * D)`` the method reads (merging methods)."""
        return {}

    def count(self, layout: Layout) -> int:
        """Patch tokens kept for one image (image-newline tokens not included)."""
        raise NotImplementedError

    def partition_budgets(self, layout: Layout, scores: Mapping[str, torch.Tensor]) -> list[int]:
        """Budget of every partition of one image; ``scores[role]`` is ``(P, T)`` fp32."""
        raise NotImplementedError

    def select(
        self,
        layouts: list[Layout],
        scores: Mapping[str, torch.Tensor],
        info: ModelInfo,
        keys: Mapping[str, torch.Tensor] | None = None,
    ) -> Selection:
        """Top-k by the ``"select"`` scores inside each partition's budget, over the whole batch.

        ``scores[role]`` is ``(sum P, T)`` fp32 for every partition of every image, in order;
        ``keys[role]`` is ``(sum P, T, H * D)`` for the roles of :meth:`key_layers`.
        """
        budgets, start = [], 0
        for layout in layouts:
            p = layout.num_partitions
            budgets.append(self.partition_budgets(layout, {r: s[start : start + p] for r, s in scores.items()}))
            start += p
        return topk_selection(layouts, budgets, scores["select"])


def topk_selection(layouts: list[Layout], budgets: list[list[int]], scores: torch.Tensor) -> Selection:
    """Keep the top ``budgets[i][p]`` valid patches of partition ``p`` of image ``i`` by ``scores`` ``(sum P, T)``."""
    valid = torch.cat([lay.valid_mask for lay in layouts]).to(scores.device, non_blocking=True)
    k = torch.tensor([b for per_image in budgets for b in per_image]).to(scores.device, non_blocking=True)
    return Selection(keep=topk_mask(scores, k, valid), budgets=budgets)


def check_rate(name: str, value: float, low_open: bool) -> None:
    """Raise unless ``value`` lies in (0, 1] (``low_open``) or [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok:
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")


def num_image_tokens(method: Method, layout: Layout, newline: bool) -> int:
    """Tokens one image puts in front of the language model: the method's patch tokens plus, with
    ``newline`` (LLaVA-NeXT) and ``method.keep_newline``, one image-newline token per canvas row.

    This is the single count both the processor (placeholders) and the model (features) obey.
    """
    if method.adaptive:
        raise ValueError(adaptive_message(method))
    count = method.count(layout)
    if newline and getattr(method, "keep_newline", False):
        count += newline_tokens(layout)
    return count


def newline_tokens(layout: Layout) -> int:
    """LLaVA-NeXT's image-newline tokens for an image: one per valid canvas row, or one after a lone full image."""
    return layout.valid_rows if layout.num_subimages else 1


def adaptive_message(method: Method) -> str:
    """The error for asking an adaptive method for its count before the vision tower has run."""
    return (
        f"{type(method).__name__} keeps a content-dependent number of tokens, which is not known before the "
        "vision tower runs: build the inputs with hired.prepare_inputs(model, processor, images=..., text=...), "
        f"or give it a fixed budget, e.g. {type(method).__name__}(budget=0.2)"
    )


def check_layer(name: str, value) -> None:
    """Raise unless ``value`` is ``None`` or a non-negative layer index."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a non-negative layer index or None, got {value!r}")


def check_bool(name: str, value) -> None:
    """Raise unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
