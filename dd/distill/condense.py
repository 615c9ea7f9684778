"""What DC, DSA (Zhao, Mopuri, Bilen, ICLR 2021; Zhao & Bilen, ICML 2021) and DM (Zhao & Bilen, WACV 2023)
share: learn ``ipc`` images per class by matching, class by class, a statistic of a real batch and of the
synthetic images of that class under a freshly initialised network, with no experts.

``Condenser`` holds the real data on the device, the per-class pools, the synthetic images (labels fixed,
``ipc`` consecutive images per class) and their SGD (momentum 0.5, as the reference ``optimizer_img``), draws
every random choice from one CPU generator (fresh-network seeds, real batches, DSA), and runs over
``dd.distill.runloop``. Its sets are ordinary synthetic sets naming their method's evaluation protocol (``dc``:
300 epochs without augmentation; ``dsa``, ``dm``: 1000 epochs with DSA; ``dd.protocols``), which the in-run
evaluations use too, and the evaluation lr ``lr_net`` (these methods learn no lr). As the reference's
``range(Iteration + 1)``, a run makes ``iterations + 1`` image updates: the evaluations fall on the multiples of
``eval_every`` and on ``iterations`` (the reference evaluates before the update of those iterations), and the
last set saved is that of update ``iterations + 1``. ``siamese`` is DSA's shared augmentation of the real and
the synthetic batch, with the DC code's resampling (``align_corners`` False). The methods live in
``dd.distill.gradmatch`` (dc, dsa) and ``dd.distill.dm``; the values and their sources are in
docs/reference-dc-dsa-dm.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import vmap

from dd.augment import DEFAULT_STRATEGY, DSA, DSAParams
from dd.cli import check_flags
from dd.config import build_parser, opt, parse_config, to_dict
from dd.data import CHANNELS_HELP, IMAGE_SIZE_HELP, class_indices, list_datasets
from dd.device import TF32_HELP, check_seed, make_generator, setup_device
from dd.distill.checkpoint import save_checkpoint
from dd.distill.engine import check_eval_models, check_run_dir
from dd.distill.runloop import Progress, RunLoop
from dd.distill.synset import SynSet, save_synset
from dd.errors import DDError
from dd.io import pack_state, unpack_state
from dd.metrics import check_wandb
from dd.models import create_model, list_models
from dd.multiseed import train_and_test_seeds
from dd.protocols import Protocol, get_protocol
from dd.realdata import prepare_data
from dd.viz import save_grid


@dataclass
class CondenseConfig:
    """The settings every per-class matching method has; ``GradMatchConfig`` and ``DMConfig`` add theirs."""

    method: str = opt("dc", "distillation method")
    dataset: str = opt("digits", "dataset name (see dd.data.list_datasets())")
    data_path: str = opt("data", "folder holding the dataset")
    download: bool = opt(False, "download the dataset through torchvision if it is missing")
    image_size: int | None = opt(None, IMAGE_SIZE_HELP)
    channels: int | None = opt(None, CHANNELS_HELP)
    model: str = opt("ConvNet", "architecture of the freshly initialised matching networks")
    ipc: int = opt(1, "synthetic images per class")
    iterations: int = opt(1000, "outer iterations (a fresh network each)")
    lr_img: float = opt(0.1, "learning rate of the synthetic images (SGD, momentum 0.5)")
    batch_real: int = opt(256, "real images per class in each matching (the whole class when it is smaller)")
    pix_init: str = opt("noise", "initial images: Gaussian noise or random real images of the class",
                        choices=("noise", "real"))
    dsa_strategy: str = opt(DEFAULT_STRATEGY, "DSA ops of the siamese augmentation ('none': no augmentation)")
    lr_net: float = opt(0.01, "SGD lr of the evaluation networks, stored as the set's lr (and, for dc/dsa, of the "
                        "network updates on the synthetic set)")
    val_fraction: float = opt(0.1, "fraction of every class of the training split held out as the validation "
                              "split, which the in-run evaluations and synset_best read (the test split never)")
    val_seed: int = opt(0, "seed of the validation split's draw")
    eval_every: int = opt(500, "evaluate every k iterations (0: only at the end)")
    eval_models: str = opt("ConvNet", "comma-separated architectures for the evaluations during the run")
    eval_runs: int = opt(1, "networks trained per architecture at each evaluation")
    eval_epochs: int | None = opt(None, "epochs of each evaluation network (default: the method's protocol's: dc 300, "
                                  "dsa and dm 1000)")
    eval_batch_size: int | None = opt(None, "batch size of each evaluation network (default: the protocol's)")
    log_every: int = opt(10, "write metrics every k iterations")
    checkpoint_every: int = opt(100, "save the set and a resumable checkpoint every k iterations")
    run_dir: str | None = opt(None, "output folder (default: runs/<method>-<dataset>-ipc<k>)")
    resume: bool = opt(False, "continue the run in --run-dir from its last checkpoint")
    seed: int = opt(0, "seed of every random choice of the run")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    tf32: bool = opt(False, TF32_HELP)
    wandb: str = opt("off", "log to Weights & Biases", choices=("off", "offline", "online"))


def default_run_dir(config: CondenseConfig) -> Path:
    return Path(config.run_dir or f"runs/{config.method}-{config.dataset}-ipc{config.ipc}")


def validate(config: CondenseConfig) -> None:
    """Reject bad values of the shared settings before any data is loaded."""
    if config.dataset not in list_datasets():
        raise DDError(f"unknown dataset '{config.dataset}'; choose from {', '.join(list_datasets())}")
    for name in [config.model, *config.eval_models.split(",")]:
        if name not in list_models():
            raise DDError(f"unknown model '{name}'; see dd.models.list_models() for the choices")
    check_flags(config, positive=("ipc", "iterations", "lr_img", "batch_real", "lr_net", "eval_runs", "eval_epochs",
                                  "eval_batch_size", "log_every", "checkpoint_every", "image_size"),
                nonnegative=("eval_every",))
    if not 0 < config.val_fraction < 1:
        raise DDError(f"--val-fraction must lie in (0, 1): the in-run evaluations read the validation split, "
                      f"got {config.val_fraction}")
    DSA(config.dsa_strategy)  # raises on an unknown op
    check_wandb(config.wandb)
    check_run_dir(default_run_dir(config))
    check_seed("--seed", config.seed, offsets=config.eval_runs)
    check_seed("--val-seed", config.val_seed)


def siamese(dsa: DSA, batches: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Every image of every batch augmented by ONE draw of ``dsa`` (op group and parameters), as the DSA code's
    siamese mode (one seed for the real and the synthetic batch, the first sample's parameters for all); the
    generator advances by one draw. Differentiable with respect to the images."""
    if not dsa.groups:
        return list(batches)
    sizes = [b.shape[0] for b in batches]
    together = vmap(lambda x: dsa(x[None], generator)[0], randomness="same")(torch.cat(list(batches)))
    return list(together.split(sizes))


