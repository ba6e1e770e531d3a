"""The transformers runtime: ``apply`` / ``remove`` and the public API on stock transformers model and
processor instances of every supported family (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL,
Qwen3-VL, Qwen3.5, InternVL). What differs between families is asked of :mod:`hired.families` and of the vision step
registered for the family's token layout (:data:`VISION_STEPS`: :mod:`hired.adapters.partitions`,
:mod:`hired.adapters.qwen`); what to keep is decided by :mod:`hired.engine`.

Instance attributes are set, nothing else is touched:

* ``<model>.get_image_features`` (and the vision step's other attributes, e.g. Qwen's ``get_rope_index``):
  runs the vision tower with score hooks on the layers the method needs ([CLS] row, or attention received
  where the tower has no [CLS]), keeps the selected tokens and hands them on in the family's order;
* ``<model>.get_placeholder_mask``: the stock check, with a hint on how to build inputs when the
  placeholders do not match the kept features;
* ``<processor>.replace_image_token``: emits exactly as many placeholders as the method keeps, computed
  from the image size alone, so ``model.generate(**processor(...))`` works unchanged;
  ``<processor>._process_images`` first rejects empty images with a clear error. For a family whose video
  frames share ``pixel_values`` with the images (InternVL), ``<processor>._process_videos`` and
  ``<processor>.get_text_with_replacements`` also mark the frames in the image inputs, in the prompts'
  order, so that the vision step hands them on stock.

``apply`` also installs, once, forward hooks on the q/k projections of the tower layers the method reads
and a forward pre-hook on the model (a text-only prompt clears ``last_selection``). Nothing about one
call is kept on the model: the hooks and patches record into the calling context's
:class:`~hired.adapters.context.CallContext`, so one patched model may serve any number of threads at
once. ``apply`` and ``remove`` wait for calls already inside the vision step to finish; a call that starts
its vision step after ``remove`` began fails with a clear error. ``remove`` deletes every attribute and
hook again, restoring the class behaviour bit for bit.

A query-aware method (``Method.query_aware``) gets each image's prompt (:mod:`hired.adapters.prompts`):
the model's forward pre-hook hands it to that pass's vision step; an image encoded without a prompt
(``get_image_features`` called directly) is selected for an empty one and selected again for the prompt
it is given with in ``mm_encoder_outputs``.
"""

from __future__ import annotations

import functools
import inspect
import threading

import torch
from torch import nn

from hired.adapters import partitions, qwen
from hired.adapters.context import (
    STOCK,
    Carried,
    Forward,
    RawPrompt,
    State,
    Visuals,
    cache_length,
    cache_of,
    current,
    holding,
    per_image,
    recall,
    remember,
    update,
    with_argument,
)
from hired.adapters.prompts import prompts_from_text, reselect
from hired.adapters.vision import encoder_layers, has_cls_token
from hired.engine import image_selections, make_plan
from hired.families import Family, family_of
from hired.methods.base import Method, adaptive_message
from hired.selection import ImageSelection

_STATE = "_hired_state"
VISION_STEPS = {
    "llava": partitions.STEP,
    "llava_next": partitions.STEP,
    "onevision": partitions.STEP,
    "qwen2_5_vl": qwen.STEP,
    "qwen3_vl": qwen.STEP,
    "internvl": partitions.STEP,
    "qwen3_5": qwen.STEP,
}
"""Family name → the vision step of its token layout in this runtime (one line per family)."""


_MODEL_ATTRS = ("get_image_features", "get_placeholder_mask", "get_rope_index")


_PROC_ATTRS = ("replace_image_token", "_process_images", "_process_videos", "get_text_with_replacements")


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


def _inner_model(model: nn.Module) -> tuple[nn.Module, Family]:
    return family_of(model)


