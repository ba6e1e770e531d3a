"""Reading [CLS] attention rows out of a ViT vision tower with forward hooks on its q and k projections.

Works for any attention implementation (eager, sdpa, flash): the hooks see the projected queries and
keys, and only the [CLS] query row is used, so no N x N attention map is ever formed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from hired.core.scores import cls_attention

_QK_NAMES = (("q_proj", "k_proj"), ("query", "key"))


def encoder_layers(vision_tower: nn.Module, num_layers: int) -> nn.ModuleList:
    """The tower's list of transformer blocks (``encoder.layers`` in CLIP, ``encoder.layer`` in DINOv2)."""
    for name, module in vision_tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and leaf in ("layers", "layer") and len(module) == num_layers:
            return module
    raise ValueError(
        f"could not find the {num_layers} encoder layers of vision tower {type(vision_tower).__name__}"
    )


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


class ClsRecorder:
    """Records ``(B, N)`` fp32 [CLS] attention rows (summed over heads) of chosen encoder layers."""

    def __init__(self, layers: nn.ModuleList, num_heads: int):
        self.layers = layers
        self.num_heads = num_heads

    @contextmanager
    def record(self, wanted: Mapping[str, int]) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, forward passes fill ``rows[role]`` for each ``role → layer`` in ``wanted``."""
        rows: dict[str, torch.Tensor] = {}
        handles = []
        by_layer: dict[int, list[str]] = {}
        for role, layer in wanted.items():
            by_layer.setdefault(layer, []).append(role)
        try:
            for layer, roles in by_layer.items():
                q_mod, k_mod = qk_projections(self.layers[layer])
                handles += self._hook(q_mod, k_mod, roles, rows)
            yield rows
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def record_keys(self, wanted: Mapping[str, int]) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, forward passes fill ``keys[role]`` with the ``(B, N, H * D)`` projected keys of
        layer ``wanted[role]`` (merging methods compare patches by key similarity)."""
        keys: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for role, layer in wanted.items():
                _, k_mod = qk_projections(self.layers[layer])

                def on_k(_m, _inp, out, role=role):
                    keys[role] = out.detach()

                handles.append(k_mod.register_forward_hook(on_k))
            yield keys
        finally:
            for h in handles:
                h.remove()

    def _hook(self, q_mod: nn.Module, k_mod: nn.Module, roles: list[str], rows: dict) -> list:
        seen: dict[str, torch.Tensor] = {}

        def finish() -> None:
            if "q" in seen and "k" in seen:
                row = cls_attention(seen.pop("q"), seen.pop("k"), self.num_heads)
                for role in roles:
                    rows[role] = row

        def on_q(_m, _inp, out):
            seen["q"] = out[:, 0].detach()
            finish()

        def on_k(_m, _inp, out):
            seen["k"] = out.detach()
            finish()

        return [q_mod.register_forward_hook(on_q), k_mod.register_forward_hook(on_k)]
