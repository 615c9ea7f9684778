"""The JSON shape of each artefact, checked once at load: a malformed file of any shape (valid JSON with a string
where a number belongs, a list where an object belongs, a null) is one error line naming the file and the field,
never a traceback further on.

A schema maps a dotted field (``dataset.size``) to a kind: a check that takes the value and says what it should
be when it is not. ``optional(kind)`` lets the field be absent or null (fields newer than some artefacts).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dd.errors import DDError

Kind = Callable[[Any], str | None]
"""A check of one value: None when it fits, else what it should be ("an integer")."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(value: Any) -> str | None:
    return None if _is_int(value) else "an integer"


def positive_integer(value: Any) -> str | None:
    return None if _is_int(value) and value > 0 else "a positive integer"


def number(value: Any) -> str | None:
    return None if (_is_int(value) or isinstance(value, float)) else "a number"


def text(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else "an object"


def sequence(value: Any) -> str | None:
    return None if isinstance(value, list) else "a list"


def accuracies(value: Any) -> str | None:
    ok = isinstance(value, list) and all(v is None or number(v) is None for v in value)
    return None if ok else "a list of numbers (null where not measured)"


def image_size(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)
    return None if ok else "a list of two positive integers [height, width]"


def fingerprint(value: Any) -> str | None:
    from dd.identity import is_fingerprint

    return None if is_fingerprint(value) else "a data fingerprint (name, shape, num_classes, sha256)"


def optional(kind: Kind) -> Kind:
    """``kind``, or absent, or null."""

    def check(value: Any) -> str | None:
        return None if value is None else kind(value)

    check.optional = True  # type: ignore[attr-defined]
    return check


_ABSENT = object()


def _field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _ABSENT
        obj = obj[part]
    return obj


def check_schema(obj: Any, schema: dict[str, Kind], path: str | Path, what: str, fix: str) -> None:
    """DDError naming ``what`` at ``path`` and the first field of ``schema`` that ``obj`` lacks or holds in another
    shape, with ``fix``; ``obj`` itself must be a JSON object."""
    if not isinstance(obj, dict):
        raise DDError(f"{what} {path} is not a JSON object (it holds {type(obj).__name__}); {fix}")
    for dotted, kind in schema.items():
        value = _field(obj, dotted)
        if value is _ABSENT:
            if getattr(kind, "optional", False):
                continue
            raise DDError(f"{what} {path} lacks the field '{dotted}'; {fix}")
        problem = kind(value)
        if problem is not None:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise DDError(f"{what} {path}: field '{dotted}' should be {problem}, got {shown}; {fix}")


MANIFEST = {"dataset": mapping, "dataset.name": text, "dataset.channels": optional(positive_integer),
            "dataset.size": optional(image_size), "dataset.num_classes": optional(positive_integer), "model": mapping,
            "model.name": text, "recipe": mapping, "num_epochs": positive_integer, "data": optional(fingerprint),
            "seed": optional(integer)}
"""A store's ``manifest.json`` (the parameter layout is checked by ``ParamSpec.from_json``)."""

DISTILLABLE = {**MANIFEST, "dataset.channels": positive_integer, "dataset.size": image_size,
               "dataset.num_classes": positive_integer}
"""A store that ``dd.distill`` matches: one whose manifest also says the experts' image shape and class count."""

EXPERT_RECORD = {"index": integer, "sha256": text, "seed": optional(integer), "test_acc": optional(accuracies),
                 "final_test_acc": optional(number)}
"""A store's ``expert_<i>.json``."""

SYNSET_META = {"dataset": optional(text), "ipc": optional(integer), "method": optional(text),
               "model": optional(text), "iteration": optional(integer), "config": optional(mapping),
               "protocol": optional(text), "preprocess_meta": optional(mapping), "splits": optional(mapping),
               "data": optional(fingerprint), "buffer": optional(text), "lr": optional(number)}
"""A synthetic set's ``synset.json``."""

TEACHER_MANIFEST = {"dataset": mapping, "dataset.name": text, "dataset.channels": positive_integer,
                    "dataset.size": image_size, "model": mapping, "model.name": text, "output_dim": positive_integer,
                    "files.encoder.sha256": text, "data": optional(fingerprint)}
"""An SSL teacher's ``manifest.json``."""

RESULT_RECORD = {"source": text, "model": text, "seed": integer, "accuracy": number}
"""One record of any ``results.json`` (dd.eval's, and the transfer protocol's)."""

CLASSIFICATION_RECORD = {**RESULT_RECORD, "protocol": optional(mapping), "protocol.name": optional(text),
                         "protocol.lr": optional(number), "set": optional(mapping), "data": optional(mapping),
                         "ipc": optional(integer), "max_accuracy": optional(number)}
"""A record of a set or baseline (source distilled, random or full) in dd.eval's ``results.json``."""

RUN_CONFIG = {"method": optional(text), "dataset": optional(text), "model": optional(text), "ipc": optional(integer),
              "iterations": optional(integer)}
"""A run folder's ``config.json``, as ``dd.report`` reads it."""
