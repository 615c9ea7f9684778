"""What an evaluation reads, checked before anything trains: the synthetic sets (verified, classification sets,
agreeing on dataset and preprocessing) and the real data under the sets' preprocessing and split, which must be
the data each set was distilled on (``dd.identity``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dd.data import CHANNELS, DatasetSpec, Preprocessor, shape_flags
from dd.distill.synset import SynSet, load_synset
from dd.errors import DDError
from dd.eval.config import EvalConfig
from dd.identity import VERIFIED, check_data, data_flags, describe, is_fingerprint
from dd.realdata import PreparedData, prepare_data


def load_sets(config: EvalConfig, device: torch.device) -> dict[str, SynSet]:
    """The ``--synset`` sets by path, each verified (unless ``--no-verify``) and a classification set."""
    sets = {}
    for path in config.synset_paths():
        synset = load_synset(path, device, verify=config.verify)
        if synset.transfer:
            raise DDError(f"the set at {path} is a transfer set (KRR-ST); evaluate it with --protocol transfer")
        sets[path] = synset
    return sets


def set_default(sets: dict[str, SynSet], key: str, flag: str) -> Any:
    """The value of distillation setting ``key`` that the sets agree on (None when none records it)."""
    values = {json.dumps(s.meta.get("config", {}).get(key)) for s in sets.values()} - {"null"}
    if len(values) > 1:
        raise DDError(f"the sets were distilled with different {flag} ({', '.join(sorted(values))}); evaluate them "
                      f"in separate calls or pass {flag}")
    return json.loads(values.pop()) if values else None


def check_set(path: str, synset: SynSet, spec: DatasetSpec, image_size_given: bool) -> int:
    """The set must fit ``spec``: image shape, labels in range (soft: K wide) and ``ipc`` images per class as
    its metadata says. Returns its ipc."""
    shape, want = tuple(synset.images.shape[1:]), (spec.channels, *spec.size)
    if shape != want:
        fixable = shape[0] in CHANNELS and (shape[1:] == want[1:] or not image_size_given)
        hint = (f"pass {' '.join(shape_flags(shape, want))}" if fixable
                else "evaluate it on the dataset it was distilled on")
        raise DDError(f"the set at {path} holds {shape} images but {spec.name} gives {want}; {hint}")
    k, n = spec.num_classes, synset.images.shape[0]
    ipc = synset.meta.get("ipc")
    own = synset.labels.shape[1] if synset.soft else int(synset.labels.unique().numel())  # the set's classes
    if own != k and isinstance(ipc, int) and not isinstance(ipc, bool) and ipc > 0 and n == ipc * own:
        raise DDError(f"the set at {path} holds {own} classes of {ipc} images, but the data ({spec.name}) has {k} "
                      "classes; evaluate it on the data it was distilled on (--data-path)")
    if synset.soft and synset.labels.shape[1] != k:
        raise DDError(f"the set at {path} has soft labels over {synset.labels.shape[1]} classes but {spec.name} has "
                      f"{k}; evaluate it on the dataset it was distilled on")
    labels = synset.hard_labels()
    if not synset.soft and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise DDError(f"the set at {path} has labels {int(labels.min())}..{int(labels.max())} but {spec.name} has "
                      f"classes 0..{k - 1}; fix the set's labels")
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc <= 0 or n != ipc * k:
        raise DDError(f"the set at {path} holds {n} images for {k} classes but its metadata says ipc {ipc!r}; "
                      "restore synset.json or regenerate the set")
    if not synset.soft and torch.bincount(labels, minlength=k).tolist() != [ipc] * k:
        raise DDError(f"the set at {path} does not hold {ipc} images of every class (counts "
                      f"{torch.bincount(labels, minlength=k).tolist()}); fix the set's labels")
    return ipc


def set_identity(path: str, synset: SynSet, data_check: str = VERIFIED) -> dict[str, Any]:
    """What a record says of the set it trained on: checksum, path, method, iteration, verified, and how its data
    was checked when not verified (``dd.identity``: a set without a fingerprint, or other data allowed)."""
    found = {"sha256": synset.checksum, "path": str(Path(path)), "method": synset.meta.get("method"),
             "iteration": synset.meta.get("iteration"), "verified": synset.verified}
    return found if data_check == VERIFIED else {**found, "data_check": data_check}


def check_set_data(path: str, synset: SynSet, data: PreparedData, given: str, allow: bool) -> str:
    """The data must be the set's own (``dd.identity.check_data``); another class count is refused even when other
    data is allowed, naming the data, not the set."""
    recorded = synset.meta.get("data")
    if is_fingerprint(recorded) and recorded["num_classes"] != data.spec.num_classes:
        raise DDError(f"{given} gives data of {data.spec.num_classes} classes, but the set at {path} was distilled on "
                      f"{describe(recorded)}; pass the data it was distilled on")
    return check_data(recorded, data.fingerprint(), f"the set at {path}", "was distilled on", given, allow)


def load_inputs(config: EvalConfig, device: torch.device
                ) -> tuple[dict[str, SynSet], PreparedData, str, dict[str, str]]:
    """The sets by path, the real data under their preprocessing, the dataset name and how each set's data was
    checked (``check_set_data``)."""
    sets = load_sets(config, device)
    kinds = {path: s.meta.get("preprocess_meta", {}).get("kind", "standard") for path, s in sets.items()}
    if config.zca and any(kind != "zca" for kind in kinds.values()):
        path = next(p for p, kind in kinds.items() if kind != "zca")
        raise DDError(f"--zca: the set at {path} was distilled under {kinds[path]} preprocessing, and a set is "
                      "evaluated in its own input space; drop --zca (it applies to baselines-only runs)")
    named = {s.meta["dataset"] for s in sets.values() if s.meta.get("dataset")}
    if config.dataset is None and len(named) > 1:
        raise DDError(f"the sets were distilled on different datasets ({', '.join(sorted(named))}); evaluate them "
                      "in separate calls")
    dataset = config.dataset or next(iter(named), None) or "digits"
    for path, synset in sets.items():
        if synset.meta.get("dataset") not in (None, dataset):
            raise DDError(f"the set at {path} was distilled on {synset.meta['dataset']}, not {dataset}; "
                          f"drop --dataset or pass the matching set")
    states = {s.preprocess_fingerprint() for s in sets.values()}
    if len(states) > 1:
        raise DDError("the sets were distilled under different preprocessing (standard vs ZCA, or ZCA fitted on "
                      "other data); evaluate them in separate calls")
    first = next(iter(sets.values()), None)
    if first is not None and first.preprocess:
        meta = first.meta.get("preprocess_meta", {})
        preprocess: str | Preprocessor = Preprocessor.from_state(first.preprocess, meta)
    else:
        preprocess = "zca" if config.zca else "standard"
    data_path = config.data_path or set_default(sets, "data_path", "--data-path") or "data"
    image_size = config.image_size or set_default(sets, "image_size", "--image-size")
    val_fraction = first_of(config.val_fraction, set_default(sets, "val_fraction", "--val-fraction"), 0.1)
    val_seed = first_of(config.val_seed, set_default(sets, "val_seed", "--val-seed"), 0)
    channels = config.channels or set_default(sets, "channels", "--channels")
    data = prepare_data(dataset, device, data_path, config.download, preprocess, image_size, val_fraction, val_seed,
                        channels)
    given = data_flags(dataset, data_path, image_size, channels)
    checks = {path: check_set_data(path, synset, data, given, config.allow_other_data) for path, synset in sets.items()}
    return sets, data, dataset, checks


def first_of(*values: Any) -> Any:
    """The first value that is not None."""
    return next(v for v in values if v is not None)


def check_random_ipc(data: PreparedData, ipcs: list[int]) -> None:
    """Every class must hold at least ``ipc`` training images for the random baseline."""
    counts = torch.bincount(data.train_labels.cpu(), minlength=data.spec.num_classes)
    for ipc in ipcs:
        if ipc > int(counts.min()):
            raise DDError(f"the random baseline's --ipc {ipc} is larger than "
                          f"{data.class_label(int(counts.argmin()))}, which has {int(counts.min())} training images; "
                          "pass a smaller --ipc")
