"""The method interface and the registry every token-reduction method lives in."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

import torch

from hired.core.budget import total_budget
from hired.core.grid import Layout
from hired.core.select import topk_mask

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method config available by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> dict[str, str]:
    """Registered method names with a one-line description each."""
    return {name: cls.summary for name, cls in sorted(_REGISTRY.items())}


def get_method(name: str, **options) -> Method:
    """Build a method config from its registry name and options (``get_method("hired", budget=0.2)``)."""
    cls = method_class(name)
    fields = option_types(cls)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(unknown)}; options: {', '.join(sorted(fields))}")
    return cls(**options)


def method_class(name: str) -> type[Method]:
    """The registered method config class called ``name`` (``"hired"``, ``"cls-topk"``, ...)."""
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def option_types(cls: type[Method]) -> dict[str, Any]:
    """Option name → declared type of a method config class (``float``, ``int | None``, ``Literal[...]``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe_type(tp) -> str:
    """A declared option type in words: ``"a number"``, ``"true or false"``, ``"'2d' or 'reference'"``."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string", type(None): "None"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


_UNSET = object()


def _first_member(tp, value, match):
    """``match(arg, value)`` for the members of the union ``tp`` in order: the first result, or ``_UNSET``."""
    for arg in typing.get_args(tp):
        out = match(arg, value)
        if out is not _UNSET:
            return out
    return _UNSET


def _coerce(tp, value):
    """``value`` as an instance of the declared type ``tp`` (an int is a valid float), or ``_UNSET``."""
    if typing.get_origin(tp) is Literal:
        return value if any(type(value) is type(a) and value == a for a in typing.get_args(tp)) else _UNSET
    if _is_union(tp):
        return _first_member(tp, value, _coerce)
    if tp is type(None):
        return None if value is None else _UNSET
    if tp is bool:
        return value if isinstance(value, bool) else _UNSET
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _UNSET
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _UNSET
    if tp is str:
        return value if isinstance(value, str) else _UNSET
    raise TypeError(f"unsupported option type {tp!r}")


class OptionTypeError(TypeError, ValueError):
    """A method option of the wrong type (a ``TypeError``, and a ``ValueError`` like every bad option)."""


def check_option_types(config: Method) -> None:
    """Raise :class:`OptionTypeError` naming the first option whose value is not of its declared type; ints given
    for float options become floats."""
    for name, tp in option_types(type(config)).items():
        value = getattr(config, name)
        out = _coerce(tp, value)
        if out is _UNSET:
            raise OptionTypeError(
                f"{type(config).__name__} option {name} must be {describe_type(tp)}, "
                f"got {value!r} ({type(value).__name__})"
            )
        if out is not value:
            object.__setattr__(config, name, out)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_option(cls: type[Method], name: str, text: str):
    """Parse the command-line text of option ``name`` of method ``cls`` by its declared type.

    ``"true"``/``"false"`` (also yes/no, on/off, 1/0) for booleans, ``"none"`` where ``None`` is allowed,
    integers and numbers as written, a literal choice by its name. Raises ``ValueError`` naming the option.
    """
    types_ = option_types(cls)
    if name not in types_:
        raise ValueError(f"{cls.__name__} has no option {name}; options: {', '.join(sorted(types_))}")
    tp = types_[name]
    value = _parse_text(tp, text.strip())
    if value is _UNSET:
        raise ValueError(f"{cls.__name__} option {name} must be {describe_type(tp)}, got {text!r}")
    return value


def _parse_text(tp, text: str):
    low = text.lower()
    if typing.get_origin(tp) is Literal:
        return next((a for a in typing.get_args(tp) if str(a).lower() == low), _UNSET)
    if _is_union(tp):
        return _first_member(tp, text, _parse_text)
    if tp is type(None):
        return None if low in ("none", "null") else _UNSET
    if tp is bool:
        return True if low in _TRUE else False if low in _FALSE else _UNSET
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            return _UNSET
    if tp is str:
        return text
    raise TypeError(f"unsupported option type {tp!r}")


@dataclass(frozen=True)
class ModelInfo:
    """What a method may know about the vision tower (filled in by the adapter)."""

    num_layers: int  # L, encoder layers of the vision tower
    num_heads: int
    feature_layer: int  # attention layer (0-based) whose output feeds the projector
    has_cls: bool = True  # whether the tower prepends a [CLS] token
    subimages: bool = True  # whether images may be cut into sub-images (False: each image is one grid)


ScoreKind = Literal["auto", "cls", "received"]
"""Which attention scores rank the patches: the [CLS] row (``"cls"``), the attention each patch receives
averaged over all queries (``"received"``, no [CLS] needed), or ``"auto"``: [CLS] where the tower has one."""


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
class Prompts:
    """The prompt each image of a batch belongs to, for query-aware methods (``Method.query_aware``).

    ``embeds`` ``(B, S, D)``: the prompts' token embeddings from the language model's own input embedding
    layer (the space of the projected visual tokens); ``mask`` ``(B, S)`` bool: the prompts' text tokens
    (attended, not an image placeholder); ``owner`` ``(n,)`` long: the prompt (row) of every image, in
    the images' order. Several images may share a prompt; an image's prompt may hold no text at all.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    owner: torch.Tensor

    def mean_unit(self) -> torch.Tensor:
        """``(n, D)`` fp32: per image, the mean of its prompt's unit-length text embeddings (zero without
        text), so that ``unit(x) @ mean_unit()[i]`` is the mean cosine of ``x`` to image i's prompt tokens.
        Summed in fp64, so padding and batch composition do not change the result."""
        unit = torch.nn.functional.normalize(self.embeds.double(), dim=-1) * self.mask[..., None]
        count = self.mask.sum(dim=1, keepdim=True).clamp(min=1)
        return (unit.sum(dim=1) / count).float()[self.owner.to(self.embeds.device)]


@dataclass(frozen=True)
class Method:
    """Base of every method config. Subclasses are frozen dataclasses with a ``name`` and ``summary``.

    A method says which [CLS]-attention rows it needs (``score_layers``), how many patch tokens it keeps
    for an image layout before any pixel is seen (``count``), and which ones (``select``). A method that
    reads the patch features says in which space (``feature_space``); a method that reads the prompt sets
    ``query_aware``.

    Every method also takes two keyword-only options, declared here once:

    - ``keep_positions`` (default ``False``): give each kept visual token the position id it has in the
      stock (unpruned) sequence, and every text token its stock id too, instead of packing the kept tokens
      together (see :mod:`hired.core.positions`);
    - ``keep_newline`` (default ``False``): keep LLaVA-NeXT's image-newline tokens (one per canvas row);
      the HiRED paper drops them. Families without newline tokens ignore it.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: whether the token count depends on the image content (known only after the vision tower ran);
    #: such a method cannot tell the processor its placeholder count: use ``hired.prepare_inputs``
    adaptive: ClassVar[bool] = False
    #: whether ``select`` reads the prompt each image belongs to (``prompts``); an encoder that never sees the
    #: prompt (vLLM's) cannot run such a method
    query_aware: ClassVar[bool] = False

    keep_positions: bool = dataclasses.field(default=False, kw_only=True)
    keep_newline: bool = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        check_option_types(self)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option."""

    def score_layers(self, info: ModelInfo) -> Mapping[str, int]:
        """Role → 0-based vision encoder layer whose attention scores (see :meth:`score_kind`) the method reads."""
        return {}

    def score_kind(self, info: ModelInfo) -> Literal["cls", "received"]:
        """The scores the method reads on this tower: its ``score`` option with ``"auto"`` resolved."""
        kind = getattr(self, "score", "auto")
        if kind == "auto":
            return "cls" if info.has_cls else "received"
        if kind == "cls" and not info.has_cls:
            raise ValueError(
                f"{type(self).__name__}(score='cls') reads [CLS] attention, but this vision tower has no [CLS] "
                "token; use score='received' (or 'auto')"
            )
        return kind

    def key_layers(self, info: ModelInfo) -> Mapping[str, int]:
        """Role → 0-based encoder layer whose keys ``(sum P, T, H * D)`` the method reads (merging methods)."""
        return {}

    def feature_space(self) -> Literal["vision", "projected"] | None:
        """Which patch features ``select`` reads: ``None`` (none), ``"vision"`` (the projector's input: the
        feature-layer outputs without [CLS], ``(sum P, T, Dv)``) or ``"projected"`` (the projector's output,
        the language model's input space, ``(sum P, T, D)``; the adapter then projects every patch)."""
        return None

    def fixed_options(self) -> dict[str, Any]:
        """Options that give this method a fixed count (for messages about an adaptive form)."""
        return {"budget": 0.2}

    def reads_pixels(self) -> bool:
        """Whether the vision step must give each layout its ``detail`` (the image's sharp-edge density, read
        from the pixels the tower is given) before :meth:`count` and :meth:`select`."""
        return False

    def count(self, layout: Layout) -> int:
        """Patch tokens kept for one image (image-newline tokens not included)."""
        raise NotImplementedError

    def total(self, layout: Layout) -> int:
        """The budget B = floor(budget * P * T) of one image of a fixed-budget method, and at least one
        token (where the image has one): every image of a prompt keeps a token, in every family and both
        runtimes (vLLM needs a placeholder per image, and a kept token is what places an image's stock ids
        with ``keep_positions``)."""
        return max(total_budget(self.budget, layout.num_partitions, layout.tokens), min(1, layout.num_valid))

    def partition_budgets(self, layout: Layout, scores: Mapping[str, torch.Tensor]) -> list[int]:
        """Budget of every partition of one image; ``scores[role]`` is ``(P, T)`` fp32."""
        raise NotImplementedError

    def select(
        self,
        layouts: list[Layout],
        scores: Mapping[str, torch.Tensor],
        info: ModelInfo,
        keys: Mapping[str, torch.Tensor] | None = None,
        *,
        features: torch.Tensor | None = None,
        prompts: Prompts | None = None,
    ) -> Selection:
        """Top-k by the ``"select"`` scores inside each partition's budget, over the whole batch.

        ``scores[role]`` is ``(sum P, T)`` fp32 for every partition of every image, in order;
        ``keys[role]`` is ``(sum P, T, H * D)`` for the roles of :meth:`key_layers`. Adapters pass
        ``features`` ``(sum P, T, Dv or D)`` (model dtype) only to a method whose :meth:`feature_space` is
        not ``None``, and ``prompts`` only to a ``query_aware`` one (``None`` there when an image was
        encoded without its prompt), so methods that need neither may leave both out of their signature.
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


def promised_counts(method: Method, layouts: list[Layout], keep: torch.Tensor) -> list[list[int]]:
    """Per-image lists of per-partition kept counts of a fixed-count ``method``'s ``(sum P, T)`` mask: for a
    batch of one-partition images the promised counts (known on the host, no device sync), else read from
    ``keep`` (:func:`kept_counts`)."""
    if not method.adaptive and all(lay.num_partitions == 1 for lay in layouts):
        return [[method.count(lay)] for lay in layouts]
    return kept_counts(layouts, keep)


def kept_counts(layouts: list[Layout], keep: torch.Tensor) -> list[list[int]]:
    """Per-image lists of per-partition kept counts of a ``(sum P, T)`` mask (one device sync)."""
    counts, out, start = keep.sum(dim=1).tolist(), [], 0
    for lay in layouts:
        out.append([int(c) for c in counts[start : start + lay.num_partitions]])
        start += lay.num_partitions
    return out


def check_rate(name: str, value: float, low_open: bool) -> None:
    """Raise unless ``value`` lies in (0, 1] (``low_open``) or [0, 1]."""
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)  # False for NaN
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
    if newline and method.keep_newline:
        count += newline_tokens(layout)
    return count


def newline_tokens(layout: Layout) -> int:
    """LLaVA-NeXT's image-newline tokens for an image: one per valid canvas row, or one after a lone full image."""
    return layout.valid_rows if layout.num_subimages else 1


def fixed_form(method: Method) -> str:
    """The config of ``method``'s fixed-count form, as written in messages: ``"HiRED(budget=0.2, adapt=0.0)"``."""
    options = ", ".join(f"{k}={v!r}" for k, v in method.fixed_options().items())
    return f"{type(method).__name__}({options})"


def adaptive_message(method: Method) -> str:
    """The error for asking an adaptive method for its count before the vision tower has run."""
    return (
        f"{type(method).__name__} keeps a content-dependent number of tokens, which is not known before the "
        "vision tower runs: build the inputs with hired.prepare_inputs(model, processor, images=..., text=...), "
        f"or give it a fixed budget, e.g. {fixed_form(method)}"
    )


def check_layer(name: str, value) -> None:
    """Raise unless ``value`` (an int or None, see :func:`check_option_types`) is ``None`` or non-negative."""
    if value is not None and value < 0:
        raise ValueError(f"{name} must be a non-negative layer index or None, got {value!r}")
