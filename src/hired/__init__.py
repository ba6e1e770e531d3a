"""hired: drop visual tokens before the language model of a high-resolution VLM (HiRED and baselines).

import hired
hired.apply(model, processor, hired.HiRED(budget=0.2, alpha=0.5))
out = model.generate(**processor(images=img, text=prompt, return_tensors="pt"), max_new_tokens=32)
hired.last_selection(model)   # what was kept, per image and partition
hired.last_scores(model)      # the attention scores that decided it ([CLS] row or received)
hired.remove(model, processor)
"""

from hired.adapters.calibrate import calibrate, edge_densities
from hired.adapters.options import options
from hired.adapters.transformers import (
    applied_method,
    apply,
    last_scores,
    last_selection,
    prepare_inputs,
    remove,
    score_layers,
)
from hired.methods import (
    DART,
    CDPruner,
    ClsTopK,
    DivPrune,
    HiRED,
    Method,
    Pool,
    PruMerge,
    PruMergePlus,
    Random,
    Spatial,
    VisionZip,
    get_method,
    list_methods,
)
from hired.selection import ImageSelection, PartitionSelection

__version__ = "0.2.0"

__all__ = [
    "CDPruner",
    "ClsTopK",
    "DART",
    "DivPrune",
    "HiRED",
    "ImageSelection",
    "Method",
    "PartitionSelection",
    "Pool",
    "PruMerge",
    "PruMergePlus",
    "Random",
    "Spatial",
    "VisionZip",
    "applied_method",
    "apply",
    "calibrate",
    "edge_densities",
    "get_method",
    "last_scores",
    "last_selection",
    "list_methods",
    "options",
    "prepare_inputs",
    "remove",
    "score_layers",
]
