"""The trajectory-matching engine shared by every method.

Per iteration: draw an expert and a start epoch t (method hook), draw the inner plan, unroll the
student from w*_t for ``syn_steps`` steps on the synthetic set (the unroll is swappable), compute the
matching loss against w*_{t+M} (method hook), backpropagate to the images and the learnable lr, and
step the outer optimisers (SGD with momentum 0.5, as MTT) when the method accepts the update.

Under ``torchrun --nproc-per-node K`` one run spans K processes: each takes its part of every inner
minibatch (``dd.distill.unroll.Student``), every rank holds the same state, the images', labels' and lr's
gradients are averaged over the ranks before the outer step (``dd.distributed.average_gradients``), and
rank 0 alone writes the run folder; the state does not depend on K, so a run resumes with another K.
The loop, checkpoints, evaluations and interrupts are ``dd.distill.runloop.RunLoop``'s, as for every method.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dd import distributed, schema
from dd.augment import DSA
from dd.buffer.store import TrajectoryStore
from dd.cli import Interrupted
from dd.config import to_dict
from dd.data import Preprocessor, shape_flags
from dd.device import make_generator
from dd.distill.config import MTTConfig, default_run_dir
from dd.distill.context import Context
from dd.distill.experts import ExpertPool, find_store
from dd.distill.memory import resolve_unroll
from dd.distill.registry import get_method
from dd.distill.runloop import Progress, RunLoop
from dd.distill.synset import SynSet, save_synset
from dd.distill.unroll import make_plan, make_unroll
from dd.errors import DDError
from dd.functional import has_batchnorm
from dd.identity import check_data, data_flags, describe
from dd.metrics import MetricsLog
from dd.models import create_model
from dd.multiseed import train_and_test_seeds
from dd.protocols import get_protocol
from dd.realdata import prepare_data
from dd.schema import check_schema
from dd.viz import class_names, grid_history, save_grid, save_history_gif

if TYPE_CHECKING:
    from dd.distill.methods.base import Method


def check_store(store: TrajectoryStore, config: MTTConfig) -> None:
    """The experts must be of the dataset and model being distilled, and long enough for the window."""
    header = store.header
    check_schema(header, schema.DISTILLABLE, store.root / "manifest.json", "buffer manifest",
                 "restore it, or delete the folder and rerun dd.buffer")
    if header["dataset"]["name"] != config.dataset or header["model"]["name"] != config.model:
        raise DDError(f"the buffer at {store.root} holds {header['model']['name']} experts on "
                      f"{header['dataset']['name']}, not {config.model} on {config.dataset}; pass the matching "
                      f"--buffer or --dataset/--model")
    store.check_window(config.max_start_epoch, config.expert_epochs)


def store_choice(config: MTTConfig) -> str:
    """How the expert store was chosen, in the flags' words."""
    if config.buffer:
        return f"--buffer {config.buffer}"
    if config.buffer_config:
        return f"the store of --buffer-config {config.buffer_config}"
    return f"the only store under {Path(config.buffer_dir) / config.dataset / config.model}"


def check_image_shape(store: TrajectoryStore, spec, image_size: int | None) -> None:
    """The images must have the shape the experts were trained on; the error names the ``--image-size`` and
    ``--channels`` to pass."""
    stored = store.header["dataset"]
    want, got = (stored["channels"], *stored["size"]), (spec.channels, *spec.size)
    if want == got:
        return
    given = f"--image-size {image_size}" if image_size else f"the default --image-size ({spec.size[0]})"
    raise DDError(f"{given} gives {got[0]}x{got[1]}x{got[2]} images, but the experts in {store.root} were trained "
                  f"on {want[0]}x{want[1]}x{want[2]}; pass {' '.join(shape_flags(want, got))} (the experts' data) or "
                  "use the dataset and folder they were trained on")


def check_classes(store: TrajectoryStore, data) -> None:
    """The data must have the experts' class count (their last layer's width), checked before any work."""
    stored = store.header["dataset"]["num_classes"]
    if stored != data.spec.num_classes:
        raise DDError(f"the data ({data.spec.name}) has {data.spec.num_classes} classes, but the experts in "
                      f"{store.root} were trained on {stored}; pass the data they were trained on (--data-path), or a "
                      "store of this data")


