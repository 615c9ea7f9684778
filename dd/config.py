"""Configs as plain dataclasses, exposed as command-line flags and YAML presets.

Each stage declares one dataclass whose fields carry their help text (``opt(default, "help")``).
``parse_config`` builds the argparse parser from it and resolves values in this order:
dataclass defaults < the YAML file given by ``--config`` (over the preset it names as ``base``, if any) < flags
given on the command line. Unknown YAML keys, wrong types and malformed YAML are one-line ``DDError``s.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from dd.errors import DDError

T = TypeVar("T")


BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: v > 0, "positive"),
    "nonnegative": (lambda v: v >= 0, ">= 0"),
    "fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "positive_unit": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "below_one": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
"""The range a numeric field may declare (``opt(..., bounds=...)``), checked by ``validate``."""


def opt(default: Any, help: str, choices: Sequence[str] | None = None, repeat: bool = False,
        bounds: str | None = None) -> Any:
    """A config field with its help text (and optional fixed choices for the CLI). A ``repeat`` field is a
    comma-separated list that the flag given several times (or a YAML list) extends; ``bounds`` names its range in
    ``BOUNDS`` (None, an unset optional value, always passes)."""
    if bounds is not None and bounds not in BOUNDS:
        raise ValueError(f"unknown bounds {bounds!r}; choose from {', '.join(BOUNDS)}")
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "repeat": repeat,
                                                        "bounds": bounds})


def validate(config: Any) -> None:
    """The one validation path of every config: each field's declared ``bounds`` (finite, in range), then the
    ``check`` of every class in the config's hierarchy that defines one, most general first (a settings block's
    checks before the stage's and the method's), so a rule is written once, on the block that owns the field.
    Raises a ``DDError`` naming the flag and the fix."""
    for f in dataclasses.fields(config):
        value, bounds = getattr(config, f.name), f.metadata.get("bounds")
        if bounds is None or value is None:
            continue
        ok, need = BOUNDS[bounds]
        if not math.isfinite(value):
            raise DDError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if not ok(value):
            raise DDError(f"--{f.name.replace('_', '-')} must be {need}, got {value}")
    for cls in reversed(type(config).__mro__):
        check = cls.__dict__.get("check")
        if check is not None:
            check(config)


class _JoinAction(argparse.Action):
    """``--flag a --flag b`` (or ``--flag a,b``) gives ``"a,b"``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        previous = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, values if previous in (None, argparse.SUPPRESS) else f"{previous},{values}")


def _base_type(tp: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, value: Any, tp: Any) -> Any:
    base, nullable = _base_type(tp)
    if value is None or (nullable and isinstance(value, str) and value.lower() in ("none", "null")):
        if nullable:
            return None
        raise DDError(f"config key '{name}' cannot be empty; give a {base.__name__}")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = float(value) if isinstance(value, str) and "e" in value.lower() else value
            if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
                raise ValueError
            return int(number)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
                return ",".join(str(v) for v in value)  # a YAML list of a comma-separated field
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        article = "an" if base.__name__[0] in "aeiou" else "a"
        raise DDError(f"config key '{name}' must be {article} {base.__name__}, got {value!r}") from None
    return value


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad choice, missing value) are one-line ``DDError``s, not usage dumps."""

    def error(self, message: str) -> NoReturn:
        raise DDError(f"{message}; see {self.prog} --help")


def build_parser(cls: type, prog: str, description: str,
                 config_example: str = "experiments/mtt/digits_ipc1.yaml") -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per dataclass field, plus ``--config`` (its help names
    ``config_example``, a preset this command accepts)."""
    parser = _Parser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None,
                        help=f"YAML preset (e.g. {config_example}); flags override it")
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:  # a help that explains its default says it once
            help_text += f" (default: {f.default})"
        # SUPPRESS keeps unset flags out of the namespace, so a YAML value is only overridden
        # by a flag the user actually typed.
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        kwargs["metavar"] = base.__name__.upper()
        if f.metadata.get("repeat"):
            kwargs["action"] = _JoinAction
        parser.add_argument(flag, type=str, **kwargs)
    return parser


