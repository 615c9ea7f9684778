"""The configs of the trajectory-matching methods, composed from the shared settings blocks (``dd.settings``).

``MTTConfig`` is the base: the engine's settings, whose defaults are MTT's (Cazenavette et al. 2022, distill.py).
FTD, DATM, AST and TESLA extend it with their own knobs only, so a flag of one method is refused by another.
``MethodChoice`` (the ``method`` field) is the block every method's config starts from (the last base, so that
``method`` and the data come first in ``--help`` and config.json, and its check runs first), the per-class methods'
(``dd.distill.condense``) and KRR-ST's (``dd.distill.krr_st``) included. Presets in ``experiments/<method>/`` set
the values of each paper table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dd.config import opt
from dd.device import check_fits
from dd.distill.registry import get_method, method_of
from dd.distill.unroll import make_unroll
from dd.errors import DDError
from dd.models import list_models
from dd.settings import DataSettings, DeviceSettings, InRunEvaluation, RunControl, ValidationSplit

METHOD_HELP = ("distillation method (python -m dd lists them); each takes the flags of its own config: --method NAME "
               "--help (default: the method of this config; dd.distill's: mtt)")
PLAN_BYTES_PER_STEP = 256
"""A lower bound of the host bytes one inner step's plan (its minibatch indices and seed), or one evaluation seed,
holds."""


@dataclass
class MethodChoice:
    """Which registered method runs (``dd.distill.registry``); a config serves the method it is registered with."""

    method: str | None = opt(None, METHOD_HELP)

    def __post_init__(self) -> None:
        if self.method is None:  # the method this config class is registered with
            self.method = method_of(type(self))

    def check(self) -> None:
        spec = get_method(self.method)
        if type(self) is not spec.config:
            raise DDError(f"--method {self.method} takes a {spec.config.__name__}, not a {type(self).__name__}; "
                          f"build the config of the method (dd.distill.registry.get_method('{self.method}').config)")


def check_models(*names: str) -> None:
    """Each name must be a registered model."""
    for name in names:
        if name not in list_models():
            raise DDError(f"unknown model '{name}'; see dd.models.list_models() for the choices")


def check_run_dir(run_dir: Path) -> None:
    """The run folder, and every folder above it, must not be a file (checked before anything is printed)."""
    for path in (run_dir, *run_dir.parents):
        if path.is_file():
            where = "is a file" if path == run_dir else f"lies under {path}, which is a file"
            raise DDError(f"--run-dir {run_dir} {where}; pass a folder")


def default_run_dir(config) -> Path:
    """``--run-dir``, else ``runs/<method>-<dataset>-ipc<k>``."""
    return Path(config.run_dir or f"runs/{config.method}-{config.dataset}-ipc{config.ipc}")


@dataclass
class MTTConfig(DeviceSettings, RunControl, InRunEvaluation, ValidationSplit, DataSettings, MethodChoice):
    """The trajectory engine's settings: everything MTT reads, and the base of every trajectory method's config."""

    model: str = opt("ConvNet", "student architecture; must match the experts'")
    buffer: str | None = opt(None, "trajectory store folder (default: the only one under "
                                   "<buffer-dir>/<dataset>/<model>/)")
    buffer_config: str | None = opt(None, "buffer preset whose experts to match (e.g. experiments/buffer/"
                                    "digits_gsam.yaml): picks its store when several recipes exist (default: "
                                    "none; --buffer or the only store)")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")
    allow_other_data: bool = opt(False, "distil from experts trained on other data than --dataset/--data-path give "
                                 "(refused by default: the data fingerprints differ); the set records it")
    ipc: int = opt(1, "synthetic images per class", bounds="positive")
    syn_steps: int = opt(20, "inner SGD steps of the student on the synthetic set (N)", bounds="positive")
    expert_epochs: int = opt(3, "expert epochs the student must cover in syn_steps steps (M)", bounds="positive")
    min_start_epoch: int = opt(0, "lower bound of the start epoch (inclusive)")
    max_start_epoch: int = opt(25, "upper bound of the start epoch (exclusive)")
    batch_syn: int | None = opt(None, "synthetic minibatch per inner step (default: the whole set)", bounds="positive")
    lr_img: float = opt(1000.0, "learning rate of the synthetic images (SGD, momentum 0.5)", bounds="positive")
    lr_lr: float = opt(1e-5, "learning rate of the learnable inner lr (SGD, momentum 0.5)", bounds="nonnegative")
    lr_teacher: float = opt(0.01, "initial value of the learnable inner lr", bounds="positive")
    lr_step_limit: float = opt(0.1, "the learned lr changes by at most this fraction of its value per outer step, so "
                               "it stays positive and one bad iteration cannot blow it up (0: no limit, as the "
                               "reference codes, whose lr may jump or turn negative); must be below 1",
                               bounds="nonnegative")
    pix_init: str = opt("real", "initial images: random real images per class, Gaussian noise, real images the "
                        "experts classify correctly (DATM), or k-means representatives of expert logits (AST)",
                        choices=("real", "noise", "correct", "kmeans"))
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "DSA ops in the inner loop and evaluation")
    unroll: str = opt("auto", "how the inner loop is differentiated: full keeps every step's graph (memory grows "
                      "with syn_steps); checkpointed gives the same gradient keeping one step's graph at a time "
                      "and replaying the steps backwards (one more forward and backward per step); tesla "
                      "keeps one step's graph and no per-step state, approximating the gradient to first order "
                      "(each inner gradient sees its step's parameters as constants; TESLA); auto is the method's "
                      "own unroll where it has one (tesla) and otherwise picks checkpointed when the full "
                      "unroll's estimated peak would not fit the device's free memory (dd.distill.memory), says "
                      "which and why, and records the pick in the run's config",
                      choices=("auto", "full", "checkpointed", "tesla"))
    unroll_snapshot_every: int = opt(1, "checkpointed unroll: keep the student's state after every k-th inner step "
                                     "only and replay the steps in between during the backward pass (about "
                                     "syn_steps/k + k states; k near sqrt(syn_steps) holds the fewest)")
    unroll_chunk: int | None = opt(None, "checkpointed unroll: build each inner step's graph at most k synthetic "
                                   "images at a time (exact: the inner loss is a mean over the minibatch), for "
                                   "minibatches whose one graph does not fit; costs one more graph-free gradient per "
                                   "step; not for BatchNorm students (default: the whole minibatch at once, unless "
                                   "one step of it would not fit the device: then the most images whose graph does, "
                                   "printed and recorded)")
    expert_cache_mb: float = opt(1024.0, "MiB of expert rows kept in host memory (pinned on CUDA); the rest are read "
                                 "again from the memory-mapped expert files, which are checksummed once per run",
                                 bounds="nonnegative")
    eval_models: str | None = opt(None, "comma-separated architectures for the evaluations during the run (default: "
                                  "the student's --model, as the MTT code)")
    eval_epochs: int = opt(1000, "epochs of each evaluation network", bounds="positive")

    def check(self) -> None:
        check_models(self.model, *(self.eval_models or self.model).split(","))
        check_fits("--syn-steps", self.syn_steps, PLAN_BYTES_PER_STEP, "the inner plan")
        check_fits("--eval-runs", self.eval_runs, PLAN_BYTES_PER_STEP, "the list of evaluation seeds")
        check_run_dir(default_run_dir(self))
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise DDError(f"need 0 <= --min-start-epoch < --max-start-epoch, got {self.min_start_epoch} and "
                          f"{self.max_start_epoch}")
        if self.lr_step_limit >= 1:
            raise DDError(f"--lr-step-limit must be below 1 (a fraction of the lr), got {self.lr_step_limit:g}")
        make_unroll("checkpointed" if self.unroll == "auto" else self.unroll, self.unroll_snapshot_every,
                    self.unroll_chunk)  # raises on a bad unroll, stride or chunk


@dataclass
class FTDConfig(MTTConfig):
    """MTT's settings plus the EMA of the images (Du et al. 2023)."""

    ema_decay: float = opt(0.999, "decay of the exponential moving average of the images (FTD)", bounds="unit")


