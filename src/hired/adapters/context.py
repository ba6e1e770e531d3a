"""What the transformers runtime keeps: the state ``apply`` decided for a model (shared by every call) and
the calling context's own data (:class:`CallContext`, one ``contextvars`` value per thread or task).

Nothing about one call is kept on the model: the last vision step of each applied model, the two-pass
encoding of ``hired.prepare_inputs``, the forward pass running now (``keep_positions`` and M-RoPE ids),
the prompt a query-aware method reads and the score hooks' recording all live in the calling context,
so one patched model may serve any number of threads at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hired.core.grid import Layout
from hired.engine import Plan
from hired.methods.base import Selection


class VisionStep:
    """What the transformers runtime does for one token layout (partitions, a merged grid): the score hooks,
    the model attributes it replaces, the language-model hooks for positions, and the selection of a
    batch. One instance per layout, registered for each family in :data:`hired.adapters.transformers.VISION_STEPS`."""

    tracks_forward: bool = False  # every forward pass is tracked (stock M-RoPE ids), not only with keep_positions

    def hooks(self, state: State):
        """The score hooks for ``state``'s plan, installed on its tower (:class:`hired.adapters.vision.ScoreHooks`)."""
        raise NotImplementedError

    def patches(self, state: State) -> dict[str, Any]:
        """Model attribute → replacement function ``fn(inner, state, *args, **kwargs)``."""
        raise NotImplementedError

    def language_hooks(self, state: State, language_model: nn.Module) -> list:
        """Hooks on the language model (positions of the kept tokens); returns their handles."""
        return []

    def select(self, inner: nn.Module, state: State, layouts, scores, keys, features, prompts, deep=()) -> tuple:
        """Select a batch of images again from what their first encoding recorded: ``(per-image features,
        record, per DeepStack level the kept rows of each image)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class CallContext:
    """The calling context's data; replaced, never changed in place (:func:`update`), so a copied context
    (a new thread or asyncio task) never sees another's changes.

    ``last``: ``id(state)`` → ``(state, record)``, the last vision step of each applied model;
    ``encoding``: while ``hired.prepare_inputs`` runs the processor, its encoding cache; ``forward``: the
    forward pass running now; ``prompt``: the prompt the next vision step reads (query-aware methods);
    ``recording``: what the score hooks record during the current tower forward; ``processing``: while the
    patched processor runs its image step, the image inputs the family adds to its output; ``carried``: the
    :class:`Carried` image inputs of the forward running now that its ``get_image_features`` call is not
    given (``Family.carried_kwargs``); ``visuals``: between the patched processor's image and video steps
    and its text step, what they made (:class:`Visuals`); ``plans``: ``id(state)`` → the plan this
    context's calls run instead of the applied one (``hired.options``)."""

    last: Mapping[int, tuple] = field(default_factory=dict)
    encoding: dict | None = None
    forward: Any = None
    prompt: Any = None
    recording: Any = None
    processing: Mapping | None = None
    carried: Any = None
    visuals: Any = None
    plans: Mapping[int, Plan] = field(default_factory=dict)


_CALL: ContextVar[CallContext] = ContextVar("hired_call", default=CallContext())  # noqa: B039 (frozen)


def current() -> CallContext:
    """The calling context's :class:`CallContext`."""
    return _CALL.get()


def update(**changes) -> None:
    """Replace fields of the calling context's :class:`CallContext`."""
    _CALL.set(dataclasses.replace(_CALL.get(), **changes))


@contextmanager
def holding(**changes) -> Iterator[None]:
    """Within the block the calling context's fields hold ``changes``; then those fields are put back."""
    before = {name: getattr(_CALL.get(), name) for name in changes}
    update(**changes)
    try:
        yield
    finally:
        update(**before)


class Calls:
    """Counts the calls inside the vision step, so ``remove`` can wait for them and refuse new ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self.closed = False

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            if self.closed:
                raise RuntimeError(
                    "hired.remove (or another hired.apply) ran on this model while this call was starting; "
                    "build the inputs again for the method now applied"
                )
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Refuse new calls and wait until the running ones are done."""
        with self._cond:
            self.closed = True
            self._cond.wait_for(lambda: self._active == 0)


