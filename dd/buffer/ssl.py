"""Self-supervised teachers: a Barlow Twins encoder trained on a dataset's training images (no labels).

Barlow Twins (Zbontar et al., ICML 2021, eq. 1): two augmented views of a batch go through the encoder
and a projector; with z^A, z^B standardised over the batch and C = z^A^T z^B / B their cross-correlation,

    L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2.

The encoder is a registry model without its head (``model.embed``); its features are the
representation KRR-ST distils (Lee et al., ICLR 2024). Views: kornia random resized crop, horizontal
flip, colour jitter (p 0.8) and grayscale (p 0.2); one-channel images get brightness and contrast
jitter only. A teacher folder ``buffers/<dataset>/<model>/barlow_twins-<recipe-tag>/`` holds
``encoder.safetensors`` (the backbone's state) and ``manifest.json`` (dataset, preprocessing, model,
recipe, output dimension, per-epoch loss, checksum), written last; ``checkpoint.safetensors`` lets a
killed run resume at the next epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dd.data import Preprocessor, load_dataset
from dd.device import make_generator, setup_device
from dd.errors import DDError
from dd.identity import check_data, data_fingerprint, data_flags
from dd.io import (
    atomic_write_json,
    load_tensors,
    load_tensors_and_metadata,
    pack_state,
    read_json,
    save_tensors,
    sha256_file,
    unpack_state,
)
from dd.models import backbone_state, create_model, embed_dim, load_backbone
from dd.schema import TEACHER_MANIFEST, check_schema
from dd.training import iterate_batches

FORMAT_VERSION = 2
REPR_MEAN, REPR_STD = "representation.mean", "representation.std"  # over the source training images
TEACHERS = ("none", "barlow_twins")
TARGETS = ("standardized", "raw")  # how KRR-ST's targets are read off the teacher (Teacher.represent)
MANIFEST, ENCODER, CHECKPOINT = "manifest.json", "encoder.safetensors", "checkpoint.safetensors"


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lam: float, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss (eq. 1) of projections z1, z2 [B, P]; each feature is standardised over the batch
    (population variance + ``eps``, as BatchNorm without affine)."""
    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]
    on_diagonal = (1 - torch.diagonal(c)).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lam * off_diagonal


def make_projector(in_dim: int, dim: int) -> nn.Sequential:
    """The Barlow Twins projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear, all ``dim`` wide."""
    return nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(),
                         nn.Linear(dim, dim, bias=False))


def make_views(channels: int, size: tuple[int, int]) -> nn.Module:
    """The random view of a batch of [0, 1] pixels (kornia; see the module docstring)."""
    import kornia.augmentation as K

    ops: list[nn.Module] = [K.RandomResizedCrop(size, scale=(0.2, 1.0)), K.RandomHorizontalFlip()]
    if channels == 3:
        ops += [K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
    else:  # saturation, hue and grayscale mean nothing on one channel
        ops += [K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8)]
    return K.AugmentationSequential(*ops)


