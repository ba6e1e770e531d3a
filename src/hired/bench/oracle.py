"""Two comparison paths for the benchmark, each a reversible patch of one model instance.

* ``oracle``: the same model fed a given number of visual tokens per image with no selection work. The
  vision tower runs as stock; the first ``N_i`` patch features of image ``i`` (a fixed slice of its
  partitions, no scores, no sort) are projected and fill ``N_i`` placeholders. No dropping method can
  be faster at that count: it is the limit, and a method's TTFT over the oracle's is its overhead.
  Which tokens of the tower's output are patches, and how an image's pixel values split into partitions,
  come from the model's :mod:`hired.families` description (LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision: its
  SigLIP tower has no [CLS], and a prompt with several images encodes each as one crop). Qwen2.5-VL: the
  stock tower and merger, the first ``N_i`` merged tokens; its M-RoPE ids come from the stock
  ``get_rope_index`` with each image counted as one row of ``N_i`` tokens (the stock work, valid ids).
  Qwen3-VL and Qwen3.5 likewise (Qwen3-VL: every DeepStack level fed the same tokens). InternVL: the
  stock tower and pixel shuffle, the first ``N_i`` merged tokens of image ``i``, in the placeholders the
  family writes (``<img>``, ``N_i`` context tokens, ``</img>``), handed to the forward as one tensor
  (``Family.joins_features``); which tiles form which image, the processor's output says (the family's
  processor inputs, ``image_sizes``, added as ``hired.apply`` adds them) and a forward pre-hook carries it
  to the vision step (``Family.carried_kwargs``), as the adapter does.
* ``reference_attention``: the vision tower runs with eager attention and returns every layer's full
  ``(heads, N, N)`` attention map, which is how the reference HiRED code obtains its [CLS] scores
  (``output_attentions=True``). Combined with ``hired.apply`` it shows what computing only the [CLS]
  row from q and k saves.

Both set instance attributes or hooks only and restore the model (and processor) on exit.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from hired.families import Family, family_of

_FEATURES = "get_image_features"
_PLACEHOLDERS = "replace_image_token"
_IMAGES = "_process_images"


def _inner(model: nn.Module) -> tuple[nn.Module, Family]:
    """The module holding ``vision_tower`` / ``multi_modal_projector`` and the model's family."""
    try:
        inner, family = family_of(model)
    except TypeError as err:
        raise TypeError(f"the oracle runs on the models hired supports: {err}") from None
    return inner, family


@dataclass
class OracleRecord:
    """What the oracle fed the language model in the last forward: visual features per image."""

    features_per_image: list[int] = field(default_factory=list)


class _Carried:
    """Image inputs that a forward of the model was given for its ``pixel_values`` but does not hand to
    ``get_image_features`` (``Family.carried_kwargs``: InternVL's ``image_sizes``): a forward pre-hook keeps
    them, the oracle's vision step of those very ``pixel_values`` takes them (once)."""

    def __init__(self, names: Sequence[str], positional: Sequence[str]):
        self.names, self.positional = tuple(names), list(positional)
        self.value: tuple[torch.Tensor, dict] | None = None

    def hook(self, _module, args, kwargs) -> None:
        given = dict(zip(self.positional, args))
        given.update(kwargs)
        pixels = given.get("pixel_values")
        self.value = None if pixels is None else (pixels, {name: given.get(name) for name in self.names})

    def take(self, pixel_values) -> dict:
        value, self.value = self.value, None
        if value is None or value[0] is not pixel_values:
            return {}
        return {name: v for name, v in value[1].items() if v is not None}


