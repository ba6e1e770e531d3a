"""Reading [CLS] attention rows out of a ViT vision tower with forward hooks on its q and k projections.

Works for any attention implementation (eager, sdpa, flash): the hooks see the projected queries and
keys, and only the [CLS] query row is used, so no N x N attention map is ever formed. The hooks are
installed once and record into the current call's own :class:`Recording` (the calling context's
:class:`~hired.adapters.context.CallContext`), so one
patched model can serve many threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from hired.adapters.context import current, holding
from hired.engine.scores import LayerScores, Recording

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
    """The modules of one transformer block whose outputs are the queries and keys its attention reads:
    the q and k projections, or the per-token norms the attention applies after them where it has them
    (InternViT's ``q_norm`` / ``k_norm``; ``nn.Identity`` in towers without qk norm)."""
    for module in layer.modules():
        for q_name, k_name in _QK_NAMES:
            q, k = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
                if isinstance(q_norm, nn.Module) and isinstance(k_norm, nn.Module):
                    return q_norm, k_norm
                return q, k
    raise ValueError(f"no query/key projections found in vision layer {type(layer).__name__}")


def has_cls_token(vision_tower: nn.Module) -> bool:
    """Whether the tower prepends a [CLS] token (CLIP's ``class_embedding``, DINOv2's ``cls_token``)."""
    return any(
        hasattr(m, "class_embedding") or isinstance(getattr(m, "cls_token", None), nn.Parameter)
        for m in vision_tower.modules()
    )


class ScoreHooks:
    """Forward hooks on the q and k projections of the encoder layers a method reads, installed once.

    ``rows``: role → layer whose attention scores are wanted: the [CLS] row (``kind="cls"``) or the
    attention each token receives from all queries (``kind="received"``); ``keys``: role → layer whose
    keys are wanted. The hooks record only inside :meth:`recording`, into that call's own
    :class:`~hired.engine.scores.Recording`, so one tower can serve any number of threads at once; outside
    it they return at once. The scores themselves come from :class:`~hired.engine.scores.LayerScores`
    (``max_queries``: its share of the queries for ``kind="received"``; ``None``, all of them).
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        num_heads: int,
        rows: Mapping[str, int],
        keys: Mapping[str, int] | None = None,
        kind: str = "cls",
        max_queries: int | None = None,
    ):
        self.scores = LayerScores(rows, keys, num_heads, kind, max_queries)
        self._handles: list = []
        try:
            for layer in self.scores.layers:
                self._install(layers[layer], layer)
        except BaseException:
            self.remove()
            raise

    def _install(self, block: nn.Module, layer: int) -> None:
        """Hook one transformer block (separate q and k projections)."""
        q_mod, k_mod = qk_projections(block)
        if layer in self.scores.row_roles:
            self._handles.append(q_mod.register_forward_hook(self._on_q(layer)))
        self._handles.append(k_mod.register_forward_hook(self._on_k(layer)))

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def recording(self) -> Iterator[Recording]:
        """Within the block, this context's forward passes through the tower fill the yielded recording."""
        rec = Recording(self)
        with holding(recording=rec):
            yield rec

    def _current(self) -> Recording | None:
        rec = current().recording
        return rec if rec is not None and rec.owner is self else None

    def _pair(self, rec: Recording, layer: int, half: str, value: torch.Tensor) -> None:
        """Keep the [CLS] query (``"q"``) or the keys (``"k"``) of ``layer``; once both arrived, the row."""
        rec.pending[(half, layer)] = value
        if ("q", layer) in rec.pending and ("k", layer) in rec.pending:
            q, k = rec.pending.pop(("q", layer)), rec.pending.pop(("k", layer))
            self.scores.put_rows(rec, layer, self.scores.score(q, k))

    def _on_q(self, layer: int):
        def hook(_m, _inp, out):
            rec = self._current()
            if rec is not None:
                self._pair(rec, layer, "q", (out[:, 0] if self.scores.kind == "cls" else out).detach())

        return hook

    def _on_k(self, layer: int):
        def hook(_m, _inp, out):
            rec = self._current()
            if rec is None:
                return
            keys = out.detach()
            self.scores.put_keys(rec, layer, keys)
            if layer in self.scores.row_roles:
                self._pair(rec, layer, "k", keys)

        return hook
