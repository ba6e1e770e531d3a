"""Calibrating a content-adaptive budget: the ``reference`` at which a data set's mean token count is the
fixed budget's (``HiRED(adapt=...)``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from torch import nn

from hired.adapters.partitions import with_detail
from hired.adapters.vision import has_cls_token
from hired.core.grid import Layout
from hired.engine import make_plan
from hired.families import family_of
from hired.methods.base import Method


def image_details(model: nn.Module, processor, images: Sequence, *, batch_size: int = 16) -> list[Layout]:
    """Each image's layout with its sharp-edge density (``Layout.detail``), as the vision step of ``model``
    reads it from the processor's pixels; the vision tower does not run."""
    inner, family = family_of(model)
    geometry = family.geometry(inner.config)
    ip = processor.image_processor
    out: list[Layout] = []
    for at in range(0, len(images), batch_size):
        batch = list(images[at : at + batch_size])
        pixels = dict(ip(images=batch, return_tensors="pt"))
        pixels.update(family.processor_inputs(processor, batch, {}))
        layouts, values = family.batch_layouts(geometry, pixels["pixel_values"], pixels.get("image_sizes"), {})
        out += with_detail(processor, layouts, values)
    return out


def edge_densities(model: nn.Module, processor, images: Sequence, *, batch_size: int = 16) -> list[float]:
    """Each image's sharp-edge density, the statistic of ``HiRED(adapt=...)``: the share of neighbouring
    pixel pairs of its sub-images (its full image without them) that differ in luminance by more than
    96/255, as ``model``'s vision step reads it from ``processor``'s pixels (the tower does not run)."""
    return [lay.detail for lay in image_details(model, processor, images, batch_size=batch_size)]


def calibrate(model: nn.Module, processor, images: Sequence, method: Method, *, batch_size: int = 16) -> Method:
    """``method`` (a content-adaptive ``HiRED(adapt=...)``) with the ``reference`` at which its mean token count
    over ``images`` is closest to the mean count of the same method at a fixed budget (``adapt=0``), the
    nearest from below on a tie. Reads the pixels only (the vision tower does not run); ``model`` and
    ``processor`` say how the images are cut and normalised.

    >>> tuned = hired.calibrate(model, processor, images, hired.HiRED(budget=0.2, adapt=1.0))
    """
    if not isinstance(method, Method) or not method.reads_pixels():
        raise ValueError(
            f"calibrate takes a method with a content-adaptive budget, e.g. HiRED(adapt=1.0); got {method!r}"
        )
    if not images:
        raise ValueError("calibrate needs at least one image")
    inner, family = family_of(model)
    make_plan(method, family, inner.config, has_cls_token(family.tower(inner)))  # refuses what the model cannot run
    layouts = image_details(model, processor, images, batch_size=batch_size)
    fixed = dataclasses.replace(method, adapt=0.0)
    target = sum(fixed.count(lay) for lay in layouts) / len(layouts)

    def mean(reference: float) -> float:
        tuned = dataclasses.replace(method, reference=reference)
        return sum(tuned.count(lay) for lay in layouts) / len(layouts)

    positive = [lay.detail for lay in layouts if lay.detail]
    if not positive:
        raise ValueError("none of the images has a sharp edge, so an adaptive budget gives every one the minimum")
    lo, hi = math.log(min(positive)) - 30.0, math.log(max(positive)) + 30.0  # mean(e**lo) >= target >= mean(e**hi)
    for _ in range(80):
        mid = (lo + hi) / 2
        if mean(math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    means = {x: mean(math.exp(x)) for x in (lo, hi)}
    best = min(means, key=lambda x: (abs(means[x] - target), means[x] > target))  # from below on a tie
    return dataclasses.replace(method, reference=float(math.exp(best)))
