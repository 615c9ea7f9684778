"""KRR-ST: self-supervised dataset distillation by kernel ridge regression on learnable target
representations (Lee, Lee, Ko, Kawaguchi, Lee, Hwang; ICLR 2024, arXiv 2310.06511).

Learned: n images X_s (model input space, initialised from random real training images) and their
targets Y_s [n, D] (initialised from the SSL teacher's representations of them). One outer step:

    h ~ pool (eval mode);  x_t = crop+flip of a real batch;  Y_t = teacher(x_t)
    Phi_s = [h.embed(X_s), 1],  Phi_t = [h.embed(x_t), 1]            (features plus a bias column)
    K_ss = Phi_s Phi_s^T,  K_ts = Phi_t Phi_s^T,  lambda = ridge * tr(K_ss)
    L = MSE(K_ts (K_ss + lambda I)^-1 Y_s, Y_t)                       (kernel ridge regression, dual form)

then AdamW on (X_s, Y_s) with a linear lr decay, and one online step of h. The pool (``ModelPool``,
after FRePo) holds feature extractors trained by full-batch MSE(h(X_s), Y_s) regression; each starts
with a random number of steps and is re-initialised, counter reset to 0, once it has taken
``online_iterations`` steps (the reference code forgets that reset). Real and synthetic images are in
the same (standard-normalised) input space. The solve runs as a float64 Cholesky whose ridge grows
tenfold when the factorisation fails.

The result is a transfer set (``dd.distill.synset``, ``kind: transfer``, labels = Y_s) evaluated by
``python -m dd.eval --protocol transfer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dd.augment import crop_flip
from dd.buffer.ssl import TARGETS, Teacher, find_teacher
from dd.config import opt, to_dict
from dd.device import make_generator
from dd.distill.config import MethodChoice, check_models, check_run_dir
from dd.distill.registry import register_method
from dd.distill.runloop import RunLoop
from dd.distill.synset import SynSet, save_synset
from dd.errors import DDError
from dd.identity import check_data, data_flags
from dd.io import pack_state, unpack_state
from dd.models import create_model
from dd.realdata import PreparedData, prepare_data
from dd.settings import DataSettings, DeviceSettings, RunControl
from dd.viz import save_grid


@dataclass
class KRRConfig(DeviceSettings, RunControl, DataSettings, MethodChoice):
    """KRR-ST's settings: no labels, no in-run evaluation (a transfer set is scored by ``dd.eval --protocol
    transfer``)."""

    dataset: str = opt("digits-0to4", "source dataset (unlabelled use of its training images)")
    teacher: str | None = opt(None, "teacher folder from dd.buffer --teacher barlow_twins (default: the only "
                                    "one under <buffer-dir>/<dataset>/)")
    buffer_dir: str = opt("buffers", "root of the buffers and teachers")
    targets: str = opt("standardized", "the teacher's representations as targets: standardized per dimension "
                       "(statistics of the source training images) or raw (the KRR-ST code)", choices=TARGETS)
    model: str = opt("ConvNetBN", "architecture of the pool's feature extractors (reference: ConvNet with BN)")
    num_images: int = opt(1000, "synthetic images n (reference: 1000 for CIFAR100, 2000 for Tiny ImageNet)",
                          bounds="positive")
    iterations: int = opt(160000, "outer iterations", bounds="positive")
    batch_real: int = opt(1024, "real images per outer step", bounds="positive")
    lr: float = opt(1e-3, "AdamW lr of images and targets (reference README: 1e-4 CIFAR100, 1e-5 Tiny/ImageNet)",
                    bounds="positive")
    weight_decay: float = opt(0.0, "AdamW weight decay of images and targets", bounds="nonnegative")
    lr_end_factor: float = opt(1e-3, "the lr decays linearly to lr x this at the last iteration",
                               bounds="positive_unit")
    grad_clip: float = opt(0.0, "clip the outer gradient norm to this (0: off)", bounds="nonnegative")
    ridge: float = opt(1e-6, "KRR regulariser lambda relative to tr(K_ss)", bounds="nonnegative")
    num_models: int = opt(10, "feature extractors in the pool", bounds="positive")
    online_iterations: int = opt(1000, "a pool model is re-initialised after this many online steps")
    online_lr: float = opt(0.1, "SGD lr of the pool's online MSE steps", bounds="nonnegative")
    online_momentum: float = opt(0.9, "SGD momentum of the pool's online steps", bounds="nonnegative")
    online_weight_decay: float = opt(1e-3, "SGD weight decay of the pool's online steps", bounds="nonnegative")
    augment: bool = opt(True, "crop + flip the real batches before the teacher and the feature extractor")
    checkpoint_every: int = opt(100, "save the set and a resumable checkpoint every k iterations", bounds="positive")
    run_dir: str | None = opt(None, "output folder (default: runs/krr_st-<dataset>-n<num-images>)")

    def check(self) -> None:
        check_models(self.model)
        if self.online_iterations < 2:
            raise DDError(f"--online-iterations must be at least 2, got {self.online_iterations}")
        check_run_dir(run_dir_of(self))


def with_bias(features: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, D+1]: the features with a column of ones."""
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def solve_psd(k: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor, retries: int = 8) -> torch.Tensor:
    """(K + lam I)^-1 Y for a symmetric PSD K [n, n], by Cholesky in float64 (differentiable); ``lam`` a number or
    a 0-d tensor (left on the device: reading the factorisation's status is the step's one host sync). When the
    factorisation fails, lam grows tenfold (at least to 1e-12 (tr K + 1)), up to ``retries`` times."""
    k64 = k.double()
    for _ in range(retries):
        chol, info = torch.linalg.cholesky_ex(torch.diagonal_scatter(k64, k64.diagonal() + lam))
        if int(info) == 0:
            return torch.cholesky_solve(y.double(), chol).to(y.dtype)
        lam = max(10 * float(lam), 1e-12 * (float(k64.trace()) + 1))
    raise DDError(f"the kernel matrix stays singular with ridge {float(lam):.3g}; raise --ridge or lower --lr")


