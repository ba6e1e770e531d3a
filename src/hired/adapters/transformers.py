"""Adapter for Hugging Face transformers' LLaVA-NeXT, LLaVA-1.5 and LLaVA-OneVision (model and processor
instances). What differs between the families is asked of :mod:`hired.families`.

Instance attributes are set, nothing else is touched:

* ``<LlavaNextModel|LlavaModel|LlavaOnevisionModel>.get_image_features``: runs the vision tower with
  score hooks on the layers the method needs ([CLS] row, or attention received where the tower has no
  [CLS]), keeps the selected patches, projects only those and packs them in LLaVA's order (full image,
  then the stitched sub-image grid). OneVision's videos go through ``get_video_features``, untouched.
* ``<processor>.replace_image_token``: emits exactly as many ``<image>`` placeholders as the method keeps,
  computed from the image size alone, so ``model.generate(**processor(...))`` works unchanged;
  ``<processor>._process_images`` first rejects empty images with a clear error.

* ``<...Model>.get_placeholder_mask``: the stock check, with a hint on how to build
  inputs when the placeholders do not match the kept features.

``apply`` also installs, once, forward hooks on the q/k projections of the tower layers the method reads
and a forward pre-hook on the model (a text-only prompt clears ``last_selection``). Nothing about one
call is kept on the model: the hooks record into the current call's own context (``contextvars``), and
``last_selection`` / ``last_scores`` / the two-pass encoding of ``prepare_inputs`` live in the calling
thread's context, so one patched model may serve any number of threads at once. ``apply`` and ``remove``
wait for calls already inside the vision step to finish; a call that starts its vision step after
``remove`` began fails with a clear error. ``remove`` deletes every attribute and hook again, restoring
the class behaviour bit for bit.

Methods that read the patch features (``Method.feature_space``) get them as ``select(features=...)``:
the projector's input, or every patch projected (no autograd; the kept ones are projected again). A
query-aware method (``Method.query_aware``) gets ``select(prompts=...)``: the model's forward pre-hook
hands the prompt (``input_ids`` or ``inputs_embeds``, attention mask) to that pass's vision step through
the calling context, ``prepare_inputs`` tokenizes its texts; an image encoded without a prompt
(``get_image_features`` called directly) is selected for an empty one, its features carry what selecting
it again needs (attribute ``_hired_pending``), and the forward pre-hook selects it again for the prompt
it is given with in ``mm_encoder_outputs``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hired.adapters import qwen
from hired.adapters.vision import ScoreHooks, encoder_layers, has_cls_token
from hired.core.grid import Geometry, Layout
from hired.core.positions import stock_position_ids
from hired.families import Family, family_of
from hired.methods.base import (
    Method,
    ModelInfo,
    Prompts,
    Selection,
    adaptive_message,
    newline_tokens,
    num_image_tokens,
)
from hired.methods.pack import feature_inputs, keeps_newline, pack_features
from hired.selection import ImageSelection, PartitionSelection

_STATE = "_hired_state"
_MODEL_ATTRS = ("get_image_features", "get_placeholder_mask", "get_rope_index")
_PROC_ATTRS = ("replace_image_token", "_process_images")
# serialises apply / remove (on any model); calls in flight are waited for through _State.calls
_APPLY_LOCK = threading.RLock()


class _ProcessorPatch(functools.partial):
    """A processor attribute set by ``apply``. Deep copies share it, and so the adapter state: transformers
    deep-copies a processor's attributes to print or save it (and then drops the ones that are not its own)."""

    def __deepcopy__(self, memo):
        return self


class _ModelPatch(functools.partial):
    """A model attribute set by ``apply``: a deep copy would run the original model's tower, so it is refused."""

    def __deepcopy__(self, memo):
        raise TypeError(
            "this model has a hired method applied; deep-copy it before hired.apply (or after hired.remove) "
            "and apply the method to each copy"
        )


class _Calls:
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
class _State:
    """What ``apply`` decided for one model: shared by every call, never changed by one."""

    method: Method
    family: Family
    geometry: Geometry
    info: ModelInfo
    hidden_layers: list[int]  # indices into the tower's hidden_states that form the features
    roles: dict[str, int]
    key_roles: dict[str, int]
    encoder: nn.ModuleList
    score_kind: str  # "cls" or "received"
    processor: Any = None
    saved: dict[str, Any] = field(default_factory=dict)  # pre-existing instance attributes, restored by remove
    hooks: ScoreHooks | None = None  # installed by apply, removed by remove
    handles: list = field(default_factory=list)  # other hooks apply installed
    calls: _Calls = field(default_factory=_Calls)

    def __deepcopy__(self, memo):
        return self  # shared, never copied (it holds locks, hooks and the model's modules)

    @property
    def newline(self) -> bool:
        return self.family.newline

    def token_count(self, layout: Layout) -> int:
        return num_image_tokens(self.method, layout, self.newline)


@dataclass(frozen=True)
class _Record:
    """One vision step: the layouts of its images, what was selected, the scores that decided it, and
    where the kept tokens sit in the stock sequence."""

    layouts: list[Layout]
    selection: Selection
    scores: dict[str, torch.Tensor]  # role → (sum P, T) fp32 [CLS] rows
    lengths: list[int]  # tokens each image gives the language model
    images: tuple[_StockIndex, ...]  # where each image's tokens sit in its stock sequence
    # with keep_positions, once a prompt of exactly these images used it: (B, S) ids given, (B, S) placeholders
    positions: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class _StockIndex:
    """One image's tokens in its stock sequence: ``index`` ``(n,)`` long, of a sequence of ``length``.

    Rides on the image's feature tensor (attribute ``_hired_stock``), so it follows the features into
    ``mm_encoder_outputs`` however the list of per-image tensors is reordered, repeated or cut."""

    index: torch.Tensor
    length: int
    mrope: torch.Tensor | None = None  # Qwen2.5-VL: (3, n) (t, h, w) offsets of the tokens from the image's first id


