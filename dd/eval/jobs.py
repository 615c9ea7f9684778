"""The runs of an evaluation and their training: every (set or baseline, protocol, model, seed, labels,
augmentation) asked for becomes a job holding its record; the jobs not yet recorded are trained (seeds together
where they share their data) and recorded one by one, shared across ranks under torchrun."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from dd import distributed
from dd.config import parse_list
from dd.distill.synset import SynSet
from dd.errors import DDError
from dd.eval import pools
from dd.eval.config import AUGMENTS, LABELS, EvalConfig
from dd.eval.inputs import set_identity
from dd.eval.report import run_key, source_name
from dd.eval.results import Results
from dd.identity import VERIFIED
from dd.multiseed import train_and_score_seeds
from dd.protocols import Protocol, for_data, get_protocol, legacy_name, list_protocols
from dd.realdata import PreparedData, random_subset


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


def augment_protocols(base: Protocol, modes: list[str], dataset: str, model: str,
                      epochs_given: bool) -> dict[str, Protocol]:
    """The protocol under each ``--augment`` mode for ``model`` on ``dataset``, keyed by the augmentation used
    (``Protocol.augmentation_name``): ``dsa``, the protocol's own (DSA, or DC's where the DC code gave the data or
    model one: ``dd.protocols.for_data``); ``none``, the protocol without augmentation."""
    found: dict[str, Protocol] = {}
    for mode in modes:
        protocol = (for_data(base, dataset, model, epochs_given) if mode == "dsa"
                    else replace(base, dsa_strategy="none", dc_augment=""))
        found.setdefault(protocol.augmentation_name, protocol)
    return found


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
    overrides = protocol_overrides(config)
    protocols = {name: get_protocol(name, **overrides) for name in used}
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
    for note in notes if distributed.is_main() else []:
        print(f"eval: {note}")
    jobs: list[Job] = []
    for model in models:
        for r in range(config.runs):
            for name in used:
                for augment, protocol in augment_protocols(protocols[name], augments, dataset, model,
                                                           "epochs" in overrides).items():
                    for fields, get in sources(config.seed + r, name):
                        lr = fields.pop("lr")
                        record = {**fields, **context, "model": model, "seed": config.seed + r, "augment": augment,
                                  "protocol": protocol.describe(lr)}
                        jobs.append((record, get, protocol))
    return jobs


def run_jobs(jobs: list[Job], results: Results, data: PreparedData, split: str, batched: bool,
             max_over_epochs: bool = True) -> list[dict]:
    """Train the jobs not yet in ``results`` (this rank's share), recording each at once; every record. The maximum
    over a protocol's periodic tests (AST's, ``max_accuracy``) is a test-split figure reported beside the paper's:
    on the validation split, or without ``max_over_epochs``, those tests are skipped."""
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
                                       batched=len(group) > 1, periodic=max_over_epochs and split == "test")
        for (run, _, _), score in zip(group, scores, strict=True):
            extra = {} if score.max_over_epochs is None else {"max_accuracy": score.max_over_epochs}
            results.add({**run, "accuracy": score.final, **extra})
            last["last"] = f"{source_name(run)} {run['model']} {100 * score.final:.2f}%"
    return results.finish()
