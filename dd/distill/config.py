"""The distillation config: one dataclass for every trajectory-matching method.

Defaults are MTT's (Cazenavette et al. 2022, distill.py); presets in ``experiments/<method>/`` set
the values of each paper table.
"""

from __future__ import annotations

from dataclasses import dataclass

from dd.config import opt
from dd.data import CHANNELS_HELP
from dd.device import TF32_HELP


@dataclass
class DistillConfig:
    method: str = opt("mtt", "distillation method (see dd.distill.methods); krr_st has flags of its own, "
                             "listed by --method krr_st --help")
    dataset: str = opt("digits", "dataset name (see dd.data.list_datasets())")
    data_path: str = opt("data", "folder holding the dataset")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, "side length of the images, as the experts were trained (default: the "
                                       "dataset's own; imagefolder: the images' side when they share one, else 32)")
    channels: int | None = opt(None, CHANNELS_HELP)
    model: str = opt("ConvNet", "student architecture; must match the experts'")
    buffer: str | None = opt(None, "trajectory store folder (default: the only one under "
                                   "<buffer-dir>/<dataset>/<model>/)")
    buffer_config: str | None = opt(None, "buffer preset whose experts to match (e.g. experiments/buffer/"
                                    "digits_gsam.yaml): picks its store when several recipes exist (default: "
                                    "none; --buffer or the only store)")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")
    allow_other_data: bool = opt(False, "distil from experts trained on other data than --dataset/--data-path give "
                                 "(refused by default: the data fingerprints differ); the set records it")
    ipc: int = opt(1, "synthetic images per class")
    iterations: int = opt(5000, "outer iterations")
    syn_steps: int = opt(20, "inner SGD steps of the student on the synthetic set (N)")
    expert_epochs: int = opt(3, "expert epochs the student must cover in syn_steps steps (M)")
    min_start_epoch: int = opt(0, "lower bound of the start epoch (inclusive)")
    max_start_epoch: int = opt(25, "upper bound of the start epoch (exclusive)")
    batch_syn: int | None = opt(None, "synthetic minibatch per inner step (default: the whole set)")
    lr_img: float = opt(1000.0, "learning rate of the synthetic images (SGD, momentum 0.5)")
    lr_lr: float = opt(1e-5, "learning rate of the learnable inner lr (SGD, momentum 0.5)")
    lr_teacher: float = opt(0.01, "initial value of the learnable inner lr")
    lr_step_limit: float = opt(0.1, "the learned lr changes by at most this fraction of its value per outer step, so "
                               "it stays positive and one bad iteration cannot blow it up (0: no limit, as the "
                               "reference codes, whose lr may jump or turn negative); must be below 1")
    pix_init: str = opt("real", "initial images: random real images per class, Gaussian noise, real images the "
                        "experts classify correctly (DATM), or k-means representatives of expert logits (AST)",
                        choices=("real", "noise", "correct", "kmeans"))
    soft_labels: bool = opt(False, "learnable soft labels initialised from expert logits (DATM)")
    soft_label_init: str = opt("correct_mean", "initial soft labels: the mean logits of the experts that classify the "
                               "image correctly, or the raw logits of the first expert (final epoch), as DATM.py "
                               "does for pix_init real (DATM)", choices=("correct_mean", "first_expert"))
    label_temperature: float = opt(1.0, "soft labels are softmax(expert logits / T) for this T (TESLA)")
    lr_y: float = opt(2.0, "learning rate of the soft labels (SGD, momentum 0.9; DATM)")
    threshold: float | None = opt(None, "skip the outer update when the matching loss exceeds this (DATM) (default: "
                                  "none, never skip)")
    current_max_start_epoch: int | None = opt(None, "initial upper bound of the start-epoch window, growing "
                                              "linearly to max_start_epoch (DATM sequential generation) (default: "
                                              "none, the whole window from the start)")
    expansion_end: int = opt(3000, "iterations over which the window's upper bound grows (DATM)")
    ema_decay: float = opt(0.999, "decay of the exponential moving average of the images (FTD)")
    inner_momentum: float = opt(0.9, "heavy-ball momentum of the student's inner SGD (AST)")
    balance_loss: bool = opt(False, "weight the inner loss by the start epoch, w(s) (AST)")
    middle_loss: str = opt("none", "intermediate matching at inner steps (N//M)k against epoch s+k (AST)",
                           choices=("none", "agg", "adaptive"))
    weight_perturb: bool = opt(False, "relative Gaussian perturbation of the start conv weights (AST)")
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
                                 "again from the memory-mapped expert files, which are checksummed once per run")
    val_fraction: float = opt(0.1, "fraction of every class of the training split held out as the validation "
                              "split, which the in-run evaluations and synset_best read (the test split never)")
    val_seed: int = opt(0, "seed of the validation split's draw")
    eval_every: int = opt(500, "evaluate every k iterations (0: only at the end)")
    eval_models: str | None = opt(None, "comma-separated architectures for the evaluations during the run (default: "
                                  "the student's --model, as the MTT code)")
    eval_runs: int = opt(1, "networks trained per architecture at each evaluation")
    eval_epochs: int = opt(1000, "epochs of each evaluation network")
    eval_batch_size: int | None = opt(None, "batch size of each evaluation network (default: the protocol's)")
    log_every: int = opt(10, "write metrics every k iterations")
    checkpoint_every: int = opt(100, "save a resumable checkpoint every k iterations")
    run_dir: str | None = opt(None, "output folder (default: runs/<method>-<dataset>-ipc<k>)")
    resume: bool = opt(False, "continue the run in --run-dir from its last checkpoint")
    seed: int = opt(0, "seed of every random choice of the run")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    tf32: bool = opt(False, TF32_HELP)
    wandb: str = opt("off", "log to Weights & Biases", choices=("off", "offline", "online"))
