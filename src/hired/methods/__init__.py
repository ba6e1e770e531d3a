"""Method configs and their registry."""

from hired.methods.base import Method, ModelInfo, Selection, get_method, list_methods, num_image_tokens, register
from hired.methods.hired import HiRED
from hired.methods.simple import ClsTopK, Random, Spatial

__all__ = [
    "ClsTopK",
    "HiRED",
    "Method",
    "ModelInfo",
    "Random",
    "Selection",
    "Spatial",
    "get_method",
    "list_methods",
    "num_image_tokens",
    "register",
]
