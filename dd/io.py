"""Crash-safe file writes and checksums: every artefact of dd is written through here."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dd.errors import DDError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""The mode of every artefact: what ``open()`` would give under the process's umask (mkstemp gives 0600)."""


def temp_file_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder, with the artefact mode, to be renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return Path(tmp)


def _disk_full(error: Exception) -> bool:
    """Whether ``error`` says that the device is full (an OSError, or a library's error carrying the OS's text)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return f"os error {errno.ENOSPC}" in text or "No space left on device" in text


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp_path)`` then fsync and rename, so a crash or a full
    disk mid-write leaves the previous file (or no file) in place, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_file_beside(path)
    try:
        write(tmp_path)
        os.chmod(tmp_path, FILE_MODE)  # some writers (safetensors) replace the file and its mode
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except Exception as e:  # safetensors reports a full disk as its own error type, with the OS error in the text
        if not _disk_full(e):
            raise
        raise DDError(f"no space left on the device while writing {path} (the previous file is intact); "
                      "free some space and rerun the same command") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line DDError."""
    path = Path(path)
    if not path.is_file():
        raise DDError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DDError(f"{what} {path} is not valid JSON ({e}); restore it or delete it and rerun") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_tensors(path: str | Path, what: str = "file") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing or corrupted file into a one-line DDError."""
    return load_tensors_and_metadata(path, what)[0]


def load_tensors_and_metadata(path: str | Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its string metadata, with one-line errors for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise DDError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as e:  # safetensors raises several types for a damaged header
        raise DDError(f"{what} {path} is corrupted or truncated ({type(e).__name__}); "
                      "delete it and regenerate it") from None


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """Hex SHA-256 of tensors' dtypes, shapes and values (row chunks, so a large tensor is never copied whole)."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(tensor.shape[0], -1) if tensor.dim() else tensor.detach().reshape(1, 1)
        rows = max(1, (1 << 24) // max(1, flat.shape[1] * flat.element_size()))
        for chunk in flat.split(rows):
            h.update(chunk.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def pack_state(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (``state_dict()`` of a module or an optimiser) into its tensors, named
    ``<prefix>.<i>``, and a JSON-able skeleton; ``unpack_state`` reverses it. Dict keys keep their type
    (an optimiser's state is keyed by ints) and tuples stay tuples, so nothing has to be pickled."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"{prefix}.{len(tensors)}"
            tensors[name] = value.detach()
            return {"tensor": name}
        if isinstance(value, dict):
            return {"dict": [[k, walk(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {type(value).__name__: [walk(v) for v in value]}
        return {"value": value}

    return tensors, walk(obj)


def unpack_state(skeleton: Any, tensors: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> Any:
    """The nested state that ``pack_state`` split into ``skeleton`` and ``tensors`` (tensors moved to ``device``)."""
    if "tensor" in skeleton:
        return tensors[skeleton["tensor"]].to(device)
    if "dict" in skeleton:
        return {k: unpack_state(v, tensors, device) for k, v in skeleton["dict"]}
    if "list" in skeleton or "tuple" in skeleton:
        items = [unpack_state(v, tensors, device) for v in skeleton.get("list", skeleton.get("tuple"))]
        return items if "list" in skeleton else tuple(items)
    return skeleton["value"]
