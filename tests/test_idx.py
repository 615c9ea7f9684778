"""MNIST and Fashion-MNIST from idx files: the format checks, every layout (torchvision's raw/, flat, a system
package's folder) packed, unpacked and mixed, broken files, the not-found and download messages, and equality
with what torchvision reads; plus the torchvision sets' not-found and download messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dd.data import load_dataset
from dd.data import mnist as mnist_files
from dd.data.idx import read_idx
from dd.errors import DDError

CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
TORCHVISION_CLASS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}


def idx_bytes(array: np.ndarray) -> bytes:
    return (bytes([0, 0, CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.tobytes())


def write(path: Path, data: bytes, packed: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if packed:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_set(folder: Path, seed: int = 0, packed: tuple[bool, bool, bool, bool] = (False,) * 4) -> dict:
    """The four files of a 5-train, 3-test image set in ``folder``; ``packed`` per file (FILES order)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 5), ("t10k", 3)):
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, (n,), dtype=np.uint8)
    for stem, gz in zip(mnist_files.FILES, packed, strict=True):
        write(folder / stem, idx_bytes(arrays[stem]), gz)
    return arrays


def assert_loaded(data, arrays: dict) -> None:
    assert data.train_images.shape == (5, 1, 28, 28) and data.test_images.shape == (3, 1, 28, 28)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255)
    assert torch.equal(data.test_images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255)
    assert data.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.train_labels.dtype == torch.int64


@pytest.fixture
def system_dir(tmp_path, monkeypatch):
    """A stand-in for the system package's folder (the real one is never read by tests)."""
    folder = tmp_path / "system"
    for name in mnist_files.SYSTEM_DIRS:
        monkeypatch.setitem(mnist_files.SYSTEM_DIRS, name, (str(folder),))
    return folder


# ---- the format ----

@pytest.mark.parametrize("array", [np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
                                   np.array([[1, -2], [70000, 3]], dtype=">i4"),
                                   np.array([0.5, -1.25], dtype=">f4")])
@pytest.mark.parametrize("packed", [False, True])
def test_read_idx_round_trips_each_type(tmp_path, array, packed):
    path = write(tmp_path / "x-idx", idx_bytes(array), packed)
    out = read_idx(path)
    assert out.shape == array.shape and out.tolist() == array.tolist() and out.dtype.isnative


def test_header_is_read_by_hand(tmp_path):
    # 0x00 0x00, type 0x08 (ubyte), 2 dims: 2 x 3, then six values
    path = tmp_path / "by-hand"
    path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    assert read_idx(path).tolist() == [[1, 2, 3], [4, 5, 6]]


# ---- every layout, packed, unpacked and mixed ----

LAYOUTS = ("torchvision", "flat", "system")
PACKINGS = {"unpacked": (False,) * 4, "packed": (True,) * 4, "mixed": (True, False, False, True)}


@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("packing", list(PACKINGS))
def test_loads_every_layout_and_packing(tmp_path, system_dir, name, layout, packing):
    root = tmp_path / "data"
    folder = {"torchvision": root / TORCHVISION_CLASS[name] / "raw", "flat": root, "system": system_dir}[layout]
    arrays = make_set(folder, packed=PACKINGS[packing])
    assert_loaded(load_dataset(name, data_path=str(root)), arrays)


def test_search_order_torchvision_then_flat_then_system(tmp_path, system_dir, capsys):
    root = tmp_path / "data"
    in_system = make_set(system_dir, seed=3)
    assert_loaded(load_dataset("fashionmnist", data_path=str(root)), in_system)
    assert capsys.readouterr().err == f"fashionmnist: no files under {root}; read them from {system_dir}\n"
    flat = make_set(root, seed=2, packed=(True,) * 4)
    assert_loaded(load_dataset("fashionmnist", data_path=str(root)), flat)
    assert capsys.readouterr().err == ""
    torchvision = make_set(root / "FashionMNIST" / "raw", seed=1)
    assert_loaded(load_dataset("fashionmnist", data_path=str(root)), torchvision)