def _build_state(model: nn.Module, processor, method: Method) -> tuple[nn.Module, State]:
    """Check everything and build the adapter state. Raises before anything is modified."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be a hired method config such as hired.HiRED(...), got {method!r}")
    inner, family = _inner_model(model)
    config = inner.config
    tower = family.tower(inner)
    plan = make_plan(method, family, config, has_cls_token(tower))
    if processor is not None:
        family.check_processor(processor, plan.geometry, config)
        owner = processor.__dict__.get(_STATE)
        if owner is not None and owner is not inner.__dict__.get(_STATE):
            raise ValueError(
                "this processor already serves hired on another model; call hired.remove on that model "
                "first, or use a separate processor (processors are cheap to load)"
            )
    step = VISION_STEPS.get(family.name)
    if step is None:
        raise TypeError(f"the transformers runtime has no vision step for {family.title}")
    return inner, State(plan, encoder_layers(tower, plan.info.num_layers), step, processor=processor)


def apply(model: nn.Module, processor, method: Method) -> nn.Module:
    """Apply a token-reduction ``method`` to a ``model`` of a supported family (LLaVA-1.5, LLaVA-NeXT,
    LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL, Qwen3.5, InternVL) and its ``processor``, in place.

    ``processor`` may be ``None`` when inputs are built elsewhere (they must then hold the method's
    placeholder count). Applying again replaces the previous method (after the calls using it are done).
    On any error nothing is changed. Returns ``model``.
    """
    inner, state = _build_state(model, processor, method)
    with _APPLY_LOCK:
        old = getattr(inner, _STATE, None)
        if old is not None:
            remove(model, old.processor)
        state.hooks = state.step.hooks(state)
        state.handles.append(
            inner.register_forward_pre_hook(
                functools.partial(_on_forward, state, _positional_names(inner)), with_kwargs=True
            )
        )
        state.handles.extend(state.step.language_hooks(state, inner.language_model))
        patches = {**state.step.patches(state), "get_placeholder_mask": _placeholder_mask}
        for name, fn in patches.items():
            state.saved[name] = inner.__dict__.get(name)
            patch = _ModelPatch(fn, inner, state)
            # generate() passes get_image_features the inputs its signature names (OneVision: batch_num_images)
            patch.__signature__ = _signature(getattr(inner, name), state.family.carried_kwargs())
            inner.__dict__[name] = patch
        if processor is not None:
            patches = {"replace_image_token": _replace_image_token, "_process_images": _checked_process_images}
            if state.family.videos_in_pixel_values:  # InternVL: mark the video frames among the tiles
                patches.update(_process_videos=_ordered_videos, get_text_with_replacements=_text_with_replacements)
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
                    if name in state.saved:
                        _restore(proc, name, state.saved[name])
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
    state = applied_state(model)
    if processor is None or processor.__dict__.get(_STATE) is not state:
        raise ValueError("prepare_inputs needs the processor that hired.apply was given with this model")
    inner, _ = _inner_model(model)
    if state.family.videos_in_pixel_values and images is not None and kwargs.get("videos") is not None:
        raise ValueError(
            f"hired.prepare_inputs cannot take images and videos together for {state.family.title}: its video "
            "frames share pixel_values with the images, and the two-pass inputs replace those by the encoded "
            "images; build such inputs with the processor (model.generate(**processor(images=..., videos=..., "
            "text=...))), which prunes the images and keeps the frames stock"
        )
    encoding = {"model": inner, "state": state}
    query = text if query_text is None else query_text
    if state.method.query_aware and query is not None:
        encoding["prompts"] = prompts_from_text(inner, processor, query)
    with holding(encoding=encoding):
        inputs = processor(images=images, text=text, **kwargs)
        encoded = encoding.get("last")
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


def applied_state(model: nn.Module, required: bool = True) -> State | None:
    """The adapter state of ``model``; with ``required``, an error when no method is applied."""
    inner, _ = _inner_model(model)
    state = inner.__dict__.get(_STATE)
    if state is None and required:
        raise ValueError("no hired method is applied to this model")
    return state


def applied_method(model: nn.Module) -> Method | None:
    """The method the calling thread's calls of ``model`` run (the applied one, or inside
    ``hired.options`` the block's), or ``None``."""
    state = applied_state(model, required=False)
    return None if state is None else state.method


