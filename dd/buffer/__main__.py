"""``python -m dd.buffer``: train expert networks on real data and store their trajectories.

    python -m dd.buffer --config experiments/buffer/digits.yaml      # train (resumes if interrupted)
    python -m dd.buffer import replay_buffer_0.pt ... --dataset cifar10 --model ConvNet --epochs 50
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dd.buffer.experts import STEPS, ExpertRecipe, expert_seed, train_expert
from dd.buffer.legacy import import_legacy
from dd.buffer.store import TrajectoryStore, recipe_tag
from dd.cli import run_cli
from dd.config import build_parser, opt, parse_config
from dd.data import get_spec, list_datasets
from dd.device import resolve_device
from dd.errors import DDError
from dd.functional import param_spec
from dd.models import create_model, list_models
from dd.realdata import prepare_data


@dataclass
class BufferConfig:
    dataset: str = opt("digits", "dataset name (see dd.data.list_datasets())")
    data_path: str = opt("data", "folder holding the dataset (torchvision layout or an ImageFolder tree)")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, "side length for imagefolder datasets")
    zca: bool = opt(False, "ZCA-whiten the images (kornia, eps 0.1, fitted once on the train set)")
    model: str = opt("ConvNet", "expert architecture (see dd.models.list_models())")
    num_experts: int = opt(100, "number of experts to train")
    epochs: int = opt(50, "epochs per expert (stored trajectory has epochs+1 snapshots)")
    optimizer: str = opt("sgd", f"expert optimiser: {' or '.join(STEPS)} (gsam = FTD/DATM flat experts over the SGD)")
    lr: float = opt(0.01, "expert learning rate (constant unless --lr-decay-epoch)")
    momentum: float = opt(0.0, "expert SGD momentum")
    weight_decay: float = opt(0.0, "expert SGD weight decay")
    batch_size: int = opt(256, "expert batch size")
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "DSA ops applied to every batch ('none' for none)")
    rho: float = opt(0.01, "GSAM perturbation radius, constant (gsam only)")
    alpha: float = opt(0.3, "GSAM weight of the surrogate-gap term; 0 = SAM (gsam only)")
    adaptive: bool = opt(True, "GSAM: ASAM-style perturbation scaled by |w| (gsam only)")
    lr_decay_epoch: int | None = opt(None, "multiply the lr by --lr-decay-factor once, after this 0-based "
                                           "epoch (AST: epochs//2+1); none = constant lr")
    lr_decay_factor: float = opt(0.6, "lr factor of the one decay (AST: 0.6)")
    loss_warmup: bool = opt(False, "AST clipping-loss warm-up: CE x 0.5, 0.55, ..., 0.95 in epochs 0-9")
    gp_lambda: float = opt(0.0, "AST gradient penalty weight on the clean batch (AST: 2; 0 = off)")
    test_every: int = opt(1, "measure test accuracy every k epochs (0: only after the last epoch)")
    seed: int = opt(0, "base seed; expert i is determined by (recipe, seed, i)")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")

    def recipe(self) -> ExpertRecipe:
        return ExpertRecipe(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                            weight_decay=self.weight_decay, batch_size=self.batch_size, epochs=self.epochs,
                            dsa_strategy=self.dsa_strategy, preprocess="zca" if self.zca else "standard",
                            rho=self.rho, alpha=self.alpha, adaptive=self.adaptive,
                            lr_decay_epoch=self.lr_decay_epoch, lr_decay_factor=self.lr_decay_factor,
                            loss_warmup=self.loss_warmup, gp_lambda=self.gp_lambda)


def validate(config: BufferConfig) -> None:
    """Reject bad values before any work starts."""
    if config.dataset not in list_datasets():
        raise DDError(f"unknown dataset '{config.dataset}'; choose from {', '.join(list_datasets())}")
    if config.model not in list_models():
        raise DDError(f"unknown model '{config.model}'; see dd.models.list_models() for the choices")
    for name in ("num_experts", "epochs", "batch_size"):
        if getattr(config, name) <= 0:
            raise DDError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.optimizer not in STEPS:
        raise DDError(f"unknown --optimizer '{config.optimizer}'; choose {' or '.join(STEPS)}")
    for name in ("lr", "lr_decay_factor"):
        if getattr(config, name) <= 0:
            raise DDError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    for name in ("rho", "alpha", "gp_lambda", "momentum", "weight_decay"):
        if getattr(config, name) < 0:
            raise DDError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if config.lr_decay_epoch is not None and not 0 <= config.lr_decay_epoch < config.epochs - 1:
        raise DDError(f"--lr-decay-epoch must be in 0..{config.epochs - 2} for {config.epochs} epochs "
                      f"(a later decay changes nothing), got {config.lr_decay_epoch}; or none for a constant lr")


def store_root(buffer_dir: str, dataset: str, model: str, recipe: dict) -> Path:
    """``<buffer_dir>/<dataset>/<model>/<recipe-tag>``."""
    return Path(buffer_dir) / dataset / model / recipe_tag(recipe)


def store_header(spec, model_name: str, recipe: dict, preprocess: dict, **extra) -> dict:
    """The manifest header of a store: dataset, model, parameter layout and recipe."""
    model = create_model(model_name, spec.channels, spec.num_classes, spec.size, seed=0)
    return {
        "dataset": {"name": spec.name, "channels": spec.channels, "size": list(spec.size),
                    "num_classes": spec.num_classes, "preprocess": preprocess},
        "model": {"name": model_name},
        "param_spec": param_spec(model).to_json(),
        "recipe": recipe,
        "num_epochs": recipe["epochs"],
        **extra,
    }


def train_main(argv: Sequence[str] | None) -> int:
    config, _ = parse_config(BufferConfig, argv, build_parser(BufferConfig, "python -m dd.buffer", __doc__))
    validate(config)
    device = resolve_device(config.device)
    data = prepare_data(config.dataset, device, config.data_path, config.download,
                        "zca" if config.zca else "standard", config.image_size)
    spec = data.spec
    recipe = config.recipe()
    store = TrajectoryStore.create(store_root(config.buffer_dir, spec.name, config.model, recipe.to_dict()),
                                   store_header(spec, config.model, recipe.to_dict(), data.preprocessor.describe()))
    if store.load_preprocess() is None:
        store.save_preprocess(*data.preprocessor.state())
    todo = store.missing(config.num_experts)
    done = config.num_experts - len(todo)
    print(f"buffer: {store.root} ({done}/{config.num_experts} experts already stored)")
    bar = tqdm(todo, desc="experts", unit="expert", initial=done, total=config.num_experts)
    for index in bar:
        seed = expert_seed(config.seed, index)
        trajectory, record = train_expert(config.model, spec.channels, spec.num_classes, spec.size,
                                          data.train, data.test, recipe, seed, config.test_every)
        store.write_expert(index, trajectory, record)
        bar.set_postfix(test_acc=f"{record['final_test_acc']:.3f}")
    accs = [r["final_test_acc"] for r in store.records() if r.get("final_test_acc") is not None]
    if accs:
        print(f"experts: {len(accs)}, final test accuracy {sum(accs) / len(accs):.4f} (mean)")
    return 0


@dataclass
class ImportConfig:
    dataset: str = opt("cifar10", "dataset the original buffer was trained on")
    model: str = opt("ConvNet", "architecture of the original experts")
    zca: bool = opt(False, "the original buffer was trained on ZCA-whitened images (--zca)")
    epochs: int = opt(50, "train_epochs of the original run")
    lr: float = opt(0.01, "lr_teacher of the original run")
    momentum: float = opt(0.0, "mom of the original run")
    weight_decay: float = opt(0.0, "l2 of the original run")
    batch_size: int = opt(256, "batch_train of the original run")
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "dsa_strategy of the original run")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")


def import_main(argv: Sequence[str]) -> int:
    parser = build_parser(ImportConfig, "python -m dd.buffer import",
                          "Convert original MTT/FTD/DATM replay_buffer_N.pt files into a dd trajectory store.")
    parser.add_argument("paths", nargs="+", help="replay_buffer_N.pt files of the original code")
    config, extras = parse_config(ImportConfig, argv, parser)
    spec = get_spec(config.dataset)
    recipe = ExpertRecipe(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                          batch_size=config.batch_size, epochs=config.epochs, dsa_strategy=config.dsa_strategy,
                          preprocess="zca" if config.zca else "standard").to_dict()
    # Imported experts get their own folder: their data pipeline was not ours, so they never mix
    # with experts trained here under the same hyper-parameters.
    recipe["origin"] = "imported replay_buffer"
    header = store_header(spec, config.model, recipe, {"kind": recipe["preprocess"]},
                          imported_from=[str(p) for p in extras["paths"]])
    store = TrajectoryStore.create(store_root(config.buffer_dir, spec.name, config.model, recipe), header)
    indices = import_legacy(extras["paths"], store)
    print(f"imported {len(indices)} experts into {store.root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "import":
        return import_main(argv[1:])
    return train_main(argv)


if __name__ == "__main__":
    run_cli(main)