def _oracle_features(
    inner: nn.Module,
    family: Family,
    counts: Sequence[int],
    record: OracleRecord,
    carried: _Carried | None,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | None = None,
    vision_feature_layer=None,
    vision_feature_select_strategy: str | None = None,
    vision_aspect_ratio: str | None = None,
    batch_num_images: torch.Tensor | None = None,
    **kwargs,
):
    """Replacement for ``get_image_features``: stock tower, the first ``counts[i]`` patches of image ``i``
    (InternVL: of its merged tokens, after the stock pixel shuffle).

    ``pixel_values`` is ``(images, P_max, C, H, W)`` (anyres families) or ``(images, C, H, W)`` (InternVL:
    ``(tiles, C, H, W)``, its ``image_sizes`` given or carried from the forward); returns the tower's
    output with ``pooler_output`` a list of ``(counts[i], hidden)``, or for a family whose forward takes one
    tensor (``Family.joins_features``) their concatenation ``(sum counts, hidden)``. OneVision's
    ``batch_num_images`` decides which images were encoded as one crop, as in the stock model.
    """
    config = inner.config
    taken = carried.take(pixel_values) if carried is not None else {}
    if image_sizes is None:
        image_sizes = taken.get("image_sizes")
    extra = {} if batch_num_images is None else {"batch_num_images": batch_num_images}
    layouts, pixel_values = family.batch_layouts(family.geometry(config), pixel_values, image_sizes, extra)
    parts = [layout.num_partitions for layout in layouts]
    if len(parts) != len(counts):
        raise ValueError(f"the oracle was given counts for {len(counts)} images but the batch has {len(parts)}")
    kwargs.pop("return_dict", None)
    kwargs["output_hidden_states"] = True
    out = inner.vision_tower(pixel_values, return_dict=True, **kwargs)
    layer = config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    prefix = family.prefix_tokens(config)  # the [CLS] token the stock model drops, if any
    feats = torch.cat([out.hidden_states[i][:, prefix:] for i in layers], dim=-1)  # (sum P, T, Dv)
    feats, _, _ = family.merge_patches(inner, config, feats, {}, {})  # InternVL: the stock pixel shuffle
    slices, start = [], 0
    for p, n in zip(parts, counts):
        flat = feats[start : start + p].flatten(0, 1)  # (P * T, Dv)
        if n > flat.shape[0]:
            raise ValueError(f"the oracle cannot feed {n} tokens from an image of {flat.shape[0]} patches")
        slices.append(flat[:n])
        start += p
    projected = inner.multi_modal_projector(torch.cat(slices))  # (sum N, D)
    out.pooler_output = projected if family.joins_features else list(projected.split(list(counts)))
    record.features_per_image = [int(n) for n in counts]
    return out


def _qwen_oracle_features(
    inner: nn.Module,
    counts: Sequence[int],
    record: OracleRecord,
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    **kwargs,
):
    """Qwen2.5-VL's / Qwen3-VL's ``get_image_features`` for the oracle: the stock tower and merger, then the
    first ``counts[i]`` merged tokens of image ``i`` (raster order), of every DeepStack level too."""
    out = type(inner).get_image_features(inner, pixel_values, image_grid_thw, **kwargs)
    per_image = list(out.pooler_output)
    if len(per_image) != len(counts):
        raise ValueError(f"the oracle was given counts for {len(counts)} images but the batch has {len(per_image)}")
    for feats, n in zip(per_image, counts):
        if n > feats.shape[0]:
            raise ValueError(f"the oracle cannot feed {n} tokens from an image of {feats.shape[0]} merged tokens")
    out.pooler_output = tuple(feats[:n] for feats, n in zip(per_image, counts))
    if getattr(out, "deepstack_features", None):  # Qwen3-VL: every DeepStack level fed the same tokens
        out.deepstack_features = [
            tuple(feats[:n] for feats, n in zip(level, counts)) for level in out.deepstack_features
        ]
    record.features_per_image = [int(n) for n in counts]
    return out


def _qwen_oracle_rope_index(inner: nn.Module, counts: Sequence[int], *args, **kwargs):
    """``get_rope_index`` for the oracle: the stock computation, each image counted as a ``1 x counts[i]``
    row of merged tokens (``image_grid_thw`` ``(1, m, m * counts[i])``), so that ids exist for exactly the
    tokens fed; the work is the stock one."""
    original = functools.partial(type(inner).get_rope_index, inner)
    bound = inspect.signature(original).bind(*args, **kwargs)
    grid = bound.arguments.get("image_grid_thw")
    if grid is not None:
        merge = int(inner.config.vision_config.spatial_merge_size)
        rows = [[1, merge, merge * int(n)] for n in counts]
        if len(rows) != grid.shape[0]:
            raise ValueError(f"the oracle was given counts for {len(rows)} images but the batch has {grid.shape[0]}")
        bound.arguments["image_grid_thw"] = torch.tensor(rows, dtype=grid.dtype, device=grid.device)
    return original(*bound.args, **bound.kwargs)