_STOCK = "_hired_stock"


@dataclass
class _Forward:
    """One forward pass of a model with ``keep_positions``: its images' stock indices and placeholders."""

    state: _State
    images: tuple[_StockIndex, ...] | None = None
    record: _Record | None = None  # the vision step that made these features, if exactly these
    image_mask: torch.Tensor | None = None  # (B, S) bool
    shift: torch.Tensor | None = None  # (B,) for a cache the language model creates


# the last vision step of each applied state, per thread (per contextvars context): id(state) → (state, record)
_LAST: ContextVar[dict | None] = ContextVar("hired_last", default=None)
# while hired.prepare_inputs runs the processor in this context: {"model": inner, id(image inputs): encoding}
_ENCODING: ContextVar[dict | None] = ContextVar("hired_encoding", default=None)
# the forward pass running in this context (keep_positions)
_FORWARD: ContextVar[_Forward | None] = ContextVar("hired_forward", default=None)
_SHIFT = "_hired_position_shift"  # attribute of a generation cache: (B,) stock - packed ids, for decoding
# query-aware methods: the prompt of the vision step about to run in this context (a _RawPrompt the model's
# forward pre-hook saw, or the Prompts hired.prepare_inputs built), taken (and cleared) by that step
_PROMPT: ContextVar[Any] = ContextVar("hired_prompt", default=None)
_PENDING = "_hired_pending"  # attribute of an image's features encoded without its prompt: a _Pending


@dataclass(frozen=True)
class _RawPrompt:
    """What the model's forward was given, for the vision step of exactly these ``pixel_values``."""

    pixel_values: Any
    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor | None


@dataclass(frozen=True)
class _Pending:
    """One image encoded by a query-aware method without its prompt: what selecting it again needs.

    Rides on the image's feature tensor (attribute ``_hired_pending``); when the features reach the model's
    forward with a prompt (``mm_encoder_outputs``), the image is selected again for that prompt."""

    state: _State
    layout: Layout
    scores: dict[str, torch.Tensor]  # role → (P, T)
    keys: dict[str, torch.Tensor]  # role → (P, T, H * D)
    features: torch.Tensor  # (P, T, Dv) the projector's input (Qwen: (N, D) merged tokens)
    deepstack: tuple[torch.Tensor, ...] = ()  # Qwen3-VL: (N, D) per DeepStack level


def _remember(state: _State, record: _Record | None) -> None:
    """Make ``record`` the calling context's last vision step of ``state`` (``None`` forgets it)."""
    last = {k: v for k, v in (_LAST.get() or {}).items() if not v[0].calls.closed}
    if record is None:
        last.pop(id(state), None)
    else:
        last[id(state)] = (state, record)
    _LAST.set(last)


def _hand_on(state: _State, record: _Record) -> None:
    """Make ``record`` the last vision step of ``state`` and, inside one of its forwards, that forward's."""
    _remember(state, record)
    forward = _FORWARD.get()
    if forward is not None and forward.state is state:
        forward.images, forward.record = record.images, record


def _attach_pending(
    state: _State,
    outs: list[torch.Tensor],
    layouts: list[Layout],
    sizes: list[int],
    scores: dict,
    keys: dict,
    features: torch.Tensor,
    deep: list[torch.Tensor] = (),
) -> None:
    """Hang a :class:`_Pending` on each image's output features: image ``i`` owns the next ``sizes[i]`` rows
    of ``features``, ``scores``, ``keys`` and each DeepStack level of ``deep`` (partitions, or Qwen's
    merged tokens)."""
    start = 0
    for out, layout, size in zip(outs, layouts, sizes):
        part = slice(start, start + size)
        setattr(
            out,
            _PENDING,
            _Pending(
                state,
                layout,
                {r: v[part] for r, v in scores.items()},
                {r: v[part] for r, v in keys.items()},
                features[part].detach(),
                tuple(ds[part].detach() for ds in deep),
            ),
        )
        start += size


def _recall(state: _State) -> _Record | None:
    entry = (_LAST.get() or {}).get(id(state))
    return entry[1] if entry is not None and entry[0] is state else None


# --------------------------------------------------------------------------------------------- inspection


def _inner_model(model: nn.Module) -> tuple[nn.Module, Family]:
    return family_of(model)


