"""Method configs and their registry."""

from hired.methods.base import Method, ModelInfo, Selection, get_method, list_methods, num_image_tokens, register
from hired.methods.hired import HiRED

__all__ = ["HiRED", "Method", "ModelInfo", "Selection", "get_method", "list_methods", "num_image_tokens", "register"]
