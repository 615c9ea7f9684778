"""The distillation stage as a library: ``distill(config)`` runs the method registered under ``config.method``
(``dd.distill.registry``; its config class is ``get_method(name).config``) to its last iteration and returns the
finished run, whose folder holds the set. ``python -m dd.distill`` is the command around it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dd.distill.registry import get_method, method_names, register_method


def build_run(config: Any, argv: Sequence[str] | None = None) -> Any:
    """The run of ``config``'s method (a ``dd.distill.runloop.RunLoop``), not started; ``argv``: the command line
    that an interrupt's resume hint repeats."""
    return get_method(config.method).run(config, argv)


def distill(config: Any, argv: Sequence[str] | None = None) -> Any:
    """Distil with ``config`` (resuming its run folder under ``config.resume``); the finished run (``run_dir``,
    ``iteration``)."""
    run = build_run(config, argv)
    run.run()
    return run


__all__ = ["build_run", "distill", "get_method", "method_names", "register_method"]
