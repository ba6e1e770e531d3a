"""One description per model family (:class:`~hired.families.base.Family`), shared by every adapter."""

from __future__ import annotations

from hired.families.base import Family
from hired.families.internvl import InternVL
from hired.families.llava import Llava
from hired.families.llava_next import LlavaNext
from hired.families.onevision import Onevision
from hired.families.qwen2_5_vl import Qwen25VL
from hired.families.qwen3_5 import Qwen35
from hired.families.qwen3_vl import Qwen3VL

FAMILIES: dict[str, Family] = {
    f.name: f for f in (LlavaNext(), Llava(), Onevision(), Qwen25VL(), Qwen3VL(), Qwen35(), InternVL())
}
"""Family name → its description."""


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of(model):
    """``(inner model, family)`` of a supported transformers model instance; ``TypeError`` otherwise."""
    classes = []
    for family in FAMILIES.values():
        for cls, attr in family.model_classes().items():
            if isinstance(model, cls):
                return (getattr(model, attr) if attr else model), family
            classes.append(cls.__name__)
    raise TypeError(
        f"hired does not support {type(model).__name__}; supported model classes: {', '.join(sorted(classes))}"
    )


def family_of_processor(processor) -> Family | None:
    """The family whose processor class is ``processor``'s (its most specific one), or ``None``."""
    by_class = {}
    for family in FAMILIES.values():
        try:
            by_class.setdefault(family.processor_class(), family)
        except ImportError:
            continue
    return next((by_class[c] for c in type(processor).__mro__ if c in by_class), None)


__all__ = ["FAMILIES", "Family", "family_of", "family_of_processor", "get_family"]
