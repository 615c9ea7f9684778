"""The buffer stage's config and where its store lives: shared by ``python -m dd.buffer`` and by
``dd.distill --buffer-config``, which finds the store a buffer preset writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dd.buffer.experts import STEPS, ExpertRecipe, expert_seed
from dd.buffer.store import TrajectoryStore, recipe_tag
from dd.cli import check_flags
from dd.config import opt
from dd.data import CHANNELS_HELP, IMAGE_SIZE_HELP, list_datasets
from dd.device import TF32_HELP, physical_memory
from dd.errors import DDError
from dd.functional import ParamSpec, param_spec
from dd.identity import check_data
from dd.models import create_model, list_models


@dataclass
class BufferConfig:
    dataset: str = opt("digits", "dataset name (see dd.data.list_datasets())")
    data_path: str = opt("data", "folder holding the dataset (README, Datasets: where dd looks for each)")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, IMAGE_SIZE_HELP)
    channels: int | None = opt(None, CHANNELS_HELP)
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
                                           "epoch (AST: epochs//2+1) (default: none, a constant lr)")
    lr_decay_factor: float = opt(0.6, "lr factor of the one decay (AST: 0.6)")
    loss_warmup: bool = opt(False, "AST clipping-loss warm-up: CE x 0.5, 0.55, ..., 0.95 in epochs 0-9")
    gp_lambda: float = opt(0.0, "AST gradient penalty weight on the clean batch (AST: 2; 0 = off)")
    train_per_class: int | None = opt(None, "train the experts on this many images of every class of the training "
                                            "split, the same for every expert (default: the whole split)")
    train_subset_seed: int = opt(0, "seed of the --train-per-class draw")
    test_every: int = opt(10, "measure test accuracy every k epochs and after the last (0: only after the last); "
                          "each test reads the whole test split")
    teacher: str = opt("none", "none = train experts; barlow_twins = train one self-supervised teacher encoder for "
                       "KRR-ST instead (SGD with --lr, --momentum, --weight-decay, --batch-size, --epochs)",
                       choices=("none", "barlow_twins"))
    bt_lambda: float = opt(5e-3, "Barlow Twins weight of the off-diagonal terms (teacher only)")
    proj_dim: int = opt(512, "width of the Barlow Twins projector (teacher only)")
    seed: int = opt(0, "base seed; expert i is determined by (recipe, seed, i)")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    tf32: bool = opt(False, TF32_HELP)

    def recipe(self) -> ExpertRecipe:
        return ExpertRecipe(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                            weight_decay=self.weight_decay, batch_size=self.batch_size, epochs=self.epochs,
                            dsa_strategy=self.dsa_strategy, preprocess="zca" if self.zca else "standard",
                            rho=self.rho, alpha=self.alpha, adaptive=self.adaptive,
                            lr_decay_epoch=self.lr_decay_epoch, lr_decay_factor=self.lr_decay_factor,
                            loss_warmup=self.loss_warmup, gp_lambda=self.gp_lambda,
                            train_per_class=self.train_per_class, train_subset_seed=self.train_subset_seed)


def validate(config: BufferConfig) -> None:
    """Reject bad values before any work starts."""
    if config.dataset not in list_datasets():
        raise DDError(f"unknown dataset '{config.dataset}'; choose from {', '.join(list_datasets())}")
    if config.model not in list_models():
        raise DDError(f"unknown model '{config.model}'; see dd.models.list_models() for the choices")
    check_flags(config, positive=("num_experts", "epochs", "batch_size", "lr", "lr_decay_factor", "image_size",
                                  "proj_dim", "train_per_class"),
                nonnegative=("rho", "alpha", "gp_lambda", "momentum", "weight_decay", "test_every", "bt_lambda",
                             "train_subset_seed"))
    if config.optimizer not in STEPS:
        raise DDError(f"unknown --optimizer '{config.optimizer}'; choose {' or '.join(STEPS)}")
    if config.lr_decay_epoch is not None and not 0 <= config.lr_decay_epoch < config.epochs - 1:
        raise DDError(f"--lr-decay-epoch must be in 0..{config.epochs - 2} for {config.epochs} epochs "
                      f"(a later decay changes nothing), got {config.lr_decay_epoch}; or none for a constant lr")


def store_root(buffer_dir: str, dataset: str, model: str, recipe: dict) -> Path:
    """``<buffer_dir>/<dataset>/<model>/<recipe-tag>``."""
    return Path(buffer_dir) / dataset / model / recipe_tag(recipe)


def store_header(spec, model_name: str, recipe: dict, preprocess: dict, **extra) -> dict:
    """The manifest header of a store: dataset, model, parameter layout and recipe; ``extra`` entries (the data's
    fingerprint ``data`` and the base ``seed`` of trained experts, the files of imported ones) follow."""
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


def check_reopened(store: TrajectoryStore, data: dict, seed: int) -> None:
    """A store that already exists takes more experts only of the same data and base seed, so that it never
    mixes experts of two datasets or seed series (expert i is determined by recipe, data, seed and i). A store
    made before dd recorded these is checked through its experts' recorded seeds, and its data with a warning."""
    fix = "use another --buffer-dir, or the store's own data"
    check_data(store.header.get("data"), data, f"the buffer at {store.root}", "was trained on",
               "the data of this run", allow=False, fix=fix)
    stored = store.header.get("seed")
    if stored is None:
        stray = [r for r in store.records() if r.get("seed") != expert_seed(seed, r["index"])]
        stored = None if not stray else (stray[0].get("seed", 0) - stray[0]["index"]) // 1_000_003
    if stored is not None and stored != seed:
        raise DDError(f"the buffer at {store.root} holds experts of --seed {stored}, not --seed {seed}; rerun with "
                      f"--seed {stored} to add to it, or pass another --buffer-dir for the other seed series")


def check_trajectory_size(epochs: int, header: dict) -> None:
    """An expert's trajectory [epochs+1, P] float32 is held in memory while it trains: refuse ``--epochs`` whose
    trajectory would not fit this machine's memory, before any work."""
    numel = ParamSpec.from_json(header["param_spec"]).numel
    need, have = (epochs + 1) * numel * 4, physical_memory()
    if have and need > have:
        raise DDError(f"--epochs {epochs} makes each expert's trajectory {need / 2**30:.3g} GiB ({epochs + 1} rows of "
                      f"{numel} parameters), more than this machine's {have / 2**30:.3g} GiB of memory; "
                      "lower --epochs")
