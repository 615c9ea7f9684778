"""Registry of distillation methods; importing this package registers all of them."""

from dd.distill.methods import ast, datm, ftd, mtt, tesla  # noqa: F401  (registers the methods)
from dd.distill.methods.base import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
