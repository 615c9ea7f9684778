"""MNIST and Fashion-MNIST from their four idx files, wherever a user already has them.

dd looks in order: ``<data_path>/MNIST/raw`` (``FashionMNIST/raw``; torchvision's layout), ``<data_path>``
itself (the files side by side), then the folders a system package installs them in (``SYSTEM_DIRS``,
e.g. Debian's ``dataset-fashion-mnist``). The first folder holding all four files wins; each file may be
packed (``.gz``) or not. torchvision is used only to download a missing set.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dd.data.idx import read_idx_split
from dd.errors import DDError

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# torchvision's folder name under the root (its class name).
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}

# Where system packages install the files (Debian: dataset-fashion-mnist; the mnist path is its analogue).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {"mnist": ("/usr/share/datasets/mnist",),
                                           "fashionmnist": ("/usr/share/datasets/fashion-mnist",)}
INSTALL = {"fashionmnist": "apt-get install dataset-fashion-mnist (as root)"}


def search_dirs(name: str, root: str) -> list[Path]:
    """The folders searched for ``name``'s files, in order."""
    return [Path(root) / TORCHVISION_FOLDER[name] / "raw", Path(root), *map(Path, SYSTEM_DIRS[name])]


def find_in(folder: Path) -> dict[str, Path]:
    """The idx files present in ``folder``, by stem: the unpacked file, else its ``.gz``."""
    found = {}
    for stem in FILES:
        for path in (folder / stem, folder / f"{stem}.gz"):
            if path.is_file():
                found[stem] = path
                break
    return found


def locate(name: str, root: str) -> dict[str, Path]:
    """The four files of ``name`` from the first folder of ``search_dirs`` holding all of them; a
    ``DDError`` listing every folder looked in (and what a partial one lacks) and the fix otherwise."""
    looked = []
    for folder in search_dirs(name, root):
        found = find_in(folder)
        if len(found) == len(FILES):
            return found
        lacks = [stem for stem in FILES if stem not in found]
        looked.append(f"{folder} (lacks {', '.join(lacks)})" if found else str(folder))
    fixes = [*([INSTALL[name]] if name in INSTALL else []), "--data-path <folder holding the files>", "--download"]
    raise DDError(f"dataset {name} not found: looked for {', '.join(FILES)} (each unpacked or .gz) in "
                  f"{'; '.join(looked)}; fix: {', or '.join(fixes)}")


def download(name: str, root: str) -> None:
    """Fetch ``name`` into ``<root>/<TorchvisionFolder>/raw`` through torchvision; its whole error, on one
    line, when that fails."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashionmnist": datasets.FashionMNIST}[name]
    try:
        cls(root, train=True, download=True)
    except (RuntimeError, OSError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise DDError(f"could not download dataset {name} into {Path(root) / TORCHVISION_FOLDER[name] / 'raw'} "
                      f"({detail}); check the network, or pass --data-path to a folder holding "
                      f"{', '.join(FILES)}") from None


def load_idx_dataset(name: str, root: str, download_missing: bool, size: tuple[int, int], num_classes: int):
    """(train images, train labels, test images, test labels) of ``name`` as numpy arrays: uint8 [N, H, W]
    and int64 [N], in the files' order (the order torchvision reads)."""
    try:
        files = locate(name, root)
    except DDError:
        if not download_missing:
            raise
        download(name, root)
        files = locate(name, root)
    folder = files[FILES[0]].parent
    if not folder.is_relative_to(root):  # a system folder: say so, since --data-path named another
        print(f"{name}: no files under {root}; read them from {folder}", file=sys.stderr)
    train = read_idx_split(files[FILES[0]], files[FILES[1]], size, num_classes)
    test = read_idx_split(files[FILES[2]], files[FILES[3]], size, num_classes)
    return (*train, *test)