@dataclass
class State:
    """What ``apply`` decided for one model: shared by every call, never changed by one."""

    applied: Plan  # the method checked against the model (hired.engine.make_plan)
    layers: nn.ModuleList  # the tower's transformer blocks
    step: VisionStep  # the vision step of the family's token layout
    processor: Any = None
    saved: dict[str, Any] = field(default_factory=dict)  # pre-existing instance attributes, restored by remove
    hooks: Any = None  # the ScoreHooks apply installed, removed by remove
    handles: list = field(default_factory=list)  # other hooks apply installed
    calls: Calls = field(default_factory=Calls)

    def __deepcopy__(self, memo):
        return self  # shared, never copied (it holds locks, hooks and the model's modules)

    @property
    def plan(self) -> Plan:
        """The plan of the calling context's calls: the applied one, or the one ``hired.options`` set."""
        return _CALL.get().plans.get(id(self), self.applied)

    method = property(lambda self: self.plan.method)
    family = property(lambda self: self.plan.family)
    geometry = property(lambda self: self.plan.geometry)
    info = property(lambda self: self.plan.info)
    roles = property(lambda self: self.plan.roles)
    key_roles = property(lambda self: self.plan.key_roles)
    score_kind = property(lambda self: self.plan.score_kind)  # "cls" or "received"

    def token_count(self, layout: Layout) -> int:
        return self.plan.token_count(layout)


@dataclass(frozen=True)
class Record:
    """One vision step: the layouts of its images, what was selected, the scores that decided it, and
    where the kept tokens sit in the stock sequence."""

    layouts: list[Layout]
    selection: Selection
    scores: dict[str, torch.Tensor]  # role → (sum P, T) fp32 [CLS] rows
    lengths: list[int]  # tokens each image gives the language model
    images: tuple[StockIndex, ...]  # where each image's tokens sit in its stock sequence
    # with keep_positions, once a prompt of exactly these images used it: (B, S) ids given, (B, S) placeholders
    positions: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class StockIndex:
    """One image's tokens in its stock sequence: ``index`` ``(n,)`` long, of a sequence of ``length`` (or,
    with ``stock``, the tokens of inputs the model gets stock, such as InternVL's video frames).

    Rides on the image's feature tensor (attribute ``_hired_stock``), so it follows the features into
    ``mm_encoder_outputs`` however the list of per-image tensors is reordered, repeated or cut."""

    index: torch.Tensor
    length: int
    mrope: torch.Tensor | None = None  # Qwen2.5-VL: (3, n) (t, h, w) offsets of the tokens from the image's first id
    stock: bool = False  # the tokens of stock inputs among the images' (InternVL's video frames), kept whole


STOCK = "_hired_stock"


@dataclass
class Forward:
    """One forward pass of a model with ``keep_positions``: its images' stock indices and placeholders."""

    state: State
    images: tuple[StockIndex, ...] | None = None
    record: Record | None = None  # the vision step that made these features, if exactly these
    image_mask: torch.Tensor | None = None  # (B, S) bool
    shift: torch.Tensor | None = None  # (B,) for a cache the language model creates


SHIFT = "_hired_position_shift"  # attribute of a generation cache: (B,) stock - packed ids, for decoding


PENDING = "_hired_pending"  # attribute of an image's features encoded without its prompt: a Pending


@dataclass(frozen=True)
class RawPrompt:
    """What the model's forward was given, for the vision step of exactly these ``pixel_values``."""

    pixel_values: Any
    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor | None


@dataclass(frozen=True)
class Pending:
    """One image encoded by a query-aware method without its prompt: what selecting it again needs.

    Rides on the image's feature tensor (attribute ``_hired_pending``); when the features reach the model's
    forward with a prompt (``mm_encoder_outputs``), the image is selected again for that prompt."""

    state: State
    layout: Layout
    scores: dict[str, torch.Tensor]  # role → (P, T)
    keys: dict[str, torch.Tensor]  # role → (P, T, H * D)
    features: torch.Tensor  # (P, T, Dv) the projector's input (Qwen: (N, D) merged tokens)
    deepstack: tuple[torch.Tensor, ...] = ()  # Qwen3-VL: (N, D) per DeepStack level


