"""The dataset registry: a name maps to a ``DatasetSpec`` and a loader returning ``RealData``.

Loaders register themselves with ``@register_dataset(spec)``; ``load_dataset(name)`` is the one entry
point the rest of ``dd`` uses. Everything is returned as whole-split CPU tensors of [0, 1] pixels;
normalisation and ZCA live in ``dd.data.preprocess``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from dd.device import physical_memory
from dd.errors import DDError


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset: image shape, class count and the channel statistics
    used by the standard normalisation ``(x - mean) / std`` of [0, 1] pixels."""

    name: str
    channels: int
    size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class RealData:
    """A whole dataset in memory: images [N, C, H, W] float32 in [0, 1] and labels [N] int64, on the CPU."""

    spec: DatasetSpec
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


# A loader gets (spec, data_path, download, image_size) and returns the data with the spec it loaded.
Loader = Callable[[DatasetSpec, "str | None", bool, "int | None"], RealData]

_REGISTRY: dict[str, tuple[DatasetSpec, Loader]] = {}


def register_dataset(spec: DatasetSpec) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader`` under ``spec.name``."""

    def decorate(loader: Loader) -> Loader:
        if spec.name in _REGISTRY:
            raise ValueError(f"dataset {spec.name!r} registered twice")
        _REGISTRY[spec.name] = (spec, loader)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Names of all registered datasets, in registration order (``digits`` first)."""
    return list(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """The registered spec of ``name``. For data-defined sets (``imagefolder``) it is a template:
    ``load_dataset`` returns the spec actually found on disk."""
    if name not in _REGISTRY:
        raise DDError(f"unknown dataset '{name}'; choose from {', '.join(list_datasets())}")
    return _REGISTRY[name][0]


def load_dataset(name: str, data_path: str | None = None, download: bool = False,
                 image_size: int | None = None, channels: int | None = None) -> RealData:
    """Load train and test splits of ``name`` as CPU tensors of [0, 1] pixels.

    ``data_path`` is the folder for torchvision and folder datasets (default ``data``); ``download`` lets
    torchvision fetch a missing set. ``image_size`` resizes to a square side (bilinear, antialiased);
    folder datasets decode at that size directly. ``channels`` (1 or 3) converts the images to grey or
    colour when the dataset's own differ (``convert_channels``).
    """
    spec = get_spec(name)
    if image_size is not None and image_size <= 0:
        raise DDError(f"--image-size must be positive, got {image_size}")
    if image_size is not None and 3 * 4 * image_size**2 > (physical_memory() or float("inf")):
        raise DDError(f"--image-size {image_size}: one image would not fit this machine's memory; pass a smaller size")
    if channels not in (None, *CHANNELS):
        raise DDError(f"--channels must be 1 (grey) or 3 (colour), got {channels}")
    data = _REGISTRY[name][1](spec, data_path, download, image_size)
    if image_size is not None and data.spec.size != (image_size, image_size):
        data = resize(data, image_size)
    if channels is not None and data.spec.channels != channels:
        data = convert_channels(data, channels)
    return data


CHANNELS = (1, 3)
IMAGE_SIZE_HELP = ("side length of the images (default: the dataset's own; imagefolder: the images' side when they "
                   "share one, else 32)")
CHANNELS_HELP = ("1 (grey) or 3 (colour): convert the images to that many channels (default: the dataset's own; "
                 "imagefolder: 1 when every image is grey, else 3)")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in the grey value


def shape_flags(want: tuple[int, ...], got: tuple[int, ...]) -> list[str]:
    """The ``--channels`` and ``--image-size`` flags that load images of shape ``got`` [C, H, W] as ``want``."""
    return [*([f"--channels {want[0]}"] if want[0] != got[0] else []),
            *([f"--image-size {want[-1]}"] if tuple(want[1:]) != tuple(got[1:]) else [])]


def convert_channels(data: RealData, channels: int) -> RealData:
    """``data`` as grey (3 -> 1: the BT.601 luma of each pixel) or colour (1 -> 3: the grey value in every
    channel), with the channel mean/std of the converted train images in the spec."""
    have = data.spec.channels
    if (have, channels) not in ((3, 1), (1, 3)):
        raise DDError(f"{data.spec.name} has {have}-channel images; --channels converts between 1 and 3 only")

    def go(x: torch.Tensor) -> torch.Tensor:
        if channels == 1:
            return (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True).clamp_(0.0, 1.0)
        return x.expand(-1, 3, -1, -1).contiguous()

    train = go(data.train_images)
    per_channel = train.transpose(0, 1).flatten(1).to(torch.float64)
    mean = tuple(per_channel.mean(1).tolist())
    std = tuple(max(v, 1e-6) for v in per_channel.std(1, unbiased=False).tolist())
    return RealData(replace(data.spec, channels=channels, mean=mean, std=std), train, data.train_labels,
                    go(data.test_images), data.test_labels)


def resize(data: RealData, image_size: int) -> RealData:
    """``data`` with both splits resized to ``image_size`` squared and the spec updated to match."""

    count = data.train_images.shape[0] + data.test_images.shape[0]
    need = count * data.spec.channels * image_size**2 * 4
    if need > (physical_memory() or float("inf")):
        raise DDError(f"--image-size {image_size}: the {count} images of {data.spec.name} would take "
                      f"{need / 2**30:.3g} GiB, more than this machine's {physical_memory() / 2**30:.3g} GiB of "
                      "memory; pass a smaller size")

    def go(x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp_(0.0, 1.0)

    return RealData(replace(data.spec, size=(image_size, image_size)), go(data.train_images), data.train_labels,
                    go(data.test_images), data.test_labels)


def class_indices(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """For each class c in ``range(num_classes)``, the int64 indices i with ``labels[i] == c`` (ascending),
    on the device of ``labels``."""
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].tolist()
    return list(order.split(counts))