def test_unpacked_file_wins_over_its_gz(tmp_path, system_dir):
    arrays = make_set(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", b"not read", packed=True)
    assert_loaded(load_dataset("mnist", data_path=str(tmp_path)), arrays)


def test_a_partial_folder_does_not_mix_with_another(tmp_path, system_dir):
    flat = make_set(tmp_path, seed=1)
    partial = tmp_path / "MNIST" / "raw"
    make_set(partial, seed=2)
    (partial / "t10k-labels-idx1-ubyte").unlink()
    assert_loaded(load_dataset("mnist", data_path=str(tmp_path)), flat)


def test_equals_what_torchvision_reads(tmp_path, system_dir):
    """Same pixels, labels and order as torchvision's loader, so fingerprints of earlier records still hold."""
    from torchvision import datasets

    tv_root, flat = tmp_path / "tv", tmp_path / "flat"
    arrays = make_set(tv_root / "FashionMNIST" / "raw", seed=4)
    for stem, array in arrays.items():
        write(flat / stem, idx_bytes(array), packed=True)
    for root in (tv_root, flat):
        data = load_dataset("fashionmnist", data_path=str(root))
        for train, x, y in ((True, data.train_images, data.train_labels), (False, data.test_images, data.test_labels)):
            ref = datasets.FashionMNIST(str(tv_root), train=train)
            assert torch.equal(x, ref.data.unsqueeze(1).to(torch.float32).div_(255.0))
            assert torch.equal(y, ref.targets)


# ---- not found and download ----

def test_not_found_lists_every_folder_and_the_fix(tmp_path, system_dir):
    make_set(tmp_path / "FashionMNIST" / "raw")
    (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DDError) as e:
        load_dataset("fashionmnist", data_path=str(tmp_path))
    msg = str(e.value)
    assert msg.startswith("dataset fashionmnist not found: looked for train-images-idx3-ubyte, ")
    assert f"{tmp_path}/FashionMNIST/raw (lacks t10k-images-idx3-ubyte); {tmp_path}; {system_dir};" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-path" in msg and "--download" in msg
    assert "\n" not in msg


def test_mnist_not_found_offers_no_package(tmp_path, system_dir):
    with pytest.raises(DDError, match=r"fix: --data-path <folder holding the files>, or --download$") as e:
        load_dataset("mnist", data_path=str(tmp_path))
    assert "apt-get" not in str(e.value)


def test_download_is_not_tried_when_the_files_are_there(tmp_path, system_dir, monkeypatch):
    from torchvision import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("download tried")

    monkeypatch.setattr(datasets, "MNIST", refuse)
    arrays = make_set(tmp_path, packed=(True,) * 4)
    assert_loaded(load_dataset("mnist", data_path=str(tmp_path), download=True), arrays)


def test_download_fills_torchvisions_folder_then_loads(tmp_path, system_dir, monkeypatch):
    from torchvision import datasets

    made = {}

    def fake_download(root, train, download):
        assert download
        made.update(make_set(Path(root) / "FashionMNIST" / "raw", packed=(True,) * 4))

    monkeypatch.setattr(datasets, "FashionMNIST", fake_download)
    assert_loaded(load_dataset("fashionmnist", data_path=str(tmp_path), download=True), made)


def test_download_error_is_whole_and_one_line(tmp_path, system_dir, monkeypatch):
    from torchvision import datasets

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
                           "<urlopen error [Errno -3] Temporary failure in name resolution>\n")

    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(DDError) as e:
        load_dataset("mnist", data_path=str(tmp_path), download=True)
    msg = str(e.value)
    assert "\n" not in msg and "Tried https://a/, got: <urlopen error [Errno -3] Temporary failure" in msg
    assert f"into {tmp_path}/MNIST/raw" in msg and "yourself" not in msg


# ---- broken files: one error naming the file ----

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _header_only(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:6])


def _extra_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


def _foreign(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


def _labels_for_4(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))


def _labels_3d(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((5, 1, 1), dtype=np.uint8)))


def _images_2d(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((5, 784), dtype=np.uint8)))


def _images_32px(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((5, 32, 32), dtype=np.uint8)))


def _images_int32(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((5, 28, 28), dtype=">i4")))


