"""The synthetic-set artefact: images, labels, the learned lr and metadata, as safetensors + JSON.

A set is a folder holding ``synset.safetensors`` (tensors ``images`` [N,C,H,W] in the model's input
space, ``labels`` [N] int64 or [N,K] float32 logits, or [N,D] target representations for a transfer
set (``meta["kind"] == "transfer"``, KRR-ST), ``lr`` [1], and the preprocessing state under
``preprocess.*`` so images can be inverted for display) and ``synset.json`` (metadata, with the SHA-256
of the tensor file, so a truncated or bit-flipped set is refused on load). The metadata that changes a
result (``BOUND_KEYS``: dataset, ipc, method, iteration, ...) is also written into the tensor file's own
header, inside the checksum, and ``synset.json`` must agree with it: an edited ``ipc`` is refused. A set
without a checksum is refused unless the caller passes ``verify=False`` (hand-made sets), and the loaded
set says whether it was verified. Nothing in it executes code on load, and it is usable without the
rest of dd through ``SynSet.dataset()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from dd.data import Preprocessor
from dd.errors import DDError
from dd.io import atomic_write_json, load_tensors_and_metadata, read_json, save_tensors, sha256_file
from dd.schema import SYNSET_META, check_schema

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1 lacks the bound header; its metadata is checked against the tensors only
TENSORS_FILE = "synset.safetensors"
META_FILE = "synset.json"
BOUND_KEYS = ("dataset", "ipc", "num_images", "method", "iteration", "kind", "model", "protocol", "labels")
"""Metadata keys that change how a set is evaluated: stored in the checksummed tensor header too."""


@dataclass
class SynSet:
    """A distilled set. ``labels`` are hard class ids [N], soft logits [N, K], or target representations
    [N, D] of a transfer set (``transfer``), which pre-trains a network by regression, not classification."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    meta: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, torch.Tensor] = field(default_factory=dict)
    checksum: str | None = None
    """SHA-256 of the tensor file the set was loaded from (None for a set built in memory)."""
    verified: bool = False
    """Whether ``checksum`` was checked against the one recorded at save time."""

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

    def preprocess_fingerprint(self) -> str:
        """The preprocessing (kind, settings and the fitted statistics' hash) as a string; equal for sets
        in one input space, empty for a set that carries none."""
        if not self.preprocess:
            return ""
        state = {k: v.cpu() for k, v in self.preprocess.items()}
        return json.dumps(Preprocessor.from_state(state, self.meta.get("preprocess_meta", {})).describe(),
                          sort_keys=True, default=str)

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
    meta = dict(synset.meta)
    meta.update(format_version=FORMAT_VERSION, lr=float(synset.lr), num_images=int(synset.images.shape[0]),
                labels="targets" if synset.transfer else "soft" if synset.soft else "hard")
    bound = {k: meta[k] for k in BOUND_KEYS if k in meta}
    save_tensors(folder / TENSORS_FILE, tensors, metadata={"bound": json.dumps(bound)})
    meta["sha256"] = sha256_file(folder / TENSORS_FILE)
    atomic_write_json(folder / META_FILE, meta)
    return folder


def load_synset(path: str | Path, device: torch.device | str = "cpu", verify: bool = True) -> SynSet:
    """Load a synthetic set from its folder (or either of its two files), refusing a damaged, edited or
    unchecksummed one; ``verify=False`` accepts a set without a recorded checksum (the set says so)."""
    folder = _resolve(path)
    if not folder.exists():
        raise DDError(f"synthetic set {folder} does not exist; pass the folder written by dd.distill")
    meta = read_json(folder / META_FILE, what="synthetic-set metadata")
    if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_FORMATS:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise DDError(f"synthetic set {folder} has format {version}, expected one of {READABLE_FORMATS}; "
                      "regenerate it with dd.distill")
    check_schema(meta, SYNSET_META, folder / META_FILE, "synthetic-set metadata",
                 "restore it or regenerate the set with dd.distill")
    recorded = meta.get("sha256")
    if recorded is None and verify:
        raise DDError(f"synthetic set {folder} has no checksum (sha256 in {META_FILE}), so damage or edits cannot "
                      "be detected; regenerate it with dd.distill, or pass --no-verify for a hand-made set")
    if not (folder / TENSORS_FILE).is_file():
        raise DDError(f"synthetic set {folder} lacks {TENSORS_FILE}; restore it or regenerate it with dd.distill")
    checksum = sha256_file(folder / TENSORS_FILE)
    if recorded is not None and checksum != recorded:
        raise DDError(f"synthetic set {folder / TENSORS_FILE} is corrupted or truncated (checksum mismatch); "
                      "restore it or regenerate it with dd.distill")
    tensors, header = load_tensors_and_metadata(folder / TENSORS_FILE, what="synthetic set")
    missing = {"images", "labels", "lr"} - tensors.keys()
    if missing:
        raise DDError(f"synthetic set {folder} lacks {', '.join(sorted(missing))}; regenerate it with dd.distill")
    _check_bound(folder, meta, header)
    images, labels, lr = tensors["images"], tensors["labels"], float(tensors["lr"].reshape(-1)[0])
    _check_tensors(folder, images, labels, meta)
    preprocess = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("preprocess.")}
    return SynSet(images.to(device), labels.to(device), lr, meta, preprocess, checksum, recorded is not None)


def _check_bound(folder: Path, meta: dict[str, Any], header: dict[str, str]) -> None:
    """``synset.json`` must agree with the bound metadata inside the checksummed tensor file."""
    try:
        bound = json.loads(header.get("bound", "{}"))
    except json.JSONDecodeError:
        bound = None
    if not isinstance(bound, dict):
        raise DDError(f"synthetic set {folder / TENSORS_FILE} has a damaged header; regenerate it with dd.distill")
    for key, value in bound.items():
        if meta.get(key) != value:
            raise DDError(f"synthetic set {folder}: {META_FILE} says {key} {meta.get(key)!r} but the checksummed "
                          f"tensor file says {value!r}; restore {META_FILE} (or regenerate the set)")


def _check_tensors(folder: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, Any]) -> None:
    """Shapes, dtypes and values every consumer relies on; the metadata's counts must match the tensors."""
    where = f"synthetic set {folder}"
    if images.dim() != 4 or labels.shape[:1] != images.shape[:1] or labels.dim() not in (1, 2):
        raise DDError(f"{where} has images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                      "they must be [N,C,H,W] and [N] or [N,K]")
    if images.dtype != torch.float32:
        raise DDError(f"{where} has {str(images.dtype).removeprefix('torch.')} images; dd sets hold float32 "
                      "images in the model's input space (convert them with .float() and save again)")
    if not bool(torch.isfinite(images).all()):
        raise DDError(f"{where} has NaN or infinite pixels; regenerate it (a diverged run?)")
    if labels.dim() == 1 and labels.dtype != torch.int64:
        raise DDError(f"{where} has {str(labels.dtype).removeprefix('torch.')} hard labels; they must be int64 "
                      "class ids (soft labels are [N,K] float32)")
    if labels.dim() == 2 and (labels.dtype != torch.float32 or not bool(torch.isfinite(labels).all())):
        raise DDError(f"{where} has soft labels that are not finite float32 [N,K] logits; regenerate it")
    if meta.get("num_images") not in (None, images.shape[0]):
        raise DDError(f"{where}: {META_FILE} says {meta['num_images']} images but the tensor file holds "
                      f"{images.shape[0]}; restore {META_FILE} (or regenerate the set)")
