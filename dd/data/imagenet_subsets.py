"""MTT's ImageNet subsets (Cazenavette et al., CVPR 2022): ten ImageNet-1k classes each, at 128 px.

``imagenette``, ``imagewoof``, ``imagemeow``, ``imagesquawk``, ``imagefruit`` and ``imageyellow`` read
an ImageNet folder (``--data-path DIR`` with ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG``,
the official train and validation splits, as MTT uses them) and load only the subset's ten class
folders. Label c is the c-th class of MTT's list (its ``Config`` in utils.py), so sets and experts line
up with the reference's. Images are resized to a square, as MTT's ``Resize((128, 128))`` does (its
``CenterCrop`` after that is a no-op), through ``dd.data.folder``'s decoder. Sources and the index to
WordNet id mapping: docs/reference-imagenet-subsets.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dd.data.folder import DEFAULT_DATA_PATH, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, decode_images
from dd.data.registry import DatasetSpec, RealData, register_dataset
from dd.errors import DDError

SIZE = 128
LAYOUT = ("expected DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (ImageNet with the validation images "
          "sorted into class folders)")

# (ImageNet-1k class index, WordNet id, class name) in MTT's label order.
SUBSETS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "imagenette": (
        (0, "n01440764", "tench"), (217, "n02102040", "English springer"), (482, "n02979186", "cassette player"),
        (491, "n03000684", "chain saw"), (497, "n03028079", "church"), (566, "n03394916", "French horn"),
        (569, "n03417042", "garbage truck"), (571, "n03425413", "gas pump"), (574, "n03445777", "golf ball"),
        (701, "n03888257", "parachute"),
    ),
    "imagewoof": (
        (193, "n02096294", "Australian terrier"), (182, "n02093754", "Border terrier"), (258, "n02111889", "Samoyed"),
        (162, "n02088364", "beagle"), (155, "n02086240", "Shih-Tzu"), (167, "n02089973", "English foxhound"),
        (159, "n02087394", "Rhodesian ridgeback"), (273, "n02115641", "dingo"),
        (207, "n02099601", "golden retriever"), (229, "n02105641", "Old English sheepdog"),
    ),
    "imagemeow": (
        (281, "n02123045", "tabby"), (282, "n02123159", "tiger cat"), (283, "n02123394", "Persian cat"),
        (284, "n02123597", "Siamese cat"), (285, "n02124075", "Egyptian cat"), (291, "n02129165", "lion"),
        (292, "n02129604", "tiger"), (290, "n02128925", "jaguar"), (289, "n02128757", "snow leopard"),
        (287, "n02127052", "lynx"),
    ),
    "imagesquawk": (
        (84, "n01806143", "peacock"), (130, "n02007558", "flamingo"), (88, "n01818515", "macaw"),
        (144, "n02051845", "pelican"), (145, "n02056570", "king penguin"), (22, "n01614925", "bald eagle"),
        (96, "n01843383", "toucan"), (9, "n01518878", "ostrich"), (100, "n01860187", "black swan"),
        (89, "n01819313", "sulphur-crested cockatoo"),
    ),
    "imagefruit": (
        (953, "n07753275", "pineapple"), (954, "n07753592", "banana"), (949, "n07745940", "strawberry"),
        (950, "n07747607", "orange"), (951, "n07749582", "lemon"), (957, "n07768694", "pomegranate"),
        (952, "n07753113", "fig"), (945, "n07720875", "bell pepper"), (943, "n07718472", "cucumber"),
        (948, "n07742313", "Granny Smith"),
    ),
    "imageyellow": (
        (309, "n02206856", "bee"), (986, "n12057211", "yellow lady's slipper"), (954, "n07753592", "banana"),
        (951, "n07749582", "lemon"), (987, "n12144580", "corn"), (779, "n04146614", "school bus"),
        (599, "n03530642", "honeycomb"), (291, "n02129165", "lion"),
        (72, "n01773157", "black and gold garden spider"), (11, "n01531178", "goldfinch"),
    ),
}


def _class_images(split: Path, wnid: str, label: str, name: str) -> list[Path]:
    """The image files under ``split/wnid`` (recursively, sorted); DDError if the folder is missing or empty."""
    folder = split / wnid
    if not folder.is_dir():
        raise DDError(f"dataset {name}: class folder {folder} ({label}) is missing; {LAYOUT} (set --data-path DIR)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DDError(f"dataset {name}: class folder {folder} ({label}) holds no images; {LAYOUT}")
    return files


def _load_split(split: Path, name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, size, size] in [0, 1] and labels [N] (MTT's order) of one split of subset ``name``."""
    paths: list[Path] = []
    labels: list[int] = []
    for c, (_, wnid, label) in enumerate(SUBSETS[name]):
        files = _class_images(split, wnid, label, name)
        paths += files
        labels += [c] * len(files)
    return decode_images(paths, size), torch.tensor(labels, dtype=torch.int64)


def load_subset(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None) -> RealData:
    """Subset ``spec.name`` of the ImageNet folder ``data_path`` at ``image_size`` (default 128); no download."""
    root = Path(data_path or DEFAULT_DATA_PATH)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DDError(f"dataset {spec.name} not found: {root / split} does not exist; {LAYOUT} "
                          "(set --data-path DIR)")
    size = image_size or spec.size[0]
    train_images, train_labels = _load_split(root / "train", spec.name, size)
    test_images, test_labels = _load_split(root / "val", spec.name, size)
    return RealData(DatasetSpec(spec.name, 3, (size, size), len(SUBSETS[spec.name]), IMAGENET_MEAN, IMAGENET_STD),
                    train_images, train_labels, test_images, test_labels)


for _name, _classes in SUBSETS.items():
    register_dataset(DatasetSpec(_name, 3, (SIZE, SIZE), len(_classes), IMAGENET_MEAN, IMAGENET_STD))(load_subset)
