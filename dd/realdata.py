"""Real data in the model's input space, on the device: the step every stage starts with.

Splits: train, validation and test. The validation split is carved from the dataset's training split
(stratified: the same fraction of every class, drawn from a seed) and is what every choice reads (in-run
evaluation, ``synset_best``, tuning); test is read only by the final report. The preprocessing is fitted
on the whole training split, as the experts' was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from dd.data import DatasetSpec, Preprocessor, class_indices, load_dataset
from dd.data.folder import folder_class_names
from dd.device import make_generator
from dd.errors import DDError
from dd.identity import data_fingerprint
from dd.io import sha256_tensors

SPLITS = ("val", "test")


@dataclass
class PreparedData:
    """A dataset after preprocessing (standard normalisation or ZCA), on one device: the training split
    without the validation images, the validation images, and the test split."""

    spec: DatasetSpec
    preprocessor: Preprocessor
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    val_fraction: float = 0.0
    val_seed: int = 0
    class_names: list[str] | None = None  # the class folders' names of a folder dataset, by class id
    source: dict[str, Any] | None = None  # the data as loaded, before splitting and preprocessing (dd.identity)
    _identity: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_images, self.train_labels

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_images, self.test_labels

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation split; DDError when none was carved (``val_fraction`` 0)."""
        if self.val_images is None or self.val_labels is None:
            raise DDError("no validation split was carved from the training data; pass --val-fraction > 0")
        return self.val_images, self.val_labels

    @property
    def train_and_val(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's whole training split (the full-data baseline trains on it)."""
        if self.val_images is None or self.val_labels is None:
            return self.train
        return torch.cat([self.train_images, self.val_images]), torch.cat([self.train_labels, self.val_labels])

    def class_label(self, c: int) -> str:
        """Class ``c`` as the user knows it: ``class folder 'cat'`` for a folder dataset, else ``class 3``."""
        return class_label(c, self.class_names)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``val`` or ``test`` split by name."""
        if name not in SPLITS:
            raise DDError(f"unknown split '{name}'; choose from {', '.join(SPLITS)}")
        return self.val if name == "val" else self.test

    def splits(self) -> dict[str, Any]:
        """The split sizes and the validation carving, as every artefact records them."""
        return {"train": int(self.train_labels.shape[0]),
                "val": 0 if self.val_labels is None else int(self.val_labels.shape[0]),
                "test": int(self.test_labels.shape[0]), "val_fraction": self.val_fraction, "val_seed": self.val_seed}

    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the data as loaded (``dd.identity``): what artefacts record and consumers check;
        the same whatever the validation split and preprocessing."""
        if self.source is None:
            self.source = data_fingerprint(self.spec.name, self.spec.channels, self.spec.size, self.spec.num_classes,
                                           *self.train_and_val, *self.test)
        return self.source

    def identity(self) -> dict[str, Any]:
        """What a result record says of the real data: name, shape, split sizes, preprocessing and the
        SHA-256 of the preprocessed splits (computed once), so records of other data never merge."""
        if self._identity is None:
            self._identity = {
                "name": self.spec.name, "shape": [self.spec.channels, *self.spec.size],
                "num_classes": self.spec.num_classes, **self.splits(), "preprocess": self.preprocessor.describe(),
                "sha256": sha256_tensors(self.train_images, self.train_labels, self.test_images, self.test_labels,
                                         *(t for t in (self.val_images, self.val_labels) if t is not None))}
        return self._identity


def prepare_data(
    dataset: str,
    device: torch.device,
    data_path: str | None = None,
    download: bool = False,
    preprocess: str | Preprocessor = "standard",
    image_size: int | None = None,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    channels: int | None = None,
) -> PreparedData:
    """Load ``dataset`` and map it to the model's input space. ``preprocess`` is a kind to fit on the
    train set (``standard`` or ``zca``) or an already fitted ``Preprocessor`` (reused, never refitted).
    ``val_fraction`` of every class of the training split (drawn from ``val_seed``) becomes the
    validation split. ``channels`` converts the images to grey (1) or colour (3) (``load_dataset``)."""
    raw = load_dataset(dataset, data_path=data_path, download=download, image_size=image_size, channels=channels)
    if isinstance(preprocess, str):
        preprocess = Preprocessor.fit(preprocess, raw.spec, raw.train_images)
    names = folder_class_names(dataset, data_path)
    names = names if names is not None and len(names) == raw.spec.num_classes else None
    train_idx, val_idx = carve_validation(raw.train_labels, raw.spec.num_classes, val_fraction, val_seed, names)
    images, labels = preprocess(raw.train_images.to(device)), raw.train_labels.to(device)
    return PreparedData(
        spec=raw.spec,
        preprocessor=preprocess,
        train_images=images[train_idx.to(device)],
        train_labels=labels[train_idx.to(device)],
        test_images=preprocess(raw.test_images.to(device)),
        test_labels=raw.test_labels.to(device),
        val_images=images[val_idx.to(device)] if val_idx.numel() else None,
        val_labels=labels[val_idx.to(device)] if val_idx.numel() else None,
        val_fraction=val_fraction,
        val_seed=val_seed,
        class_names=names,
        source=data_fingerprint(raw.spec.name, raw.spec.channels, raw.spec.size, raw.spec.num_classes,
                                raw.train_images, raw.train_labels, raw.test_images, raw.test_labels),
    )


def class_label(c: int, names: list[str] | None = None) -> str:
    """``class folder 'cat'`` when the classes are named folders, else ``class 3``."""
    return f"class folder '{names[c]}'" if names else f"class {c}"


def carve_validation(labels: torch.Tensor, num_classes: int, fraction: float, seed: int,
                     names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into ``labels``: round(fraction * n_c) random images of every class c
    (at least one when ``fraction`` > 0, never the class's last), drawn from ``seed``; both sorted. ``names``
    (class folders) name a class in errors."""
    if not (math.isfinite(fraction) and 0 <= fraction < 1):
        raise DDError(f"--val-fraction must be in [0, 1), got {fraction}")
    generator = make_generator(seed)
    val = []
    for c, idx in enumerate(class_indices(labels.cpu(), num_classes)):
        if fraction == 0:
            break
        if len(idx) < 2:
            raise DDError(f"{class_label(c, names)} has {len(idx)} training image(s), too few to carve a "
                          "validation split; add images to it or pass --val-fraction 0")
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    val_idx = torch.sort(torch.cat(val)).values if val else torch.zeros(0, dtype=torch.int64)
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().squeeze(1), val_idx


def random_subset(data: PreparedData, ipc: int, seed: int, flag: str = "--ipc") -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real training images per class, drawn from ``seed``, class by class; ``flag`` names
    ``ipc`` in the error when a class has fewer."""
    generator = make_generator(seed)
    picks = []
    for c, idx in enumerate(class_indices(data.train_labels.cpu(), data.spec.num_classes)):
        if len(idx) < ipc:
            raise DDError(f"{flag} {ipc} is larger than {data.class_label(c)}, which has {len(idx)} training images; "
                          f"pass a smaller {flag}")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:ipc]])
    index = torch.cat(picks).to(data.train_images.device)
    return data.train_images[index], data.train_labels[index]