class Condenser(RunLoop):
    """State, data, outputs and checkpoints of one DC/DSA/DM run; a method adds ``step``. The method's evaluation
    protocol has the method's name (dc, dsa, dm)."""

    divergence_fix = "--lr-img is likely too high"

    @property
    def final_iteration(self) -> int:
        """``iterations + 1`` updates, as the reference's ``range(Iteration + 1)``."""
        return self.config.iterations + 1

    def protocol(self) -> Protocol:
        """The method's protocol under the run's settings: ``eval_epochs`` and ``eval_batch_size`` when given,
        and the run's ``dsa_strategy`` for a protocol that augments (dsa, dm; the reference evaluates with the
        strategy it distilled with)."""
        cfg = self.config
        protocol = get_protocol(cfg.method)
        overrides = {k: v for k, v in (("epochs", cfg.eval_epochs), ("batch_size", cfg.eval_batch_size))
                     if v is not None}
        if protocol.augmented:
            overrides["dsa_strategy"] = cfg.dsa_strategy
        return get_protocol(cfg.method, **overrides)

    def __init__(self, config: CondenseConfig, argv: Sequence[str] | None = None) -> None:
        validate(config)
        self.device = setup_device(config.device, config.tf32)
        config = dataclasses.replace(config, device=str(self.device))  # recorded: the device used
        super().__init__(config, default_run_dir(config), argv)
        self.name = f"{config.method} ipc{config.ipc}"
        self.data = prepare_data(config.dataset, self.device, config.data_path, config.download, "standard",
                                 config.image_size, config.val_fraction, config.val_seed, config.channels)
        spec = self.data.spec
        check_eval_models(config, spec)
        self.pools = [idx.to(self.device) for idx in class_indices(self.data.train_labels.cpu(), spec.num_classes)]
        for c, idx in enumerate(self.pools):
            if len(idx) < config.ipc:
                raise DDError(f"--ipc {config.ipc} is larger than class {c} of {spec.name}, which has {len(idx)} "
                              "training images; lower --ipc")
        self.generator = make_generator(config.seed)
        self.dsa = DSA(config.dsa_strategy, DSAParams(align_corners=False))  # the DC code's DiffAugment
        self.labels = torch.arange(spec.num_classes, device=self.device).repeat_interleave(config.ipc)
        if config.pix_init == "real":
            images = torch.cat([self.real_batch(c, config.ipc) for c in range(spec.num_classes)])
        else:
            images = torch.randn(len(self.labels), spec.channels, *spec.size, generator=self.generator)
        self.images = images.to(self.device).clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=config.lr_img, momentum=0.5)

    # -- what the methods draw ------------------------------------------------------------------------
    def real_batch(self, c: int, n: int) -> torch.Tensor:
        """``n`` random training images of class ``c`` without replacement (the whole class when smaller)."""
        pool = self.pools[c]
        pick = torch.randperm(len(pool), generator=self.generator)[:n].to(self.device, non_blocking=True)
        return self.data.train_images[pool[pick]]

    def synthetic(self, c: int) -> torch.Tensor:
        """The synthetic images of class ``c`` (a view of the learned tensor)."""
        ipc = self.config.ipc
        return self.images[c * ipc:(c + 1) * ipc]

    def fresh_network(self) -> nn.Module:
        """A newly initialised ``model`` in train mode, its seed drawn from the run's generator."""
        spec = self.data.spec
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        model = create_model(self.config.model, spec.channels, spec.num_classes, spec.size, seed=seed)
        return model.to(self.device, non_blocking=True).train()  # initialised on the CPU: the same on every device

    def outer_step(self, loss: torch.Tensor) -> None:
        """One SGD step of the images on ``loss``."""
        self.optimizer.zero_grad(set_to_none=True)
        (self.images.grad,) = torch.autograd.grad(loss, [self.images])
        self.optimizer.step()

    # -- the run loop's hooks -------------------------------------------------------------------------
    def learned(self) -> dict[str, torch.Tensor]:
        return {"images": self.images}

    def synset(self) -> SynSet:
        cfg = self.config
        tensors, meta = self.data.preprocessor.state()
        return SynSet(images=self.images.detach().cpu(), labels=self.labels.cpu(), lr=cfg.lr_net,
                      meta={"dataset": cfg.dataset, "ipc": cfg.ipc, "method": cfg.method, "model": cfg.model,
                            "iteration": self.iteration, "config": to_dict(cfg), "preprocess_meta": meta,
                            "data": self.data.fingerprint(),
                            "protocol": cfg.method, "splits": self.data.splits(), "selected_on": "val"},
                      preprocess={k: v.cpu() for k, v in tensors.items()})

    def save_set(self, suffix: str = "") -> None:
        save_synset(self.run_dir / f"synset{suffix}", self.synset())
        if not suffix:
            pixels = self.data.preprocessor.invert(self.images.detach().cpu())
            save_grid(self.run_dir / "grid.png", pixels, nrow=self.config.ipc if self.config.ipc > 1 else len(pixels))

    def checkpoint(self) -> None:
        tensors, optimizer = pack_state(self.optimizer.state_dict(), "optimizer")
        tensors.update(images=self.images.detach(), generator=self.generator.get_state())
        save_checkpoint(self.run_dir, tensors, {**self.run_state(), "optimizer": optimizer})

    def load(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"].to(self.device))
        self.optimizer.load_state_dict(unpack_state(state["optimizer"], tensors, self.device))
        self.generator.set_state(tensors["generator"])

    def evaluate(self, progress: Progress | None = None) -> dict[str, list[float]]:
        """Validation accuracy of fresh networks trained on the set under the method's protocol (``protocol``); the
        seeds of one model count as one step of ``progress``."""
        cfg, spec = self.config, self.data.spec
        protocol = self.protocol()
        seeds = [cfg.seed + run for run in range(cfg.eval_runs)]
        models = cfg.eval_models.split(",")
        results: dict[str, list[float]] = {}
        for done, model in enumerate(models):
            if progress is not None:
                progress(done, len(models), model)
            results[model] = train_and_test_seeds(model, spec.channels, spec.num_classes, spec.size,
                                                  (self.images.detach(), self.labels), self.data.val, cfg.lr_net,
                                                  protocol, seeds, batched=self.device.type == "cuda")
        if progress is not None:
            progress(len(models), len(models), "")
        return results


def run_command(argv: Sequence[str] | None, config_cls: type[CondenseConfig], run_cls: type[Condenser], doc: str,
                example: str) -> int:
    """Parse ``argv`` into ``config_cls`` (``--help`` shows ``doc``), run ``run_cls`` and say where the set is."""
    methods = "|".join(dataclasses.fields(config_cls)[0].metadata["choices"])
    parser = build_parser(config_cls, f"python -m dd.distill --method {methods}", doc, example)
    config, _ = parse_config(config_cls, argv, parser)
    run = run_cls(config, argv)
    run.run()
    synset = run.run_dir / "synset"
    print(f"synthetic set: {synset}; evaluate with: python -m dd.eval --synset {synset}")
    return 0
