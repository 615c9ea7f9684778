"""``python -m dd.eval``: retrain fresh networks on a synthetic set and report test accuracy beside
the baselines, under a named evaluation protocol (``dd.protocols``): ``--protocol mtt`` (the reference
``evaluate_synset``), ``datm``, ``ast``, ``dc`` (300 epochs, no augmentation), ``dsa`` or ``dm`` (1000 epochs
with DSA); by default the one the set's method names (its metadata), and ``--epochs`` etc. override single
values. The baselines run under every protocol used: random real images beside a DC set train as the set does.

    python -m dd.eval --synset runs/mtt-digits-ipc1/synset --models ConvNet,ResNet18 --runs 5 --baseline random,full

``--models`` takes names and named pools (``pool:M`` for the DC code's MLP, ConvNet, LeNet, AlexNet, VGG11,
ResNet18; ``pool:BN``; the ConvNet ablations ``pool:W``, ``pool:D``, ``pool:A``, ``pool:P``, ``pool:N``),
adapted to the image size (dd/eval/pools.py); what was swapped or left out is printed.

Soft labels [N,K] train with soft cross-entropy and test by argmax accuracy. Since soft labels and
training-time augmentation can inflate results (the point of DD-Ranking, Li et al. 2025),
``--labels hard,auto --augment dsa,none`` evaluates every (labels, augment) combination: ``hard``
trains on the argmax of soft labels, ``auto`` on the set's own labels, ``soft`` insists on soft ones;
``none`` turns DSA off. Random real images (always hard labels) run under each ``--augment`` setting.

Several sets evaluate side by side in one call (``--synset A --synset B`` or a comma list), with the
baselines once per ipc. Each set is verified against its checksum and its metadata against its tensors,
then checked against the dataset (image shape, classes, ipc) before anything trains.

Writes results.json (a list ``runs`` of records: the set's identity (SHA-256 of its tensor file, path,
method, iteration, verified), source, ipc, labels, augment, dataset and a fingerprint of its data, the
split, the complete protocol, model, seed, accuracy) and results.md: one section per dataset, split and
protocol, a row per set or baseline and a column per architecture, so a cell only ever holds the seeds
of one run setting (see dd/eval/report.py). Rerunning skips exactly the runs already recorded: a
changed set, other data or another protocol is trained anew.

``--protocol transfer`` evaluates a KRR-ST transfer set instead (pre-train, then linear probe and
fine-tuning on target datasets): see python -m dd.eval --protocol transfer --help.

Under ``torchrun --nproc-per-node K -m dd.eval ...`` the K processes share the runs (see dd/eval/results.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dd import distributed
from dd.augment import DSA
from dd.cli import run_cli
from dd.config import build_parser, opt, parse_config, parse_list, peek_option, to_dict
from dd.data import CHANNELS, DatasetSpec, Preprocessor, list_datasets, shape_flags
from dd.device import TF32_HELP, check_fits, check_seed
from dd.distill.synset import SynSet, load_synset
from dd.errors import DDError
from dd.eval import pools, transfer
from dd.eval.report import augment_of, results_markdown, run_key, source_name
from dd.eval.results import Results
from dd.identity import VERIFIED, check_data, data_flags, describe, is_fingerprint
from dd.io import atomic_write_bytes
from dd.lock import hold
from dd.multiseed import train_and_score_seeds
from dd.protocols import Protocol, get_protocol, legacy_name, list_protocols
from dd.realdata import SPLITS, PreparedData, prepare_data, random_subset

BASELINES = ("random", "full")
LABELS = ("auto", "hard", "soft")
AUGMENTS = ("dsa", "none")


@dataclass
class EvalConfig:
    synset: str | None = opt(None, "synthetic-set folder written by dd.distill; repeat the flag (or give a comma "
                             "list) to evaluate several sets side by side (omit to run baselines only)", repeat=True)
    verify: bool = opt(True, "refuse a set without a recorded checksum (--no-verify accepts a hand-made set; its "
                       "records say so)")
    dataset: str | None = opt(None, "dataset to test on (default: the set's; must match it)")
    data_path: str | None = opt(None, "folder holding the dataset (default: the set's, else data)")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, "side length of the images (default: the set's, else the dataset's own; "
                                       "imagefolder: the images' side when they share one, else 32)")
    channels: int | None = opt(None, "1 (grey) or 3 (colour): convert the images to that many channels (default: "
                               "the set's, else the dataset's own; imagefolder: 1 when every image is grey, else 3)")
    split: str = opt("test", "split to report accuracy on: test (the final report) or val (for choices: tuning, "
                     "selection)", choices=SPLITS)
    val_fraction: float | None = opt(None, "fraction of every class held out of the training split as validation "
                                     "(default: the set's, else 0.1)")
    val_seed: int | None = opt(None, "seed of the validation split's draw (default: the set's, else 0)")
    zca: bool = opt(False, "ZCA-whiten (baselines-only runs; a set carries its own preprocessing: refused with a set "
                    "that is not ZCA-whitened)")
    allow_other_data: bool = opt(False, "evaluate sets on other data than they were distilled on (refused by default: "
                                 "the data fingerprints differ); the records say so")
    ipc: int | None = opt(None, "images per class of the random baseline (default: each set's)")
    protocol: str | None = opt(None, "evaluation protocol: " + ", ".join(list_protocols()) + " (see dd/protocols.py), "
                               "or transfer for a KRR-ST set (its own flags: --protocol transfer --help); default: "
                               "the one each set's method names, else mtt", choices=(*list_protocols(), "transfer"))
    models: str = opt("ConvNet", "comma-separated architectures to train, or named pools adapted to the image "
                      "size (dd/eval/pools.py): " + ", ".join(pools.PREFIX + p for p in pools.POOLS))
    runs: int = opt(5, "seeds per architecture and source")
    epochs: int | None = opt(None, "training epochs of each network (default: the protocol's; mtt runs epochs+1 "
                             "and decays the lr after epoch epochs//2+1)")
    lr: float | None = opt(None, "learning rate on the synthetic set (default: the set's learned lr)")
    baseline_lr: float = opt(0.01, "learning rate of the random and full baselines")
    batch_size: int | None = opt(None, "training batch size (default: the protocol's)")
    momentum: float | None = opt(None, "SGD momentum (default: the protocol's)")
    weight_decay: float | None = opt(None, "SGD weight decay (default: the protocol's)")
    dsa_strategy: str = opt("protocol", "DSA ops on training batches, 'none' for none, 'protocol' for the protocol's")
    labels: str = opt("auto", "comma-separated label settings of the set: auto (its own), hard (argmax), soft")
    augment: str = opt("dsa", "comma-separated augmentation settings: dsa (--dsa-strategy) or none")
    baseline: str = opt("", "comma-separated baselines to run beside the set: random, full")
    out: str | None = opt(None, "output folder (default: eval/ beside the sets when they share a folder, else "
                          "runs/eval-<dataset>)")
    seed: int = opt(0, "first seed; run r uses seed + r")
    batch_seeds: str = opt("auto", "train the seeds of a set and architecture together with torch.func.vmap: on, off, "
                           "or auto (on for CUDA; on a CPU batching is no faster)", choices=("auto", "on", "off"))
    amp: str = opt("none", "mixed precision of the training: bf16 runs forward and backward under bfloat16 autocast "
                   "with fp32 master weights (recorded in the protocol, so bf16 and fp32 results never share a cell)",
                   choices=("none", "bf16"))
    deterministic: bool = opt(False, "deterministic kernels and cuDNN settings (dd.device.use_deterministic): what "
                              "makes CUDA runs and their resumes bitwise repeatable; slower")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    tf32: bool = opt(False, TF32_HELP)


def synset_paths(config: EvalConfig) -> list[str]:
    """The ``--synset`` folders, in order, each once."""
    return list(dict.fromkeys(p.strip() for p in (config.synset or "").split(",") if p.strip()))


def check_lr(flag: str, lr: float) -> None:
    """A learning rate must be a positive finite number."""
    if not math.isfinite(lr) or lr <= 0:
        raise DDError(f"{flag} must be a positive finite learning rate, got {lr}")


def validate(config: EvalConfig) -> list[str]:
    """Check flags; returns the baselines asked for."""
    pools.check_models(config.models)
    baselines = [b for b in config.baseline.split(",") if b]
    for b in baselines:
        if b not in BASELINES:
            raise DDError(f"unknown baseline '{b}'; choose from {', '.join(BASELINES)}")
    for name in ("runs", "epochs", "batch_size"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise DDError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    for name in ("ipc", "image_size"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise DDError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.seed < 0:
        raise DDError(f"--seed must be 0 or more, got {config.seed}")
    check_seed("--seed", config.seed, offsets=config.runs)
    check_fits("--runs", config.runs, 256, "the list of runs")
    if config.val_seed is not None:
        check_seed("--val-seed", config.val_seed)
    if config.lr is not None:
        check_lr("--lr", config.lr)
    check_lr("--baseline-lr", config.baseline_lr)
    if config.momentum is not None and not 0 <= config.momentum < 1:
        raise DDError(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.weight_decay is not None and not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise DDError(f"--weight-decay must be 0 or a positive finite number, got {config.weight_decay}")
    if config.dsa_strategy != "protocol":
        DSA(config.dsa_strategy)  # raises on an unknown op
    if not synset_paths(config) and not baselines:
        raise DDError("nothing to evaluate; pass --synset PATH and/or --baseline random,full")
    if config.dataset is not None and config.dataset not in list_datasets():
        raise DDError(f"unknown dataset '{config.dataset}'; choose from {', '.join(list_datasets())}")
    parse_list(config.labels, LABELS, "--labels")
    parse_list(config.augment, AUGMENTS, "--augment")
    return baselines


def label_settings(synset: SynSet | None, modes: list[str], path: str | None) -> dict[str, torch.Tensor]:
    """The set's training labels under each ``--labels`` mode, keyed by what they are (hard/soft).

    ``auto`` keeps the set's labels, ``hard`` takes their argmax, ``soft`` requires soft labels."""
    if "soft" in modes and (synset is None or not synset.soft):
        found = f"the set at {path} has hard labels" if synset is not None else "no --synset was given"
        raise DDError(f"--labels soft needs a set with soft labels [N,K], but {found}; use --labels hard or auto")
    if synset is None:
        return {}
    settings: dict[str, torch.Tensor] = {}
    for mode in modes:
        name = "hard" if mode == "hard" or not synset.soft else "soft"
        settings[name] = synset.hard_labels() if name == "hard" else synset.labels
    return settings