def _build_state(model: nn.Module, processor, method: Method) -> tuple[nn.Module, _State]:
    """Check everything and build the adapter state. Raises before anything is modified."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be a hired method config such as hired.HiRED(...), got {method!r}")
    inner, family = _inner_model(model)
    config = inner.config
    tower = family.tower(inner)
    has_cls = has_cls_token(tower)
    family.check_config(config, has_cls)
    info, hidden_layers = family.model_info(config, has_cls)
    num_layers = info.num_layers
    roles = dict(method.score_layers(info))
    key_roles = dict(method.key_layers(info))
    kind = method.score_kind(info)
    family.check_method(method)
    for role, layer in [*roles.items(), *key_roles.items()]:
        if not 0 <= layer < num_layers:
            raise ValueError(f"{role} layer {layer} is out of range: the vision tower has layers 0..{num_layers - 1}")
    geometry = family.geometry(config)
    if processor is not None:
        family.check_processor(processor, geometry, config)
        owner = processor.__dict__.get(_STATE)
        if owner is not None and owner is not inner.__dict__.get(_STATE):
            raise ValueError(
                "this processor already serves hired on another model; call hired.remove on that model "
                "first, or use a separate processor (processors are cheap to load)"
            )
    encoder = encoder_layers(tower, num_layers)
    state = _State(method, family, geometry, info, hidden_layers, roles, key_roles, encoder, kind, processor=processor)
    return inner, state


# ------------------------------------------------------------------------------------------- public API


def apply(model: nn.Module, processor, method: Method) -> nn.Module:
    """Apply a token-reduction ``method`` to a LLaVA-NeXT / LLaVA-1.5 / LLaVA-OneVision ``model`` and its
    ``processor``, in place.

    ``processor`` may be ``None`` when inputs are built elsewhere (they must then hold the method's
    placeholder count). Applying again replaces the previous method (after the calls using it are done).
    On any error nothing is changed. Returns ``model``.
    """
    inner, state = _build_state(model, processor, method)
    with _APPLY_LOCK:
        old = getattr(inner, _STATE, None)
        if old is not None:
            remove(model, old.processor)
        hooks = qwen.QwenScoreHooks if state.family.mrope else ScoreHooks
        state.hooks = hooks(state.encoder, state.info.num_heads, state.roles, state.key_roles, kind=state.score_kind)
        state.handles.append(
            inner.register_forward_pre_hook(
                functools.partial(_on_forward, state, _positional_names(inner)), with_kwargs=True
            )
        )
        lm = inner.language_model
        if state.family.mrope:  # kept tokens always keep their stock (t, h, w) ids
            state.handles.append(
                lm.register_forward_pre_hook(functools.partial(_mrope_positions, state), with_kwargs=True)
            )
            patches = {
                "get_image_features": _qwen_image_features,
                "get_placeholder_mask": _placeholder_mask,
                "get_rope_index": qwen.rope_index,
            }
            if state.family.videos_via_image_features:  # Qwen3-VL: keep videos off the image path
                patches["get_video_features"] = _qwen_video_features
        else:
            if method.keep_positions:
                state.handles.append(
                    lm.register_forward_pre_hook(functools.partial(_stock_positions, state), with_kwargs=True)
                )
                state.handles.append(lm.register_forward_hook(_keep_shift))
            patches = {"get_image_features": _image_features, "get_placeholder_mask": _placeholder_mask}
        for name, fn in patches.items():
            state.saved[name] = inner.__dict__.get(name)
            patch = _ModelPatch(fn, inner, state)
            # generate() passes get_image_features the inputs its signature names (OneVision: batch_num_images)
            patch.__signature__ = inspect.signature(getattr(inner, name))
            inner.__dict__[name] = patch
        if processor is not None:
            patches = {"replace_image_token": _replace_image_token, "_process_images": _checked_process_images}
            for name, fn in patches.items():
                state.saved[name] = processor.__dict__.get(name)
                processor.__dict__[name] = _ProcessorPatch(fn, processor, state)
            processor.__dict__[_STATE] = state
        inner.__dict__[_STATE] = state
    return model


def remove(model: nn.Module, processor=None) -> nn.Module:
    """Undo ``apply``: the model (and the processor it was applied with, or ``processor``) behave as stock.

    Waits for calls already inside the vision step; one that reaches it later fails with a clear error.
    """
    inner, _ = _inner_model(model)
    with _APPLY_LOCK:
        state = inner.__dict__.pop(_STATE, None)
        if state is None:
            raise ValueError("no hired method is applied to this model")
        for name in _MODEL_ATTRS:
            _restore(inner, name, state.saved.get(name))
        for proc in {id(p): p for p in (state.processor, processor) if p is not None}.values():
            if proc.__dict__.get(_STATE) is state:
                del proc.__dict__[_STATE]
                for name in _PROC_ATTRS:
                    _restore(proc, name, state.saved.get(name))
        state.calls.close()
        state.hooks.remove()
        for handle in state.handles:
            handle.remove()
        state.handles.clear()
    return model


def prepare_inputs(model: nn.Module, processor, images=None, text=None, *, query_text=None, **kwargs):
    """Model inputs built in two passes: encode the images first, then write the prompt with as many
    ``<image>`` placeholders as the method kept for each. Works for every method and is the way to run
    an adaptive one (PruMerge, PruMerge+ without a budget), whose count is unknown before the encoder.

    Takes the processor's arguments (``return_tensors="pt"``, ``padding=True``, ...). The result holds
    the text inputs and ``mm_encoder_outputs`` instead of pixel values, for ``model.generate(**inputs)``
    or ``model(**inputs)``; the images are encoded exactly once. A query-aware method (CDPruner) selects
    each image's tokens for the prompt in ``text`` that holds its ``<image>`` (the prompt's text tokens as
    the tokenizer gives them, embedded by the model's input embedding layer); ``query_text`` (one text per
    prompt, with the same ``<image>`` tokens) gives other texts for that, e.g. the prompts without the
    continuation a log-likelihood is scored on.
    """
    state = _applied_state(model)
    if processor is None or processor.__dict__.get(_STATE) is not state:
        raise ValueError("prepare_inputs needs the processor that hired.apply was given with this model")
    inner, _ = _inner_model(model)
    encoding = {"model": inner, "state": state}
    query = text if query_text is None else query_text
    if state.method.query_aware and query is not None:
        encoding["prompts"] = _prompts_from_text(inner, processor, query)
    token = _ENCODING.set(encoding)
    try:
        inputs = processor(images=images, text=text, **kwargs)
        encoded = encoding.get("last")
    finally:
        _ENCODING.reset(token)
    if encoded is not None:
        for key in ("pixel_values", *state.family.image_kwargs()):
            if key not in state.family.position_kwargs():  # Qwen2.5-VL's positions need image_grid_thw
                inputs.pop(key, None)
        inputs["mm_encoder_outputs"] = {"image": encoded}
    return inputs


def _restore(obj, name: str, saved) -> None:
    if saved is None:
        obj.__dict__.pop(name, None)
    else:
        obj.__dict__[name] = saved


def _applied_state(model: nn.Module, required: bool = True) -> _State | None:
    """The adapter state of ``model``; with ``required``, an error when no method is applied."""
    inner, _ = _inner_model(model)
    state = inner.__dict__.get(_STATE)
    if state is None and required:
        raise ValueError("no hired method is applied to this model")
    return state


def applied_method(model: nn.Module) -> Method | None:
    """The method currently applied to ``model``, or ``None``."""
    state = _applied_state(model, required=False)
    return None if state is None else state.method


def last_selection(model: nn.Module) -> list[ImageSelection]:
    """What the calling thread's last vision step on ``model`` kept, one entry per image (in the order the
    images were given).

    Per thread: every thread (every ``contextvars`` context) sees its own last call, whatever other
    threads run on the same model. Empty when this thread has seen no image since ``apply``, after a
    text-only prompt, or when no method is applied.
    """
    state = _applied_state(model, required=False)
    record = None if state is None else _recall(state)
    if record is None:
        return []
    keep = record.selection.keep.cpu()
    newline = keeps_newline(state.method, state.newline)
    positions = [None] * len(record.layouts)
    if record.positions is not None:
        ids, mask = record.positions
        if ids.dim() == 3:  # Qwen2.5-VL: (3 or 4, B, S) → one (t, h, w) triple per token
            positions = [p.tolist() for p in ids[-3:][:, mask].T.cpu().split(record.lengths)]
        else:
            positions = [p.tolist() for p in ids[mask].cpu().split(record.lengths)]
    out, start = [], 0
    for layout, budgets, ids in zip(record.layouts, record.selection.budgets, positions):
        p = layout.num_partitions
        parts = [
            PartitionSelection(
                kept=torch.nonzero(keep[start + i]).flatten().tolist(),
                budget=budgets[i],
                grid=layout.partition_shape,
                valid=layout.valid_counts[i],
            )
            for i in range(p)
        ]
        out.append(
            ImageSelection(
                image_size=layout.image_size,
                grid=layout.grid,
                partitions=parts,
                num_tokens=sum(budgets) + (newline_tokens(layout) if newline else 0),
                num_tokens_stock=state.family.stock_tokens(layout),
                position_ids=ids,
            )
        )
        start += p
    return out


def last_scores(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The attention scores of the calling thread's last vision step, one dict per image (as
    ``last_selection``, and empty when it is).

    Each dict maps a method's score role (HiRED: ``"budget"``, ``"select"``) to a ``(P, T)`` fp32 CPU
    tensor over the T patches of each of the image's P partitions: the [CLS] row summed over heads, or
    with the received-attention score (towers without [CLS]) the attention each patch receives, averaged
    over the queries and summed over heads.
    """
    state = _applied_state(model, required=False)
    record = None if state is None else _recall(state)
    if record is None:
        return []
    sizes = [layout.num_partitions for layout in record.layouts]
    per_role = {role: s.detach().float().cpu().split(sizes) for role, s in record.scores.items()}
    return [
        {role: parts[i][:, : layout.tokens] for role, parts in per_role.items()}
        for i, layout in enumerate(record.layouts)
    ]


