"""Reading [CLS] attention rows out of a ViT vision tower with forward hooks on its q and k projections.

Works for any attention implementation (eager, sdpa, flash): the hooks see the projected queries and
keys, and only the [CLS] query row is used, so no N x N attention map is ever formed. The hooks are
installed once and record into the current call's own :class:`Recording` (a context variable), so one
patched model can serve many threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn

from hired.core.scores import cls_attention, received_attention

_QK_NAMES = (("q_proj", "k_proj"), ("query", "key"))


def encoder_layers(vision_tower: nn.Module, num_layers: int) -> nn.ModuleList:
    """The tower's list of transformer blocks (``encoder.layers`` in CLIP and SigLIP, ``encoder.layer`` in
    DINOv2, ``blocks`` in Qwen2.5-VL)."""
    for name, module in vision_tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and leaf in ("layers", "layer", "blocks") and len(module) == num_layers:
            return module
    raise ValueError(f"could not find the {num_layers} encoder layers of vision tower {type(vision_tower).__name__}")


def qk_projections(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The query and key projection modules of one transformer block."""
    for module in layer.modules():
        for q_name, k_name in _QK_NAMES:
            q, k = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                return q, k
    raise ValueError(f"no query/key projections found in vision layer {type(layer).__name__}")


def has_cls_token(vision_tower: nn.Module) -> bool:
    """Whether the tower prepends a [CLS] token (CLIP's ``class_embedding``, DINOv2's ``cls_token``)."""
    return any(
        hasattr(m, "class_embedding") or isinstance(getattr(m, "cls_token", None), nn.Parameter)
        for m in vision_tower.modules()
    )


def roles_by_layer(roles: Mapping[str, int]) -> dict[int, list[str]]:
    """Layer → the roles read at it, from role → layer."""
    out: dict[int, list[str]] = {}
    for role, layer in roles.items():
        out.setdefault(layer, []).append(role)
    return out


@dataclass
class Recording:
    """What the hooks recorded during one call: ``rows[role]`` ``(B, N)`` fp32 attention scores
    (summed over heads) and ``keys[role]`` ``(B, N, H * D)`` projected keys."""

    owner: ScoreHooks
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # ("q" | "k", layer) → half of a row


# the recording of the call running in this thread (or asyncio task); hooks of other calls never see it
_CURRENT: ContextVar[Recording | None] = ContextVar("hired_recording", default=None)


class ScoreHooks:
    """Forward hooks on the q and k projections of the encoder layers a method reads, installed once.

    ``rows``: role → layer whose attention scores are wanted: the [CLS] row (``kind="cls"``) or the
    attention each token receives from all queries (``kind="received"``); ``keys``: role → layer whose
    keys are wanted. The hooks record only inside :meth:`recording`, into that call's own
    :class:`Recording`, so one tower can serve any number of threads at once; outside it they return at
    once.
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        num_heads: int,
        rows: Mapping[str, int],
        keys: Mapping[str, int] | None = None,
        kind: str = "cls",
    ):
        if kind not in ("cls", "received"):
            raise ValueError(f"score kind must be 'cls' or 'received', got {kind!r}")
        self.num_heads = num_heads
        self.kind = kind
        self._handles: list = []
        by_layer, key_layers = roles_by_layer(rows), roles_by_layer(keys or {})
        try:
            for layer in sorted(set(by_layer) | set(key_layers)):
                self._install(layers[layer], layer, by_layer.get(layer, []), key_layers.get(layer, []))
        except BaseException:
            self.remove()
            raise

    def _install(self, block: nn.Module, layer: int, row_roles: list[str], key_roles: list[str]) -> None:
        """Hook one transformer block (separate q and k projections)."""
        q_mod, k_mod = qk_projections(block)
        if row_roles:
            self._handles.append(q_mod.register_forward_hook(self._on_q(layer, row_roles)))
        self._handles.append(k_mod.register_forward_hook(self._on_k(layer, row_roles, key_roles)))

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def recording(self) -> Iterator[Recording]:
        """Within the block, this context's forward passes through the tower fill the yielded recording."""
        rec = Recording(self)
        token = _CURRENT.set(rec)
        try:
            yield rec
        finally:
            _CURRENT.reset(token)

    def _current(self) -> Recording | None:
        rec = _CURRENT.get()
        return rec if rec is not None and rec.owner is self else None

    def _pair(self, rec: Recording, layer: int, roles: list[str], kind: str, value: torch.Tensor) -> None:
        """Keep the [CLS] query (``"q"``) or the keys (``"k"``) of ``layer``; once both arrived, the row."""
        rec.pending[(kind, layer)] = value
        if ("q", layer) in rec.pending and ("k", layer) in rec.pending:
            q, k = rec.pending.pop(("q", layer)), rec.pending.pop(("k", layer))
            score = cls_attention if self.kind == "cls" else received_attention
            row = score(q, k, self.num_heads)
            for role in roles:
                rec.rows[role] = row

    def _on_q(self, layer: int, roles: list[str]):
        def hook(_m, _inp, out):
            rec = self._current()
            if rec is not None:
                self._pair(rec, layer, roles, "q", (out[:, 0] if self.kind == "cls" else out).detach())

        return hook

    def _on_k(self, layer: int, row_roles: list[str], key_roles: list[str]):
        def hook(_m, _inp, out):
            rec = self._current()
            if rec is None:
                return
            keys = out.detach()
            for role in key_roles:
                rec.keys[role] = keys
            if row_roles:
                self._pair(rec, layer, row_roles, "k", keys)

        return hook
