"""dd.data: the digits split, folder and CIFAR-10 loaders, class indices, standard and ZCA preprocessing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dd.data import (
    DatasetSpec,
    Preprocessor,
    class_indices,
    get_spec,
    list_datasets,
    load_dataset,
)
from dd.errors import DDError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ---- registry and digits ----

def test_registry_lists_every_dataset_and_rejects_unknown_names():
    assert list_datasets()[0] == "digits"
    assert {"cifar10", "cifar100", "mnist", "fashionmnist", "svhn", "tiny", "imagefolder"} <= set(list_datasets())
    assert get_spec("cifar10") == DatasetSpec("cifar10", 3, (32, 32), 10, (0.4914, 0.4822, 0.4465),
                                              (0.2023, 0.1994, 0.2010))
    assert get_spec("cifar100").num_classes == 100 and get_spec("cifar100").mean == get_spec("cifar10").mean
    assert get_spec("tiny").size == (64, 64) and get_spec("tiny").num_classes == 200
    with pytest.raises(DDError, match=r"unknown dataset 'nope'; choose from digits, "):
        get_spec("nope")
    with pytest.raises(DDError, match="unknown dataset"):
        load_dataset("nope")


def test_digits_split_sizes_shapes_and_types(digits):
    assert digits.spec == get_spec("digits")
    assert digits.train_images.shape == (1437, 1, 8, 8) and digits.test_images.shape == (360, 1, 8, 8)
    assert digits.train_images.dtype == torch.float32 and digits.train_labels.dtype == torch.int64
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    assert digits.train_images.device.type == "cpu"


def test_digits_split_is_stratified(digits):
    train = torch.bincount(digits.train_labels, minlength=10)
    test = torch.bincount(digits.test_labels, minlength=10)
    assert (test - 0.2 * (train + test)).abs().max() <= 1  # every class split 80/20 to within one image


def test_digits_load_is_deterministic(digits):
    again = load_dataset("digits")
    assert torch.equal(again.train_images, digits.train_images) and torch.equal(again.test_labels, digits.test_labels)


def test_digits_pixels_are_scaled_to_unit_range(digits):
    x = torch.cat([digits.train_images, digits.test_images])
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # sixteenths of the 0..16 scale


def test_digits_mean_std_constants_match_train_split(digits):
    x = digits.train_images.double()
    assert digits.spec.mean[0] == pytest.approx(x.mean().item(), abs=1e-7)
    assert digits.spec.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-7)


def test_image_size_resizes_any_dataset_and_updates_spec():
    data = load_dataset("digits", image_size=16)
    assert data.spec.size == (16, 16) and data.train_images.shape == (1437, 1, 16, 16)
    assert 0.0 <= data.train_images.min() and data.train_images.max() <= 1.0
    with pytest.raises(DDError, match="image-size"):
        load_dataset("digits", image_size=0)


def test_class_indices_partition_the_labels():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    idx = class_indices(labels, 4)
    assert [t.tolist() for t in idx] == [[1, 4], [3], [0, 2, 5], []]
    with pytest.raises(ValueError):
        class_indices(torch.tensor([0, 3]), 3)


# ---- image folders ----

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "eel": (0, 255, 0)}


def _write(path: Path, colour: tuple[int, int, int], size: int = 10, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size + 3), colour).convert(mode).save(path)


def test_imagefolder_loads_classes_labels_pixels_and_stats(tmp_path):
    for cls, colour in COLOURS.items():
        n = {"cat": 3, "dog": 2, "eel": 1}[cls]
        for i in range(n):
            _write(tmp_path / "train" / cls / f"{i}.png", colour, size=5 + i)
        _write(tmp_path / "val" / cls / "v.png", colour)
    _write(tmp_path / "train" / "dog" / "grey.png", (128, 128, 128), mode="L")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", data_path=str(tmp_path), image_size=6)
    assert data.spec.name == "imagefolder" and data.spec.num_classes == 3 and data.spec.size == (6, 6)
    assert data.train_images.shape == (7, 3, 6, 6) and data.test_images.shape == (3, 3, 6, 6)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2]  # sorted class names; files sorted in a class
    assert data.test_labels.tolist() == [0, 1, 2]
    assert torch.allclose(data.train_images[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 6, 6))
    assert torch.allclose(data.train_images[5], torch.full((3, 6, 6), 128 / 255))  # 'grey.png' sorts after 0, 1
    x = data.train_images.double()
    assert data.spec.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert data.spec.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert load_dataset("imagefolder", data_path=str(tmp_path)).spec.size == (32, 32)


def test_imagefolder_accepts_test_folder(tmp_path):
    for cls, colour in COLOURS.items():
        _write(tmp_path / "train" / cls / "a.jpg", colour)
        _write(tmp_path / "test" / cls / "b.bmp", colour)
    data = load_dataset("imagefolder", data_path=str(tmp_path), image_size=4)
    assert data.test_labels.tolist() == [0, 1, 2]


def test_imagefolder_errors_name_the_path_and_layout(tmp_path):
    with pytest.raises(DDError, match=f"{tmp_path / 'train'} does not exist; expected DIR/train/<class>/") as e:
        load_dataset("imagefolder", data_path=str(tmp_path))
    assert "\n" not in str(e.value)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DDError, match=f"no images under {tmp_path / 'train'}"):
        load_dataset("imagefolder", data_path=str(tmp_path))
    _write(tmp_path / "train" / "cat" / "a.png", (1, 2, 3))
    with pytest.raises(DDError, match="neither .*val nor .*test exists"):
        load_dataset("imagefolder", data_path=str(tmp_path))
    _write(tmp_path / "val" / "cow" / "a.png", (1, 2, 3))
    with pytest.raises(DDError, match="not a class of the train split"):
        load_dataset("imagefolder", data_path=str(tmp_path))


def _tiny_tree(root: Path, val_in_folders: bool = False) -> None:
    wnids = {"n02": (0, 0, 255), "n01": (255, 0, 0)}
    for wnid, colour in wnids.items():
        for i in range(2):
            _write(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour, size=64)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored")
    if val_in_folders:
        for wnid, colour in wnids.items():
            _write(root / "val" / wnid / f"{wnid}.JPEG", colour, size=64)
        return
    rows = []
    for i, wnid in enumerate(["n02", "n01", "n02"]):
        _write(root / "val" / "images" / f"val_{i}.JPEG", wnids[wnid], size=64)
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def test_tiny_imagenet_val_annotations_layout(tmp_path):
    _tiny_tree(tmp_path / "tiny-imagenet-200")
    data = load_dataset("tiny", data_path=str(tmp_path))  # the extracted folder inside data_path is found
    assert data.spec.size == (64, 64) and data.spec.num_classes == 2 and data.spec.mean == get_spec("tiny").mean
    assert data.train_images.shape == (4, 3, 64, 64) and data.train_labels.tolist() == [0, 0, 1, 1]
    assert data.test_labels.tolist() == [1, 0, 1]  # class ids are the sorted train wnids: n01 -> 0, n02 -> 1
    red = data.test_images[1].mean(dim=(1, 2))
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1  # JPEG is lossy


def test_tiny_imagenet_val_in_class_folders_and_resize(tmp_path):
    _tiny_tree(tmp_path, val_in_folders=True)
    data = load_dataset("tiny", data_path=str(tmp_path), image_size=16)
    assert data.test_labels.tolist() == [0, 1] and data.test_images.shape == (2, 3, 16, 16)
    assert data.spec.size == (16, 16)


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DDError, match=f"{tmp_path / 'train'} does not exist; expected DIR/train/<wnid>/images"):
        load_dataset("tiny", data_path=str(tmp_path))
    _tiny_tree(tmp_path)
    with open(tmp_path / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(DDError, match="val_9.JPEG is listed in val_annotations.txt but missing"):
        load_dataset("tiny", data_path=str(tmp_path))


# ---- torchvision sets ----

def test_cifar10_images_are_channels_first(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # md5s of the real files
    monkeypatch.setattr(CIFAR10, "_load_meta", lambda self: None)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 7]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    data = load_dataset("cifar10", data_path=str(tmp_path))
    assert data.train_images.shape == (10, 3, 32, 32) and data.test_images.shape == (2, 3, 32, 32)
    expected = torch.from_numpy(batches["test_batch"]["data"]).view(2, 3, 32, 32).float() / 255
    assert torch.equal(data.test_images, expected) and data.train_labels.tolist() == [1, 7] * 5


# ---- preprocessing ----

def test_standard_preprocessing_formula_and_inverse(digits):
    p = Preprocessor.fit("standard", digits.spec, digits.train_images)
    x = digits.test_images[:5]
    assert torch.allclose(p(x), (x - digits.spec.mean[0]) / digits.spec.std[0])
    assert torch.allclose(p.invert(p(x)), x, atol=1e-6)
    spec3 = DatasetSpec("s", 3, (2, 2), 2, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    x3 = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    y3 = Preprocessor.fit("standard", spec3, x3)(x3)
    assert y3.dtype == torch.float64
    assert torch.allclose(y3[:, 1], (x3[:, 1] - 0.2) / 0.25)
    assert p.describe()["kind"] == "standard"


def test_zca_matches_eigendecomposition_by_hand():
    torch.manual_seed(0)
    x = torch.rand(40, 2, 3, 3) * torch.linspace(0.2, 1.0, 18).view(1, 2, 3, 3)
    eps = 0.1
    p = Preprocessor.fit("zca", DatasetSpec("t", 2, (3, 3), 2, (0.5,) * 2, (0.5,) * 2), x, zca_eps=eps)
    flat = x.reshape(40, -1).double()
    mu = flat.mean(0)
    cov = (flat - mu).T @ (flat - mu) / (40 - 1)  # unbiased covariance
    s, u = torch.linalg.eigh(cov)
    t = u @ torch.diag((s + eps).rsqrt()) @ u.T
    expected = ((flat - mu) @ t).reshape(x.shape)
    assert torch.allclose(p(x).double(), expected, atol=1e-4)
    t_inv = u @ torch.diag((s + eps).sqrt()) @ u.T
    assert torch.allclose(p.state()[0]["transform_inv"].double(), t_inv, atol=1e-4)
    assert p.describe()["eps"] == "0.1" and p.describe()["kind"] == "zca"


def test_zca_state_roundtrip_and_inverse(digits, tmp_path):
    p = Preprocessor.fit("zca", digits.spec, digits.train_images)
    x = digits.test_images[:16]
    y = p(x)
    assert y.shape == x.shape
    assert torch.allclose(p.invert(y), x, atol=1e-4)
    q = Preprocessor.from_state(*p.state())
    assert torch.equal(q(x), y) and q.describe() == p.describe()
    p.save(tmp_path / "zca.safetensors")
    r = Preprocessor.load(tmp_path / "zca.safetensors")
    assert torch.equal(r(x), y) and r.describe() == p.describe()
    other = Preprocessor.fit("zca", digits.spec, digits.train_images, zca_eps=0.01)
    assert other.describe()["sha256"] != p.describe()["sha256"]


def test_preprocessor_state_errors(tmp_path):
    with pytest.raises(DDError, match="unknown preprocessing 'pca'"):
        Preprocessor.fit("pca", get_spec("digits"), torch.rand(4, 1, 8, 8))
    with pytest.raises(DDError, match="lacks tensors"):
        Preprocessor.from_state({"mean": torch.zeros(3)}, {"kind": "zca"})
    with pytest.raises(DDError, match="does not exist"):
        Preprocessor.load(tmp_path / "missing.safetensors")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_preprocessor_zca_follows_the_input_device_on_cuda(digits):
    for kind in ("standard", "zca"):
        p = Preprocessor.fit(kind, digits.spec, digits.train_images)
        x = digits.test_images[:8]
        y = p(x.cuda())
        assert y.device.type == "cuda" and torch.allclose(y.cpu(), p(x), atol=1e-4)
        assert torch.allclose(p.invert(y).cpu(), x, atol=1e-4)


def test_sixteen_bit_images_are_scaled_by_their_range_not_clipped(tmp_path):
    """A 16-bit grey PNG at 65535, 32768 and 0 reads as 1, 0.5 and 0 (PIL's own RGB conversion clips
    every value above 255 to white)."""
    from dd.data.folder import decode_images

    values = np.array([[65535, 32768, 0, 0]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = decode_images([tmp_path / "deep.png"], 4)[0]
    assert pixels.shape == (3, 4, 4)
    assert torch.allclose(pixels[:, 0, :3], torch.tensor([1.0, 128 / 255, 0.0]).expand(3, 3))


def test_artefacts_follow_the_umask(tmp_path):
    """Files written through dd.io get the mode open() would give (0644 under umask 022), not mkstemp's 0600."""
    import os

    import dd.io

    dd.io.atomic_write_json(tmp_path / "a.json", {"x": 1})
    dd.io.save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(1)})
    for name in ("a.json", "t.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == dd.io.FILE_MODE == 0o666 & ~_current_umask()
    assert os.stat(tmp_path / "a.json").st_mode & 0o044, "group and others can read an artefact"


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_validation_split_is_stratified_seeded_and_disjoint():
    from dd.realdata import carve_validation, prepare_data

    labels = torch.arange(4).repeat_interleave(torch.tensor([10, 20, 5, 2]))
    train, val = carve_validation(labels, 4, 0.2, seed=3)
    assert torch.bincount(labels[val], minlength=4).tolist() == [2, 4, 1, 1]  # round(0.2 n), at least one
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(labels)))  # a partition
    again, other = carve_validation(labels, 4, 0.2, seed=3), carve_validation(labels, 4, 0.2, seed=4)
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)
    assert carve_validation(labels, 4, 0.0, seed=3)[1].numel() == 0
    with pytest.raises(DDError, match="--val-fraction must be in"):
        carve_validation(labels, 4, 1.0, seed=0)
    data = prepare_data("digits", torch.device("cpu"), val_fraction=0.1, val_seed=0)
    full = prepare_data("digits", torch.device("cpu"))
    assert data.splits() == {"train": full.splits()["train"] - data.splits()["val"], "val": data.splits()["val"],
                             "test": 360, "val_fraction": 0.1, "val_seed": 0}
    assert torch.equal(data.test_images, full.test_images)  # the test split is untouched
    assert data.train_and_val[0].shape == full.train_images.shape
    with pytest.raises(DDError, match="no validation split"):
        full.split("val")


