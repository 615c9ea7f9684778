"""The search space: ``--space key=spec`` parsed against a method's config class.

    lr_img=log:10..1000      a float (or an int, for an int key) drawn log-uniformly between the bounds
    lr_teacher=0.001..0.1    the same, uniformly
    syn_steps=10,20,40       one of the listed values (any key type)

``eval_lr`` is not a config key: it is the learning rate of the final validation evaluation (``dd.eval --lr``),
searchable where that evaluation runs. Keys that set the run's identity, budget or split (``NOT_SEARCHABLE``) are
refused: a search compares configs at one budget on one validation split.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from dd.config import make_config
from dd.errors import DDError

EVAL_LR = "eval_lr"
NOT_SEARCHABLE = ("method", "dataset", "run_dir", "resume", "iterations", "val_fraction", "val_seed", "device",
                  "wandb", "log_every", "checkpoint_every", "eval_every")


@dataclass(frozen=True)
class Param:
    """One searched key: a range (``low``..``high``, ``log`` or not, of ``kind`` int or float) or ``choices``."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a point of this parameter's space."""
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def text(self) -> str:
        """The ``--space`` spec that gives this parameter (normalised: what a search's identity compares)."""
        if self.kind == "choice":
            return f"{self.name}={','.join(str(c) for c in self.choices)}"
        return f"{self.name}={'log:' if self.log else ''}{self.low:g}..{self.high:g}"


def key_type(config_cls: type, name: str) -> type:
    """The scalar type of config field ``name`` (``int | None`` -> int)."""
    tp = typing.get_type_hints(config_cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def parse_param(text: str, config_cls: type, method: str) -> Param:
    """One ``key=spec``; DDError naming the key and the fix for an unknown key, a key the method does not have,
    a range on a key that is not a number, a value of the wrong type, or a space of one point."""
    name, sep, spec = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not spec.strip():
        raise DDError(f"--space {text!r} is not key=spec; write e.g. lr_img=log:10..1000 or syn_steps=10,20,40")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    if name != EVAL_LR and name not in fields:
        raise DDError(f"--space: {method} has no key '{name}'; see python -m dd.distill --method {method} --help "
                      f"for its keys (or {EVAL_LR}, the evaluation lr)")
    if name in NOT_SEARCHABLE:
        raise DDError(f"--space: '{name}' is not searchable (it sets the run's identity, budget or split); "
                      "give it in the preset or as a dd.tune flag")
    tp, owner = (float, None) if name == EVAL_LR else (key_type(config_cls, name), config_cls)
    spec = spec.strip()
    log = spec.startswith("log:")
    if log or ".." in spec:
        return _range(name, spec.removeprefix("log:") if log else spec, log, tp, owner)
    values = tuple(dict.fromkeys(_coerce(name, v.strip(), tp, owner) for v in spec.split(",") if v.strip()))
    if len(values) < 2:
        raise DDError(f"--space {name}={spec} is one point; give two values or more (a,b,...) or a range lo..hi, "
                      "or set the key in the preset")
    return Param(name, "choice", choices=values)


def _coerce(name: str, value: str, tp: type, config_cls: type | None) -> Any:
    """``value`` as config field ``name`` takes it (dd's own coercion and choices); ``eval_lr`` as a float."""
    if config_cls is None:
        try:
            return float(value)
        except ValueError:
            raise DDError(f"--space: '{name}' must be a float, got {value!r}") from None
    if tp not in (int, float, str, bool):
        raise DDError(f"--space: '{name}' is not a number, text or switch; it cannot be searched")
    return getattr(make_config(config_cls, {name: value}, source="--space"), name)


def _range(name: str, spec: str, log: bool, tp: type, owner: type | None) -> Param:
    if tp not in (int, float):
        raise DDError(f"--space: '{name}' is a {tp.__name__}, not a number, so it takes a list of values (a,b), "
                      "not a range")
    low_text, sep, high_text = spec.partition("..")
    if not sep:
        raise DDError(f"--space {name}: a range is lo..hi (optionally log:lo..hi), got {spec!r}")
    low, high = (_coerce(name, v.strip(), tp, owner) for v in (low_text, high_text))
    if not low < high:
        raise DDError(f"--space {name}={spec}: need lo < hi (a space of more than one point)")
    if log and low <= 0:
        raise DDError(f"--space {name}=log:{spec}: a log range needs lo > 0")
    return Param(name, tp.__name__, float(low), float(high), log)


def parse_space(texts: list[str], config_cls: type, method: str) -> list[Param]:
    """Every ``--space``; DDError when there is none or a key is given twice."""
    if not texts:
        raise DDError("give at least one --space key=spec (e.g. --space lr_img=log:10..1000)")
    params = [parse_param(t, config_cls, method) for t in texts]
    names = [p.name for p in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DDError(f"--space gives {', '.join(twice)} more than once; give each key once")
    return params
