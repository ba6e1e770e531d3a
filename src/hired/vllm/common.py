"""What every family module of the vLLM plugin shares: the ``Spec`` of a processing context's config and
of each request's options, the per-request options carried from the processor to the encoder pass, and
the per-pass stage clock that ``hired bench-vllm`` reads.

**Options per request.** A request may carry ``mm_processor_kwargs={"hired": {"budget": 0.1}}``: the keys
of the model's ``hf_overrides`` entry, which they update for that request's images
(:func:`hired.vllm.config.request_spec`). The processor (:class:`RequestProcessor`) counts the request's
placeholders with them and adds their canonical JSON to each image's kwargs (``hired_request``, kept on
the host); vLLM's processor and encoder caches key an image by its ``mm_processor_kwargs`` too, so one
image at two budgets is two entries. The encoder pass (:class:`RequestSpecs`) reads them back, one host
read of host memory per pass, and selects each group of images of one options with those options.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import ClassVar

import torch
from torch import nn
from vllm.multimodal.inputs import MultiModalFieldConfig

from hired.engine import StageClock, image_selections
from hired.selection import ImageSelection
from hired.vllm.config import KEY, Spec, request_entry, request_spec

FIELD = "hired_request"
"""The image kwarg carrying the request's ``hired`` options (UTF-8 JSON bytes; empty: the model's)."""

_ENTRY: ContextVar[str | None] = ContextVar("hired_request_entry", default=None)
"""The ``hired`` options of the request being processed (canonical JSON), while its processor runs."""

_PASS: ContextVar[list[Spec] | None] = ContextVar("hired_pass_specs", default=None)
"""The specs of the images of the encoder pass running (``None``: all the model's)."""

_MAX_SPECS = 256


def _cached_spec(owner, config, family: str, entry: str | None) -> Spec | None:
    """The spec of ``entry`` for ``config``, built once per config and entry (at most ``_MAX_SPECS``)."""
    cached = owner.__dict__.get("_hired_specs")
    if cached is None or cached[0] is not config:
        cached = (config, {})
        owner.__dict__["_hired_specs"] = cached
    specs = cached[1]
    if entry not in specs:
        if len(specs) >= _MAX_SPECS:
            specs.clear()
        specs[entry] = request_spec(config, family, entry)
    return specs[entry]


class SpecCache:
    """Processing-info mixin: :meth:`hired_spec` is the :class:`Spec` of the context's config (``None``
    without ``hired``), or of the request being processed when it sets its own options, built once per
    config and options."""

    hired_family: ClassVar[str]  # a name of hired.families

    def hired_spec(self) -> Spec | None:
        return _cached_spec(self, self.get_hf_config(), self.hired_family, _ENTRY.get())


class RequestProcessor:
    """Multimodal-processor mixin (put before vLLM's processor): a request's ``mm_processor_kwargs['hired']``
    checked (a bad one fails that request with the message start-up would give), its counts used for the
    request's placeholders, its options carried to the encoder pass in each image's kwargs."""

    def apply(self, inputs, *args, **kwargs):
        entry = request_entry(inputs.hf_processor_mm_kwargs)
        token = _ENTRY.set(entry)
        try:
            if entry is not None:
                self.info.hired_spec()  # raises for a bad entry, before any work
            return super().apply(inputs, *args, **kwargs)
        finally:
            _ENTRY.reset(token)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        hf_kwargs = {k: v for k, v in hf_kwargs.items() if k != KEY}  # not a Hugging Face processor option
        out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        images = mm_items.get("image")
        count = 0 if images is None else len(images)
        if count and self.info.hired_spec() is not None:
            data = list((_ENTRY.get() or "").encode())
            out[FIELD] = torch.tensor([data] * count, dtype=torch.uint8).view(count, len(data))
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if FIELD in hf_inputs:
            fields[FIELD] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields


class RequestSpecs:
    """Model mixin: the specs of the images of the running encoder pass (:meth:`hired_pass_specs`), read
    from their ``hired_request`` kwargs."""

    hired_family: ClassVar[str]
    hired_spec: Spec | None

    def embed_multimodal(self, **kwargs):
        raw = kwargs.pop(FIELD, None)
        token = _PASS.set(self._hired_request_specs(raw))
        try:
            return super().embed_multimodal(**kwargs)
        finally:
            _PASS.reset(token)

    def _hired_request_specs(self, raw) -> list[Spec] | None:
        if raw is None or self.hired_spec is None:
            return None
        rows = raw.tolist() if isinstance(raw, torch.Tensor) else [r.tolist() for r in raw]  # host memory
        entries = [bytes(row).decode() or None for row in rows]
        if all(e is None for e in entries):
            return None
        return [_cached_spec(self, self.config, self.hired_family, e) for e in entries]

    def hired_pass_specs(self, count: int) -> list[Spec]:
        """The spec of each of the ``count`` images of this encoder pass, in order."""
        specs = _PASS.get()
        if specs is None:
            return [self.hired_spec] * count
        if len(specs) != count:
            raise RuntimeError(f"{count} images in this encoder pass but {len(specs)} hired_request entries")
        return specs

    def hired_grouped(self, pixel_values: torch.Tensor, rows: list[int], items: list, run) -> list:
        """One output per image of a pass, each group of images of one spec run together:
        ``run(spec, pixels, items)`` → ``(outputs, last)`` for the group's rows of ``pixel_values`` (image
        ``i`` has ``rows[i]`` of them) and its ``items`` (layouts, grids); each group's ``(spec, image
        indices, *last)`` goes to ``_hired_last``. One group (the usual case): no copy of the pixels."""
        groups = spec_groups(self.hired_pass_specs(len(items)))
        if len(groups) == 1:
            spec, idx = groups[0]
            outputs, last = run(spec, pixel_values, items)
            self._hired_last = [(spec, idx, *last)]
            return list(outputs)
        starts = [0]
        for n in rows:
            starts.append(starts[-1] + n)
        out: list = [None] * len(items)
        self._hired_last = []
        for spec, idx in groups:
            pixels = torch.cat([pixel_values[starts[i] : starts[i + 1]] for i in idx])
            outputs, last = run(spec, pixels, [items[i] for i in idx])
            self._hired_last.append((spec, idx, *last))
            for i, o in zip(idx, outputs):
                out[i] = o
        return out

    def hired_last_selection(self) -> list[ImageSelection]:
        """What the last encoder pass kept, one entry per image (empty before any image or when off)."""
        if self.hired_spec is None or self._hired_last is None:
            return []
        out: list = [None] * sum(len(group[1]) for group in self._hired_last)
        for spec, idx, layouts, keeps, budgets in self._hired_last:
            for i, selection in zip(idx, image_selections(spec, layouts, keeps, budgets)):
                out[i] = selection
        return out


def spec_groups(specs: list[Spec]) -> list[tuple[Spec, list[int]]]:
    """Images of one spec together, in order of first appearance: ``[(spec, [image index, ...]), ...]``."""
    groups: dict[int, tuple[Spec, list[int]]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(id(spec), (spec, []))[1].append(i)
    return list(groups.values())


class StageTiming:
    """Model mixin: a per-pass stage clock over the modules :meth:`hired_stages` names, off until
    :meth:`hired_timing` switches it on; off, it costs nothing."""

    _hired_clock: StageClock | None = None
    _hired_clock_handles: tuple = ()

    def hired_stages(self) -> dict[str, nn.Module | None]:
        """Stage name (``"vision"``, ``"projector"``) → the module whose forward it is."""
        raise NotImplementedError

    def hired_timing(self, on: bool = True) -> None:
        """Switch the per-pass stage clock on (and clear it) or off. Works with and without ``hired``."""
        for handle in self._hired_clock_handles:
            handle.remove()
        self._hired_clock_handles, self._hired_clock = (), None
        if not on:
            return
        stages = self.hired_stages()
        clock = StageClock(next(stages["vision"].parameters()).device)
        self._hired_clock_handles = tuple(clock.watch(stages))
        self._hired_clock = clock

    def hired_take_timings(self) -> list[dict]:
        """Stage seconds of every encoder pass since the last call (see :meth:`StageClock.take`); empty
        when the clock is off."""
        return [] if self._hired_clock is None else self._hired_clock.take()

    def hired_timed(self, step, *args):
        """``step(*args)`` (one encoder pass returning one output per image), marked as one pass."""
        clock = self._hired_clock
        if clock is None:
            return step(*args)
        clock.begin()
        out = step(*args)
        clock.end(len(out))
        return out
