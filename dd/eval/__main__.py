"""``python -m dd.eval``: retrain fresh networks on a synthetic set and report test accuracy beside
the baselines, all under one protocol (MTT's: SGD momentum 0.9, wd 5e-4, lr x0.1 at half, DSA).

    python -m dd.eval --synset runs/mtt-digits-ipc1/synset --models ConvNet,ResNet18 --runs 5 --baseline random,full

Soft labels [N,K] train with soft cross-entropy and test by argmax accuracy. Since soft labels and
training-time augmentation can inflate results (the point of DD-Ranking, Li et al. 2025),
``--labels hard,auto --augment dsa,none`` evaluates every (labels, augment) combination: ``hard``
trains on the argmax of soft labels, ``auto`` on the set's own labels, ``soft`` insists on soft ones;
``none`` turns DSA off. Random real images (always hard labels) run under each ``--augment`` setting.

Writes results.json (a list ``runs`` of records: source, method, model, ipc, seed, accuracy, labels,
augment, protocol) and results.md (architecture x source per setting, and the improvement of the set
over random real images per setting). Rerunning skips runs already recorded under the same setting.

``--protocol transfer`` evaluates a KRR-ST transfer set instead (pre-train, then linear probe and
fine-tuning on target datasets): see python -m dd.eval --protocol transfer --help.

Under ``torchrun --nproc-per-node K -m dd.eval ...`` the K processes share the runs (see dd/eval/results.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dd import distributed
from dd.cli import run_cli
from dd.config import build_parser, opt, parse_config, parse_list, peek_option, to_dict
from dd.data import Preprocessor, list_datasets
from dd.distill.synset import SynSet, load_synset
from dd.errors import DDError
from dd.eval import transfer
from dd.eval.report import augment_of, results_markdown
from dd.eval.results import Results, run_key
from dd.io import atomic_write_bytes
from dd.models import list_models
from dd.multiseed import train_and_test_seeds
from dd.realdata import PreparedData, prepare_data, random_subset
from dd.training import Protocol

BASELINES = ("random", "full")
LABELS = ("auto", "hard", "soft")
AUGMENTS = ("dsa", "none")


@dataclass
class EvalConfig:
    synset: str | None = opt(None, "synthetic-set folder written by dd.distill (omit to run baselines only)")
    dataset: str | None = opt(None, "dataset to test on (default: the set's; must match it)")
    data_path: str = opt("data", "folder holding the dataset")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, "side length for imagefolder datasets")
    zca: bool = opt(False, "ZCA-whiten (baselines-only runs; a set carries its own preprocessing)")
    ipc: int | None = opt(None, "images per class of the random baseline (default: the set's)")
    models: str = opt("ConvNet", "comma-separated architectures to train")
    runs: int = opt(5, "seeds per architecture and source")
    epochs: int = opt(1000, "training epochs of each network (lr x0.1 at half)")
    lr: float | None = opt(None, "learning rate on the synthetic set (default: the set's learned lr)")
    baseline_lr: float = opt(0.01, "learning rate of the random and full baselines")
    batch_size: int = opt(256, "training batch size")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(5e-4, "SGD weight decay")
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "DSA ops on training batches ('none' for none)")
    labels: str = opt("auto", "comma-separated label settings of the set: auto (its own), hard (argmax), soft")
    augment: str = opt("dsa", "comma-separated augmentation settings: dsa (--dsa-strategy) or none")
    baseline: str = opt("", "comma-separated baselines to run beside the set: random, full")
    out: str | None = opt(None, "output folder (default: <synset>/../eval, or runs/eval-<dataset>)")
    seed: int = opt(0, "first seed; run r uses seed + r")
    batch_seeds: str = opt("auto", "train the seeds of a set and architecture together with torch.func.vmap: on, off, "
                           "or auto (on for CUDA; on a CPU batching is no faster)", choices=("auto", "on", "off"))
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")


def validate(config: EvalConfig) -> list[str]:
    """Check flags; returns the baselines asked for."""
    for name in config.models.split(","):
        if name not in list_models():
            raise DDError(f"unknown model '{name}'; see dd.models.list_models() for the choices")
    baselines = [b for b in config.baseline.split(",") if b]
    for b in baselines:
        if b not in BASELINES:
            raise DDError(f"unknown baseline '{b}'; choose from {', '.join(BASELINES)}")
    for name in ("runs", "epochs", "batch_size"):
        if getattr(config, name) <= 0:
            raise DDError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.synset is None and not baselines:
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


def augment_protocols(base: Protocol, modes: list[str]) -> dict[str, Protocol]:
    """The protocol under each ``--augment`` mode (``none``: no DSA), keyed by the augmentation used."""
    found: dict[str, Protocol] = {}
    for mode in modes:
        protocol = base if mode == "dsa" else replace(base, dsa_strategy="none")
        found.setdefault(augment_of({"protocol": protocol.describe(0.0)}), protocol)
    return found


def load_inputs(config: EvalConfig, device: torch.device) -> tuple[SynSet | None, PreparedData, str, int | None]:
    """The set (if any), the real data under the set's preprocessing, the dataset name and the ipc."""
    synset = load_synset(config.synset, device) if config.synset else None
    if synset is not None and synset.transfer:
        raise DDError(f"the set at {config.synset} is a transfer set (KRR-ST); evaluate it with --protocol transfer")
    dataset = config.dataset or (synset.meta.get("dataset") if synset else None) or "digits"
    if synset is not None and synset.meta.get("dataset") not in (None, dataset):
        raise DDError(f"the set at {config.synset} was distilled on {synset.meta['dataset']}, not {dataset}; "
                      f"drop --dataset or pass the matching set")
    if synset is not None and synset.preprocess:
        meta = synset.meta.get("preprocess_meta", {})
        preprocess: str | Preprocessor = Preprocessor.from_state(synset.preprocess, meta)
    else:
        preprocess = "zca" if config.zca else "standard"
    data = prepare_data(dataset, device, config.data_path, config.download, preprocess, config.image_size)
    if synset is not None and tuple(synset.images.shape[1:]) != (data.spec.channels, *data.spec.size):
        raise DDError(f"the set's images are {tuple(synset.images.shape[1:])} but {dataset} images are "
                      f"{(data.spec.channels, *data.spec.size)}; evaluate it on the dataset it was distilled on")
    ipc = config.ipc or (synset.meta.get("ipc") if synset else None)
    return synset, data, dataset, ipc


