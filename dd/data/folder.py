"""Image-folder datasets: any ``train/<class>/*`` tree (``imagefolder``) and Tiny ImageNet (``tiny``).

Images are decoded with PIL in a thread pool, converted to RGB, resized to a square side (by default their
own, when they share one) and stacked into one tensor. Class ids are the sorted class-folder names of
``train/``; the test split is ``val/`` (or ``test/``) in class folders or, for Tiny ImageNet, ``val/images``
plus ``val/val_annotations.txt``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dd.data.registry import DatasetSpec, RealData, register_dataset
from dd.errors import DDError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATA_PATH = "data"

FOLDER_LAYOUT = "expected DIR/train/<class>/*.png|jpg and DIR/val/<class>/* (or DIR/test/<class>/*)"
TINY_LAYOUT = ("expected DIR/train/<wnid>/images/*.JPEG and DIR/val/images/*.JPEG with DIR/val/val_annotations.txt "
               "(or DIR/val/<wnid>/*)")

TINY = DatasetSpec("tiny", 3, (64, 64), 200, IMAGENET_MEAN, IMAGENET_STD)
# A template: the loaded spec has the folder's class count, the requested size and the train statistics.
IMAGEFOLDER = DatasetSpec("imagefolder", 3, (32, 32), 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 [size, size, 3] RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = _to_rgb(im)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(im, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DDError(f"image {path} has more pixels than PIL decodes safely (a decompression bomb?); shrink it "
                      "or remove it") from None
    except (OSError, ValueError) as e:
        raise DDError(f"cannot read image {path} ({e}); remove or replace the file") from None


def _to_rgb(im):
    """``im`` as 8-bit RGB; 16- and 32-bit integer images are scaled by their bit depth's range (PIL's own
    conversion would clip them at 255), floating-point ones from [0, 1]."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" else 65535.0 if im.mode.startswith("I;16") or values.max() <= 65535 else 2**32 - 1
        im = Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def decode_images(paths: list[Path], size: int) -> torch.Tensor:
    """Decode ``paths`` into float32 [N, 3, size, size] in [0, 1] (threads; PIL releases the GIL)."""
    out = torch.empty((len(paths), size, size, 3), dtype=torch.uint8)
    workers = min(16, os.cpu_count() or 1)

    def fill(i: int) -> None:
        out[i] = torch.from_numpy(_decode(paths[i], size))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, range(len(paths))))
    return out.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


def _class_folders(split: Path, name: str, layout: str) -> list[Path]:
    folders = sorted(p for p in split.iterdir() if p.is_dir())
    if not folders:
        raise DDError(f"dataset {name}: no class folders in {split}; {layout}")
    return folders


