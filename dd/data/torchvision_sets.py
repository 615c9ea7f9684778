"""torchvision datasets (CIFAR-10/100, MNIST, Fashion-MNIST, SVHN), loaded whole from their arrays.

Each split is read once from the dataset's ``.data`` array (no per-sample PIL decoding) and turned into
one float32 tensor of [0, 1] pixels. Channel statistics are the usual published constants (MTT's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dd.data.registry import DatasetSpec, RealData, register_dataset
from dd.errors import DDError

DEFAULT_DATA_PATH = "data"

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

SPECS = {
    "cifar10": DatasetSpec("cifar10", 3, (32, 32), 10, CIFAR_MEAN, CIFAR_STD),
    "cifar100": DatasetSpec("cifar100", 3, (32, 32), 100, CIFAR_MEAN, CIFAR_STD),
    "mnist": DatasetSpec("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,)),
    "fashionmnist": DatasetSpec("fashionmnist", 1, (28, 28), 10, (0.2861,), (0.3530,)),
    "svhn": DatasetSpec("svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def _to_images(data: Any, channels_last: bool) -> torch.Tensor:
    """uint8 array [N, H, W], [N, H, W, C] or [N, C, H, W] -> float32 [N, C, H, W] in [0, 1]."""
    x = torch.as_tensor(np.asarray(data))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous().to(torch.float32).div_(255.0)


def _split(name: str, root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of ``name`` as (images, labels)."""
    from torchvision import datasets

    constructors: dict[str, Callable[[], Any]] = {
        "cifar10": lambda: datasets.CIFAR10(root, train=train, download=download),
        "cifar100": lambda: datasets.CIFAR100(root, train=train, download=download),
        "mnist": lambda: datasets.MNIST(root, train=train, download=download),
        "fashionmnist": lambda: datasets.FashionMNIST(root, train=train, download=download),
        "svhn": lambda: datasets.SVHN(root, split="train" if train else "test", download=download),
    }
    where = root.rstrip("/") + "/"
    try:
        ds = constructors[name]()
    except (RuntimeError, OSError) as e:
        if download:
            raise DDError(f"could not download dataset {name} into {where} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); check the network or put the files "
                          "there yourself") from None
        raise DDError(f"dataset {name} not found under {where}; pass --download or put it in --data-path "
                      "(torchvision layout)") from None
    if name == "svhn":
        return _to_images(ds.data, channels_last=False), torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)
    return _to_images(ds.data, channels_last=True), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _make_loader(name: str) -> None:
    @register_dataset(SPECS[name])
    def load(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None) -> RealData:
        root = data_path or DEFAULT_DATA_PATH
        train_images, train_labels = _split(name, root, True, download)
        test_images, test_labels = _split(name, root, False, download)
        return RealData(spec, train_images, train_labels, test_images, test_labels)


for _name in SPECS:
    _make_loader(_name)
