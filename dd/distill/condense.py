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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from dd.augment import DEFAULT_STRATEGY, DSA, DSAParams
from dd.config import opt, to_dict
from dd.data import class_indices
from dd.device import make_generator
from dd.distill.config import MethodChoice, check_models, check_run_dir, default_run_dir
from dd.distill.engine import check_eval_models
from dd.distill.runloop import Progress, RunLoop
from dd.distill.synset import SynSet, save_synset
from dd.errors import DDError
from dd.models import create_model
from dd.multiseed import train_and_test_seeds
from dd.protocols import Protocol, for_data, get_protocol
from dd.realdata import prepare_data
from dd.settings import DataSettings, DeviceSettings, InRunEvaluation, RunControl, ValidationSplit
from dd.viz import save_grid


@dataclass
class CondenseConfig(DeviceSettings, RunControl, InRunEvaluation, ValidationSplit, DataSettings, MethodChoice):
    """The settings every per-class matching method has; ``DCConfig``, ``DSAConfig`` and ``DMConfig`` add theirs."""

    model: str = opt("ConvNet", "architecture of the freshly initialised matching networks")
    ipc: int = opt(1, "synthetic images per class", bounds="positive")
    iterations: int = opt(1000, "outer iterations (a fresh network each)", bounds="positive")
    lr_img: float = opt(0.1, "learning rate of the synthetic images (SGD, momentum 0.5)", bounds="positive")
    batch_real: int = opt(256, "real images per class in each matching (the whole class when it is smaller)",
                          bounds="positive")
    pix_init: str = opt("noise", "initial images: Gaussian noise or random real images of the class",
                        choices=("noise", "real"))
    dsa_strategy: str = opt(DEFAULT_STRATEGY, "DSA ops of the siamese augmentation ('none': no augmentation)")
    lr_net: float = opt(0.01, "SGD lr of the evaluation networks, stored as the set's lr (and, for dc/dsa, of the "
                        "network updates on the synthetic set)", bounds="positive")
    eval_models: str = opt("ConvNet", "comma-separated architectures for the evaluations during the run")
    eval_epochs: int | None = opt(None, "epochs of each evaluation network (default: the method's protocol's: dc 300, "
                                  "dsa and dm 1000)", bounds="positive")
    checkpoint_every: int = opt(100, "save the set and a resumable checkpoint every k iterations", bounds="positive")

    def check(self) -> None:
        check_models(self.model, *self.eval_models.split(","))
        DSA(self.dsa_strategy)  # raises on an unknown op
        check_run_dir(default_run_dir(self))


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
    protocol is ``protocol_name``, by default the method's name (dc, dsa, dm)."""

    divergence_fix = "--lr-img is likely too high"
    protocol_name: str | None = None  # the dd.protocols protocol of the sets (None: the method's name)

    @property
    def final_iteration(self) -> int:
        """``iterations + 1`` updates, as the reference's ``range(Iteration + 1)``."""
        return self.config.iterations + 1

    def protocol(self, model: str) -> Protocol:
        """The method's protocol for ``model`` under the run's settings: ``eval_epochs`` and ``eval_batch_size``
        when given, the run's ``dsa_strategy`` for a protocol with DSA (dsa, dm; the reference evaluates with the
        strategy it distilled with), DC's augmentation where its code gives the data or model one (``for_data``)."""
        cfg = self.config
        name = self.protocol_name or cfg.method
        overrides = {k: v for k, v in (("epochs", cfg.eval_epochs), ("batch_size", cfg.eval_batch_size))
                     if v is not None}
        if get_protocol(name).uses_dsa:
            overrides["dsa_strategy"] = cfg.dsa_strategy
        return for_data(get_protocol(name, **overrides), cfg.dataset, model, cfg.eval_epochs is not None)

    def __init__(self, config: CondenseConfig, argv: Sequence[str] | None = None) -> None:
        config, self.device = self.setup(config)
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
        self.optimizers = {"img": torch.optim.SGD([self.images], lr=config.lr_img, momentum=0.5)}

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
        optimizer = self.optimizers["img"]
        optimizer.zero_grad(set_to_none=True)
        (self.images.grad,) = torch.autograd.grad(loss, [self.images])
        optimizer.step()

    # -- the run loop's hooks -------------------------------------------------------------------------
    def learned(self) -> dict[str, torch.Tensor]:
        return {"images": self.images}

    def synset(self) -> SynSet:
        cfg = self.config
        tensors, meta = self.data.preprocessor.state()
        return SynSet(images=self.images.detach().cpu(), labels=self.labels.cpu(), lr=cfg.lr_net,
                      meta={"dataset": cfg.dataset, "ipc": cfg.ipc, "method": cfg.method, "model": cfg.model,
                            "iteration": self.iteration, "config": to_dict(cfg), "preprocess_meta": meta,
                            "data": self.data.fingerprint(), "protocol": self.protocol_name or cfg.method,
                            "splits": self.data.splits(), "selected_on": "val"},
                      preprocess={k: v.cpu() for k, v in tensors.items()})

    def save_set(self, suffix: str = "") -> None:
        save_synset(self.run_dir / f"synset{suffix}", self.synset())
        if not suffix:
            pixels = self.data.preprocessor.invert(self.images.detach().cpu())
            save_grid(self.run_dir / "grid.png", pixels, nrow=self.config.ipc if self.config.ipc > 1 else len(pixels))

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {"images": self.images.detach(), "generator": self.generator.get_state()}, {}

    def load(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        with torch.no_grad():
            self.images.copy_(tensors["images"].to(self.device))
        self.generator.set_state(tensors["generator"])

    def evaluate(self, progress: Progress | None = None) -> dict[str, list[float]]:
        """Validation accuracy of fresh networks trained on the set under the method's protocol (``protocol``); the
        seeds of one model count as one step of ``progress``."""
        cfg, spec = self.config, self.data.spec
        seeds = [cfg.seed + run for run in range(cfg.eval_runs)]
        models = cfg.eval_models.split(",")
        results: dict[str, list[float]] = {}
        for done, model in enumerate(models):
            if progress is not None:
                progress(done, len(models), model)
            results[model] = train_and_test_seeds(model, spec.channels, spec.num_classes, spec.size,
                                                  (self.images.detach(), self.labels), self.data.val, cfg.lr_net,
                                                  self.protocol(model), seeds, batched=self.device.type == "cuda")
        if progress is not None:
            progress(len(models), len(models), "")
        return results