def protocol_overrides(config: EvalConfig) -> dict[str, Any]:
    """The protocol values the flags set (``--epochs`` ... ``--dsa-strategy``)."""
    names = ("epochs", "batch_size", "momentum", "weight_decay")
    found = {name: getattr(config, name) for name in names if getattr(config, name) is not None}
    if config.dsa_strategy != "protocol":  # a str, not nullable: the config parser reads "none" as None
        found["dsa_strategy"] = config.dsa_strategy
    if config.amp != "none":
        found["amp"] = config.amp
    return found


def set_protocol(config: EvalConfig, synset: SynSet) -> str:
    """``--protocol``, else the protocol the set's metadata names (a DSA or DM set written before their protocols
    were split from ``dc``: its method's, ``dd.protocols.legacy_name``), else ``mtt``."""
    if config.protocol:
        return config.protocol
    name = legacy_name(synset.meta.get("protocol") or "mtt", synset.meta.get("method"))
    if name not in list_protocols():
        raise DDError(f"the set asks for evaluation protocol '{name}', which this dd does not know; pass "
                      f"--protocol (one of {', '.join(list_protocols())})")
    return name


def augment_protocols(base: Protocol, modes: list[str]) -> dict[str, Protocol]:
    """The protocol under each ``--augment`` mode (``none``: no DSA), keyed by the augmentation used."""
    found: dict[str, Protocol] = {}
    for mode in modes:
        protocol = base if mode == "dsa" else replace(base, dsa_strategy="none")
        found.setdefault(augment_of({"protocol": protocol.describe(0.0)}), protocol)
    return found