def check_split(config: MTTConfig, model: torch.nn.Module, num_images: int) -> None:
    """A minibatch split into chunks or across processes must give the whole minibatch's gradient: no
    BatchNorm (its statistics span the minibatch), and every process gets at least one image of the
    smallest minibatch (the last of each pass over the set)."""
    ranks = distributed.world_size()
    if config.unroll_chunk is None and ranks == 1:
        return
    if has_batchnorm(model):
        what = "--unroll-chunk" if ranks == 1 else f"a run across {ranks} processes"
        raise DDError(f"{what} splits each inner minibatch, which changes the BatchNorm statistics of {config.model}; "
                      "use a model without BatchNorm (e.g. ConvNet) or one process without --unroll-chunk")
    batch = min(config.batch_syn or num_images, num_images)
    smallest = num_images % batch or batch
    if smallest < ranks:
        raise DDError(f"the smallest inner minibatch has {smallest} synthetic images, fewer than the {ranks} "
                      f"processes that share it; use a --batch-syn of at least {ranks} that leaves no smaller "
                      f"remainder of the {num_images} images (or fewer processes)")


def check_eval_models(config: MTTConfig, spec) -> None:
    """Each ``--eval-models`` network must take the dataset's images: one forward pass of a zero batch, on the CPU."""
    for name in config.eval_models.split(","):
        try:
            model = create_model(name, spec.channels, spec.num_classes, spec.size, seed=0).eval()
            with torch.no_grad():
                model(torch.zeros(2, spec.channels, *spec.size))
        except DDError as e:
            raise DDError(f"--eval-models {name}: {e}") from None
        except Exception as e:  # a model too deep for the size fails in its own way
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DDError(f"--eval-models {name} cannot take the {spec.channels}x{spec.size[0]}x{spec.size[1]} images "
                          f"of {spec.name} ({first}); choose another eval model") from None


