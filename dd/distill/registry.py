"""The one registry of distillation methods: name -> (config class, run class).

Every method registers here, built-in or a user's own (``register_method``):

    @register_method("dm", config=DMConfig)                    # a run class of its own over RunLoop
    class DM(Condenser): ...

    @register_method("ftd", config=FTDConfig, run=Distiller)   # hooks over the trajectory engine
    class FTD(Method): ...

``python -m dd.distill --method NAME`` parses the flags with NAME's config class and runs ``run(config, argv)``;
``dd.tune``, ``python -m dd``'s overview, the help texts and the unknown-method error read the same registry.
Importing ``dd.distill.methods`` registers the built-in methods; ``load_plugins`` imports a user's files or modules
(``--plugin``, ``DD_PLUGINS``) so that their ``register_method`` runs too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd.errors import DDError

PLUGINS_ENV = "DD_PLUGINS"
"""Environment variable: plugins (``.py`` files or module names, separated by the path separator) that every stage
imports before it reads a method name."""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its ``config`` dataclass, the ``run`` class built as ``run(config, argv)`` (a
    ``dd.distill.runloop.RunLoop``), and, for a trajectory method, the ``hooks`` class the engine runs."""

    name: str
    config: type
    run: Callable[..., Any]
    hooks: type | None = None

    @property
    def protocol(self) -> str | None:
        """The ``dd.protocols`` protocol its sets name, which dd.eval scores them under (a per-class method's
        ``protocol_name``, by default its own name); None for a method whose sets are scored otherwise (KRR-ST's
        transfer protocol)."""
        if self.hooks is not None:
            return self.hooks.protocol
        if hasattr(self.run, "protocol_name"):
            return self.run.protocol_name or self.name
        return None


METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, config: type, run: Callable[..., Any] | None = None) -> Callable[[type], type]:
    """Class decorator adding a method under ``name`` with its ``config`` class. Without ``run`` the decorated
    class is the run class (a ``RunLoop`` subclass); with ``run`` (the trajectory engine, ``Distiller``) it is the
    hooks class that ``run`` builds for this method."""

    def wrap(cls: type) -> type:
        if name in METHODS and METHODS[name].config is not config:
            raise DDError(f"method '{name}' is registered twice (with {METHODS[name].config.__name__} and "
                          f"{config.__name__}); rename one of them")
        METHODS[name] = MethodSpec(name, config, cls if run is None else run, None if run is None else cls)
        if run is not None:
            cls.name = name
        return cls

    return wrap


def method_names() -> list[str]:
    """The registered methods, sorted: the built-ins and the plugins imported so far."""
    importlib.import_module("dd.distill.methods")  # registers the built-ins
    return sorted(METHODS)


def method_of(config: type) -> str | None:
    """The method registered with the config class ``config`` (None for a class no method is registered with)."""
    names = [name for name in method_names() if METHODS[name].config is config]
    return names[0] if len(names) == 1 else None


def get_method(name: str) -> MethodSpec:
    """The method registered under ``name``; a one-line error listing the registered ones otherwise."""
    if name not in method_names():
        raise DDError(f"unknown method '{name}'; choose from {', '.join(method_names())} (a method of your own: "
                      f"--plugin FILE.py or {PLUGINS_ENV}, docs/adding-a-method.md)")
    return METHODS[name]


def load_plugin(plugin: str) -> None:
    """Import ``plugin``: a ``.py`` file (by path) or a module name (on ``sys.path``); its ``register_method`` calls
    add its methods. A file is imported once per process under a name derived from its path."""
    if plugin.endswith(".py"):
        path = Path(plugin).resolve()
        if not path.is_file():
            raise DDError(f"--plugin {plugin}: no such file; pass the path of a .py file or a module name")
        module_name = "dd_plugin_" + re.sub(r"\W", "_", str(path))
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
        try:
            spec.loader.exec_module(module)
        except DDError:
            del sys.modules[module_name]
            raise
        except Exception as e:
            del sys.modules[module_name]
            raise DDError(f"--plugin {plugin} failed to import ({type(e).__name__}: {e}); fix the file") from None
        return
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as e:
        if e.name and plugin.startswith(e.name):
            raise DDError(f"--plugin {plugin}: no module of that name; pass a .py file or a module on "
                          "PYTHONPATH") from None
        raise


def load_plugins(plugins: Sequence[str] = ()) -> None:
    """Import the plugins of ``DD_PLUGINS`` and then ``plugins`` (``--plugin``), after the built-in methods."""
    importlib.import_module("dd.distill.methods")
    from_env = [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p.strip()]
    for plugin in [*from_env, *plugins]:
        load_plugin(plugin.strip())