def krr_predict(phi_s: torch.Tensor, phi_t: torch.Tensor, y_s: torch.Tensor, ridge: float) -> torch.Tensor:
    """Kernel ridge regression of Y_s [n, D] on features Phi_s [n, d], predicted at Phi_t [B, d]:
    K_ts (K_ss + lambda I)^-1 Y_s with K = Phi Phi^T and lambda = ridge * tr(K_ss) (a constant)."""
    k_ss = phi_s @ phi_s.T
    return (phi_t @ phi_s.T) @ solve_psd(k_ss, y_s, ridge * k_ss.detach().trace().double())


class ModelPool:
    """Feature extractors trained online on the synthetic set (FRePo's pool, as KRR-ST uses it).

    ``build(seed)`` makes a fresh model whose head outputs D values; its online step is one full-batch
    step of MSE(h(X_s), Y_s) with SGD. ``steps[i]`` counts the online steps model i has taken since its
    (re-)initialisation; ``update`` re-initialises a model that reached ``max_steps`` and resets its count.
    """

    def __init__(self, build: Callable[[int], nn.Module], size: int, max_steps: int,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], generator: torch.Generator) -> None:
        self.build, self.max_steps, self.make_optimizer, self.generator = build, max_steps, make_optimizer, generator
        pairs = [self._fresh() for _ in range(size)]
        self.models = [model for model, _ in pairs]
        self.optimizers = [optimizer for _, optimizer in pairs]
        self.steps = [0] * size

    def _fresh(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = self.build(int(torch.randint(2**31, (1,), generator=self.generator)))
        return model, self.make_optimizer(model)

    def reset(self, i: int) -> None:
        """Model i from a fresh random initialisation, with a new optimiser and a step count of 0."""
        self.models[i], self.optimizers[i] = self._fresh()
        self.steps[i] = 0

    def train_step(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """One full-batch online step of model i on MSE(h(x), y); counts it."""
        model, optimizer = self.models[i].train(), self.optimizers[i]
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(x.detach()), y.detach()).backward()
        optimizer.step()
        self.steps[i] += 1

    def warm_up(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Give every model U{1, ..., max_steps - 1} online steps, so the pool spans training stages."""
        for i in range(len(self.models)):
            for _ in range(int(torch.randint(1, self.max_steps, (1,), generator=self.generator))):
                self.train_step(i, x, y)

    def update(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """After an outer step with model i: re-initialise it if it has taken ``max_steps``, else train it once."""
        if self.steps[i] >= self.max_steps:
            self.reset(i)
        else:
            self.train_step(i, x, y)

    def sample(self) -> int:
        return int(torch.randint(len(self.models), (1,), generator=self.generator))

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON) of the weights, optimiser states and step counts."""
        tensors, models = pack_state([m.state_dict() for m in self.models], "pool.models")
        opt_tensors, optimizers = pack_state([o.state_dict() for o in self.optimizers], "pool.optimizers")
        return {**tensors, **opt_tensors}, {"models": models, "optimizers": optimizers, "steps": self.steps}

    def load(self, tensors: dict[str, torch.Tensor], state: dict, device: torch.device) -> None:
        for model, saved in zip(self.models, unpack_state(state["models"], tensors, device), strict=True):
            model.load_state_dict(saved)
        for optimizer, saved in zip(self.optimizers, unpack_state(state["optimizers"], tensors, device), strict=True):
            optimizer.load_state_dict(saved)
        self.steps = list(state["steps"])


def run_dir_of(config: KRRConfig) -> Path:
    return Path(config.run_dir or f"runs/krr_st-{config.dataset}-n{config.num_images}")


@register_method("krr_st", config=KRRConfig)
class KRRDistiller(RunLoop):
    """One KRR-ST run: its state, outer step, checkpoints and outputs over the shared run loop."""

    name = "krr_st"
    divergence_fix = "--lr is likely too high"

    def __init__(self, config: KRRConfig, argv: Sequence[str] | None = None) -> None:
        """``argv``: the command-line arguments of the run, for the resume command that an interrupt prints."""
        config, self.device = self.setup(config)
        super().__init__(config, run_dir_of(config), argv)
        self.teacher: Teacher = find_teacher(config.teacher, config.buffer_dir, config.dataset)
        self.teacher.encoder.to(self.device)
        trained_on = self.teacher.manifest["dataset"]["name"]
        if trained_on != config.dataset:
            raise DDError(f"the teacher at {self.teacher.root} was trained on {trained_on}, not {config.dataset}; "
                          "pass a teacher of the source dataset")
        self.data: PreparedData = prepare_data(config.dataset, self.device, config.data_path, config.download,
                                               "standard", config.image_size, channels=config.channels)
        self.teacher_data = check_data(
            self.teacher.manifest.get("data"), self.data.fingerprint(), f"the teacher at {self.teacher.root}",
            "was trained on", data_flags(config.dataset, config.data_path, config.image_size, config.channels),
            allow=False, fix="pass the data the teacher was trained on, or train a teacher on this data "
                             "(python -m dd.buffer --teacher barlow_twins with the same data flags)")
        n_real = self.data.train_images.shape[0]
        if config.num_images > n_real:
            raise DDError(f"--num-images {config.num_images} exceeds the {n_real} training images of {config.dataset}")
        self.generator = make_generator(config.seed)
        pick = torch.randperm(n_real, generator=self.generator)[: config.num_images].to(self.device)
        self.images = self.data.train_images[pick].clone().requires_grad_(True)
        self.targets = self.teacher.represent(self.images.detach(), targets=config.targets).clone().requires_grad_(True)
        self.optimizers = {"outer": torch.optim.AdamW([self.images, self.targets], lr=config.lr,
                                                      weight_decay=config.weight_decay)}
        spec = self.data.spec

        def build(seed: int) -> nn.Module:
            model = create_model(config.model, spec.channels, self.teacher.output_dim, spec.size, seed=seed)
            return model.to(self.device)

        def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.SGD(model.parameters(), lr=config.online_lr, momentum=config.online_momentum,
                                   weight_decay=config.online_weight_decay)

        self.pool = ModelPool(build, config.num_models, config.online_iterations, make_optimizer, self.generator)

    def lr_at(self, iteration: int) -> float:
        """Linear decay from lr to lr x lr_end_factor over the iterations (torch's LinearLR)."""
        cfg = self.config
        return cfg.lr * (1 + (cfg.lr_end_factor - 1) * min(iteration, cfg.iterations) / cfg.iterations)

    def step(self) -> torch.Tensor:
        """One outer step (module docstring); returns the loss (0-d, not synced)."""
        cfg = self.config
        i = self.pool.sample()
        h = self.pool.models[i].eval()
        real = self.data.train_images
        idx = torch.randperm(real.shape[0], generator=self.generator)[: cfg.batch_real]
        idx = idx.to(self.device, non_blocking=True)
        x_t = crop_flip(real[idx], self.generator) if cfg.augment else real[idx]
        with torch.no_grad():
            y_t = self.teacher.represent(x_t, targets=cfg.targets)
            phi_t = with_bias(h.embed(x_t))
        prediction = krr_predict(with_bias(h.embed(self.images)), phi_t, self.targets, cfg.ridge)
        loss = F.mse_loss(prediction, y_t)
        self.images.grad, self.targets.grad = torch.autograd.grad(loss, [self.images, self.targets])
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([self.images, self.targets], cfg.grad_clip)
        optimizer = self.optimizers["outer"]
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(self.iteration)
        optimizer.step()
        self.pool.update(i, self.images, self.targets)
        return loss.detach()

    def synset(self) -> SynSet:
        cfg = self.config
        tensors, meta = self.data.preprocessor.state()
        return SynSet(images=self.images.detach().cpu(), labels=self.targets.detach().cpu(), lr=0.0,
                      meta={"kind": "transfer", "method": "krr_st", "dataset": cfg.dataset,
                            "num_images": cfg.num_images, "model": cfg.model, "teacher": str(self.teacher.root),
                            "teacher_model": self.teacher.manifest["model"]["name"],
                            "target_dim": self.teacher.output_dim, "targets": cfg.targets,
                            "iteration": self.iteration, "data": self.data.fingerprint(),
                            "teacher_data": self.teacher_data,
                            "config": to_dict(cfg), "preprocess_meta": meta},
                      preprocess=dict(tensors))

    def save_set(self, suffix: str = "") -> None:
        save_synset(self.run_dir / f"synset{suffix}", self.synset())
        pixels = self.data.preprocessor.invert(self.images.detach().cpu())
        save_grid(self.run_dir / "grid.png", pixels, nrow=min(10, pixels.shape[0]))

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, pool = self.pool.state()
        tensors.update(images=self.images.detach(), targets=self.targets.detach(), generator=self.generator.get_state())
        return tensors, {"pool": pool}

    def load(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"])
            self.targets.copy_(tensors["targets"])
        self.pool.load(tensors, state["pool"], self.device)
        self.generator.set_state(tensors["generator"])

    def learned(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "targets": self.targets}

    def log_fields(self) -> dict[str, float]:
        return {"lr": self.lr_at(self.iteration - 1)}

    def finished(self) -> str:
        synset = self.run_dir / "synset"
        return f"transfer set: {synset}; evaluate with: python -m dd.eval --protocol transfer --synset {synset}"

    def start(self) -> None:
        self.pool.warm_up(self.images.detach(), self.targets.detach())

