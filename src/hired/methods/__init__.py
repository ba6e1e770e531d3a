"""Method configs and their registry."""

from hired.methods.base import (
    Method,
    ModelInfo,
    Prompts,
    Selection,
    get_method,
    list_methods,
    num_image_tokens,
    register,
)
from hired.methods.diverse import DART, CDPruner, DivPrune
from hired.methods.hired import HiRED
from hired.methods.merging import PruMerge, PruMergePlus, VisionZip
from hired.methods.pool import Pool
from hired.methods.simple import ClsTopK, Random, Spatial

__all__ = [
    "CDPruner",
    "ClsTopK",
    "DART",
    "DivPrune",
    "HiRED",
    "Method",
    "ModelInfo",
    "Pool",
    "Prompts",
    "PruMerge",
    "PruMergePlus",
    "Random",
    "Selection",
    "Spatial",
    "VisionZip",
    "get_method",
    "list_methods",
    "num_image_tokens",
    "register",
]
