"""What every family module of the vLLM plugin shares: the ``Spec`` of a processing context's config, built
once per config, and the per-pass stage clock that ``hired bench-vllm`` reads."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from hired.engine import StageClock
from hired.vllm.config import Spec, spec_from_config


class SpecCache:
    """Processing-info mixin: :meth:`hired_spec` is the :class:`Spec` of the context's config (``None``
    without ``hired``), built once per config object."""

    hired_family: ClassVar[str]  # a name of hired.families

    def hired_spec(self) -> Spec | None:
        config = self.get_hf_config()
        cached = self.__dict__.get("_hired_spec")
        if cached is None or cached[0] is not config:
            cached = (config, spec_from_config(config, self.hired_family))
            self.__dict__["_hired_spec"] = cached
        return cached[1]


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