class Distiller(RunLoop):
    """One trajectory-matching run: its state, outer step, evaluations and outputs over the shared run loop."""

    def __init__(self, config: MTTConfig, argv: Sequence[str] | None = None) -> None:
        """``argv``: the command-line arguments of the run, for the resume command that an interrupt prints."""
        config = dataclasses.replace(config, eval_models=config.eval_models or config.model)
        config, self.device = self.setup(config)
        store = find_store(config.buffer, config.buffer_dir, config.dataset, config.model, config.buffer_config)
        check_store(store, config)
        if distributed.is_main():
            print(f"experts: {store.root} ({len(store.completed())} experts of {store.num_epochs} epochs; "
                  f"{store_choice(config)})")
        stored = store.load_preprocess()
        preprocess = (Preprocessor.from_state(*stored) if stored is not None
                      else store.header["recipe"].get("preprocess", "standard"))
        data = prepare_data(config.dataset, self.device, config.data_path, config.download, preprocess,
                            config.image_size, config.val_fraction, config.val_seed, config.channels)
        spec = data.spec
        check_image_shape(store, spec, config.image_size)
        check_classes(store, data)
        self.data_check = check_data(store.header.get("data"), data.fingerprint(), f"the experts in {store.root}",
                                     "were trained on", data_flags(config.dataset, config.data_path,
                                                                   config.image_size, config.channels),
                                     config.allow_other_data)
        check_eval_models(config, spec)
        model = create_model(config.model, spec.channels, spec.num_classes, spec.size, seed=config.seed)
        model = model.to(self.device).train()
        hooks = get_method(config.method).hooks
        config = resolve_unroll(config, model, spec, self.device, hooks.unroll)
        super().__init__(config, default_run_dir(config), argv)
        self.label = f"{config.method} ipc{config.ipc}"
        self.ctx = Context(config, data, store, model, self.device)
        self.method: Method = hooks(self.ctx)
        self.experts = ExpertPool(store, self.device, config.expert_cache_mb, config.expert_epochs + 1)
        self.experts_sha256 = store.fingerprint(self.experts.indices)  # which expert bits this set matched
        self.augment = DSA(config.dsa_strategy)
        self.unroll = make_unroll(config.unroll, config.unroll_snapshot_every, config.unroll_chunk)
        self.generator = make_generator(config.seed)
        self._init_state()
        check_split(config, model, self.images.shape[0])

    # -- state ---------------------------------------------------------------------------------
    def _init_state(self) -> None:
        images = self.method.init_images(self.generator)
        self.images = images.detach().clone().requires_grad_(True)
        labels = self.method.init_labels(self.images.detach()).detach().clone()
        self.labels = labels.requires_grad_(True) if self.method.learn_labels() else labels
        self.syn_lr = torch.tensor(self.config.lr_teacher, device=self.device, requires_grad=True)
        self.optimizers = {"img": torch.optim.SGD([self.images], lr=self.config.lr_img, momentum=0.5),
                           "lr": torch.optim.SGD([self.syn_lr], lr=self.config.lr_lr, momentum=0.5)}
        if self.labels.requires_grad:
            self.optimizers["y"] = torch.optim.SGD([self.labels], lr=self.config.lr_y, momentum=0.9)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"images": self.images.detach(), "labels": self.labels.detach(),
                   "syn_lr": self.syn_lr.detach().reshape(1), "generator": self.generator.get_state()}
        tensors.update({f"method.{k}": v for k, v in self.method.state_tensors().items()})
        return tensors, {}

    def run_state(self) -> dict:
        """The loop's state plus the fingerprint of the run's data, which a resume must match."""
        return {**super().run_state(), "data": self.ctx.data.fingerprint()}

    def load(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        stored = state.get("data")  # absent in checkpoints older than data fingerprints
        if isinstance(stored, dict) and stored.get("sha256") != self.ctx.data.fingerprint()["sha256"]:
            raise DDError(f"the checkpoint in {self.run_dir} was made on {describe(stored)}, but this resume's data is "
                          f"{describe(self.ctx.data.fingerprint())}; resume with the run's own data (its "
                          "--data-path), or pass a new --run-dir")
        with torch.no_grad():
            self.images.copy_(tensors["images"].to(self.device))
            self.labels.copy_(tensors["labels"].to(self.device))
            self.syn_lr.copy_(tensors["syn_lr"][0].to(self.device))
        self.generator.set_state(tensors["generator"])
        self.method.load_state_tensors({k.split(".", 1)[1]: v.to(self.device) for k, v in tensors.items()
                                        if k.startswith("method.")})

    def synset(self, images: torch.Tensor | None = None, name: str = "") -> SynSet:
        """The current synthetic set (or ``images`` with the current labels and lr) as an artefact."""
        cfg = self.config
        tensors, meta = self.ctx.data.preprocessor.state()
        images = self.images if images is None else images
        return SynSet(
            images=images.detach().cpu(), labels=self.labels.detach().cpu(), lr=self.syn_lr.item(),
            meta={"dataset": cfg.dataset, "ipc": cfg.ipc, "method": cfg.method + (f"-{name}" if name else ""),
                  "model": cfg.model, "iteration": self.iteration, "buffer": str(self.ctx.store.root),
                  "experts_sha256": self.experts_sha256, "data": self.ctx.data.fingerprint(),
                  "store_data": self.ctx.store.header.get("data"), "data_check": self.data_check,
                  "config": to_dict(cfg), "preprocess_meta": meta, "protocol": self.method.protocol,
                  "splits": self.ctx.data.splits(), "selected_on": "val"},
            preprocess={k: v.cpu() for k, v in tensors.items()},
        )

    def sets(self) -> dict[str, torch.Tensor]:
        """The optimised images under "" and the method's extra sets (e.g. FTD's "ema") by name."""
        return {"": self.images.detach(), **self.method.extra_sets()}

    # -- one iteration -------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """One outer iteration; returns the matching loss (a 0-d tensor, not synced to the host)."""
        cfg = self.config
        drawn = self.generator.get_state()
        try:
            return self._step(cfg)
        except Interrupted:  # abandoned inside the unroll (dd.distill.unroll): nothing but the draws had changed
            self.generator.set_state(drawn)
            raise

    def _step(self, cfg: MTTConfig) -> torch.Tensor:
        _, trajectory = self.experts.sample(self.generator)
        start = self.method.start_epoch(self.iteration, self.generator)
        w_start = self.method.start_params(trajectory, start, self.generator)
        plan = make_plan(self.images.shape[0], cfg.batch_syn or self.images.shape[0], cfg.syn_steps, self.generator,
                         self.device)
        student = self.method.make_student(self.ctx.model, self.augment, start)
        captured = self.unroll(student, w_start, self.images, self.labels, self.syn_lr, plan,
                               self.method.capture_steps())
        loss = self.method.match_loss(captured, w_start, trajectory, start)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients([self.images, self.labels, self.syn_lr])
        if self.method.accept_update(loss.detach()):
            lr_before = self.syn_lr.detach().clone()
            for opt in self.optimizers.values():
                opt.step()
            limit = self.config.lr_step_limit
            if limit > 0:  # the lr guard: a no-op while each step moves the lr by less than the limit
                with torch.no_grad():
                    self.syn_lr.clamp_(lr_before * (1 - limit), lr_before * (1 + limit))
            self.method.after_update(self.images.detach())
        return loss.detach()

    # -- evaluation and outputs ----------------------------------------------------------------
    def evaluate(self, progress: Progress | None = None) -> dict[str, list[float]]:
        """Train fresh networks on each current set (the method's protocol) and return validation accuracies
        under ``<model>`` for the optimised set and ``<set>/<model>`` for the method's extra sets. The test
        split is never read here: it belongs to the final report (``dd.eval``). ``progress(done, total, key)``
        is called before each network (seeds trained together on CUDA count as one step) and at the end."""
        cfg, data = self.config, self.ctx.data
        spec = data.spec
        batch = {} if cfg.eval_batch_size is None else {"batch_size": cfg.eval_batch_size}
        protocol = get_protocol(self.method.protocol, epochs=cfg.eval_epochs, dsa_strategy=cfg.dsa_strategy, **batch)
        labels, lr = self.labels.detach(), self.syn_lr.item()
        batched = self.device.type == "cuda"
        seeds = distributed.shard([cfg.seed + run for run in range(cfg.eval_runs)])  # ranks share the seeds
        groups = [seeds] if batched and seeds else [[seed] for seed in seeds]
        jobs = [(set_name, images, model) for set_name, images in self.sets().items()
                for model in cfg.eval_models.split(",")]
        total, done = len(jobs) * len(seeds), 0
        results: dict[str, list[float]] = {}
        for set_name, images, model in jobs:
            key = f"{set_name}/{model}" if set_name else model
            mine: list[float] = []
            for group in groups:
                if progress is not None:
                    progress(done, total, key)
                mine.extend(train_and_test_seeds(model, spec.channels, spec.num_classes, spec.size, (images, labels),
                                                 data.val, lr, protocol, group, batched=batched))
                done += len(group)
            results[key] = distributed.gather_shards(mine)
        if progress is not None:
            progress(done, total, "")
        return results

    def save_set(self, suffix: str = "") -> None:
        """The optimised set and the method's extra sets as ``synset[_<set>]<suffix>``; the grid with suffix ""."""
        for set_name, images in self.sets().items():
            save_synset(self.run_dir / ("synset" + (f"_{set_name}" if set_name else "") + suffix),
                        self.synset(images, set_name))
        if not suffix:
            self.save_grid(self.run_dir / "grid.png")

    def save_grid(self, path: Path) -> None:
        """The current images (ZCA inverted) as a grid at ``path``: a row per class (one row for ipc 1), the class
        names under the rows, the method and iteration in the title."""
        cfg = self.config
        pixels = self.ctx.data.preprocessor.invert(self.images.detach().cpu())
        labels = self.labels.detach().cpu()
        classes = (labels.argmax(1) if labels.ndim == 2 else labels).tolist()
        names = class_names(cfg.dataset, cfg.data_path, self.ctx.data.spec.num_classes)
        save_grid(path, pixels, nrow=cfg.ipc if cfg.ipc > 1 else pixels.shape[0], labels=[names[c] for c in classes],
                  title=f"{cfg.method} {cfg.dataset} ipc{cfg.ipc} · iteration {self.iteration}")

    def after_evaluate(self, log: MetricsLog) -> None:
        """Keep the grid of this evaluation as ``grids/grid_<iteration>.png``, redraw ``progress.gif`` from every
        kept grid, and log the grid to wandb (when on); rank 0 only."""
        if not distributed.is_main():
            return
        path = self.run_dir / "grids" / f"grid_{self.iteration:06d}.png"
        path.parent.mkdir(exist_ok=True)
        self.save_grid(path)
        save_history_gif(self.run_dir / "progress.gif", [p for _, p in grid_history(path.parent)])
        log.image("grid", path, self.iteration)

    def recorded_config(self) -> dict:
        """config.json names the store the run matches, also when it was found rather than given."""
        return {**to_dict(self.config), "buffer": str(self.ctx.store.root)}

    def learned(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "learned lr": self.syn_lr}

    def log_fields(self) -> dict[str, float]:
        return {"syn_lr": self.syn_lr.item(), **self.method.metrics()}

    def bar_fields(self) -> dict[str, str]:
        return {"lr": f"{self.syn_lr.item():.4g}"}

    def finished(self) -> str:
        """What the run wrote and the commands that evaluate the set and report on the run."""
        run_dir = self.run_dir
        evaluate = shlex.join(["python", "-m", "dd.eval", "--synset", str(run_dir / "synset"), "--baseline", "random"])
        report = shlex.join(["python", "-m", "dd.report", str(run_dir)])
        lr = self.syn_lr.item()
        return (f"synthetic set: {run_dir / 'synset'} (iteration {self.iteration}, learned lr {lr:.4g}); "
                f"best on validation: {run_dir / 'synset_best'}; images: {run_dir / 'grids'}, "
                f"{run_dir / 'progress.gif'}\n"
                f"next: evaluate it: {evaluate}\n"
                f"      report on the run: {report}")

    def divergence_cause(self, bad: list[str]) -> str:
        cfg = self.config
        cause = (f"--lr-lr {cfg.lr_lr:g} is likely too high" if bad == ["learned lr"]
                 else f"--lr-img {cfg.lr_img:g} is likely too high")
        if "learned lr" in bad and cfg.lr_step_limit == 0:
            cause += f" (or --lr-lr {cfg.lr_lr:g}: --lr-step-limit 0 turned off the guard that bounds each lr step)"
        return cause

    def run(self) -> SynSet:  # type: ignore[override]
        """Run (or resume) the loop to ``iterations`` (``RunLoop.run``); returns the final set."""
        super().run()
        return self.synset()
