"""The synthetic-set artefact: images, labels, the learned lr and metadata, as safetensors + JSON.

A set is a folder holding ``synset.safetensors`` (tensors ``images`` [N,C,H,W] in the model's input
space, ``labels`` [N] int64 or [N,K] float32 logits, or [N,D] target representations for a transfer
set (``meta["kind"] == "transfer"``, KRR-ST), ``lr`` [1], and the preprocessing state under
``preprocess.*`` so images can be inverted for display) and ``synset.json`` (metadata, with the SHA-256
of the tensor file, so a truncated or bit-flipped set is refused on load). Nothing in it
executes code on load, and it is usable without the rest of dd through ``SynSet.dataset()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from dd.errors import DDError
from dd.io import atomic_write_json, load_tensors, read_json, save_tensors, sha256_file

FORMAT_VERSION = 1
TENSORS_FILE = "synset.safetensors"
META_FILE = "synset.json"


@dataclass
class SynSet:
    """A distilled set. ``labels`` are hard class ids [N], soft logits [N, K], or target representations
    [N, D] of a transfer set (``transfer``), which pre-trains a network by regression, not classification."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    meta: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def transfer(self) -> bool:
        """Whether this is a transfer set (``meta["kind"] == "transfer"``): labels are target representations."""
        return self.meta.get("kind") == "transfer"

    @property
    def soft(self) -> bool:
        """Whether the labels are soft logits rather than class ids."""
        return self.labels.dim() == 2

    def hard_labels(self) -> torch.Tensor:
        """Class ids [N]: the labels themselves, or the argmax of soft logits."""
        return self.labels.argmax(dim=1) if self.soft else self.labels

    def dataset(self) -> TensorDataset:
        """A torch ``Dataset`` of (image, label) pairs, for use outside dd."""
        return TensorDataset(self.images, self.labels)


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name in (TENSORS_FILE, META_FILE) else path


def save_synset(path: str | Path, synset: SynSet) -> Path:
    """Write ``synset`` into folder ``path`` atomically (tensors first, then metadata)."""
    folder = _resolve(path)
    tensors = {"images": synset.images, "labels": synset.labels, "lr": torch.tensor([float(synset.lr)])}
    tensors.update({f"preprocess.{k}": v for k, v in synset.preprocess.items()})
    save_tensors(folder / TENSORS_FILE, tensors)
    meta = dict(synset.meta)
    meta.update(format_version=FORMAT_VERSION, lr=float(synset.lr), num_images=int(synset.images.shape[0]),
                labels="targets" if synset.transfer else "soft" if synset.soft else "hard",
                sha256=sha256_file(folder / TENSORS_FILE))
    atomic_write_json(folder / META_FILE, meta)
    return folder


def load_synset(path: str | Path, device: torch.device | str = "cpu") -> SynSet:
    """Load a synthetic set from its folder (or either of its two files)."""
    folder = _resolve(path)
    if not folder.exists():
        raise DDError(f"synthetic set {folder} does not exist; pass the folder written by dd.distill")
    meta = read_json(folder / META_FILE, what="synthetic-set metadata")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DDError(f"synthetic set {folder} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    if "sha256" in meta and (folder / TENSORS_FILE).is_file() and sha256_file(folder / TENSORS_FILE) != meta["sha256"]:
        raise DDError(f"synthetic set {folder / TENSORS_FILE} is corrupted or truncated (checksum mismatch); "
                      "restore it or regenerate it with dd.distill")
    tensors = load_tensors(folder / TENSORS_FILE, what="synthetic set")
    missing = {"images", "labels", "lr"} - tensors.keys()
    if missing:
        raise DDError(f"synthetic set {folder} lacks {', '.join(sorted(missing))}; regenerate it with dd.distill")
    images, labels = tensors["images"], tensors["labels"]
    if images.dim() != 4 or labels.shape[0] != images.shape[0]:
        raise DDError(f"synthetic set {folder} has images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                      "they must be [N,C,H,W] and [N] or [N,K]")
    preprocess = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("preprocess.")}
    return SynSet(images.to(device), labels.to(device), float(tensors["lr"][0]), meta, preprocess)
