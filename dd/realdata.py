"""Real data in the model's input space, on the device: the step every stage starts with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dd.data import DatasetSpec, Preprocessor, class_indices, load_dataset
from dd.device import make_generator
from dd.errors import DDError
from dd.io import sha256_tensors


@dataclass
class PreparedData:
    """A dataset after preprocessing (standard normalisation or ZCA), on one device."""

    spec: DatasetSpec
    preprocessor: Preprocessor
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    _identity: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_images, self.train_labels

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_images, self.test_labels

    def identity(self) -> dict[str, Any]:
        """What a result record says of the real data: name, shape, split sizes, preprocessing and the
        SHA-256 of the preprocessed splits (computed once), so records of other data never merge."""
        if self._identity is None:
            self._identity = {
                "name": self.spec.name, "shape": [self.spec.channels, *self.spec.size],
                "num_classes": self.spec.num_classes, "train": int(self.train_labels.shape[0]),
                "test": int(self.test_labels.shape[0]), "preprocess": self.preprocessor.describe(),
                "sha256": sha256_tensors(self.train_images, self.train_labels, self.test_images, self.test_labels)}
        return self._identity


def prepare_data(
    dataset: str,
    device: torch.device,
    data_path: str | None = None,
    download: bool = False,
    preprocess: str | Preprocessor = "standard",
    image_size: int | None = None,
) -> PreparedData:
    """Load ``dataset`` and map it to the model's input space. ``preprocess`` is a kind to fit on the
    train set (``standard`` or ``zca``) or an already fitted ``Preprocessor`` (reused, never refitted)."""
    raw = load_dataset(dataset, data_path=data_path, download=download, image_size=image_size)
    if isinstance(preprocess, str):
        preprocess = Preprocessor.fit(preprocess, raw.spec, raw.train_images)
    return PreparedData(
        spec=raw.spec,
        preprocessor=preprocess,
        train_images=preprocess(raw.train_images.to(device)),
        train_labels=raw.train_labels.to(device),
        test_images=preprocess(raw.test_images.to(device)),
        test_labels=raw.test_labels.to(device),
    )


def random_subset(data: PreparedData, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real training images per class, drawn from ``seed``."""
    generator = make_generator(seed)
    picks = []
    for c, idx in enumerate(class_indices(data.train_labels.cpu(), data.spec.num_classes)):
        if len(idx) < ipc:
            raise DDError(f"--ipc {ipc} is larger than class {c}, which has {len(idx)} training images")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:ipc]])
    index = torch.cat(picks).to(data.train_images.device)
    return data.train_images[index], data.train_labels[index]
