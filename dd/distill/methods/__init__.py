"""The built-in methods: importing this package registers each of them in ``dd.distill.registry``."""

from dd.distill import dm, gradmatch, krr_st  # noqa: F401  (register dc, dsa, dm, krr_st)
from dd.distill.methods import ast, datm, ftd, mtt, tesla  # noqa: F401  (register the trajectory methods)
from dd.distill.methods.base import Method
from dd.distill.registry import METHODS, get_method, method_names, register_method

__all__ = ["METHODS", "Method", "get_method", "method_names", "register_method"]
