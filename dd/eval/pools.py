"""Named architecture pools for ``python -m dd.eval --models pool:NAME``, adapted to the image size.

The pools are the DC code's ``get_eval_pool`` modes (Zhao et al., ICLR 2021; its utils.py): ``M``
(multiple architectures), ``BN`` (its ``B`` mode, the BatchNorm pool of the DM experiments), and the
ConvNet ablations ``W`` (width), ``D`` (depth), ``A`` (activation), ``P`` (pooling), ``N`` (norm).

Adapted to the data: a model that cannot be built at the image size (an instance norm would see a
1x1 feature map) is replaced by its BatchNorm variant where it has one, except in the depth and norm
pools, which are capped instead (an ablation with a changed norm would not isolate its variable); a
model with neither is left out (the ConvNet ablations hold from 8 px up). Each change is returned as a
note, so the caller can say what ran.
"""

from __future__ import annotations

import torch

from dd.errors import DDError
from dd.models import create_model, list_models

PREFIX = "pool:"

POOLS: dict[str, tuple[str, ...]] = {
    "M": ("MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"),
    "BN": ("ConvNetBN", "ConvNetASwishBN", "AlexNetBN", "VGG11BN", "ResNet18BN"),
    "W": ("ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"),
    "D": ("ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"),
    "A": ("ConvNetAS", "ConvNetAR", "ConvNetAL"),
    "P": ("ConvNetNP", "ConvNetMP", "ConvNetAP"),
    "N": ("ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"),
}
CAPPED = {"D", "N"}  # ablations of depth and norm drop a model the size cannot hold rather than swap its norm
BN_VARIANT = {"ConvNet": "ConvNetBN", "VGG11": "VGG11BN", "ResNet18": "ResNet18BN"}


def _builds(name: str, channels: int, im_size: tuple[int, int]) -> bool:
    """Whether ``name`` can be built for [*, channels, *im_size] inputs (on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            create_model(name, channels, 2, im_size)
    except DDError:
        return False
    return True


def check_models(models: str) -> None:
    """Raise DDError unless every comma-separated entry of ``models`` is a registered model or a pool."""
    for entry in models.split(","):
        if entry.startswith(PREFIX):
            if entry[len(PREFIX):] not in POOLS:
                raise DDError(f"unknown model pool '{entry}'; choose from "
                              f"{', '.join(PREFIX + p for p in POOLS)}")
        elif entry not in list_models():
            raise DDError(f"unknown model '{entry}'; see dd.models.list_models() for the choices, or pass a pool "
                          f"({', '.join(PREFIX + p for p in POOLS)})")


def pool_models(pool: str, channels: int, im_size: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(models, notes): pool ``pool``'s architectures for [*, channels, H, W] inputs, adapted as the module
    docstring says; each note names a model that was swapped or left out, and why."""
    if pool not in POOLS:
        raise DDError(f"unknown model pool '{PREFIX}{pool}'; choose from {', '.join(PREFIX + p for p in POOLS)}")
    size = f"{im_size[0]}x{im_size[1]}"
    models: list[str] = []
    notes: list[str] = []
    for name in POOLS[pool]:
        if _builds(name, channels, im_size):
            models.append(name)
            continue
        swap = None if pool in CAPPED else BN_VARIANT.get(name)
        if swap is not None and _builds(swap, channels, im_size):
            models.append(swap)
            notes.append(f"{PREFIX}{pool}: {name} -> {swap} at {size} (an instance norm would see a 1x1 map)")
        else:
            notes.append(f"{PREFIX}{pool}: {name} left out at {size} (the image is too small for it)")
    return models, notes


def expand_models(models: str, channels: int, im_size: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(models, notes): the comma-separated ``models`` with each ``pool:NAME`` replaced by ``pool_models``'s
    list, each model once, in order of first mention; named models are kept as given."""
    check_models(models)
    out: list[str] = []
    notes: list[str] = []
    for entry in models.split(","):
        if entry.startswith(PREFIX):
            names, pool_notes = pool_models(entry[len(PREFIX):], channels, im_size)
            out += names
            notes += pool_notes
        else:
            out.append(entry)
    return list(dict.fromkeys(out)), notes