Job = tuple[dict[str, Any], Callable[[], tuple[torch.Tensor, torch.Tensor]]]


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


def main(argv: Sequence[str] | None = None) -> int:
    if peek_option(argv, "protocol", "classification") == "transfer":
        return transfer.main(argv)
    config, _ = parse_config(EvalConfig, argv, build_parser(EvalConfig, "python -m dd.eval", __doc__))
    baselines = validate(config)
    device = distributed.setup(config.device)
    synset, data, dataset, ipc = load_inputs(config, device)
    if "random" in baselines and ipc is None:
        raise DDError("the random baseline needs --ipc (or a --synset to take it from)")
    out = Path(config.out or (Path(config.synset).parent / "eval" if config.synset else f"runs/eval-{dataset}"))
    results = Results(out, to_dict(config))
    protocol = Protocol(epochs=config.epochs, momentum=config.momentum, weight_decay=config.weight_decay,
                        batch_size=config.batch_size, dsa_strategy=config.dsa_strategy)
    labels = label_settings(synset, parse_list(config.labels, LABELS, "--labels"), config.synset)
    protocols = augment_protocols(protocol, parse_list(config.augment, AUGMENTS, "--augment"))

    def sources(seed: int) -> list[tuple[dict[str, Any], Callable[[], tuple[torch.Tensor, torch.Tensor]]]]:
        """(record fields, training data) of every source evaluated with ``seed``."""
        found = []
        for name, set_labels in labels.items():
            lr = config.lr if config.lr is not None else synset.lr
            found.append(({"source": "distilled", "method": synset.meta.get("method", "unknown"), "ipc": ipc,
                           "labels": name, "lr": lr}, lambda y=set_labels: (synset.images, y)))
        if "random" in baselines:
            found.append(({"source": "random", "method": "random", "ipc": ipc, "labels": "hard",
                           "lr": config.baseline_lr}, lambda: random_subset(data, ipc, seed)))
        if "full" in baselines:
            found.append(({"source": "full", "method": "full", "ipc": None, "labels": "hard",
                           "lr": config.baseline_lr}, lambda: data.train))
        return found

    jobs = [({**fields, "dataset": dataset, "model": model, "seed": config.seed + r, "augment": augment,
              "protocol": augmented.describe(fields["lr"])}, get)
            for model in config.models.split(",") for r in range(config.runs)
            for augment, augmented in protocols.items() for fields, get in sources(config.seed + r)]
    spec = data.spec

    done = {run_key(r) for r in results.previous}
    todo = [(record, get) for record, get in jobs if run_key(record) not in done]
    if len(todo) < len(jobs) and distributed.is_main():
        print(f"eval: {len(jobs) - len(todo)} of {len(jobs)} runs already in {results.path}")
    groups = seed_groups(todo, batched_seeds(config.batch_seeds, device))
    bar = tqdm(distributed.shard(groups), desc="eval", unit="group" if len(groups) < len(todo) else "run",
               disable=not distributed.is_main())
    for group in bar:
        record = group[0][0]
        bar.set_postfix(source=record["source"], model=record["model"], seeds=len(group),
                        labels=record["labels"], augment=record["augment"])
        seeds = [r["seed"] for r, _ in group]
        accuracies = train_and_test_seeds(record["model"], spec.channels, spec.num_classes, spec.size, group[0][1](),
                                          data.test, record["lr"], protocols[record["augment"]], seeds,
                                          batched=len(group) > 1)
        for (run, _), accuracy in zip(group, accuracies, strict=True):
            results.add({**run, "accuracy": accuracy})
    runs = results.finish()
    if not distributed.is_main():
        return 0
    # The report covers every recorded run of this folder trained with the models and protocols asked for
    # now, so a baseline evaluated in a separate call (e.g. the costly full data with fewer seeds) joins it.
    asked = {(j["model"], repr(j["protocol"]["epochs"]), augment_of(j)) for j, _ in jobs}
    table = results_markdown([r for r in runs if (r["model"], repr(r["protocol"]["epochs"]), augment_of(r)) in asked])
    atomic_write_bytes(out / "results.md", table.encode())
    print(table)
    print(f"results: {results.path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