def _from_class_folders(split: Path, classes: list[str], name: str, layout: str) -> tuple[list[Path], list[int]]:
    """(paths, labels) of a split in ``<class>/...`` folders, with class ids from ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for folder in _class_folders(split, name, layout):
        if folder.name not in index:
            raise DDError(f"dataset {name}: class folder {folder} is not a class of the train split; "
                          "train/ and val/ must have the same class folders")
        files = _images_under(folder)
        paths += files
        labels += [index[folder.name]] * len(files)
    if not paths:
        raise DDError(f"dataset {name}: no images under {split}; {layout}")
    return paths, labels


def _from_annotations(val: Path, classes: list[str], name: str) -> tuple[list[Path], list[int]]:
    """(paths, labels) of Tiny ImageNet's ``val/images`` + ``val/val_annotations.txt`` layout."""
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for line_no, line in enumerate((val / "val_annotations.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DDError(f"dataset {name}: {val / 'val_annotations.txt'} line {line_no} does not name a file "
                          "and a train class (file<TAB>wnid<TAB>...)")
        path = val / "images" / fields[0]
        if not path.is_file():
            raise DDError(f"dataset {name}: {path} is listed in val_annotations.txt but missing")
        paths.append(path)
        labels.append(index[fields[1]])
    if not paths:
        raise DDError(f"dataset {name}: {val / 'val_annotations.txt'} lists no images; {TINY_LAYOUT}")
    return paths, labels


def common_side(paths: list[Path]) -> int | None:
    """The side of the images at ``paths`` when all are squares of one size (read from the file headers), else
    None."""
    from PIL import Image

    sizes = set()
    for path in paths:
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None  # decoding names the unreadable or oversized file
        if len(sizes) > 1:
            return None
    (width, height), = sizes
    return width if width == height else None


def load_folder_tree(root: Path, name: str, size: int | None, layout: str, default_size: int = 32
                     ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class names and (train images, train labels, test images, test labels) of a folder tree, at ``size``
    squared; None: the images' own side when all are squares of one size, else ``default_size``."""
    train = root / "train"
    if not train.is_dir():
        raise DDError(f"dataset {name} not found: {train} does not exist; {layout} (set --data-path DIR)")
    folders = _class_folders(train, name, layout)
    classes = [f.name for f in folders]
    train_paths, train_labels = _from_class_folders(train, classes, name, layout)
    empty = sorted(set(classes) - {classes[i] for i in train_labels})
    if empty:
        raise DDError(f"dataset {name}: class folder {train / empty[0]} holds no images; add images or remove it")
    val = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if val is None:
        raise DDError(f"dataset {name}: neither {root / 'val'} nor {root / 'test'} exists; {layout}")
    if (val / "val_annotations.txt").is_file():
        test_paths, test_labels = _from_annotations(val, classes, name)
    else:
        test_paths, test_labels = _from_class_folders(val, classes, name, layout)
    size = size or common_side(train_paths + test_paths) or default_size
    return (classes, decode_images(train_paths, size), torch.tensor(train_labels, dtype=torch.int64),
            decode_images(test_paths, size), torch.tensor(test_labels, dtype=torch.int64))


def _root(name: str, data_path: str | None) -> Path:
    root = Path(data_path or DEFAULT_DATA_PATH)
    if name == TINY.name and not (root / "train").is_dir() and (root / "tiny-imagenet-200" / "train").is_dir():
        return root / "tiny-imagenet-200"
    return root


def folder_class_names(name: str, data_path: str | None) -> list[str] | None:
    """The class names (sorted class-folder names of ``train/``, the order of the class ids) of folder dataset
    ``name`` at ``data_path``; None for a dataset that is not a folder one or a folder that is not there."""
    if name not in (TINY.name, IMAGEFOLDER.name):
        return None
    train = _root(name, data_path) / "train"
    return sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else None


@register_dataset(TINY)
def load_tiny(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None) -> RealData:
    """Tiny ImageNet from ``data_path`` (or ``data_path/tiny-imagenet-200``); no download."""
    root = _root(spec.name, data_path)
    size = image_size or spec.size[0]
    classes, *tensors = load_folder_tree(root, spec.name, size, TINY_LAYOUT)
    return RealData(replace(spec, size=(size, size), num_classes=len(classes)), *tensors)


@register_dataset(IMAGEFOLDER)
def load_imagefolder(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None) -> RealData:
    """Any ``train/<class>/*`` + ``val|test/<class>/*`` tree at ``image_size`` (default: the images' own side
    when all are squares of one size, else 32), with mean/std of the train images. A tree of grey images (every
    image's three channels equal) loads with one channel, so grayscale data is neither distilled nor evaluated
    as three channels that can drift apart."""
    root = Path(data_path or DEFAULT_DATA_PATH)
    classes, train_images, train_labels, test_images, test_labels = load_folder_tree(
        root, spec.name, image_size, FOLDER_LAYOUT, spec.size[0])
    if all(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]) for x in (train_images, test_images)):
        train_images, test_images = train_images[:, :1].contiguous(), test_images[:, :1].contiguous()
    channels = [train_images[:, c].to(torch.float64) for c in range(train_images.shape[1])]
    mean = tuple(ch.mean().item() for ch in channels)
    std = tuple(max(ch.std(unbiased=False).item(), 1e-6) for ch in channels)
    size = train_images.shape[-1]
    loaded = replace(spec, channels=train_images.shape[1], size=(size, size), num_classes=len(classes), mean=mean,
                     std=std)
    return RealData(loaded, train_images, train_labels, test_images, test_labels)
