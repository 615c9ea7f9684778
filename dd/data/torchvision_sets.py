"""The standard small datasets: CIFAR-10/100 and SVHN through torchvision, MNIST and Fashion-MNIST from
their idx files (``dd.data.mnist``), each loaded whole from its arrays.

Each split is read once (no per-sample PIL decoding) and turned into one float32 tensor of [0, 1]
pixels. Channel statistics are the usual published constants (MTT's).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dd.data.mnist import TORCHVISION_FOLDER, load_idx_dataset
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


# What torchvision reads under the root, relative to it (it checks each file's MD5).
TORCHVISION_FILES = {
    "cifar10": tuple(f"cifar-10-batches-py/{f}" for f in
                     ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                      "batches.meta")),
    "cifar100": tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
}


def _split(name: str, root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the torchvision set ``name`` as (images, labels)."""
    from torchvision import datasets

    constructors: dict[str, Callable[[], Any]] = {
        "cifar10": lambda: datasets.CIFAR10(root, train=train, download=download),
        "cifar100": lambda: datasets.CIFAR100(root, train=train, download=download),
        "svhn": lambda: datasets.SVHN(root, split="train" if train else "test", download=download),
    }
    try:
        ds = constructors[name]()
    except (RuntimeError, OSError) as e:
        raise _not_loaded(name, root, download, e) from None
    if name == "svhn":
        return _to_images(ds.data, channels_last=False), torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)
    return _to_images(ds.data, channels_last=True), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _not_loaded(name: str, root: str, download: bool, error: BaseException) -> DDError:
    """Why torchvision could not load ``name``: the files it looked for, which are missing (or that all are
    there and fail its checksum), the download's whole error when one was tried, and the fix."""
    paths = [Path(root) / f for f in TORCHVISION_FILES[name]]
    missing = [str(p) for p in paths if not p.is_file()]
    state = ("none is there" if len(missing) == len(paths) else f"missing: {', '.join(missing)}" if missing else
             "all are there but fail torchvision's MD5 check (damaged, or another release)")
    looked = f"looked for {', '.join(map(str, paths))}; {state}"
    if download:
        detail = " ".join(str(error).split()) or type(error).__name__
        return DDError(f"could not download dataset {name} into {root} ({type(error).__name__}: {detail}); {looked}; "
                       "check the network, or pass --data-path to a folder holding these files")
    fix = ("pass --download, or --data-path to a folder holding them" if missing else
           "pass --download to fetch them again")
    return DDError(f"dataset {name} not found: {looked}; fix: {fix}")


def _idx_split(arrays: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return _to_images(arrays[0], channels_last=True), torch.as_tensor(arrays[1], dtype=torch.int64)


def _make_loader(name: str) -> None:
    @register_dataset(SPECS[name])
    def load(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None) -> RealData:
        root = data_path or DEFAULT_DATA_PATH
        if name in TORCHVISION_FOLDER:
            arrays = load_idx_dataset(name, root, download, spec.size, spec.num_classes)
            return RealData(spec, *_idx_split(arrays[:2]), *_idx_split(arrays[2:]))
        train_images, train_labels = _split(name, root, True, download)
        test_images, test_labels = _split(name, root, False, download)
        return RealData(spec, train_images, train_labels, test_images, test_labels)


for _name in SPECS:
    _make_loader(_name)
