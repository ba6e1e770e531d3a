"""``hired.options``: change the applied method's options for the calls of one thread (or asyncio task),
without ``remove`` / ``apply``. The hooks ``apply`` installed stay; the calling context carries the plan
its calls run (:attr:`hired.adapters.context.CallContext.plans`), so other threads are not affected."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from hired.adapters.context import current, holding
from hired.adapters.transformers import applied_state
from hired.adapters.vision import has_cls_token
from hired.engine import Plan, make_plan
from hired.families import family_of
from hired.methods.base import Method, get_method


def _served_by(plan: Plan, applied: Plan) -> bool:
    """Whether the hooks ``apply`` installed for ``applied`` record all that ``plan`` reads: its score and
    key roles at the same layers (a subset), the same score kind and feature layers, and ``keep_positions``
    as applied (the position hooks)."""
    return (
        plan.roles.items() <= applied.roles.items()
        and plan.key_roles.items() <= applied.key_roles.items()
        and plan.score_kind == applied.score_kind
        and plan.hidden_layers == applied.hidden_layers
        and plan.method.keep_positions == applied.method.keep_positions
    )


@contextmanager
def options(model: nn.Module, method: Method | None = None, /, **changes) -> Iterator[Method]:
    """Within the block, this thread's (or task's) calls of ``model`` and of the processor it was applied
    with run the applied method with ``changes`` (``hired.options(model, budget=0.1)``), or ``method``
    instead (``hired.options(model, hired.ClsTopK(budget=0.3))``). Yields the method the block runs.

    Build the inputs inside the block too: the processor writes the block's count of placeholders, and
    inputs of another count fail with the placeholder error. Blocks nest (an inner block starts from the
    outer one's method). The changed method must read only what the applied one's hooks record (score and
    key layers among the applied method's, the same score kind and feature layers, ``keep_positions`` as
    applied): ``apply`` installed those hooks. Raises ``ValueError`` / ``TypeError`` naming the problem (as ``apply`` would), with nothing
    changed, and ``ValueError`` when no method is applied to ``model``."""
    state = applied_state(model)
    running = state.plan
    if method is None:
        base = running.method
        merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
        method = get_method(base.name, **{**merged, **changes})
    elif changes:
        raise TypeError("hired.options takes a method config or options, not both")
    elif not isinstance(method, Method):
        raise TypeError(f"method must be a hired method config such as hired.HiRED(...), got {method!r}")
    inner, family = family_of(model)
    plan = make_plan(method, family, inner.config, has_cls_token(family.tower(inner)))
    if not _served_by(plan, state.applied):
        raise ValueError(
            "hired.options cannot change the layers the score hooks read, the score kind, the feature layers "
            f"or keep_positions (apply installed hooks for {state.applied.method!r}; the block asks for "
            f"{method!r}); apply that method instead"
        )
    with holding(plans={**current().plans, id(state): plan}):
        yield method