def load_sets(config: EvalConfig, device: torch.device) -> dict[str, SynSet]:
    """The ``--synset`` sets by path, each verified (unless ``--no-verify``) and a classification set."""
    sets = {}
    for path in synset_paths(config):
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


Tensors = tuple[torch.Tensor, torch.Tensor]
Job = tuple[dict[str, Any], Callable[[], Tensors], Protocol]
"""(the record to write, the training data, the protocol to train under)."""


def batched_seeds(setting: str, device: torch.device) -> bool:
    """Whether ``--batch-seeds`` asks for seeds trained together on ``device``."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def seed_groups(jobs: list[Job], batched: bool) -> list[list[Job]]:
    """The jobs in groups that train together: the seeds of one setting whose training data does not depend
    on the seed (a set, the full data; random real images are drawn per seed), or one job per group."""
    if not batched:
        return [[job] for job in jobs]
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        record = job[0]
        same = record["source"] != "random" and tuple((k, repr(v)) for k, v in record.items() if k != "seed")
        groups.setdefault(same or (id(job),), []).append(job)
    return list(groups.values())


def default_out(config: EvalConfig, dataset: str) -> Path:
    """``--out``, else ``eval/`` beside the sets when they share a folder, else ``runs/eval-<dataset>``."""
    if config.out:
        return Path(config.out)
    parents = {Path(p).resolve().parent for p in synset_paths(config)}
    return parents.pop() / "eval" if len(parents) == 1 else Path(f"runs/eval-{dataset}")


def make_out(out: Path) -> None:
    """Create the output folder, or say in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise DDError(f"--out {out} is a file, not a folder; pass a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DDError(f"cannot create the output folder {out} ({e.strerror}); pass another --out") from None
    if not os.access(out, os.W_OK):
        raise DDError(f"the output folder {out} is not writable; pass another --out")


def plan_jobs(config: EvalConfig, sets: dict[str, SynSet], ipcs: dict[str, int], data: PreparedData,
              dataset: str, baselines: list[str], baseline_ipcs: list[int],
              data_checks: dict[str, str] | None = None) -> list[Job]:
    """Every run asked for: each set under its protocol, the baselines under every protocol used, per model,
    seed, labels and augmentation setting; ``data_checks`` (``load_inputs``) go into the sets' records."""
    data_checks = data_checks or {}
    label_modes = parse_list(config.labels, LABELS, "--labels")
    labels = {path: label_settings(synset, label_modes, path) for path, synset in sets.items()}
    augments = parse_list(config.augment, AUGMENTS, "--augment")
    named = {path: set_protocol(config, synset) for path, synset in sets.items()}
    used = list(dict.fromkeys(named.values())) or [config.protocol or "mtt"]
    protocols = {name: augment_protocols(get_protocol(name, **protocol_overrides(config)), augments)
                 for name in used}
    context = {"dataset": dataset, "data": data.identity(), "split": config.split}
    # The full-data baseline trains on the whole training split, less the validation images when it is
    # validated on them; random real images come from the training part only, as a set's initialisation.
    full_train = data.train if config.split == "val" else data.train_and_val

    def sources(seed: int, protocol: str) -> list[tuple[dict[str, Any], Callable[[], Tensors]]]:
        """(record fields, training data) of every source evaluated with ``seed`` under ``protocol``."""
        found: list[tuple[dict[str, Any], Callable[[], Tensors]]] = []
        for path, synset in sets.items():
            if named[path] != protocol:
                continue
            lr = config.lr if config.lr is not None else synset.lr
            for name, set_labels in labels[path].items():
                found.append(({"source": "distilled", "method": synset.meta.get("method", "unknown"),
                               "ipc": ipcs[path], "labels": name, "lr": lr,
                               "set": set_identity(path, synset, data_checks.get(path, VERIFIED))},
                              lambda s=synset, y=set_labels: (s.images, y)))
        if "random" in baselines:
            for ipc in baseline_ipcs:
                found.append(({"source": "random", "method": "random", "ipc": ipc, "labels": "hard",
                               "lr": config.baseline_lr}, lambda k=ipc: random_subset(data, k, seed)))
        if "full" in baselines:
            found.append(({"source": "full", "method": "full", "ipc": None, "labels": "hard",
                           "lr": config.baseline_lr}, lambda: full_train))
        return found

    models, notes = pools.expand_models(config.models, data.spec.channels, data.spec.size)
    notes = [*notes, *dc_augmentation_notes(protocols, dataset, models)]
    for note in notes if distributed.is_main() else []:
        print(f"eval: {note}")
    jobs: list[Job] = []
    for model in models:
        for r in range(config.runs):
            for name in used:
                for augment, protocol in protocols[name].items():
                    for fields, get in sources(config.seed + r, name):
                        lr = fields.pop("lr")
                        record = {**fields, **context, "model": model, "seed": config.seed + r, "augment": augment,
                                  "protocol": protocol.describe(lr)}
                        jobs.append((record, get, protocol))
    return jobs


def dc_augmentation_notes(protocols: dict[str, dict[str, Protocol]], dataset: str, models: list[str]) -> list[str]:
    """Where protocol dc (no augmentation) is not what the DC code ran: its get_daparam gives MNIST and the model
    ConvNetBN an augmentation of their own, trained 1000 epochs, which dd does not have."""
    if not any(p.name == "dc" and not p.augmented for by_augment in protocols.values() for p in by_augment.values()):
        return []
    cases = ([f"dataset {dataset}"] if dataset == "mnist" else []) + (["ConvNetBN"] if "ConvNetBN" in models else [])
    if not cases:
        return []
    return [f"protocol dc trains {' and '.join(cases)} without augmentation; the DC code gave them its own "
            "(crop, scale, rotate, noise) for 1000 epochs, which dd does not implement (dd/protocols.py)"]


def run_jobs(jobs: list[Job], results: Results, data: PreparedData, split: str, batched: bool) -> list[dict]:
    """Train the jobs not yet in ``results`` (this rank's share), recording each at once; every record."""
    spec, evaluated_on = data.spec, data.split(split)
    done = {run_key(r) for r in results.previous}
    todo = [job for job in jobs if run_key(job[0]) not in done]
    if len(todo) < len(jobs) and distributed.is_main():
        print(f"eval: {len(jobs) - len(todo)} of {len(jobs)} runs already in {results.path}")
    groups = seed_groups(todo, batched)
    bar = tqdm(distributed.shard(groups), desc="eval", unit="group" if len(groups) < len(todo) else "run",
               disable=not distributed.is_main())
    last: dict[str, str] = {}  # the last finished run's accuracy, in the postfix
    for group in bar:
        record = group[0][0]
        bar.set_postfix({"source": record["source"], "model": record["model"], "seeds": len(group),
                         "labels": record["labels"], "augment": record["augment"], **last})  # in this order
        seeds = [r["seed"] for r, _, _ in group]
        scores = train_and_score_seeds(record["model"], spec.channels, spec.num_classes, spec.size, group[0][1](),
                                       evaluated_on, record["protocol"]["lr"], group[0][2], seeds,
                                       batched=len(group) > 1)
        for (run, _, _), score in zip(group, scores, strict=True):
            extra = {} if score.max_over_epochs is None else {"max_accuracy": score.max_over_epochs}
            results.add({**run, "accuracy": score.final, **extra})
            last["last"] = f"{source_name(run)} {run['model']} {100 * score.final:.2f}%"
    return results.finish()


def main(argv: Sequence[str] | None = None) -> int:
    if peek_option(argv, "protocol", "classification") == "transfer":
        return transfer.main(argv)
    config, _ = parse_config(EvalConfig, argv, build_parser(EvalConfig, "python -m dd.eval", __doc__,
                                                            "experiments/eval/digits.yaml"))
    baselines = validate(config)
    device = distributed.setup(config.device, config.tf32, config.deterministic)
    config = dataclasses.replace(config, device=str(device))  # recorded: the device used
    sets, data, dataset, checks = load_inputs(config, device)
    ipcs = {path: check_set(path, synset, data.spec, config.image_size is not None) for path, synset in sets.items()}
    for path, synset in sets.items():
        if config.lr is None and not (math.isfinite(synset.lr) and synset.lr > 0):
            raise DDError(f"the set at {path} has learned lr {synset.lr:g}, which cannot train a network; "
                          "regenerate it, or evaluate it with an explicit --lr")
    baseline_ipcs = [config.ipc] if config.ipc is not None else list(dict.fromkeys(ipcs.values()))
    if "random" in baselines and not baseline_ipcs:
        raise DDError("the random baseline needs --ipc (or a --synset to take it from)")
    if "random" in baselines:
        check_random_ipc(data, baseline_ipcs)
    data.split(config.split)  # a --split val without a validation split fails here, before any training
    jobs = plan_jobs(config, sets, ipcs, data, dataset, baselines, baseline_ipcs, checks)
    out = default_out(config, dataset)
    make_out(out)
    lock = ".lock" if distributed.rank() == 0 else f".lock.rank{distributed.rank()}"
    with hold(out, f"the eval output folder {out}", lock):
        results = Results(out, to_dict(config))
        runs = run_jobs(jobs, results, data, config.split, batched_seeds(config.batch_seeds, device))
        if not distributed.is_main():
            return 0
        atomic_write_bytes(out / "results.md", results_markdown(runs).encode())
    asked = {run_key(job[0]) for job in jobs}
    print(results_markdown([r for r in runs if run_key(r) in asked]))
    print(finished(results.path, out / "results.md", list(sets)))
    return 0


def finished(results_path: Path, markdown: Path, synsets: list[str]) -> str:
    """The stage's last lines: where the records and tables are, and the report command for the sets' runs."""
    runs = list(dict.fromkeys(str(Path(p).parent) for p in synsets if (Path(p).parent / "config.json").is_file()))
    lines = [f"results: {results_path} (every record); tables: {markdown}"]
    if runs:
        lines.append(f"next: report on the run: {shlex.join(['python', '-m', 'dd.report', *runs])}")
    return "\n".join(lines)


def check_random_ipc(data: PreparedData, ipcs: list[int]) -> None:
    """Every class must hold at least ``ipc`` training images for the random baseline."""
    counts = torch.bincount(data.train_labels.cpu(), minlength=data.spec.num_classes)
    for ipc in ipcs:
        if ipc > int(counts.min()):
            raise DDError(f"the random baseline's --ipc {ipc} is larger than "
                          f"{data.class_label(int(counts.argmin()))}, which has {int(counts.min())} training images; "
                          "pass a smaller --ipc")


if __name__ == "__main__":
    run_cli(main)