@dataclass(frozen=True)
class Visuals:
    """What the patched processor's image and video steps returned in one call, ``(outputs, replacement
    texts)`` each (``None``: that step did not run): its text step, which knows the prompts' order of images
    and videos, adds the family's :meth:`~hired.families.base.Family.video_inputs` to them."""

    images: tuple | None = None
    videos: tuple | None = None


@dataclass(frozen=True)
class Carried:
    """Image inputs a model's forward was given for exactly these ``pixel_values`` that it does not hand to
    ``get_image_features`` (InternVL's ``image_sizes``); its vision step takes them (:func:`take_carried`)."""

    pixel_values: Any
    inputs: Mapping[str, Any]


def take_carried(pixel_values) -> dict:
    """The carried image inputs of the forward whose vision step gets these ``pixel_values`` (the same
    tensor), or ``{}``; taken, so no later step can reuse them."""
    carried = current().carried
    if carried is None:
        return {}
    update(carried=None)
    if carried.pixel_values is not pixel_values:
        return {}
    return {name: value for name, value in carried.inputs.items() if value is not None}


IMAGES = "_hired_images"  # attribute of a joined pooler_output (InternVL): the per-image tensors it joins


def pooled(state: State, outs: list[torch.Tensor]):
    """A vision step's ``pooler_output``: one tensor per image, or for a family whose forward takes one
    tensor (``Family.joins_features``) their concatenation, carrying the per-image tensors (:func:`per_image`)."""
    if not state.family.joins_features:
        return outs
    joined = torch.cat(list(outs))
    setattr(joined, IMAGES, tuple(outs))
    return joined


def per_image(pooler_output) -> list:
    """The per-image feature tensors of a ``pooler_output`` made by :func:`pooled`."""
    images = getattr(pooler_output, IMAGES, None)
    return list(pooler_output) if images is None else list(images)


def remember(state: State, record: Record | None) -> None:
    """Make ``record`` the calling context's last vision step of ``state`` (``None`` forgets it)."""
    last = {k: v for k, v in current().last.items() if not v[0].calls.closed}
    if record is None:
        last.pop(id(state), None)
    else:
        last[id(state)] = (state, record)
    update(last=last)


def hand_on(state: State, record: Record) -> None:
    """Make ``record`` the last vision step of ``state`` and, inside one of its forwards, that forward's."""
    remember(state, record)
    forward = current().forward
    if forward is not None and forward.state is state:
        forward.images, forward.record = record.images, record


def attach_pending(
    state: State,
    outs: list[torch.Tensor],
    layouts: list[Layout],
    sizes: list[int],
    scores: dict,
    keys: dict,
    features: torch.Tensor,
    deep: list[torch.Tensor] = (),
) -> None:
    """Hang a :class:`Pending` on each image's output features: image ``i`` owns the next ``sizes[i]`` rows
    of ``features``, ``scores``, ``keys`` and each DeepStack level of ``deep`` (partitions, or Qwen's
    merged tokens)."""
    start = 0
    for out, layout, size in zip(outs, layouts, sizes):
        part = slice(start, start + size)
        setattr(
            out,
            PENDING,
            Pending(
                state,
                layout,
                {r: v[part] for r, v in scores.items()},
                {r: v[part] for r, v in keys.items()},
                features[part].detach(),
                tuple(ds[part].detach() for ds in deep),
            ),
        )
        start += size


def recall(state: State) -> Record | None:
    entry = current().last.get(id(state))
    return entry[1] if entry is not None and entry[0] is state else None


def with_argument(names: list[str], args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call with argument ``name`` replaced by ``value``."""
    if name in kwargs or name not in names[: len(args)]:
        return args, {**kwargs, name: value}
    at = names.index(name)
    return (*args[:at], value, *args[at + 1 :]), kwargs


def cache_of(kwargs: dict):
    """The generation cache among a forward's arguments (``cache`` in transformers 5.24, else
    ``past_key_values``)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def cache_length(cache) -> int:
    return cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