def _oracle_placeholders(
    processor, family: Family, counts: Sequence[int], image_inputs: dict, image_idx: int, **kwargs
) -> str:
    """The text for image ``image_idx``: the family's placeholder of ``counts[image_idx]`` tokens (InternVL:
    wrapped in ``<img>`` ... ``</img>`` as the stock processor wraps every image)."""
    if image_idx >= len(counts):
        raise ValueError(f"the oracle was given counts for {len(counts)} images but the processor has more")
    return family.placeholder(processor, int(counts[image_idx]))


def _oracle_process_images(processor, family: Family, original, images, **kwargs):
    """The processor's image step, plus the image inputs the family's patched processor adds to its output
    (``Family.processor_inputs``: InternVL's ``image_sizes``, each image's tile grid)."""
    processed, replacements = original(images, **kwargs)
    extra = family.processor_inputs(processor, images, kwargs)
    if extra:
        processed.update(extra)
    return processed, replacements


@contextmanager
def oracle(model: nn.Module, processor, counts: Sequence[int]) -> Iterator[OracleRecord]:
    """Within the block, ``processor`` emits ``counts[i]`` placeholders for image ``i`` of a call and
    ``model`` fills them with a fixed slice of that image's stock patch features.

    ``model`` must be stock (no hired method applied). Yields an ``OracleRecord`` of what was fed.
    """
    import hired

    if hired.applied_method(model) is not None:
        raise ValueError("the oracle runs on the stock model; call hired.remove(model, processor) first")
    counts = [int(n) for n in counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"oracle counts must be positive integers, got {counts}")
    inner, family = _inner(model)
    record = OracleRecord()
    carried = None
    if family.carried_kwargs():  # image inputs the forward gets and its get_image_features call does not
        carried = _Carried(family.carried_kwargs(), inspect.signature(inner.forward).parameters)
    if family.merged_grid:
        patches = {
            (inner, _FEATURES): functools.partial(_qwen_oracle_features, inner, counts, record),
            (inner, "get_rope_index"): functools.partial(_qwen_oracle_rope_index, inner, counts),
        }
    else:
        patches = {(inner, _FEATURES): functools.partial(_oracle_features, inner, family, counts, record, carried)}
    patches[(processor, _PLACEHOLDERS)] = functools.partial(_oracle_placeholders, processor, family, counts)
    step = getattr(processor, _IMAGES, None)
    if step is not None:  # transformers' processors that build placeholders per image in _process_images
        patches[(processor, _IMAGES)] = functools.partial(_oracle_process_images, processor, family, step)
    saved = {key: key[0].__dict__.get(key[1]) for key in patches}
    for (obj, name), fn in patches.items():
        obj.__dict__[name] = fn
    handle = None if carried is None else inner.register_forward_pre_hook(carried.hook, with_kwargs=True)
    try:
        yield record
    finally:
        if handle is not None:
            handle.remove()
        for (obj, name), previous in saved.items():
            if previous is None:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = previous


@contextmanager
def reference_attention(model: nn.Module) -> Iterator[None]:
    """Within the block the vision tower runs eager attention and returns all its ``(B, heads, N, N)``
    attention maps (``output_attentions=True``), as the reference code does to read [CLS] attention."""
    inner, family = _inner(model)
    tower = family.tower(inner)
    previous = tower.config._attn_implementation

    def force_maps(_module, args, kwargs):
        return args, {**kwargs, "output_attentions": True}

    tower.set_attn_implementation("eager")
    handle = tower.register_forward_pre_hook(force_maps, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        tower.set_attn_implementation(previous)
