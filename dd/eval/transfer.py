"""``python -m dd.eval --protocol transfer``: pre-train on a transfer set, then transfer to target datasets
(KRR-ST's evaluation, Lee et al. ICLR 2024, sec. 4).

    python -m dd.eval --protocol transfer --synset runs/krr_st-digits-0to4-n50/synset --target digits-5to9

Sources, each pre-training a fresh registry model (seeded) under one protocol:
  ``krr_st``  the set's images X_s and target representations Y_s;
  ``random``  as many random real source training images, with the set's teacher's representations;
  ``none``    no pre-training (a randomly initialised network).
Pre-training regresses the targets with the model's own linear head sized to the target dimension D,
MSE(model(x), y), SGD with momentum, no augmentation (the reference's ``pretrain_krr_st``); the head is
then dropped. On each target dataset and seed the backbone is evaluated by
  ``linear``    a linear probe: the new head alone on frozen features (eval mode), SGD, cosine lr;
  ``finetune``  full fine-tuning with a new head, SGD, cosine lr, crop + flip augmentation.
Test accuracy after the last epoch. Schedules are per epoch (the reference counts iterations).

Writes results.json (``runs``: source, protocol, model, seed, accuracy, dataset = the target, source
dataset, number of images and the recipe of both stages) and results.md (mean ± std per target,
protocol and model, one column per source). Rerunning skips recorded runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dd.augment import crop_flip
from dd.buffer.ssl import TARGETS, Teacher, find_teacher
from dd.config import opt, parse_list, to_dict, validate
from dd.data import CHANNELS_HELP, IMAGE_SIZE_HELP, list_datasets
from dd.device import make_generator, setup_device
from dd.distill.synset import SynSet, load_synset
from dd.errors import DDError
from dd.eval.report import format_cell, run_key
from dd.eval.results import Evaluation
from dd.io import atomic_write_bytes, atomic_write_json, read_json
from dd.models import backbone_state, create_model, head_name, list_models, load_backbone
from dd.realdata import PreparedData, prepare_data, random_subset
from dd.schema import RESULT_RECORD, check_schema, sequence
from dd.settings import DeviceSettings
from dd.training import StepFn, accuracy, train_epoch

SOURCES = ("krr_st", "random", "none")
PROTOCOLS = ("linear", "finetune")


@dataclass
class TransferConfig(DeviceSettings):
    protocol: str = opt("transfer", "evaluation protocol; transfer takes the flags below", choices=("transfer",))
    synset: str | None = opt(None, "transfer set from dd.distill --method krr_st (default: none, the baselines "
                             "only)")
    verify: bool = opt(True, "refuse a set without a recorded checksum (--no-verify accepts a hand-made set)")
    source: str | None = opt(None, "source dataset (default: the set's)")
    target: str = opt("digits-5to9", "comma-separated target datasets")
    teacher: str | None = opt(None, "teacher giving the random baseline's targets (default: the set's)")
    buffer_dir: str = opt("buffers", "root of the buffers and teachers (to find a teacher)")
    num_images: int | None = opt(None, "images of the random baseline (default: the set's)")
    targets: str | None = opt(None, "the random baseline's teacher targets: standardized or raw (default: the "
                              "set's, else standardized)", choices=TARGETS)
    data_path: str = opt("data", "folder holding the datasets")
    download: bool = opt(False, "download the datasets through torchvision if they are missing")
    image_size: int | None = opt(None, IMAGE_SIZE_HELP)
    channels: int | None = opt(None, CHANNELS_HELP)
    models: str | None = opt(None, "comma-separated architectures (default: the set's pool model)")
    protocols: str = opt("linear,finetune", "comma-separated transfer protocols: linear, finetune")
    baseline: str = opt("random,none", "comma-separated baselines beside the set: random, none")
    runs: int = opt(3, "seeds per (source, model); pre-training is repeated per seed")
    pretrain_epochs: int = opt(1000, "pre-training epochs on the source set (reference: 1000)")
    pretrain_lr: float = opt(0.1, "pre-training SGD lr (reference: 0.1)")
    pretrain_momentum: float = opt(0.9, "pre-training SGD momentum")
    pretrain_weight_decay: float = opt(1e-3, "pre-training SGD weight decay (reference: 1e-3)")
    pretrain_batch_size: int = opt(256, "pre-training batch size")
    finetune_epochs: int = opt(100, "fine-tuning epochs on each target")
    finetune_lr: float = opt(0.01, "fine-tuning SGD lr, cosine to 0 (reference: 0.01)")
    finetune_weight_decay: float = opt(5e-4, "fine-tuning SGD weight decay (reference: 5e-4)")
    finetune_batch_size: int = opt(256, "fine-tuning batch size")
    target_ipc: int | None = opt(None, "labelled target training images per class for the probe and fine-tuning, "
                                 "drawn per seed (default: all; a few keep an easy target such as digits from "
                                 "saturating for every source)")
    linear_epochs: int = opt(100, "linear-probe epochs on each target")
    linear_lr: float = opt(0.2, "linear-probe SGD lr, cosine to 0 (reference: 0.2)")
    linear_batch_size: int = opt(512, "linear-probe batch size")
    out: str | None = opt(None, "output folder (default: <synset>/../eval-transfer, or runs/eval-transfer-<source>)")
    seed: int = opt(0, "first seed; run r uses seed + r")

    def check(self) -> None:
        if self.runs <= 0 or min(self.pretrain_epochs, self.finetune_epochs, self.linear_epochs) <= 0:
            raise DDError("--runs and every --*-epochs must be positive")


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The lr of 0-based ``epoch``: lr/2 (1 + cos(pi epoch / epochs))."""
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))


