"""The settings blocks that stage and method configs compose: each shared field is declared once, with its help
and its bounds, on the block that owns it, and its cross-field rules live in the block's ``check``.

A config composes blocks by dataclass inheritance (``class MTTConfig(DataSettings, ValidationSplit, ...)``): the
fields stay flat, so flags, YAML presets and the resolved ``config.json`` keep one key per setting. A config that
needs another default redeclares the field (``eval_epochs`` is 1000 for the trajectory methods, the protocol's
for DC/DSA/DM). ``dd.config.validate`` runs every block's bounds and checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from dd.config import opt
from dd.data import CHANNELS_HELP, IMAGE_SIZE_HELP, list_datasets
from dd.device import TF32_HELP, check_seed
from dd.errors import DDError
from dd.metrics import check_wandb

WANDB_MODES = ("off", "offline", "online")


@dataclass
class DataSettings:
    """Which dataset, where it is, and how its images are shaped."""

    dataset: str = opt("digits", "dataset name (see dd.data.list_datasets())")
    data_path: str = opt("data", "folder holding the dataset (README, Datasets: where dd looks for each)")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, IMAGE_SIZE_HELP, bounds="positive")
    channels: int | None = opt(None, CHANNELS_HELP)

    def check(self) -> None:
        if self.dataset is not None and self.dataset not in list_datasets():
            raise DDError(f"unknown dataset '{self.dataset}'; choose from {', '.join(list_datasets())}")


@dataclass
class ValidationSplit:
    """The validation split carved from the training split: what every choice (in-run evaluation, synset_best,
    tuning) reads, so that the test split is read only by the final report."""

    val_fraction: float = opt(0.1, "fraction of every class of the training split held out as the validation "
                              "split, which the in-run evaluations and synset_best read (the test split never)",
                              bounds="fraction")
    val_seed: int = opt(0, "seed of the validation split's draw")

    def check(self) -> None:
        if self.val_seed is not None:
            check_seed("--val-seed", self.val_seed)


@dataclass
class DeviceSettings:
    """Where the work runs."""

    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    tf32: bool = opt(False, TF32_HELP)


@dataclass
class RunControl:
    """The loop of a run folder: how long, how often it logs and checkpoints, where it writes, and its seed."""

    iterations: int = opt(5000, "outer iterations", bounds="positive")
    log_every: int = opt(10, "write metrics every k iterations", bounds="positive")
    checkpoint_every: int = opt(100, "save a resumable checkpoint every k iterations", bounds="positive")
    run_dir: str | None = opt(None, "output folder (default: runs/<method>-<dataset>-ipc<k>)")
    resume: bool = opt(False, "continue the run in --run-dir from its last checkpoint")
    seed: int = opt(0, "seed of every random choice of the run")
    wandb: str = opt("off", "log to Weights & Biases", choices=WANDB_MODES)

    def check(self) -> None:
        check_wandb(self.wandb)
        check_seed("--seed", self.seed)


@dataclass
class InRunEvaluation:
    """The evaluations during a run, on the validation split, that pick synset_best."""

    eval_every: int = opt(500, "evaluate every k iterations (0: only at the end)", bounds="nonnegative")
    eval_models: str | None = opt(None, "comma-separated architectures for the evaluations during the run (default: "
                                  "the student's --model)")
    eval_runs: int = opt(1, "networks trained per architecture at each evaluation", bounds="positive")
    eval_epochs: int | None = opt(1000, "epochs of each evaluation network", bounds="positive")
    eval_batch_size: int | None = opt(None, "batch size of each evaluation network (default: the protocol's)",
                                      bounds="positive")

    def check(self) -> None:
        seed = getattr(self, "seed", None)
        if seed is not None:
            check_seed("--seed", seed, offsets=self.eval_runs)