def last_selection(model: nn.Module) -> list[ImageSelection]:
    """What the calling thread's last vision step on ``model`` kept, one entry per image (in the order the
    images were given).

    Per thread: every thread (every ``contextvars`` context) sees its own last call, whatever other
    threads run on the same model. Empty when this thread has seen no image since ``apply``, after a
    text-only prompt, or when no method is applied.
    """
    state = applied_state(model, required=False)
    record = None if state is None else recall(state)
    if record is None:
        return []
    positions = None
    if record.positions is not None:
        ids, mask = record.positions
        if ids.dim() == 3:  # M-RoPE: (3 or 4, B, S) → one (t, h, w) triple per token
            positions = [p.tolist() for p in ids[-3:][:, mask].T.cpu().split(record.lengths)]
        else:
            positions = [p.tolist() for p in ids[mask].cpu().split(record.lengths)]
    sizes = [layout.num_partitions for layout in record.layouts]
    keeps = [k[:, : lay.tokens] for k, lay in zip(record.selection.keep.cpu().split(sizes), record.layouts)]
    return image_selections(state.plan, record.layouts, keeps, record.selection.budgets, positions)


def last_scores(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The attention scores of the calling thread's last vision step, one dict per image (as
    ``last_selection``, and empty when it is).

    Each dict maps a method's score role (HiRED: ``"budget"``, ``"select"``) to a ``(P, T)`` fp32 CPU
    tensor over the T patches of each of the image's P partitions: the [CLS] row summed over heads, or
    with the received-attention score (towers without [CLS]) the attention each patch receives, averaged
    over the queries and summed over heads.
    """
    state = applied_state(model, required=False)
    record = None if state is None else recall(state)
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
    state = applied_state(model, required=False)
    return None if state is None else state.score_kind


def score_layers(model: nn.Module) -> dict[str, int]:
    """Role → vision encoder layer whose [CLS] attention the applied method reads (``{}`` if none is)."""
    state = applied_state(model, required=False)
    return {} if state is None else dict(state.roles)


def _checked_process_images(processor, state: State, images, **kwargs):
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
    extra = state.family.processor_inputs(processor, images, kwargs)  # InternVL: image sizes and tile grids
    with holding(processing=extra or None):
        processed = original(images, **kwargs)
    if state.family.videos_in_pixel_values:
        update(visuals=Visuals(images=processed))
    return processed


def _ordered_videos(processor, state: State, videos, **kwargs):
    """The processor's own video step; what it made waits for the text step (:func:`_text_with_replacements`)."""
    original = state.saved.get("_process_videos") or functools.partial(type(processor)._process_videos, processor)
    processed = original(videos, **kwargs)
    images = getattr(current().visuals, "images", None)
    update(visuals=Visuals(images=images, videos=processed))
    return processed


def _text_with_replacements(processor, state: State, text, *args, **kwargs):
    """The processor's own text step; when this call's prompts hold videos, the family's marks of the frames
    (``Family.video_inputs``, in the prompts' order) join the image (or, without images, the video) outputs."""
    original = state.saved.get("get_text_with_replacements") or functools.partial(
        type(processor).get_text_with_replacements, processor
    )
    out = original(text, *args, **kwargs)
    visuals = current().visuals
    update(visuals=None)
    given = dict(zip(("images_replacements", "videos_replacements"), args))
    given.update(kwargs)
    if visuals is None or visuals.videos is None or visuals.videos[1] is not given.get("videos_replacements"):
        return out  # no video in this call (or the video step's outputs are another call's)
    images = visuals.images
    if images is not None and images[1] is not given.get("images_replacements"):
        images = None
    order = [entry["type"] for row in out[1] for entry in row if entry["type"] in ("image", "video")]
    target = visuals.videos[0] if images is None else images[0]
    target.update(state.family.video_inputs(processor, None if images is None else images[0], visuals.videos[0], order))
    return out


def _flat_images(images) -> list:
    if isinstance(images, (list, tuple)):
        return [leaf for item in images for leaf in _flat_images(item)]
    return [images]


def _replace_image_token(processor, state: State, image_inputs: dict, image_idx: int, **kwargs) -> str:
    """Placeholders for one image: the method's count for this image size (adaptive methods: the count the
    model gave it, when ``hired.prepare_inputs`` drives the processor)."""
    extra = current().processing
    if extra:  # the family's additions go into the processor's output (InternVL's image_sizes)
        image_inputs.update(extra)
    layout = state.family.processor_layout(state.geometry, image_inputs, image_idx)
    encoding = current().encoding
    if encoding is not None:
        encoded = _encode_in_processor(encoding, image_inputs)
        return state.family.placeholder(processor, encoded._hired_record.lengths[image_idx])
    if state.method.adaptive:
        raise ValueError(adaptive_message(state.method))
    return state.family.placeholder(processor, state.token_count(layout))


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
        with holding(prompt=encoding.get("prompts")), torch.no_grad():
            encoding[key] = inner.get_image_features(pixel_values=pixel_values, **extra)
        encoding["last"] = encoding[key]
    return encoding[key]