def score_kind(model: nn.Module) -> str | None:
    """The attention score the applied method reads on ``model``'s tower (``"cls"``: the [CLS] row,
    ``"received"``: the attention each patch receives), or ``None`` when no method is applied."""
    state = _applied_state(model, required=False)
    return None if state is None else state.score_kind


def score_layers(model: nn.Module) -> dict[str, int]:
    """Role → vision encoder layer whose [CLS] attention the applied method reads (``{}`` if none is)."""
    state = _applied_state(model, required=False)
    return {} if state is None else dict(state.roles)


# ---------------------------------------------------------------------------------------- the patches


def _checked_process_images(processor, state: _State, images, **kwargs):
    """The processor's own image step, after checking that no image is empty (one clear error)."""
    for i, image in enumerate(_flat_images(images)):
        size = getattr(image, "size", None)
        if isinstance(size, tuple):  # PIL: (width, height)
            empty = 0 in size
        else:
            shape = getattr(image, "shape", None)
            empty = shape is not None and 0 in tuple(shape)
        if empty:
            raise ValueError(f"image {i} has zero size ({size if isinstance(size, tuple) else tuple(shape)})")
    original = state.saved.get("_process_images") or functools.partial(type(processor)._process_images, processor)
    return original(images, **kwargs)


def _flat_images(images) -> list:
    if isinstance(images, (list, tuple)):
        return [leaf for item in images for leaf in _flat_images(item)]
    return [images]


def _replace_image_token(processor, state: _State, image_inputs: dict, image_idx: int, **kwargs) -> str:
    """Placeholders for one image: the method's count for this image size (adaptive methods: the count the
    model gave it, when ``hired.prepare_inputs`` drives the processor)."""
    layout = state.family.processor_layout(state.geometry, image_inputs, image_idx)
    encoding = _ENCODING.get()
    if encoding is not None:
        return processor.image_token * len(_encode_in_processor(encoding, image_inputs).pooler_output[image_idx])
    if state.method.adaptive:
        raise ValueError(adaptive_message(state.method))
    return processor.image_token * state.token_count(layout)


def _encode_in_processor(encoding: dict, image_inputs: dict):
    """Encode the processor's images with the model once (``hired.prepare_inputs``); cached per batch in
    ``encoding``, the calling context's own."""
    key = id(image_inputs)
    if key not in encoding:
        inner = encoding["model"]
        param = next(encoding["state"].family.tower(inner).parameters())
        pixel_values = image_inputs["pixel_values"]
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack([torch.as_tensor(pv) for pv in pixel_values])
        pixel_values = torch.as_tensor(pixel_values).to(param.device, param.dtype)
        extra = {
            name: torch.as_tensor(image_inputs[name]).to(param.device)
            for name in encoding["state"].family.image_kwargs()
            if image_inputs.get(name) is not None
        }
        prompt = _PROMPT.set(encoding.get("prompts"))
        try:
            with torch.no_grad():
                encoding[key] = inner.get_image_features(pixel_values=pixel_values, **extra)
        finally:
            _PROMPT.reset(prompt)
        encoding["last"] = encoding[key]
    return encoding[key]


