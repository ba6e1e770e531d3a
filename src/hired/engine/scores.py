"""The score hooks' one implementation: which roles each tower layer feeds, and what a layer's q and k give.

Every runtime hooks its tower its own way (separate q/k projections in transformers' CLIP, SigLIP and
DINOv2; a fused ``qkv`` in vLLM's towers and in Qwen's ViT; rotary q/k handed to the attention in Qwen's
blocks): that is an input detail. Each hook hands the layer's queries and keys to :class:`LayerScores`,
which computes the scores the method reads (the [CLS] row or the attention each token receives, inside
each attention segment) and files them under the method's roles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from hired.core.scores import cls_attention, received_attention, stride_for

SCORE_KINDS = ("cls", "received")


@dataclass
class Recording:
    """What the hooks recorded during one tower forward: ``rows[role]`` ``(B, N)`` (or ``(seq,)``) fp32
    scores summed over heads, ``keys[role]`` ``(B, N, H * D)`` (or ``(seq, H * D)``) projected keys, and
    whatever a hook keeps until its layer's other half arrives (``pending``)."""

    owner: object = None
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: dict = field(default_factory=dict)


class LayerScores:
    """The roles a method reads, grouped per tower layer, and the scores a layer's q and k give.

    ``rows``: score role → layer; ``keys``: key role → layer; ``kind``: ``"cls"`` or ``"received"``;
    ``max_queries``: for ``"received"``, average over at most that many queries of each attention segment
    (a regular subset, :func:`hired.core.scores.query_subset`: an estimate at a fraction of the cost);
    ``None`` (the default): over all of them, exactly.
    """

    def __init__(
        self,
        rows: Mapping[str, int],
        keys: Mapping[str, int] | None,
        num_heads: int,
        kind: str,
        max_queries: int | None = None,
    ):
        if kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be 'cls' or 'received', got {kind!r}")
        stride_for(1, max_queries)  # checks it
        self.kind = kind
        self.num_heads = num_heads
        self.max_queries = max_queries
        self.row_roles: dict[int, list[str]] = {}
        self.key_roles: dict[int, list[str]] = {}
        for role, layer in rows.items():
            self.row_roles.setdefault(layer, []).append(role)
        for role, layer in (keys or {}).items():
            self.key_roles.setdefault(layer, []).append(role)

    @property
    def layers(self) -> list[int]:
        """Every layer a hook is needed on, ascending."""
        return sorted(set(self.row_roles) | set(self.key_roles))

    def missing(self, rec: Recording) -> list[str]:
        """Roles the recording lacks (the forward never reached their layer)."""
        rows = [r for roles in self.row_roles.values() for r in roles if r not in rec.rows]
        keys = [r for roles in self.key_roles.values() for r in roles if r not in rec.keys]
        return sorted(rows) + sorted(keys)

    def check_complete(self, rec: Recording) -> None:
        """Raise ``RuntimeError`` naming the roles a tower forward left unrecorded."""
        missing = self.missing(rec)
        if missing:
            raise RuntimeError(f"the vision tower's forward did not reach the hooked layers for {', '.join(missing)}")

    def score(self, q: torch.Tensor, k: torch.Tensor, segments: Sequence[int] | None = None) -> torch.Tensor:
        """The layer's scores, fp32, summed over heads.

        ``kind="cls"``: ``q`` ``(B, H * D)`` the [CLS] queries, ``k`` ``(B, N, H * D)`` → ``(B, N)``.
        ``kind="received"``: ``q``, ``k`` ``(B, N, H * D)`` → ``(B, N)``; with ``segments`` (bounds of the
        attention segments of one packed sequence, e.g. ``cu_seqlens``), ``q``, ``k`` ``(seq, H * D)`` →
        ``(seq,)``, each token's attention received inside its own segment. Segments of one length are
        scored together, as one batch (Qwen2.5-VL's windows: a few lengths, many segments).
        """
        if self.kind == "cls":
            return cls_attention(q, k, self.num_heads)
        if segments is None:
            return self._received(q, k)
        bounds = [int(b) for b in segments]
        first = bounds[0] if bounds else 0
        out = torch.zeros(max(bounds[-1] - first, 0) if bounds else 0, dtype=torch.float32, device=q.device)
        by_length: dict[int, list[int]] = {}
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                by_length.setdefault(b - a, []).append(a)
        for length, starts in by_length.items():
            if len(starts) == 1:  # one segment (a full-attention block): a view, no gather
                a = starts[0]
                out[a - first : a - first + length] = self._received(q[a : a + length][None], k[a : a + length][None])[
                    0
                ]
                continue
            index = torch.tensor(starts, device=q.device)[:, None] + torch.arange(length, device=q.device)  # (G, L)
            out[(index - first).flatten()] = self._received(q[index], k[index]).flatten()
        return out

    def _received(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """:func:`received_attention` of ``(B, N, H * D)`` q and k, over this instance's share of the queries."""
        return received_attention(q, k, self.num_heads, stride=stride_for(q.shape[1], self.max_queries))

    def put_rows(self, rec: Recording, layer: int, row: torch.Tensor) -> None:
        """File ``row`` (the layer's scores) under every score role read at ``layer``."""
        for role in self.row_roles.get(layer, ()):
            rec.rows[role] = row

    def put_keys(self, rec: Recording, layer: int, keys: torch.Tensor) -> None:
        """File ``keys`` under every key role read at ``layer``."""
        for role in self.key_roles.get(layer, ()):
            rec.keys[role] = keys