BASE_KEY = "base"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset into a dict, with one-line errors for a missing or malformed file. A preset may name
    another as ``base: <path relative to the preset's own folder>``: the base's keys (its own base's first, and so
    on) lie under the preset's, so a variant states only what it changes. The result holds no ``base`` key."""
    return _load_chain(Path(path), ())


def _load_chain(path: Path, below: tuple[Path, ...]) -> dict[str, Any]:
    """``path``'s keys over its base's; ``below`` the presets that named this one as their base (for cycles)."""
    data = read_yaml(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base.strip():
        raise DDError(f"config file {path}: 'base' must name another preset (a path relative to {path.parent}), "
                      f"got {base!r}")
    base_path = path.parent / base
    chain = (*below, path)
    if base_path.resolve() in {p.resolve() for p in chain}:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise DDError(f"config file {path}: its base chain is a cycle ({cycle}); remove one of these 'base' keys")
    if not base_path.is_file():
        raise DDError(f"config file {path} names base {base}, which does not exist ({base_path}); 'base' is a "
                      "path relative to the preset's own folder")
    return {**_load_chain(base_path, chain), **data}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """One YAML file as a dict, as written (a ``base`` key is kept, not followed)."""
    path = Path(path)
    if not path.is_file():
        raise DDError(f"config file {path} does not exist; see experiments/ for presets")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DDError(f"config file {path} is not UTF-8 text; save it as UTF-8 (is it a YAML file?)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DDError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DDError(f"config file {path} must be a mapping of key: value, not a {type(data).__name__}")
    return data


def make_config(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a dict, checking keys and coercing types (YAML reads 1e-5 as a string)."""
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    resolved = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = [n for n in names if n.startswith(name[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise DDError(f"{source} has unknown key '{key}'{hint}; see --help for the valid keys")
        resolved[name] = _coerce(name, value, hints[name])
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in resolved and resolved[f.name] not in choices:
            raise DDError(f"{source}: '{f.name}' must be one of {', '.join(choices)}, got {resolved[f.name]!r}")
    return cls(**resolved)


def parse_config(cls: type[T], argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> tuple[T, dict[str, Any]]:
    """Parse ``argv`` with a parser from ``build_parser`` into ``cls``: defaults < ``--config`` YAML <
    command-line flags. Returns the config and any extra arguments the caller added to the parser."""
    ns = vars(parser.parse_args(argv))
    config_path = ns.pop("config")
    names = {f.name for f in dataclasses.fields(cls)}
    extras = {k: ns.pop(k) for k in list(ns) if k not in names}
    values: dict[str, Any] = {}
    if config_path:
        values.update(load_yaml(config_path))
        make_config(cls, values, source=f"config file {config_path}")  # report bad keys by file
    values.update(ns)
    return make_config(cls, values, source="command line"), extras


def peek_option(argv: Sequence[str] | None, name: str, default: str) -> str:
    """The value of ``--name`` in ``argv``, else of ``name`` in its ``--config`` YAML, else ``default``:
    lets a command choose the config class that parses the rest (``dd.distill --method krr_st``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=None)
    parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    ns, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(ns, name) is not None:
        return getattr(ns, name)
    return str(load_yaml(ns.config).get(name, default)) if ns.config else default


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a plain dict (for manifests, metadata and resolved-config files)."""
    return dataclasses.asdict(config)


def parse_list(value: str, choices: Sequence[str], flag: str, allow_empty: bool = False) -> list[str]:
    """The distinct entries of a comma-separated flag, in order, each checked against ``choices``."""
    items = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    for item in items:
        if item not in choices:
            raise DDError(f"unknown {flag} setting '{item}'; choose from {', '.join(choices)} (comma-separated)")
    if not items and not allow_empty:
        raise DDError(f"{flag} is empty; choose from {', '.join(choices)} (comma-separated)")
    return items