def _image_features(
    inner: nn.Module,
    state: _State,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | None = None,
    vision_feature_layer=None,
    vision_feature_select_strategy: str | None = None,
    **kwargs,
):
    """Replacement for ``get_image_features``: encode, select, project the kept patches, pack.

    Returns the tower's output with ``pooler_output`` a list of ``(tokens_i, hidden)`` per image.
    """
    config = inner.config
    if vision_feature_layer is not None and vision_feature_layer != config.vision_feature_layer:
        raise ValueError("hired was applied for the config's vision_feature_layer; pass None or the same value")
    if vision_feature_select_strategy not in (None, config.vision_feature_select_strategy):
        raise ValueError(
            "hired was applied for the config's vision_feature_select_strategy; pass None or the same value"
        )
    extra = {name: kwargs.pop(name) for name in state.family.image_kwargs() if name in kwargs}
    aspect = kwargs.pop("vision_aspect_ratio", None)
    if aspect is not None and aspect != getattr(config, "vision_aspect_ratio", None):
        raise ValueError("hired was applied for the config's vision_aspect_ratio; pass None or the same value")
    pixel_values_given = pixel_values
    layouts, pixel_values = state.family.batch_layouts(state.geometry, pixel_values, image_sizes, extra)
    kwargs.pop("return_dict", None)
    kwargs["output_hidden_states"] = True
    with state.calls.running(), state.hooks.recording() as rec:
        tower_out = inner.vision_tower(pixel_values, return_dict=True, **kwargs)
    prefix = state.family.prefix_tokens(config)  # [CLS], when the features drop it
    feats = torch.cat([tower_out.hidden_states[i][:, prefix:] for i in state.hidden_layers], dim=-1)  # (sum P, T, Dv)
    tokens = layouts[0].tokens
    if feats.shape[1] != tokens:
        raise ValueError(f"the vision tower gave {feats.shape[1]} patch tokens per partition, expected {tokens}")
    missing = sorted(set(state.roles) - set(rec.rows)) + sorted(set(state.key_roles) - set(rec.keys))
    if missing:
        raise RuntimeError(f"the vision tower's forward did not reach the hooked layers for {', '.join(missing)}")
    scores = {role: row[:, -tokens:] for role, row in rec.rows.items()}
    keys = {role: k[:, -tokens:] for role, k in rec.keys.items()}
    prompts = _take_prompt(inner, state, layouts, pixel_values_given) if state.method.query_aware else None
    tower_out.pooler_output, record = _select_and_pack(inner, state, layouts, scores, keys, feats, prompts)
    _hand_on(state, record)
    if state.method.query_aware and prompts is None:  # encoded without its prompt: select again with one
        _attach_pending(
            state, tower_out.pooler_output, layouts, [lay.num_partitions for lay in layouts], scores, keys, feats
        )
    tower_out._hired_record = record
    return tower_out


def _select_and_pack(
    inner: nn.Module,
    state: _State,
    layouts: list[Layout],
    scores: dict,
    keys: dict,
    feats: torch.Tensor,
    prompts: Prompts | None,
) -> tuple[list[torch.Tensor], _Record]:
    """Select the kept patches of ``feats`` ``(sum P, T, Dv)``, project them and pack them in LLaVA's order.

    Returns one ``(tokens_i, D)`` tensor per image (each carrying its stock indices) and the step's record.
    A method reading projected features gets every patch projected (without autograd) for its choice; the
    kept ones are projected again from ``feats``, so they equal what any other method keeping them gives.
    """
    method = state.method
    extra: dict[str, Any] = feature_inputs(method, feats, inner.multi_modal_projector)
    if method.query_aware:
        extra["prompts"] = prompts
    selection = method.select(layouts, scores, state.info, keys=keys, **extra)

    packed = pack_features(method, layouts, selection, feats, state.newline)
    images = tuple(
        _StockIndex(index, n) for index, n in zip(packed.stock_index.split(packed.lengths), packed.stock_lengths)
    )
    record = _Record(layouts, selection, scores, packed.lengths, images)
    projected = inner.multi_modal_projector(packed.features)  # (L, D)
    if keeps_newline(method, state.newline):
        newline = inner.image_newline.to(projected.dtype)
        projected = torch.where(packed.is_newline[:, None], newline, projected)
    out = list(projected.split(packed.lengths))
    for features, image in zip(out, images):
        setattr(features, _STOCK, image)  # travels with the features into mm_encoder_outputs
    return out, record


# ------------------------------------------------------------------------------------------- Qwen2.5-VL