def test_a_grey_imagefolder_loads_with_one_channel(tmp_path):
    """Grey PNGs (mode L) give [N, 1, H, W]; one colour image anywhere keeps all three channels."""
    for split in ("train", "val"):
        for cls, level in (("a", 40), ("b", 200)):
            _write(tmp_path / split / cls / "x.png", (level, level, level), mode="L")
    grey = load_dataset("imagefolder", data_path=str(tmp_path), image_size=4)
    assert grey.spec.channels == 1 and grey.train_images.shape == (2, 1, 4, 4) and len(grey.spec.mean) == 1
    assert grey.train_images[0, 0, 0, 0].item() == pytest.approx(40 / 255)
    _write(tmp_path / "train" / "a" / "y.png", (255, 0, 0))
    assert load_dataset("imagefolder", data_path=str(tmp_path), image_size=4).spec.channels == 3


def test_channels_converts_grey_to_colour_and_colour_to_luma(tmp_path):
    """--channels 3 repeats a grey value in every channel; --channels 1 keeps the BT.601 luma of a colour pixel;
    the spec's mean/std are those of the converted train images; other counts are refused."""
    for split in ("train", "val"):
        for cls, level in (("a", 40), ("b", 200)):
            _write(tmp_path / split / cls / "x.png", (level, level, level), mode="L")
    colour = load_dataset("imagefolder", data_path=str(tmp_path), image_size=4, channels=3)
    assert colour.spec.channels == 3 and colour.train_images.shape == (2, 3, 4, 4)
    assert torch.equal(colour.train_images[:, 0], colour.train_images[:, 2])
    assert colour.spec.mean == pytest.approx((120 / 255,) * 3) and colour.spec.std == pytest.approx((80 / 255,) * 3)
    _write(tmp_path / "train" / "a" / "y.png", (255, 0, 0))
    luma = load_dataset("imagefolder", data_path=str(tmp_path), image_size=4, channels=1)
    assert luma.spec.channels == 1 and luma.test_images.shape == (2, 1, 4, 4)
    assert luma.train_images[1, 0, 0, 0].item() == pytest.approx(0.299)  # 'y.png' (pure red) sorts after 'x.png'
    assert luma.spec.mean[0] == pytest.approx(luma.train_images.double().mean().item())
    digits = load_dataset("digits", channels=3)
    assert digits.spec.channels == 3 and digits.spec.mean[0] == pytest.approx(digits.spec.mean[2])
    with pytest.raises(DDError, match="^--channels must be 1 .grey. or 3 .colour., got 2$"):
        load_dataset("digits", channels=2)
