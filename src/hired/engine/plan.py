"""The plan of a call: a method checked against a model's family once, for every runtime.

:func:`make_plan` is the one place where a method meets a model: the family's configuration checks,
what the method may know of the tower (:class:`~hired.methods.base.ModelInfo`), the tower layers it
reads and whether their scores are [CLS] rows or received attention. The transformers adapter and the
vLLM plugin both build their state from it, so they accept and refuse the same things with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hired.core.grid import Geometry, Layout
from hired.families.base import Family
from hired.methods.base import Method, ModelInfo, num_image_tokens
from hired.methods.pack import keeps_newline


@dataclass(frozen=True)
class Plan:
    """A method applied to one model.

    ``hidden_layers``: indices into the tower's ``hidden_states`` that form the features (several are
    concatenated); ``roles`` / ``key_roles``: each score role / key role of the method → its 0-based tower
    layer; ``score_kind``: ``"cls"`` (the [CLS] row) or ``"received"`` (the attention each token receives).
    """

    method: Method
    family: Family
    geometry: Geometry
    info: ModelInfo
    hidden_layers: tuple[int, ...]
    roles: Mapping[str, int]
    key_roles: Mapping[str, int]
    score_kind: str

    @property
    def newline(self) -> bool:
        """Whether the family's stock sequence has image-newline tokens."""
        return self.family.newline

    @property
    def packs_newline(self) -> bool:
        """Whether image-newline tokens go to the language model with this method."""
        return keeps_newline(self.method, self.family.newline)

    def token_count(self, layout: Layout) -> int:
        """Placeholders (= features) one image of ``layout`` gets: the method's count, newlines included."""
        return num_image_tokens(self.method, layout, self.family.newline)

    def stock_tokens(self, layout: Layout) -> int:
        """Tokens the unmodified model gives an image of ``layout``."""
        return self.family.stock_tokens(layout)


def make_plan(
    method: Method,
    family: Family,
    config,
    has_cls: bool,
    *,
    truncated_by: str | None = None,
) -> Plan:
    """Check ``method`` against a model of ``family`` with Hugging Face ``config`` and build its plan.

    ``has_cls``: whether the tower prepends a [CLS] token. ``truncated_by``: the name of a runtime that
    builds the tower only up to the layer feeding the projector (vLLM), so a layer the method reads must
    be one of those. Raises ``TypeError`` for something that is not a method config and ``ValueError``
    naming the problem for anything the family or the method refuses. Changes nothing.
    """
    if not isinstance(method, Method):
        raise TypeError(f"method must be a hired method config such as hired.HiRED(...), got {method!r}")
    family.check_config(config, has_cls)
    info, hidden_layers = family.model_info(config, has_cls)
    family.check_method(method)
    roles = dict(method.score_layers(info))
    key_roles = dict(method.key_layers(info))
    kind = method.score_kind(info)
    built = info.num_layers if truncated_by is None else info.feature_layer + 1
    if truncated_by is not None:
        note = (
            f"{truncated_by} builds the vision layers 0..{built - 1} (up to the one feeding the projector); "
            "pick one of those with the method's layer option"
        )
    else:
        note = f"the vision tower has layers 0..{built - 1}"
    for role, layer in [*roles.items(), *key_roles.items()]:
        if not 0 <= layer < built:
            raise ValueError(f"{role} layer {layer} is out of range: {note}")
    geometry = family.geometry(config)
    return Plan(method, family, geometry, info, tuple(hidden_layers), roles, key_roles, kind)