def _qwen_image_features(
    inner: nn.Module, state: _State, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs
):
    """Replacement for Qwen2.5-VL's ``get_image_features``: run the tower (merger included) with the score
    hooks, select merged tokens per image, hand on the kept ones in raster order. A query-aware method
    reads the prompt of the forward this step runs in (or ``hired.prepare_inputs``'); encoded without one,
    each image is selected again when its features reach the model with its prompt (:func:`_reselect`).

    Returns the tower's output with ``pooler_output`` a list of ``(kept_i, D)`` per image."""
    layouts, _ = state.family.batch_layouts(state.geometry, pixel_values, image_grid_thw, {})
    visual = inner.visual
    kwargs.pop("return_dict", None)
    with state.calls.running(), state.hooks.recording() as rec:
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw, **kwargs)
    missing = sorted(set(state.roles) - set(rec.rows)) + sorted(set(state.key_roles) - set(rec.keys))
    if missing:
        raise RuntimeError(f"the vision tower's forward did not reach the hooked blocks for {', '.join(missing)}")
    merged = out.pooler_output  # (sum N, D) raster order, image after image
    unit = visual.spatial_merge_size**2
    order = qwen.merged_order(visual, image_grid_thw)
    scores = {r: qwen.pool_to_merged(v, unit, order, "sum") for r, v in rec.rows.items()}  # (sum N,)
    keys = {r: qwen.pool_to_merged(v, unit, order, "mean") for r, v in rec.keys.items()}  # (sum N, H * D)
    prompts = _take_prompt(inner, state, layouts, pixel_values) if state.method.query_aware else None
    deep = [ds[order.to(ds.device)] for ds in (getattr(out, "deepstack_features", None) or [])]  # raster order
    outs, record, deep_kept = _qwen_select(state, layouts, merged, scores, keys, prompts, deep)
    _hand_on(state, record)
    if state.method.query_aware and prompts is None:  # encoded without its prompt: select again with one
        _attach_pending(state, outs, layouts, [lay.tokens for lay in layouts], scores, keys, merged, deep)
    out.pooler_output = outs
    if deep:  # Qwen3-VL: each DeepStack level keeps the same tokens, per image (as get_image_features splits them)
        out.deepstack_features = deep_kept
    out._hired_record = record
    return out


def _qwen_video_features(
    inner: nn.Module,
    state: _State,
    pixel_values_videos: torch.Tensor,
    video_grid_thw: torch.Tensor | None = None,
    **kwargs,
):
    """Replacement for Qwen3-VL's ``get_video_features``, which calls ``get_image_features``: videos run the
    stock image features (the class's own, not hired's replacement), untouched."""
    original = functools.partial(type(inner).get_image_features, inner)
    return original(pixel_values_videos, video_grid_thw, **kwargs)


def _qwen_select(
    state: _State,
    layouts: list[Layout],
    merged: torch.Tensor,
    scores: dict,
    keys: dict,
    prompts: Prompts | None,
    deep: list[torch.Tensor] = (),
) -> tuple[list[torch.Tensor], _Record, list]:
    """Select the merged tokens of a batch of images (``merged`` ``(sum N, D)``, ``scores[role]`` ``(sum N,)``,
    ``keys[role]`` ``(sum N, H * D)``, image after image, raster order): one ``(kept_i, D)`` tensor per
    image, carrying its stock indices and M-RoPE offsets, the step's record, and per DeepStack level of
    ``deep`` (``(sum N, D)`` each, Qwen3-VL) a tuple of the images' kept rows."""
    width = max(lay.tokens for lay in layouts)
    outs: list = [None] * len(layouts)
    keep = torch.zeros(len(layouts), width, dtype=torch.bool)
    budgets: list = [None] * len(layouts)
    padded = {r: torch.zeros(len(layouts), width) for r in scores}
    index_of: list = [None] * len(layouts)  # each image's kept rows of merged
    start = 0
    selected = qwen.select_merged(state.method, state.info, layouts, merged, scores, keys, prompts)
    for i, (layout, (features, index, kept, budget)) in enumerate(zip(layouts, selected)):
        tokens, cols = layout.tokens, layout.partition_shape[1]
        setattr(features, _STOCK, _StockIndex(index, tokens, qwen.mrope_offsets(index.cpu(), cols)))
        outs[i] = features
        keep[i, :tokens] = kept.cpu()
        budgets[i] = budget
        for r in scores:
            padded[r][i, :tokens] = scores[r][start : start + tokens].float().cpu()
        index_of[i] = start + index
        start += tokens
    images = tuple(getattr(f, _STOCK) for f in outs)
    deep_kept = [tuple(ds[rows.to(ds.device)] for rows in index_of) for ds in deep]
    return (
        outs,
        _Record(layouts, Selection(keep=keep, budgets=budgets), padded, [len(f) for f in outs], images),
        deep_kept,
    )


def _mrope_positions(state: _State, _module, args, kwargs):
    """Forward pre-hook of Qwen2.5-VL's language model: in a prompt pass, give each kept visual token its
    stock (t, h, w) ids (text ids and decoding are the stock ones already, from ``get_rope_index``)."""
    if _cache_length(_cache_of(kwargs)):
        return None
    forward = _FORWARD.get()
    position_ids = kwargs.get("position_ids")
    if (
        forward is None
        or forward.state is not state
        or forward.images is None
        or forward.image_mask is None
        or position_ids is None
    ):
        return None
    if position_ids.dim() != 3:
        raise ValueError(f"Qwen2.5-VL needs (3 or 4, batch, sequence) position_ids, got {tuple(position_ids.shape)}")
    kwargs["position_ids"] = qwen.kept_positions(position_ids, forward.image_mask, [i.mrope for i in forward.images])
    if forward.record is not None:
        _remember(state, dataclasses.replace(forward.record, positions=(kwargs["position_ids"], forward.image_mask)))
    return args, kwargs


# ---------------------------------------------------------------------------------- query-aware methods


def _take_prompt(inner: nn.Module, state: _State, layouts: list[Layout], pixel_values) -> Prompts | None:
    """The prompts of this vision step's images, or ``None`` when it runs without them (``get_image_features``
    called directly). Takes the calling context's prompt, so no later step can reuse it."""
    raw = _PROMPT.get()
    if raw is None:
        return None
    _PROMPT.set(None)
    if isinstance(raw, _RawPrompt):
        if raw.pixel_values is not pixel_values:
            return None  # a prompt for other images (a forward that never reached its vision step)
        prompts = _prompts_from_inputs(
            inner,
            raw.input_ids,
            raw.inputs_embeds,
            raw.attention_mask,
            [state.token_count(layout) for layout in layouts],
        )
    else:
        prompts = raw
    if prompts.owner.numel() != len(layouts):
        raise ValueError(
            f"{type(state.method).__name__} reads the prompt of each image, but the prompts hold "
            f"{prompts.owner.numel()} image placeholders for {len(layouts)} images"
        )
    return prompts