@dataclass
class DATMConfig(MTTConfig):
    """MTT's settings plus DATM's window, soft labels and threshold (Guo et al. 2024)."""

    soft_labels: bool = opt(False, "learnable soft labels initialised from expert logits (DATM)")
    soft_label_init: str = opt("correct_mean", "initial soft labels: the mean logits of the experts that classify the "
                               "image correctly, or the raw logits of the first expert (final epoch), as DATM.py "
                               "does for pix_init real (DATM)", choices=("correct_mean", "first_expert"))
    lr_y: float = opt(2.0, "learning rate of the soft labels (SGD, momentum 0.9; DATM); 0 keeps them fixed",
                      bounds="nonnegative")
    threshold: float | None = opt(None, "skip the outer update when the matching loss exceeds this (DATM) (default: "
                                  "none, never skip)", bounds="positive")
    current_max_start_epoch: int | None = opt(None, "initial upper bound of the start-epoch window, growing "
                                              "linearly to max_start_epoch (DATM sequential generation) (default: "
                                              "none, the whole window from the start)")
    expansion_end: int = opt(3000, "iterations over which the window's upper bound grows (DATM)")

    def check(self) -> None:
        if self.current_max_start_epoch is None:
            return
        if not self.min_start_epoch < self.current_max_start_epoch <= self.max_start_epoch:
            raise DDError(f"need --min-start-epoch < --current-max-start-epoch <= --max-start-epoch, got "
                          f"{self.min_start_epoch}, {self.current_max_start_epoch} and {self.max_start_epoch}")
        if self.expansion_end <= 0:
            raise DDError(f"--expansion-end must be positive, got {self.expansion_end}")


@dataclass
class ASTConfig(MTTConfig):
    """MTT's settings plus AST's momentum student and optional terms (Shen et al. 2023)."""

    inner_momentum: float = opt(0.9, "heavy-ball momentum of the student's inner SGD (AST)", bounds="below_one")
    balance_loss: bool = opt(False, "weight the inner loss by the start epoch, w(s) (AST)")
    middle_loss: str = opt("none", "intermediate matching at inner steps (N//M)k against epoch s+k (AST)",
                           choices=("none", "agg", "adaptive"))
    weight_perturb: bool = opt(False, "relative Gaussian perturbation of the start conv weights (AST)")

    def check(self) -> None:
        if self.middle_loss != "none" and self.syn_steps < self.expert_epochs:
            raise DDError(f"--middle-loss needs --syn-steps >= --expert-epochs (one inner step per expert epoch), "
                          f"got {self.syn_steps} and {self.expert_epochs}")


@dataclass
class TESLAConfig(MTTConfig):
    """MTT's settings plus the temperature of TESLA's expert-assigned soft labels (Cui et al. 2023)."""

    label_temperature: float = opt(1.0, "soft labels are softmax(expert logits / T) for this T (TESLA)",
                                   bounds="positive")
