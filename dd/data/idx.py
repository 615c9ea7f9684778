"""The idx file format of MNIST and Fashion-MNIST, read and checked by dd itself.

An idx file is two zero bytes, a type code, the number of dimensions, each dimension as a big-endian
uint32, then the values in C order (LeCun et al., http://yann.lecun.com/exdb/mnist/). A file may be
gzipped (``.gz``), as distributed. The header, not a checksum table, decides whether a file is valid,
so a re-compressed copy (Debian's) or an unpacked one loads the same, while a truncated or foreign file
is one ``DDError`` naming it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from dd.errors import DDError

# Type code -> big-endian numpy dtype (the format's table).
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when it is gzip (by its first bytes, whatever its name); a ``.gz``
    name on a file that is not gzip, or a damaged gzip stream, is a ``DDError``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DDError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DDError(f"{path} is a damaged gzip file ({e}); fetch or unpack it again") from None
    if path.suffix == ".gz":
        raise DDError(f"{path} is named .gz but is not gzip data; replace it with the original file")
    return raw


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array stored in idx file ``path`` (optionally gzipped), checked: magic bytes, type code,
    dimension count (``ndim`` when given) and that the file holds exactly the values its header declares."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in DTYPES:
        raise DDError(f"{path} is not an idx file (its first bytes are {data[:4].hex() or 'missing'}, not 0000 "
                      "followed by a type code and a dimension count); replace it with the original file")
    dtype, dims = np.dtype(DTYPES[data[2]]), data[3]
    if ndim is not None and dims != ndim:
        raise DDError(f"{path} holds a {dims}-dimensional array where a {ndim}-dimensional one belongs; is it the "
                      "right file (images are 3-dimensional, labels 1-dimensional)?")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DDError(f"{path} is truncated: {len(data)} bytes, shorter than its own header; fetch it again")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=dims, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DDError(f"{path} is {what}: {len(data)} bytes (unpacked) where its header {list(shape)} of "
                      f"{dtype.name} declares {expected}; fetch it again")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_split(images_path: str | Path, labels_path: str | Path, size: tuple[int, int],
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One split as (uint8 images [N, H, W], int64 labels [N]) from its two idx files, checked against each
    other and against the dataset: ``size`` (H, W), labels in ``range(num_classes)``, one label per image."""
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(size):
        raise DDError(f"{images_path} holds {images.dtype.name} images of {list(images.shape[1:])} pixels, not "
                      f"uint8 images of {list(size)}; is it the right file?")
    if labels.dtype != np.uint8:
        raise DDError(f"{labels_path} holds {labels.dtype.name} labels, not uint8; is it the right file?")
    if len(images) != len(labels):
        raise DDError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                      "the two files are from different splits or versions")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DDError(f"{labels_path} has label {int(labels.max())}, outside 0..{num_classes - 1}; is it the "
                      "right file?")
    return images, labels.astype(np.int64)