def _placeholder_mask(inner: nn.Module, state: State, *args, **kwargs):
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
    forward = current().forward
    if forward is not None and forward.state is state and kwargs.get("image_features") is not None:
        image_mask = mask[0] if isinstance(mask, tuple) else mask  # OneVision: (image mask, video mask)
        forward.image_mask = image_mask[..., 0] if image_mask.dim() == 3 else image_mask
    return mask


def _signature(method, carried: tuple[str, ...]) -> inspect.Signature:
    """``method``'s signature with the family's carried image inputs added as keyword-only parameters where
    it takes ``**kwargs`` (so ``generate()`` hands InternVL's ``get_image_features`` its ``image_sizes``)."""
    sig = inspect.signature(method)
    params = list(sig.parameters.values())
    if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        return sig
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
        for name in carried
        if name not in sig.parameters
    ]
    return sig.replace(parameters=[*params[:-1], *extra, params[-1]])


def _positional_names(inner: nn.Module) -> list[str]:
    """The names of ``inner.forward``'s parameters in order (to read positional arguments in the pre-hook)."""
    return list(inspect.signature(inner.forward).parameters)


def _on_forward(state: State, names: list[str], _module, args, kwargs):
    """Forward pre-hook of the model: a new prompt without images clears the calling context's
    ``last_selection`` (decoding steps, which carry a filled cache, and two-pass inputs leave it as it is);
    with ``keep_positions``, open this pass's :class:`Forward`. For a query-aware method: hand the prompt
    to this pass's vision step, and select again, for their prompts, pre-encoded images that were encoded
    without one."""
    given = dict(zip(names, args))
    given.update(kwargs)
    carried = state.family.carried_kwargs()
    if carried:  # image inputs this forward's get_image_features call is not given (InternVL's image_sizes)
        pixels = given.get("pixel_values")
        update(carried=None if pixels is None else Carried(pixels, {name: given.get(name) for name in carried}))
    encoded = (given.get("mm_encoder_outputs") or {}).get("image")
    changed = None
    if state.method.query_aware:
        pixel_values = given.get("pixel_values")
        update(
            prompt=None
            if pixel_values is None
            else RawPrompt(
                pixel_values, given.get("input_ids"), given.get("inputs_embeds"), given.get("attention_mask")
            )
        )
        fresh = None if encoded is None else reselect(_module, state, encoded, given)
        if fresh is not None:
            encoded = fresh
            changed = with_argument(
                names, args, kwargs, "mm_encoder_outputs", {**given["mm_encoder_outputs"], "image": fresh}
            )
    if state.method.keep_positions or state.step.tracks_forward:
        update(forward=_encoded_forward(state, encoded) if encoded is not None else Forward(state))
    if given.get("pixel_values") is not None or encoded is not None:
        return changed
    if cache_length(cache_of(given)) == 0:
        remember(state, None)
    return changed


def _encoded_forward(state: State, encoded) -> Forward:
    """The :class:`Forward` of a pass given pre-encoded images (``mm_encoder_outputs``)."""
    images = tuple(getattr(f, STOCK, None) for f in per_image(encoded.pooler_output))
    if any(image is None for image in images):
        raise ValueError(
            "keep_positions needs to know where each kept token sat in the stock sequence, but the image "
            "features in mm_encoder_outputs do not say: pass the per-image tensors of the model's own "
            "get_image_features (or hired.prepare_inputs) unchanged; the list may be reordered, repeated or cut"
        )
    record = getattr(encoded, "_hired_record", None)
    own = [image for image in images if not image.stock]  # InternVL: video frames' tokens beside the images'
    if record is not None and (len(record.images) != len(own) or any(a is not b for a, b in zip(record.images, own))):
        record = None  # another arrangement of the images: last_selection keeps describing the encoding
    return Forward(state, images=images, record=record)