def _label_10(path: Path) -> None:
    path.write_bytes(idx_bytes(np.array([0, 1, 2, 3, 10], dtype=np.uint8)))


BROKEN = {  # (file, how it is broken, the message's words)
    "truncated": ("train-images-idx3-ubyte", _truncate, "is truncated: 3929 bytes"),
    "truncated header": ("train-images-idx3-ubyte", _header_only, "shorter than its own header"),
    "extra bytes": ("train-labels-idx1-ubyte", _extra_bytes, "longer than its header says"),
    "wrong magic": ("t10k-images-idx3-ubyte", _foreign, "is not an idx file (its first bytes are 89504e47"),
    "count mismatch": ("train-labels-idx1-ubyte", _labels_for_4, "holds 5 images but"),
    "labels 3-dimensional": ("train-labels-idx1-ubyte", _labels_3d, "holds a 3-dimensional array"),
    "images 2-dimensional": ("train-images-idx3-ubyte", _images_2d, "holds a 2-dimensional array"),
    "images 32x32": ("train-images-idx3-ubyte", _images_32px, "uint8 images of [32, 32] pixels, not uint8 images"),
    "images int32": ("train-images-idx3-ubyte", _images_int32, "int32 images"),
    "label out of range": ("train-labels-idx1-ubyte", _label_10, "has label 10, outside 0..9"),
}


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_is_one_error_naming_it(tmp_path, system_dir, case, packed):
    stem, breaks, words = BROKEN[case]
    make_set(tmp_path)
    path = tmp_path / stem
    breaks(path)
    if packed:
        path.with_name(stem + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        path = path.with_name(stem + ".gz")
    with pytest.raises(DDError) as e:
        load_dataset("mnist", data_path=str(tmp_path))
    msg = str(e.value)
    assert words in msg and "\n" not in msg
    named = str(tmp_path / "train-images-idx3-ubyte") if case == "count mismatch" else str(path)
    assert named in msg


def test_a_gz_that_is_not_gzip_is_named(tmp_path, system_dir):
    make_set(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte").rename(bad)
    with pytest.raises(DDError, match=f"^{bad} is named .gz but is not gzip data; replace it"):
        load_dataset("mnist", data_path=str(tmp_path))


def test_a_damaged_gzip_is_named(tmp_path, system_dir):
    make_set(tmp_path, packed=(True,) * 4)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DDError, match=f"^{bad} is a damaged gzip file"):
        load_dataset("mnist", data_path=str(tmp_path))


# ---- the torchvision sets ----

@pytest.mark.parametrize("name, first", [("cifar10", "cifar-10-batches-py/data_batch_1"),
                                         ("cifar100", "cifar-100-python/train"), ("svhn", "train_32x32.mat")])
def test_torchvision_set_not_found_lists_the_files(tmp_path, name, first):
    with pytest.raises(DDError) as e:
        load_dataset(name, data_path=str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"dataset {name} not found: looked for {tmp_path}/{first}, ")
    assert "; none is there; fix: pass --download, or --data-path to a folder holding them" in msg
    assert "\n" not in msg


def test_torchvision_set_partly_there_names_what_is_missing(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"x")
    with pytest.raises(DDError, match=f"; missing: {tmp_path}/test_32x32.mat; fix: pass --download"):
        load_dataset("svhn", data_path=str(tmp_path))


def test_torchvision_set_present_but_refused_says_so(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"x")
    (tmp_path / "test_32x32.mat").write_bytes(b"x")
    with pytest.raises(DDError, match="all are there but fail torchvision's MD5 check .* pass --download to fetch"):
        load_dataset("svhn", data_path=str(tmp_path))


def test_torchvision_download_error_is_whole(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise RuntimeError("first line\nsecond line with the cause")

    monkeypatch.setattr(datasets, "CIFAR10", offline)
    with pytest.raises(DDError) as e:
        load_dataset("cifar10", data_path=str(tmp_path), download=True)
    msg = str(e.value)
    assert "(RuntimeError: first line second line with the cause)" in msg and "none is there" in msg
    assert "\n" not in msg and "yourself" not in msg