def two_views(views: nn.Module, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of ``x``; kornia draws from the global RNG, so it runs in a forked RNG seeded
    from ``generator`` (reproducible, and the caller's global RNG is left untouched)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return views(x), views(x)


def teacher_recipe(config) -> dict:
    """The settings that define a teacher (hashed into its folder name)."""
    return {"teacher": config.teacher, "optimizer": "sgd", "lr": config.lr, "momentum": config.momentum,
            "weight_decay": config.weight_decay, "epochs": config.epochs, "batch_size": config.batch_size,
            "lambda": config.bt_lambda, "proj_dim": config.proj_dim, "preprocess": "standard",
            "views": "resized_crop(0.2-1)_flip_jitter_gray"}


def train_teacher(config) -> Path:
    """``python -m dd.buffer --teacher barlow_twins``: train (or resume, or find finished) the teacher of a checked
    ``BufferConfig`` (``dd.buffer.train_store``); returns its folder."""
    from dd.buffer.config import store_root

    recipe = teacher_recipe(config)
    default = store_root(config.buffer_dir, config.dataset, config.model, recipe)
    root = default.with_name(f"{config.teacher}-{default.name}")
    raw = load_dataset(config.dataset, config.data_path, config.download, config.image_size, config.channels)
    spec = raw.spec
    data = data_fingerprint(spec.name, spec.channels, spec.size, spec.num_classes, raw.train_images,
                            raw.train_labels, raw.test_images, raw.test_labels)
    if (root / MANIFEST).is_file():
        check_data(load_teacher(root).manifest.get("data"), data, f"the teacher at {root}", "was trained on",
                   data_flags(config.dataset, config.data_path, config.image_size, config.channels), allow=False,
                   fix="pass that data, or another --buffer-dir for a teacher of this data")
        print(f"teacher: {root} is already trained")
        return root
    device = setup_device(config.device, config.tf32)
    pixels = raw.train_images.to(device)
    preprocess = Preprocessor.fit("standard", spec, raw.train_images)
    model = create_model(config.model, spec.channels, spec.num_classes, spec.size, seed=config.seed).to(device)
    with torch.random.fork_rng(devices=[]):  # the projector's init from the seed, not the global RNG
        torch.manual_seed(config.seed)
        projector = make_projector(embed_dim(model), config.proj_dim).to(device)
    params = [p for n, p in model.named_parameters() if n in backbone_state(model)] + list(projector.parameters())
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    generator = make_generator(config.seed)
    views = make_views(spec.channels, spec.size)
    start, losses = 0, []
    if (root / CHECKPOINT).is_file():
        tensors, meta = load_tensors_and_metadata(root / CHECKPOINT, "teacher checkpoint")
        state = json.loads(meta["state"])
        model.load_state_dict(unpack_state(state["model"], tensors, device))
        projector.load_state_dict(unpack_state(state["projector"], tensors, device))
        optimizer.load_state_dict(unpack_state(state["optimizer"], tensors, device))
        generator.set_state(tensors["generator"])
        start, losses = state["epoch"], state["losses"]
        print(f"teacher: resumed {root} after epoch {start}")
    model.train()
    projector.train()
    bar = tqdm(range(start, config.epochs), desc="barlow twins", unit="epoch", initial=start, total=config.epochs)
    for epoch in bar:
        total, count = torch.zeros((), device=device), 0
        for idx in iterate_batches(pixels.shape[0], config.batch_size, generator):
            if len(idx) < 2:  # batch statistics need two samples
                continue
            a, b = two_views(views, pixels[idx.to(device, non_blocking=True)], generator)
            loss = barlow_twins_loss(projector(model.embed(preprocess(a))), projector(model.embed(preprocess(b))),
                                     config.bt_lambda)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.detach(), count + 1
        losses.append((total / max(count, 1)).item())
        if not torch.isfinite(torch.tensor(losses[-1])):
            raise DDError(f"teacher training diverged at epoch {epoch} (loss {losses[-1]}); lower --lr")
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        tensors = {"generator": generator.get_state()}
        state = {"epoch": epoch + 1, "losses": losses}
        for name, obj in (("model", model), ("projector", projector), ("optimizer", optimizer)):
            found, state[name] = pack_state(obj.state_dict(), name)
            tensors.update(found)
        save_tensors(root / CHECKPOINT, tensors, {"state": json.dumps(state)})
    model.eval()
    with torch.no_grad():
        reps = torch.cat([model.embed(preprocess(pixels[i : i + 1024])) for i in range(0, pixels.shape[0], 1024)])
    # Barlow Twins standardises each dimension over the batch, so an embedding's per-dimension offset and
    # scale carry no information; the stored statistics let ``Teacher.represent`` return z-scores. The std
    # is floored at 1% of the largest one: a dimension (nearly) constant on the training images, e.g. a dead
    # ReLU, must not turn a small response to an augmented image into a huge target.
    std = reps.std(0)
    stats = {REPR_MEAN: reps.mean(0), REPR_STD: std.clamp_min(0.01 * float(std.max()))}
    save_tensors(root / ENCODER, {**backbone_state(model), **stats})
    atomic_write_json(root / MANIFEST, {
        "format_version": FORMAT_VERSION, "kind": "ssl_teacher", "teacher": config.teacher,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": spec.name, "channels": spec.channels, "size": list(spec.size),
                    "preprocess": preprocess.describe()},
        "model": {"name": config.model}, "output_dim": embed_dim(model), "recipe": recipe, "seed": config.seed,
        "data": data,
        "loss": losses, "files": {"encoder": {"file": ENCODER, "sha256": sha256_file(root / ENCODER)}}})
    (root / CHECKPOINT).unlink(missing_ok=True)
    print(f"teacher: {root} (output dim {embed_dim(model)}, final loss {losses[-1]:.4f})")
    return root


@dataclass
class Teacher:
    """A trained encoder (eval mode, no gradients) and its manifest."""

    root: Path
    encoder: nn.Module
    manifest: dict
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def output_dim(self) -> int:
        return int(self.manifest["output_dim"])

    @torch.no_grad()
    def represent(self, x: torch.Tensor, batch_size: int = 1024, targets: str = "standardized") -> torch.Tensor:
        """Representations [N, D] of model-space images ``x`` [N, C, H, W]: the encoder's output as it is
        (``targets="raw"``, as the KRR-ST code) or standardised per dimension with the statistics of the source
        training images (``"standardized"``); the targets KRR-ST distils and pre-training regresses."""
        if targets not in TARGETS:
            raise DDError(f"--targets must be one of {', '.join(TARGETS)}, got {targets!r}")
        reps = torch.cat([self.encoder.embed(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        if targets == "raw":
            return reps
        return (reps - self.mean.to(reps.device)) / self.std.to(reps.device)


def load_teacher(root: str | Path, device: torch.device | str = "cpu") -> Teacher:
    """Open a teacher folder written by ``train_teacher``, checking the encoder's checksum."""
    root = Path(root)
    manifest = read_json(root / MANIFEST, "teacher manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != "ssl_teacher" or (
            manifest.get("format_version") != FORMAT_VERSION):
        raise DDError(f"{root} is not a teacher of this dd's format; rerun python -m dd.buffer --teacher barlow_twins")
    check_schema(manifest, TEACHER_MANIFEST, root / MANIFEST, "teacher manifest",
                 f"delete {root} and rerun python -m dd.buffer --teacher barlow_twins")
    if sha256_file(root / ENCODER) != manifest["files"]["encoder"]["sha256"]:
        raise DDError(f"teacher encoder {root / ENCODER} is corrupted (checksum mismatch); delete {root} and retrain")
    ds = manifest["dataset"]
    model = create_model(manifest["model"]["name"], ds["channels"], 1, tuple(ds["size"]), seed=0)
    tensors = load_tensors(root / ENCODER, "teacher encoder")
    mean, std = tensors.pop(REPR_MEAN), tensors.pop(REPR_STD)
    load_backbone(model, tensors)
    model = model.to(device).eval().requires_grad_(False)
    return Teacher(root, model, manifest, mean.to(device), std.to(device))


def find_teacher(path: str | None, buffer_dir: str, dataset: str) -> Teacher:
    """``path`` if given, else the only trained teacher under ``<buffer_dir>/<dataset>/*/``, opened on the CPU."""
    if path:
        return load_teacher(path)
    found = sorted(p.parent for p in Path(buffer_dir, dataset).glob(f"*/*/{MANIFEST}")
                   if read_json(p, "manifest").get("kind") == "ssl_teacher")
    if len(found) != 1:
        what = "no teacher" if not found else f"{len(found)} teachers ({', '.join(str(p) for p in found)})"
        raise DDError(f"{what} under {Path(buffer_dir, dataset)}; run python -m dd.buffer --dataset {dataset} "
                      "--teacher barlow_twins first, or pass --teacher PATH")
    return load_teacher(found[0])
