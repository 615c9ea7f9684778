"""The identity of the real data an artefact was made from, and the one check every consumer runs on it.

A *data fingerprint* names the dataset, its image shape and class count, and the SHA-256 of the images and
labels as loaded (train and test splits, after resizing and channel conversion, before the validation split
is carved and before preprocessing), so it is the same for ``dd.buffer`` (no validation split), ``dd.distill``
and ``dd.eval`` on the same data, and differs for any other folder, size or class count.

Every artefact records the fingerprint of its data: a store's ``manifest.json`` (``data``), a synthetic set's
``synset.json`` (``data``, and ``store_data``: the store it was distilled from), a distillation checkpoint
(``data``); eval records keep their own identity of the preprocessed splits. Consumers call ``check_data``:
equal fingerprints pass, an artefact older than fingerprints passes with one warning line (and is recorded as
``unverified``), and different data is refused with one line naming both sides and ``--allow-other-data``,
which lets it through (and the artefacts made from it say so).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from dd.errors import DDError
from dd.io import sha256_tensors

ALLOW_FLAG = "--allow-other-data"
VERIFIED, UNVERIFIED, OTHER = "verified", "unverified", "other data (--allow-other-data)"
"""What ``check_data`` found: the same data, an artefact without a fingerprint, different data let through."""


def data_fingerprint(name: str, channels: int, size: tuple[int, int] | list[int], num_classes: int,
                     *tensors: torch.Tensor) -> dict[str, Any]:
    """The fingerprint of a dataset as loaded: name, shape [C, H, W], class count and the SHA-256 of
    ``tensors`` (train images, train labels, test images, test labels)."""
    return {"name": name, "shape": [int(channels), *map(int, size)], "num_classes": int(num_classes),
            "sha256": sha256_tensors(*tensors)}


def describe(fingerprint: dict[str, Any]) -> str:
    """``digits 1x8x8, 10 classes, sha256 1a2b3c4d``: a fingerprint in an error line."""
    shape = "x".join(map(str, fingerprint.get("shape", []))) or "?"
    return (f"{fingerprint.get('name', '?')} {shape}, {fingerprint.get('num_classes', '?')} classes, "
            f"sha256 {str(fingerprint.get('sha256', '?'))[:8]}")


def is_fingerprint(value: Any) -> bool:
    """Whether ``value`` has the shape of a fingerprint (a malformed one is an error, not an old artefact)."""
    return (isinstance(value, dict) and isinstance(value.get("sha256"), str) and isinstance(value.get("name"), str)
            and isinstance(value.get("num_classes"), int) and isinstance(value.get("shape"), list))


def check_data(recorded: Any, actual: dict[str, Any], artefact: str, made: str, given: str, allow: bool,
               fix: str | None = None) -> str:
    """Compare the fingerprint an artefact ``recorded`` with the ``actual`` data's: ``VERIFIED`` when equal;
    ``UNVERIFIED`` with a warning line when the artefact has none (made before dd recorded one); ``OTHER`` when
    they differ and ``allow`` (``--allow-other-data``); else DDError naming both. ``artefact`` names the
    artefact (``the set at runs/a/synset``), ``made`` what it did with its data (``was distilled on``) and
    ``given`` where the data in hand comes from (``--data-path b``); ``fix`` replaces the way out where other
    data is never right (a store's experts all learn from one dataset)."""
    if recorded is None:
        print(f"warning: {artefact} records no data fingerprint (made by an older dd), so the data it {made} "
              f"cannot be checked against {given}; recorded as {UNVERIFIED}", file=sys.stderr)
        return UNVERIFIED
    if not is_fingerprint(recorded):
        raise DDError(f"{artefact} has a malformed data fingerprint ({recorded!r}); regenerate it")
    if recorded["sha256"] == actual["sha256"]:
        return VERIFIED
    if allow:
        print(f"warning: {artefact} {made} {describe(recorded)}, but {given} gives {describe(actual)}; "
              f"going on ({ALLOW_FLAG}), and the outputs record it", file=sys.stderr)
        return OTHER
    fix = fix or (f"pass that data (its --dataset, --data-path, --image-size and --channels), or {ALLOW_FLAG} to "
                  "use this data anyway (the outputs then record it)")
    raise DDError(f"{artefact} {made} {describe(recorded)}, but {given} gives {describe(actual)}; {fix}")


def data_flags(dataset: str, data_path: str | None, image_size: int | None = None, channels: int | None = None) -> str:
    """``--dataset x --data-path y`` (and the size and channel flags when set): where data in hand came from."""
    found = f"--dataset {dataset}" + (f" --data-path {data_path}" if data_path and dataset != "digits" else "")
    found += f" --image-size {image_size}" if image_size else ""
    return found + (f" --channels {channels}" if channels else "")