def _prompts_from_inputs(inner: nn.Module, input_ids, inputs_embeds, attention_mask, counts: list[int]) -> Prompts:
    """:class:`Prompts` of a batch of model inputs whose images give ``counts[i]`` tokens each, in order:
    image i is the one whose placeholder run starts at placeholder ``sum(counts[:i])`` (row-major)."""
    embed = inner.get_input_embeddings()
    image_id = inner.config.image_token_id
    with torch.no_grad():
        if input_ids is not None:
            image = input_ids == image_id
            embeds = embed(input_ids)
        else:
            embeds = inputs_embeds
            token = embed(torch.full((), image_id, dtype=torch.long, device=embeds.device))
            image = (embeds == token).all(dim=-1)
    mask = ~image
    if attention_mask is not None and attention_mask.dim() == 2:
        mask &= attention_mask.to(mask.device).bool()
    ends = image.sum(dim=1).cumsum(dim=0)  # placeholders up to the end of each row
    starts = torch.tensor([0, *counts[:-1]], dtype=torch.long).cumsum(0).to(ends.device)
    owner = torch.searchsorted(ends, starts, right=True).clamp(max=image.shape[0] - 1)
    return Prompts(embeds=embeds.detach(), mask=mask, owner=owner)


def _prompts_from_text(inner: nn.Module, processor, text) -> Prompts:
    """:class:`Prompts` of the prompts given to ``hired.prepare_inputs``: each ``<image>`` of the texts, in
    order, is one image, and its prompt is the text's tokens (the tokenizer's, as the processor makes them)."""
    texts = [text] if isinstance(text, str) else list(text)
    ids = [list(processor.tokenizer(t)["input_ids"]) for t in texts]
    width = max((len(row) for row in ids), default=0)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    attention = torch.zeros(len(ids), width, dtype=torch.bool)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[r, : len(row)] = True
    image = (input_ids == inner.config.image_token_id) & attention
    device = inner.get_input_embeddings().weight.device
    with torch.no_grad():
        embeds = inner.get_input_embeddings()(input_ids.to(device))
    owner = torch.repeat_interleave(torch.arange(len(ids)), image.sum(dim=1))
    return Prompts(embeds=embeds, mask=(attention & ~image).to(device), owner=owner.to(device))


def _reselect(inner: nn.Module, state: _State, encoded, given: dict):
    """``encoded`` (``mm_encoder_outputs["image"]``) with every image that a query-aware method encoded
    without its prompt selected again for the prompt it sits in; ``None`` when there is none."""
    outs = list(encoded.pooler_output)
    pending = [getattr(f, _PENDING, None) for f in outs]
    idx = [i for i, p in enumerate(pending) if p is not None and p.state is state]
    if not idx:
        return None
    prompts = _prompts_from_inputs(
        inner, given.get("input_ids"), given.get("inputs_embeds"), given.get("attention_mask"), [len(f) for f in outs]
    )
    picked = [pending[i] for i in idx]
    layouts = [p.layout for p in picked]
    scores = {r: torch.cat([p.scores[r] for p in picked]) for r in picked[0].scores}
    keys = {r: torch.cat([p.keys[r] for p in picked]) for r in picked[0].keys}
    feats = torch.cat([p.features for p in picked])
    sub = Prompts(
        embeds=prompts.embeds, mask=prompts.mask, owner=prompts.owner[torch.tensor(idx, device=prompts.owner.device)]
    )
    with state.calls.running():
        deep_fresh = []
        if state.family.mrope:  # merged tokens: (N,) scores, (N, D) features per image
            deep = [torch.cat(level) for level in zip(*(p.deepstack for p in picked))]
            fresh, record, deep_fresh = _qwen_select(state, layouts, feats, scores, keys, sub, deep)
        else:
            fresh, record = _select_and_pack(inner, state, layouts, scores, keys, feats, sub)
    for i, features in zip(idx, fresh):
        if len(features) != len(outs[i]):
            raise RuntimeError(
                f"{type(state.method).__name__} selected {len(features)} tokens again for an image "
                f"that had {len(outs[i])}"
            )
        outs[i] = features.to(outs[i].device, outs[i].dtype)
        setattr(outs[i], _STOCK, getattr(features, _STOCK))
    _remember(state, record)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    fresh_encoded = BaseModelOutputWithPooling(pooler_output=outs)
    if deep_fresh:  # Qwen3-VL: the DeepStack levels of the images selected again, the others as given
        given_levels = getattr(encoded, "deepstack_features", None)
        if given_levels is None:
            raise ValueError(
                f"{state.family.title}'s mm_encoder_outputs['image'] needs the deepstack_features that "
                "get_image_features returned, one entry per image in every level"
            )
        levels = [list(level) for level in given_levels]
        for level, kept_rows in zip(levels, deep_fresh):
            for i, rows in zip(idx, kept_rows):
                level[i] = rows.to(outs[i].device)
        fresh_encoded = copy.copy(encoded)
        fresh_encoded.pooler_output = outs
        fresh_encoded.deepstack_features = [tuple(level) for level in levels]
    if len(idx) == len(outs):
        fresh_encoded._hired_record = record
    return fresh_encoded