def sgd_epochs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float, epochs: int, momentum: float,
               weight_decay: float, batch_size: int, generator: torch.Generator, cosine: bool,
               augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               step: Callable[[torch.optim.Optimizer], StepFn] | None = None) -> None:
    """Train ``model`` with SGD for ``epochs`` (cosine lr per epoch when ``cosine``) through ``train_epoch``;
    ``step(optimizer)`` replaces its classification step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, epoch, epochs) if cosine else lr
        train_epoch(model, images, labels, optimizer, batch_size, augment, generator,
                    step(optimizer) if step is not None else None)


def regression_step(optimizer: torch.optim.Optimizer) -> StepFn:
    """A ``train_epoch`` step on MSE(model(x), y) for target representations y [B, D]."""
    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    return step


def pretrain(model_name: str, images: torch.Tensor, targets: torch.Tensor, cfg: TransferConfig,
             seed: int) -> dict[str, torch.Tensor]:
    """Backbone state of a fresh ``model_name`` (seeded) trained to regress ``targets`` [N, D] from ``images``."""
    model = create_model(model_name, images.shape[1], targets.shape[1], tuple(images.shape[2:]), seed=seed)
    model = model.to(images.device)
    sgd_epochs(model, images, targets, cfg.pretrain_lr, cfg.pretrain_epochs, cfg.pretrain_momentum,
               cfg.pretrain_weight_decay, cfg.pretrain_batch_size, make_generator(seed + 1), cosine=False,
               step=regression_step)
    return backbone_state(model)


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``model.embed`` of ``x`` in eval mode, in batches."""
    model.eval()
    return torch.cat([model.embed(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def transfer(protocol: str, model_name: str, backbone: dict[str, torch.Tensor] | None, target: PreparedData,
             cfg: TransferConfig, seed: int) -> float:
    """Test accuracy on ``target`` of a fresh ``model_name`` (seeded) holding ``backbone`` (None: its own random
    weights), after a linear probe or full fine-tuning (module docstring)."""
    spec, (x, y), (x_test, y_test) = target.spec, target.train, target.test
    if cfg.target_ipc is not None:
        x, y = random_subset(target, cfg.target_ipc, seed)
    model = create_model(model_name, spec.channels, spec.num_classes, spec.size, seed=seed).to(x.device)
    if backbone is not None:
        load_backbone(model, backbone)
    generator = make_generator(seed + 2)
    if protocol == "finetune":
        sgd_epochs(model, x, y, cfg.finetune_lr, cfg.finetune_epochs, 0.9, cfg.finetune_weight_decay,
                   cfg.finetune_batch_size, generator, cosine=True, augment=crop_flip)
        return accuracy(model, x_test, y_test)
    head = model.get_submodule(head_name(model))
    sgd_epochs(head, features(model, x), y, cfg.linear_lr, cfg.linear_epochs, 0.9, 0.0, cfg.linear_batch_size,
               generator, cosine=True)
    return accuracy(head, features(model, x_test), y_test)


def recipe(cfg: TransferConfig, source: str, protocol: str) -> dict[str, Any]:
    """What a run's two stages were (recorded with it)."""
    pre = None if source == "none" else {
        "loss": "mse", "epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr, "momentum": cfg.pretrain_momentum,
        "weight_decay": cfg.pretrain_weight_decay, "batch_size": cfg.pretrain_batch_size, "augment": "none"}
    if protocol == "finetune":
        post = {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr, "momentum": 0.9,
                "weight_decay": cfg.finetune_weight_decay, "batch_size": cfg.finetune_batch_size,
                "schedule": "cosine", "augment": "crop_flip"}
    else:
        post = {"epochs": cfg.linear_epochs, "lr": cfg.linear_lr, "momentum": 0.9, "weight_decay": 0.0,
                "batch_size": cfg.linear_batch_size, "schedule": "cosine", "augment": "none", "frozen": True}
    return {"pretrain": pre, "transfer": {**post, "target_ipc": cfg.target_ipc}}


ROW_FIELDS = ("dataset", "target_data", "protocol", "model")


def _tag(value: Any) -> str:
    """An 8-hex tag of ``value`` (a set's checksum prefix, else a hash of its canonical form)."""
    found = (value.get("set") or {}) if isinstance(value, dict) else {}
    canonical = json.dumps(value, sort_keys=True, default=str)
    return found.get("sha256", "")[:8] or hashlib.sha256(canonical.encode()).hexdigest()[:8]


def markdown(runs: list[dict[str, Any]]) -> str:
    """One row per (target, protocol, model, transfer-stage recipe), one column per source (a set by its checksum,
    a baseline with its pre-training and targets): mean ± std over seeds. A cell holds runs that differ only in
    their seed; a row's recipe is tagged where one (target, protocol, model) has several."""
    def column(run: dict[str, Any]) -> str:
        recipe = run.get("recipe") or {}
        return run_key({**{k: v for k, v in run.items() if k not in (*ROW_FIELDS, "seed", "recipe")},
                        "pretrain": recipe.get("pretrain")})

    def row(run: dict[str, Any]) -> tuple[str, ...]:
        transfer = (run.get("recipe") or {}).get("transfer")
        return run["dataset"], run["protocol"], run["model"], json.dumps(transfer, sort_keys=True, default=str)

    cells: dict[tuple, list[float]] = defaultdict(list)
    names: dict[str, str] = {}
    for run in runs:
        cells[(*row(run), column(run))].append(run["accuracy"])
        names.setdefault(column(run), run["source"])
    plain = list(names.values())
    for key, name in names.items():
        if plain.count(name) > 1:  # two sets or recipes under one source name
            found = next(r for r in runs if column(r) == key)
            names[key] = f"{name} [{_tag({k: v for k, v in found.items() if k not in ('seed', 'accuracy')})}]"
    columns = sorted(names, key=lambda c: (SOURCES.index(names[c].split(" ")[0]) if names[c].split(" ")[0] in SOURCES
                                           else len(SOURCES), names[c]))
    rows = list(dict.fromkeys(key[:4] for key in cells))
    labels = [r[1] for r in rows]
    lines = ["| target | protocol | model | " + " | ".join(names[c] for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for key in rows:
        first = next(r for r in runs if row(r) == key)
        label = key[1] + (f" [{_tag((first.get('recipe') or {}).get('transfer'))}]" if labels.count(key[1]) > 1 else "")
        lines.append(f"| {key[0]} | {label} | {key[2]} | " +
                     " | ".join(format_cell(cells[(*key, c)]) if cells.get((*key, c)) else "–" for c in columns) + " |")
    return "\n".join(lines) + "\n\nTest accuracy in %, mean ± std over seeds (number of seeds in brackets).\n"


def source_sets(cfg: TransferConfig, synset: SynSet | None, baselines: list[str], source: str,
                device: torch.device):
    """The (images, targets) getter of each pre-training source, by name (``none``: no pre-training)."""
    sets: dict[str, Any] = {}
    if synset is not None:
        sets[synset.meta.get("method", "krr_st")] = lambda seed: (synset.images, synset.labels)
    if "random" in baselines:
        teacher_path = cfg.teacher or (synset.meta.get("teacher") if synset is not None else None)
        teacher: Teacher = find_teacher(teacher_path, cfg.buffer_dir, source)
        teacher.encoder.to(device)
        n = cfg.num_images or (synset.images.shape[0] if synset is not None else None)
        if n is None:
            raise DDError("the random baseline needs --num-images (or a --synset to take it from)")
        data = prepare_data(source, device, cfg.data_path, cfg.download, "standard", cfg.image_size,
                            channels=cfg.channels)

        def random_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randperm(data.train_images.shape[0], generator=make_generator(seed))[:n]
            images = data.train_images[pick.to(device)]
            return images, teacher.represent(images, targets=random_targets(cfg, synset))

        sets["random"] = random_set
    if "none" in baselines:
        sets["none"] = None
    return sets


def random_targets(cfg: TransferConfig, synset: SynSet | None) -> str:
    """How the random baseline reads its targets off the teacher: --targets, else as the set's were, else
    standardized."""
    return cfg.targets or (synset.meta.get("targets") if synset is not None else None) or "standardized"


def source_identities(cfg: TransferConfig, synset: SynSet | None, sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each source's records say of it: the set's checksum and path, the random baseline's teacher."""
    found: dict[str, dict[str, Any]] = {name: {} for name in sets}
    if synset is not None:
        name = synset.meta.get("method", "krr_st")
        found[name] = {"set": {"sha256": synset.checksum, "path": str(cfg.synset), "iteration":
                               synset.meta.get("iteration"), "verified": synset.verified}}
    if "random" in sets:
        found["random"] = {"teacher": cfg.teacher or (synset.meta.get("teacher") if synset is not None else None),
                           "targets": random_targets(cfg, synset)}
    return found


def evaluate_transfer(cfg: TransferConfig) -> Evaluation:
    """Evaluate the transfer set and baselines of ``cfg`` (module docstring): every run not yet recorded in the
    output folder is trained and recorded at once in results.json; results.md holds the table of the runs asked
    for. Raises ``DDError`` on bad input before anything trains."""
    validate(cfg)
    device = setup_device(cfg.device, cfg.tf32)
    cfg = dataclasses.replace(cfg, device=str(device))  # recorded: the device used
    baselines = parse_list(cfg.baseline, ("random", "none"), "--baseline", allow_empty=True)
    protocols = parse_list(cfg.protocols, PROTOCOLS, "--protocols")
    synset = load_synset(cfg.synset, device, verify=cfg.verify) if cfg.synset else None
    if synset is not None and not synset.transfer:
        raise DDError(f"the set at {cfg.synset} is a classification set; evaluate it without --protocol transfer")
    if synset is None and not baselines:
        raise DDError("nothing to evaluate; pass --synset PATH and/or --baseline random,none")
    source = cfg.source or (synset.meta.get("dataset") if synset is not None else None)
    if source is None:
        raise DDError("baselines alone need --source (the dataset pre-trained on)")
    models = (cfg.models or (synset.meta.get("model") if synset is not None else None) or "ConvNetBN").split(",")
    for name in models:
        if name not in list_models():
            raise DDError(f"unknown model '{name}'; see dd.models.list_models() for the choices")
    sets = source_sets(cfg, synset, baselines, source, device)
    targets = {name: prepare_data(name, device, cfg.data_path, cfg.download, "standard", cfg.image_size,
                                 channels=cfg.channels)
               for name in parse_list(cfg.target, list_datasets(), "--target")}
    num_images = cfg.num_images or (synset.images.shape[0] if synset is not None else None)
    source_shape = tuple(synset.images.shape[1:]) if synset is not None else None
    for name, data in targets.items():
        shape = (data.spec.channels, *data.spec.size)
        if source_shape not in (None, shape):
            raise DDError(f"target {name} has images {shape} but the set's are {source_shape}; pick targets of the "
                          "same shape (or --image-size)")

    out = Path(cfg.out or (Path(cfg.synset).parent / "eval-transfer" if cfg.synset else f"runs/eval-transfer-{source}"))
    results_path = out / "results.json"
    found = read_json(results_path, "results") if results_path.is_file() else {"runs": []}
    check_schema(found, {"runs": sequence}, results_path, "results", "move it away or pass another --out")
    runs = found["runs"]
    for n, run in enumerate(runs):
        check_schema(run, RESULT_RECORD, f"{results_path} (record {n})", "results", "restore it, or move it away")

    done = {run_key(r) for r in runs}
    identities = source_identities(cfg, synset, sets)
    jobs = [{"source": name, "protocol": protocol, "model": model, "seed": cfg.seed + r, "dataset": target,
             "target_data": targets[target].identity(), "split": "test", "source_dataset": source,
             "num_images": None if name == "none" else num_images, **identities[name],
             "recipe": recipe(cfg, name, protocol)}
            for model in models for r in range(cfg.runs) for name in sets
            for target in targets for protocol in protocols]
    todo = [job for job in jobs if run_key(job) not in done]
    print(f"transfer: {len(todo)} of {len(jobs)} runs to do ({results_path})")
    backbones: dict[tuple[str, str, int], dict[str, torch.Tensor] | None] = {}
    bar = tqdm(todo, desc="transfer", unit="run")
    last: dict[str, str] = {}  # the last finished run's accuracy, in the postfix
    for job in bar:
        bar.set_postfix({"source": job["source"], "model": job["model"], "target": job["dataset"],
                         "protocol": job["protocol"], "seed": job["seed"], **last})  # in this order
        found = (job["source"], job["model"], job["seed"])
        if found not in backbones:  # one pre-training per (source, model, seed), shared by targets and protocols
            get = sets[job["source"]]
            backbones[found] = None if get is None else pretrain(job["model"], *get(job["seed"]), cfg, job["seed"])
        job["accuracy"] = transfer(job["protocol"], job["model"], backbones[found], targets[job["dataset"]], cfg,
                                   job["seed"])
        runs.append(job)
        last["last"] = f"{job['source']} {job['dataset']} {job['protocol']} {100 * job['accuracy']:.2f}%"
        atomic_write_json(results_path, {"config": to_dict(cfg), "runs": runs})
    asked = {run_key(job) for job in jobs}
    asked_runs = [r for r in runs if run_key(r) in asked]
    atomic_write_bytes(out / "results.md", markdown(asked_runs).encode())
    return Evaluation(asked_runs, results_path, out / "results.md")

