"""The buffer stage's config and where its store lives: shared by ``dd.buffer.train_store`` (``python -m
dd.buffer``) and by ``dd.distill --buffer-config``, which finds the store a buffer preset writes. The data and device
fields are the ``dd.settings`` blocks; ``dd.config.validate`` checks a config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dd.buffer.experts import STEPS, ExpertRecipe, expert_seed
from dd.buffer.store import TrajectoryStore, recipe_tag
from dd.config import opt
from dd.device import check_fits, check_seed, physical_memory
from dd.errors import DDError
from dd.functional import ParamSpec, param_spec
from dd.identity import check_data
from dd.models import create_model, list_models
from dd.settings import DataSettings, DeviceSettings


@dataclass
class BufferConfig(DataSettings, DeviceSettings):
    zca: bool = opt(False, "ZCA-whiten the images (kornia, eps 0.1, fitted once on the train set)")
    model: str = opt("ConvNet", "expert architecture (see dd.models.list_models())")
    num_experts: int = opt(100, "number of experts to train", bounds="positive")
    epochs: int = opt(50, "epochs per expert (stored trajectory has epochs+1 snapshots)", bounds="positive")
    optimizer: str = opt("sgd", f"expert optimiser: {' or '.join(STEPS)} (gsam = FTD/DATM flat experts over the SGD)")
    lr: float = opt(0.01, "expert learning rate (constant unless --lr-decay-epoch)", bounds="positive")
    momentum: float = opt(0.0, "expert SGD momentum", bounds="nonnegative")
    weight_decay: float = opt(0.0, "expert SGD weight decay", bounds="nonnegative")
    batch_size: int = opt(256, "expert batch size", bounds="positive")
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "DSA ops applied to every batch ('none' for none)")
    rho: float = opt(0.01, "GSAM perturbation radius, constant (gsam only)", bounds="nonnegative")
    alpha: float = opt(0.3, "GSAM weight of the surrogate-gap term; 0 = SAM (gsam only)", bounds="nonnegative")
    adaptive: bool = opt(True, "GSAM: ASAM-style perturbation scaled by |w| (gsam only)")
    lr_decay_epoch: int | None = opt(None, "multiply the lr by --lr-decay-factor once, after this 0-based "
                                           "epoch (AST: epochs//2+1) (default: none, a constant lr)")
    lr_decay_factor: float = opt(0.6, "lr factor of the one decay (AST: 0.6)", bounds="positive")
    loss_warmup: bool = opt(False, "AST clipping-loss warm-up: CE x 0.5, 0.55, ..., 0.95 in epochs 0-9")
    gp_lambda: float = opt(0.0, "AST gradient penalty weight on the clean batch (AST: 2; 0 = off)",
                           bounds="nonnegative")
    train_per_class: int | None = opt(None, "train the experts on this many images of every class of the training "
                                            "split, the same for every expert (default: the whole split)",
                                      bounds="positive")
    train_subset_seed: int = opt(0, "seed of the --train-per-class draw", bounds="nonnegative")
    test_every: int = opt(10, "measure test accuracy every k epochs and after the last (0: only after the last); "
                          "each test reads the whole test split", bounds="nonnegative")
    teacher: str = opt("none", "none = train experts; barlow_twins = train one self-supervised teacher encoder for "
                       "KRR-ST instead (SGD with --lr, --momentum, --weight-decay, --batch-size, --epochs)",
                       choices=("none", "barlow_twins"))
    bt_lambda: float = opt(5e-3, "Barlow Twins weight of the off-diagonal terms (teacher only)", bounds="nonnegative")
    proj_dim: int = opt(512, "width of the Barlow Twins projector (teacher only)", bounds="positive")
    seed: int = opt(0, "base seed; expert i is determined by (recipe, seed, i)")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")

    def check(self) -> None:
        if self.model not in list_models():
            raise DDError(f"unknown model '{self.model}'; see dd.models.list_models() for the choices")
        if self.optimizer not in STEPS:
            raise DDError(f"unknown --optimizer '{self.optimizer}'; choose {' or '.join(STEPS)}")
        if self.lr_decay_epoch is not None and not 0 <= self.lr_decay_epoch < self.epochs - 1:
            raise DDError(f"--lr-decay-epoch must be in 0..{self.epochs - 2} for {self.epochs} epochs "
                          f"(a later decay changes nothing), got {self.lr_decay_epoch}; or none for a constant lr")
        check_seed("--seed", self.seed, 1_000_003, self.num_experts)
        check_fits("--num-experts", self.num_experts, 256, "the list of experts")
        if self.teacher != "none" and self.train_per_class is not None:
            raise DDError("--train-per-class applies to experts, not to a --teacher; drop one of them")
        if self.teacher != "none" and self.zca:
            raise DDError("a teacher needs --no-zca, a positive --proj-dim and --bt-lambda >= 0")

    def recipe(self) -> ExpertRecipe:
        return ExpertRecipe(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                            weight_decay=self.weight_decay, batch_size=self.batch_size, epochs=self.epochs,
                            dsa_strategy=self.dsa_strategy, preprocess="zca" if self.zca else "standard",
                            rho=self.rho, alpha=self.alpha, adaptive=self.adaptive,
                            lr_decay_epoch=self.lr_decay_epoch, lr_decay_factor=self.lr_decay_factor,
                            loss_warmup=self.loss_warmup, gp_lambda=self.gp_lambda,
                            train_per_class=self.train_per_class, train_subset_seed=self.train_subset_seed)


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
