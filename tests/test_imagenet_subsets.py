"""MTT's ImageNet subsets: the class lists against MTT's ImageNet indices, loading a generated ImageNet tree
(only the subset's folders, MTT's label order, square resize), and the errors for a wrong folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from dd.data import get_spec, list_datasets, load_dataset
from dd.data.folder import IMAGENET_MEAN, IMAGENET_STD
from dd.data.imagenet_subsets import SUBSETS
from dd.errors import DDError

# MTT utils.py, class Config: the ImageNet-1k class indices of each subset, in label order.
MTT_INDICES = {
    "imagenette": [0, 217, 482, 491, 497, 566, 569, 571, 574, 701],
    "imagewoof": [193, 182, 258, 162, 155, 167, 159, 273, 207, 229],
    "imagemeow": [281, 282, 283, 284, 285, 291, 292, 290, 289, 287],
    "imagesquawk": [84, 130, 88, 144, 145, 22, 96, 9, 100, 89],
    "imagefruit": [953, 954, 949, 950, 951, 957, 952, 945, 943, 948],
    "imageyellow": [309, 986, 954, 951, 987, 779, 599, 291, 72, 11],
}
# fastai's Imagenette (github.com/fastai/imagenette), an independent list of the same ten classes.
FASTAI_IMAGENETTE = {"n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                     "n03425413", "n03445777", "n03888257"}


def test_the_six_subsets_are_registered_at_128_px():
    assert set(SUBSETS) <= set(list_datasets())
    for name in SUBSETS:
        spec = get_spec(name)
        assert (spec.channels, spec.size, spec.num_classes) == (3, (128, 128), 10)
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_class_lists_are_mtts_indices_in_mtts_order():
    assert {name: [i for i, _, _ in classes] for name, classes in SUBSETS.items()} == MTT_INDICES
    assert {w for _, w, _ in SUBSETS["imagenette"]} == FASTAI_IMAGENETTE


def test_wordnet_ids_agree_with_the_imagenet_index_order():
    """ImageNet-1k indexes its classes by sorted WordNet id, so across all subsets a larger index must have a
    larger id and one index one id (banana, lemon and lion are in two subsets: 57 classes in all); a mistyped
    id breaks this."""
    by_index: dict[int, str] = {}
    for classes in SUBSETS.values():
        for index, wnid, _ in classes:
            assert by_index.setdefault(index, wnid) == wnid, index
            assert wnid.startswith("n") and len(wnid) == 9 and wnid[1:].isdigit(), wnid
    ids = [by_index[i] for i in sorted(by_index)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 57


def write_tree(root, wnids, per_class=(2, 1), extra=("n09999999",), size=(12, 8)):
    """An ImageNet-like tree: train/ and val/ with a folder per wnid (plus ``extra`` folders not in the subset),
    each image a flat grey of level 10 * (its wnid's position + 1), non-square (``size`` = W, H)."""
    for split, count in zip(("train", "val"), per_class, strict=True):
        for c, wnid in enumerate([*wnids, *extra]):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = np.full((size[1], size[0], 3), 10 * (c + 1), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{k}.JPEG", format="PNG")
    return root


def test_a_subset_loads_only_its_folders_in_mtts_label_order(tmp_path):
    wnids = [w for _, w, _ in SUBSETS["imagewoof"]]
    root = write_tree(tmp_path / "imagenet", sorted(wnids))  # folder positions differ from MTT's order
    data = load_dataset("imagewoof", data_path=str(root), image_size=8)
    assert data.spec.name == "imagewoof" and data.spec.size == (8, 8) and data.spec.num_classes == 10
    assert data.train_images.shape == (20, 3, 8, 8) and data.test_images.shape == (10, 3, 8, 8)
    assert data.train_labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert data.test_labels.tolist() == list(range(10))
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        for x, c in zip(images, labels.tolist(), strict=True):
            level = 10 * (sorted(wnids).index(wnids[c]) + 1) / 255
            assert torch.allclose(x, torch.full_like(x, level), atol=1e-6)  # label c is MTT's c-th class


def test_default_size_is_128_by_a_square_resize(tmp_path):
    """MTT's Resize((128, 128)) maps any aspect ratio onto the whole square (its CenterCrop then cuts nothing):
    a 12x8 image with a bright left column keeps it along the whole left edge."""
    wnids = [w for _, w, _ in SUBSETS["imagenette"]]
    root = write_tree(tmp_path / "imagenet", wnids, per_class=(1, 1), extra=())
    path = root / "train" / wnids[0] / f"{wnids[0]}_0.JPEG"
    pixels = np.zeros((8, 12, 3), dtype=np.uint8)
    pixels[:, 0] = 255
    Image.fromarray(pixels).save(path, format="PNG")
    data = load_dataset("imagenette", data_path=str(root))
    assert data.spec.size == (128, 128) and data.train_images.shape == (10, 3, 128, 128)
    first = data.train_images[0]
    assert (first[:, :, 0] > 0.5).all() and (first[:, :, 64:] < 1e-6).all()


def test_missing_or_empty_folders_are_named(tmp_path):
    with pytest.raises(DDError, match=r"dataset imagefruit not found: .*train does not exist.*--data-path"):
        load_dataset("imagefruit", data_path=str(tmp_path / "nowhere"))
    wnids = [w for _, w, _ in SUBSETS["imagefruit"]]
    root = write_tree(tmp_path / "imagenet", wnids[1:], extra=())
    with pytest.raises(DDError, match=r"class folder .*train/n07753275 \(pineapple\) is missing"):
        load_dataset("imagefruit", data_path=str(root), image_size=8)
    (root / "train" / wnids[0]).mkdir()
    with pytest.raises(DDError, match=r"class folder .*train/n07753275 \(pineapple\) holds no images"):
        load_dataset("imagefruit", data_path=str(root), image_size=8)