def _placeholder_mask(inner: nn.Module, state: _State, *args, **kwargs):
    """The stock placeholder check; when placeholders and kept features disagree, say how to build inputs."""
    original = state.saved.get("get_placeholder_mask") or functools.partial(type(inner).get_placeholder_mask, inner)
    try:
        mask = original(*args, **kwargs)
    except ValueError as err:
        raise ValueError(
            f"{err}. {type(state.method).__name__} sets how many visual tokens each image keeps: build the inputs "
            "with the processor given to hired.apply (model.generate(**processor(images=..., text=...))) or with "
            "hired.prepare_inputs(model, processor, ...), after hired.apply; inputs made before apply, or by "
            "another processor, carry the stock count"
        ) from err
    forward = _FORWARD.get()
    if forward is not None and forward.state is state and kwargs.get("image_features") is not None:
        image_mask = mask[0] if isinstance(mask, tuple) else mask  # OneVision: (image mask, video mask)
        forward.image_mask = image_mask[..., 0] if image_mask.dim() == 3 else image_mask
    return mask


def _positional_names(inner: nn.Module) -> list[str]:
    """The names of ``inner.forward``'s parameters in order (to read positional arguments in the pre-hook)."""
    return list(inspect.signature(inner.forward).parameters)


def _on_forward(state: _State, names: list[str], _module, args, kwargs):
    """Forward pre-hook of the model: a new prompt without images clears the calling context's
    ``last_selection`` (decoding steps, which carry a filled cache, and two-pass inputs leave it as it is);
    with ``keep_positions``, open this pass's :class:`_Forward`. For a query-aware method: hand the prompt
    to this pass's vision step, and select again, for their prompts, pre-encoded images that were encoded
    without one."""
    given = dict(zip(names, args))
    given.update(kwargs)
    encoded = (given.get("mm_encoder_outputs") or {}).get("image")
    changed = None
    if state.method.query_aware:
        pixel_values = given.get("pixel_values")
        _PROMPT.set(
            None
            if pixel_values is None
            else _RawPrompt(
                pixel_values, given.get("input_ids"), given.get("inputs_embeds"), given.get("attention_mask")
            )
        )
        fresh = None if encoded is None else _reselect(_module, state, encoded, given)
        if fresh is not None:
            encoded = fresh
            changed = _with_argument(
                names, args, kwargs, "mm_encoder_outputs", {**given["mm_encoder_outputs"], "image": fresh}
            )
    if state.method.keep_positions or state.family.mrope:
        _FORWARD.set(_encoded_forward(state, encoded) if encoded is not None else _Forward(state))
    if given.get("pixel_values") is not None or encoded is not None:
        return changed
    if _cache_length(_cache_of(given)) == 0:
        _remember(state, None)
    return changed


def _with_argument(names: list[str], args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call with argument ``name`` replaced by ``value``."""
    if name in kwargs or name not in names[: len(args)]:
        return args, {**kwargs, name: value}
    at = names.index(name)
    return (*args[:at], value, *args[at + 1 :]), kwargs


def _encoded_forward(state: _State, encoded) -> _Forward:
    """The :class:`_Forward` of a pass given pre-encoded images (``mm_encoder_outputs``)."""
    images = tuple(getattr(f, _STOCK, None) for f in encoded.pooler_output)
    if any(image is None for image in images):
        raise ValueError(
            "keep_positions needs to know where each kept token sat in the stock sequence, but the image "
            "features in mm_encoder_outputs do not say: pass the per-image tensors of the model's own "
            "get_image_features (or hired.prepare_inputs) unchanged; the list may be reordered, repeated or cut"
        )
    record = getattr(encoded, "_hired_record", None)
    if record is not None and (
        len(record.images) != len(images) or any(a is not b for a, b in zip(record.images, images))
    ):
        record = None  # another arrangement of the images: last_selection keeps describing the encoding
    return _Forward(state, images=images, record=record)


def _cache_of(kwargs: dict):
    """The generation cache among a forward's arguments (``cache`` in transformers 5.24, else
    ``past_key_values``)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def _cache_length(cache) -> int:
    return cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0


def _stock_positions(state: _State, _module, args, kwargs):
    """Forward pre-hook of the language model (``keep_positions``): give a prompt's tokens their stock
    position ids, and decoding steps their stock continuation."""
    cache = _cache_of(kwargs)
    position_ids = kwargs.get("position_ids")
    past = _cache_length(cache)
    if past:
        shift = getattr(cache, _SHIFT, None)
        if shift is not None:
            if position_ids is None:
                embeds = kwargs["inputs_embeds"]
                position_ids = torch.arange(past, past + embeds.shape[1], device=embeds.device).expand(
                    embeds.shape[0], -1
                )
            kwargs["position_ids"] = position_ids + shift[:, None]
        return args, kwargs
    forward = _FORWARD.get()
    if forward is None or forward.state is not state or forward.images is None or forward.image_mask is None:
        return None  # a prompt without images: its ids are the stock ones
    images, mask = forward.images, forward.image_mask
    if position_ids is None:
        position_ids = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
    if position_ids.dim() != 2:
        raise ValueError(f"keep_positions needs (batch, sequence) position_ids, got shape {tuple(position_ids.shape)}")
    new, shift = stock_position_ids(
        position_ids,
        mask,
        torch.cat([i.index for i in images]),
        [len(i.index) for i in images],
        [i.length for i in images],
    )
    kwargs["position_ids"] = new
    if cache is not None:
        setattr(cache, _SHIFT, shift)
    else:
        forward.shift = shift  # _keep_shift puts it on the cache the language model makes
    if forward.record is not None:
        _remember(state, dataclasses.replace(forward.record, positions=(new, mask)))
    return args, kwargs


def _keep_shift(_module, _args, output):
    """Forward hook of the language model (``keep_positions``): a cache created inside the pass gets the
    prompt's shift, so decoding steps with it continue from the stock ids."""
    forward = _FORWARD.get()
    shift = getattr(forward, "shift", None)
    if shift is None:
        return None
    forward.shift = None
    cache = getattr(output, "cache", None)
    cache = getattr(output, "past_key_values", None) if cache is None else cache
    if cache is not None:
        setattr(cache, _SHIFT, shift)
    return None
