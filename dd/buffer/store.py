"""The trajectory store: expert trajectories on disk, the contract between ``dd.buffer`` and ``dd.distill``.

A store is one folder ``buffers/<dataset>/<model>/<recipe-tag>/``::

    manifest.json               header, written once: format, dataset, model, parameter layout, recipe
    expert_00000.safetensors    tensor ``trajectory`` [E+1, P] float32 (row 0 = init, row e = after epoch e)
    expert_00000.json           record: index, file, sha256, seed, per-epoch test accuracy, seconds
    preprocess.safetensors      optional preprocessing state (ZCA), its metadata as JSON inside

Every file is written atomically (temp file + rename). An expert is complete when its record exists:
the record is written after the tensor file, so a process killed at any moment leaves either a
complete expert or an orphan tensor file that the next run overwrites. Several processes (torchrun
ranks) may write different experts into one store at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes

from dd import schema
from dd.errors import DDError
from dd.functional import ParamSpec
from dd.io import (
    atomic_write_bytes,
    atomic_write_json,
    load_tensors_and_metadata,
    read_json,
    save_tensors,
    temp_file_beside,
)
from dd.schema import check_schema

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREPROCESS = "preprocess.safetensors"
# Header entries that must agree when a store is reopened for writing.
IDENTITY_KEYS = ("dataset", "model", "param_spec", "recipe", "num_epochs")
_EXPERT_RECORD = re.compile(r"expert_(\d+)\.json")
_REGENERATE = "rerun python -m dd.buffer with the same flags to regenerate it"
_HASH_CHUNK = 8 << 20  # bytes read at a time when checksumming an expert file


def _canonical(value: Any) -> Any:
    """JSON-able value with integral floats as ints, so ``lr=1`` and ``lr=1.0`` hash alike."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_tag(recipe: dict) -> str:
    """Folder name of a recipe: readable main settings plus 8 hex digits of the SHA-256 of the whole
    recipe's canonical JSON, e.g. ``sgd-lr0.01-m0-wd0-e50-b256-dsa-standard_1a2b3c4d``.

    Equal recipes give equal tags; any difference in any entry changes the hash."""
    canonical = json.dumps(_canonical(recipe), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    parts = [str(recipe.get("optimizer", "sgd"))]
    if "rho" in recipe:
        parts += [f"rho{_fmt(recipe['rho'])}", f"a{_fmt(recipe.get('alpha'))}"]
        parts += [] if recipe.get("adaptive", True) else ["nonadaptive"]
    for key, prefix in (("lr", "lr"), ("momentum", "m"), ("weight_decay", "wd"), ("epochs", "e"),
                        ("batch_size", "b")):
        if key in recipe:
            parts.append(prefix + _fmt(recipe[key]))
    if "dsa_strategy" in recipe:
        parts.append("dsa" if recipe["dsa_strategy"] not in (None, "", "none") else "nodsa")
    if "preprocess" in recipe:
        parts.append(str(recipe["preprocess"]))
    if recipe.get("lr_decay_epoch") is not None:
        parts.append(f"decay{recipe['lr_decay_epoch']}x{_fmt(recipe.get('lr_decay_factor'))}")
    if recipe.get("loss_warmup"):
        parts.append("warmup")
    if recipe.get("gp_lambda"):
        parts.append(f"gp{_fmt(recipe['gp_lambda'])}")
    if recipe.get("train_per_class") is not None:
        parts.append(f"{recipe['train_per_class']}pc{recipe.get('train_subset_seed', 0)}")
    readable = re.sub(r"[^A-Za-z0-9.+-]+", "-", "-".join(parts)).strip("-.")
    return f"{readable}_{digest}"


def _publish_once(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` atomically unless it exists; False when another process won."""
    tmp = temp_file_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the file exists
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: rename, after a last check
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _diff(old: Any, new: Any) -> str:
    """Short description of how ``new`` differs from ``old``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
        return ", ".join(f"{k}: {old.get(k, '<unset>')} stored vs {new.get(k, '<unset>')} requested"
                         for k in keys[:3])
    return f"{old} stored vs {new} requested"


class ExpertFile:
    """One expert's trajectory file, memory-mapped: ``rows(a, b)`` reads rows a..b-1 and nothing else."""

    def __init__(self, path: Path, handle: Any, rows: Any) -> None:
        self.path, self._handle, self._rows = path, handle, rows  # the handle keeps the mapping open

    def rows(self, start: int, stop: int, pin: bool = False) -> torch.Tensor:
        """Rows ``start``..``stop - 1`` [stop - start, P] float32 on the CPU (a fresh tensor, not the mapping), in
        pinned memory with ``pin``: copied once from the mapping either way."""
        try:
            view = self._rows[start:stop]  # a view of the mapping
            if pin:
                return torch.empty(view.shape, dtype=view.dtype, pin_memory=True).copy_(view)
            return view.clone()
        except Exception as e:  # the file changed or shrank under the mapping
            raise DDError(f"expert file {self.path} could not be read ({type(e).__name__}); it is corrupted or "
                          f"truncated: delete it and {_REGENERATE}") from None


class TrajectoryStore:
    """A folder of expert trajectories with a fixed header (see the module docstring)."""

    def __init__(self, root: Path, header: dict) -> None:
        self.root = root
        self.header = header
        self._spec = ParamSpec.from_json(header["param_spec"])

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, header: dict) -> TrajectoryStore:
        """Create the store at ``root`` with ``header`` (needs dataset, model, param_spec, recipe and
        num_epochs), or reopen it if it exists, checking that those entries agree."""
        root = Path(root)
        missing = [k for k in IDENTITY_KEYS if k not in header]
        if missing:
            raise ValueError(f"store header lacks {', '.join(missing)}")
        header = _canonical({
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dd_version": _dd_version(),
            **{k: v for k, v in header.items() if k != "format_version"},
        })
        ParamSpec.from_json(header["param_spec"])
        root.mkdir(parents=True, exist_ok=True)
        _publish_once(root / MANIFEST, (json.dumps(header, indent=2) + "\n").encode())
        store = cls.open(root)
        for key in IDENTITY_KEYS:
            if store.header[key] != header[key]:
                raise DDError(f"the buffer at {root} was made with a different {key.replace('_', ' ')} "
                              f"({_diff(store.header[key], header[key])}); use another --buffer-dir or delete it")
        return store

    @classmethod
    def open(cls, root: str | Path) -> TrajectoryStore:
        """Open an existing store; DDError when it is missing, malformed or of another format version."""
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise DDError(f"no expert buffer at {root} (no {MANIFEST}); run python -m dd.buffer with the "
                          "dataset and model you want first, or pass the right --buffer path")
        header = read_json(manifest, "buffer manifest")
        if not isinstance(header, dict):
            raise DDError(f"buffer manifest {manifest} is not a JSON object; delete the folder and rerun dd.buffer")
        version = header.get("format_version")
        if version == FORMAT_VERSION:
            check_schema(header, schema.MANIFEST, manifest, "buffer manifest",
                         "restore it, or delete the folder and rerun dd.buffer")
        if version != FORMAT_VERSION:
            raise DDError(f"buffer {root} has format version {version}, this dd reads version {FORMAT_VERSION}; "
                          "regenerate it with this dd's python -m dd.buffer")
        absent = [k for k in IDENTITY_KEYS if k not in header]
        if absent:
            raise DDError(f"buffer manifest {manifest} lacks {', '.join(absent)}; "
                          "delete the folder and rerun dd.buffer")
        try:
            return cls(root, header)
        except (KeyError, TypeError, ValueError) as e:
            raise DDError(f"buffer manifest {manifest} has a malformed param_spec ({e}); "
                          "delete the folder and rerun dd.buffer") from None

    # -- header views ----------------------------------------------------------------------------

    @property
    def param_spec(self) -> ParamSpec:
        """Names and shapes of the experts' parameters; P = ``param_spec.numel``."""
        return self._spec

    @property
    def num_epochs(self) -> int:
        """Epochs E per expert; a trajectory has E+1 rows."""
        return int(self.header["num_epochs"])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape [E+1, P] of every trajectory."""
        return (self.num_epochs + 1, self._spec.numel)

    def check_window(self, max_start_epoch: int, expert_epochs: int) -> None:
        """DDError unless ``max_start_epoch + expert_epochs <= E`` (the rule of the original code)."""
        need = max_start_epoch + expert_epochs
        if need > self.num_epochs:
            raise DDError(f"the buffer at {self.root} stores {self.num_epochs} epochs but --max-start-epoch "
                          f"{max_start_epoch} + --expert-epochs {expert_epochs} needs {need}; lower them or train "
                          "longer experts (dd.buffer --epochs)")

    # -- experts ---------------------------------------------------------------------------------

    def tensor_path(self, index: int) -> Path:
        """Path of expert ``index``'s trajectory file."""
        return self.root / f"expert_{index:05d}.safetensors"

    def record_path(self, index: int) -> Path:
        """Path of expert ``index``'s record (its existence marks the expert complete)."""
        return self.root / f"expert_{index:05d}.json"

    def completed(self) -> list[int]:
        """Sorted indices of complete experts (record and tensor file both present)."""
        indices = []
        for path in self.root.glob("expert_*.json"):
            match = _EXPERT_RECORD.fullmatch(path.name)
            if match and self.tensor_path(int(match.group(1))).is_file():
                indices.append(int(match.group(1)))
        return sorted(indices)

    def missing(self, num_experts: int) -> list[int]:
        """Indices in ``range(num_experts)`` that are not complete: the work left to a (resumed) run."""
        done = set(self.completed())
        return [i for i in range(num_experts) if i not in done]

    def write_expert(self, index: int, trajectory: torch.Tensor, record: dict) -> None:
        """Store expert ``index``: ``trajectory`` [E+1, P] (stored as float32) and its ``record``
        (seed, test_acc, ...; index, file and sha256 are added). Overwrites an earlier expert ``index``."""
        if index < 0:
            raise ValueError(f"expert index must be >= 0, got {index}")
        if tuple(trajectory.shape) != self.shape:
            raise DDError(f"expert {index} has a trajectory of shape {list(trajectory.shape)} but the buffer at "
                          f"{self.root} stores {list(self.shape)} ([epochs+1, params]); check --epochs and --model")
        trajectory = trajectory.detach().to("cpu", torch.float32).contiguous()
        finite = torch.isfinite(trajectory).all(dim=1)
        if not bool(finite.all()):
            epoch = int((~finite).nonzero()[0])
            raise DDError(f"expert {index} diverged (non-finite parameters from epoch {epoch}); "
                          "lower the expert --lr")
        data = save_safetensors_bytes({"trajectory": trajectory}, metadata={"format_version": str(FORMAT_VERSION),
                                                                          "index": str(index)})
        self.record_path(index).unlink(missing_ok=True)  # uncommit first if overwriting
        atomic_write_bytes(self.tensor_path(index), data)
        own = {"index": index, "file": self.tensor_path(index).name, "sha256": hashlib.sha256(data).hexdigest(),
               "shape": list(self.shape)}
        atomic_write_json(self.record_path(index), {**own, **{k: v for k, v in record.items() if k not in own}})

    def record(self, index: int) -> dict:
        """The record of complete expert ``index``."""
        path = self.record_path(index)
        if not path.is_file():
            raise DDError(f"expert {index} is not finished in the buffer at {self.root} (no {path.name}); "
                          f"{_REGENERATE}")
        record = read_json(path, "expert record")
        check_schema(record, schema.EXPERT_RECORD, path, "expert record", f"delete it and {_REGENERATE}")
        if record.get("index") != index:
            raise DDError(f"expert record {path} is malformed; delete it and {_REGENERATE}")
        return record

    def verify_expert(self, index: int) -> None:
        """Check expert ``index``'s file against the SHA-256 of its record, reading it in chunks (memory stays
        flat); DDError naming the file when it is missing, truncated or corrupted."""
        record = self.record(index)
        path = self.tensor_path(index)
        if not path.is_file():
            raise DDError(f"expert file {path} is missing; {_REGENERATE}")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != record["sha256"]:
            raise DDError(f"expert file {path} is corrupted or truncated (checksum mismatch); "
                          f"delete it and {_REGENERATE}")

    def open_expert(self, index: int, verify: bool = True) -> ExpertFile:
        """Expert ``index``'s trajectory memory-mapped (``ExpertFile``), its layout checked against the header;
        with ``verify`` its checksum first (``verify_expert``). Errors name the file, as ``read_expert``."""
        record = self.record(index)
        if verify:
            self.verify_expert(index)
        path = self.tensor_path(index)
        if not path.is_file():
            raise DDError(f"expert file {path} is missing; {_REGENERATE}")
        fix = f"delete it and {_REGENERATE}"
        try:
            handle = safe_open(str(path), framework="pt")
            rows = handle.get_slice("trajectory") if "trajectory" in handle.keys() else None
        except Exception as e:  # safetensors raises several types for a damaged file
            raise DDError(f"expert file {path} is corrupted or truncated ({type(e).__name__}); {fix}") from None
        shape = None if rows is None else list(rows.get_shape())
        if shape is not None and shape == record.get("shape") != list(self.shape):
            raise DDError(f"buffer manifest {self.root / MANIFEST} describes experts of shape {list(self.shape)} "
                          f"([epochs+1, params]) but expert {index} and its record hold {shape}: "
                          f"the manifest is not this buffer's; restore its own manifest.json or {_REGENERATE}")
        if rows is None or tuple(shape) != self.shape or rows.get_dtype() != "F32":
            got = "no trajectory" if rows is None else f"{rows.get_dtype()} {shape}"
            raise DDError(f"expert file {path} holds {got}, expected float32 {list(self.shape)}; {fix}")
        return ExpertFile(path, handle, rows)

    def read_expert(self, index: int, verify: bool = True) -> torch.Tensor:
        """Trajectory [E+1, P] float32 (CPU) of expert ``index``; with ``verify`` its SHA-256 is checked
        against the record. A missing, truncated or corrupted file raises DDError naming it."""
        return self.open_expert(index, verify).rows(0, self.num_epochs + 1)

    def records(self) -> list[dict]:
        """Records of the complete experts, by index."""
        return [self.record(i) for i in self.completed()]

    def fingerprint(self, indices: list[int]) -> str:
        """SHA-256 over the indices and recorded file checksums of experts ``indices``: which expert bits a run
        matched (experts retrained from the same recipe and seeds can differ in their last bits)."""
        pairs = [(i, self.record(i)["sha256"]) for i in sorted(indices)]
        return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()

    def discard_damaged(self) -> list[str]:
        """Uncommit every complete expert whose file fails its checksum (truncated, corrupted), so that a resumed
        run trains it again rather than keep it; one line per expert discarded."""
        problems = []
        for index in self.completed():
            try:
                self.verify_expert(index)
            except DDError:
                self.record_path(index).unlink(missing_ok=True)
                problems.append(f"expert {index}'s file {self.tensor_path(index).name} failed its checksum")
        return problems

    def verify(self) -> list[str]:
        """Check every complete expert's file against its record; one line per problem, [] when healthy."""
        problems = []
        for index in self.completed():
            try:
                self.read_expert(index, verify=True)
            except DDError as e:
                problems.append(str(e))
        if (self.root / PREPROCESS).exists():
            try:
                self.load_preprocess()
            except DDError as e:
                problems.append(str(e))
        return problems

    # -- preprocessing state ---------------------------------------------------------------------

    def save_preprocess(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Store the preprocessing state (e.g. ZCA matrices) and its JSON-able ``meta``, atomically."""
        save_tensors(self.root / PREPROCESS, tensors, {"meta": json.dumps(_canonical(meta))})

    def load_preprocess(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """``(tensors, meta)`` saved by ``save_preprocess``, or None when there is none."""
        path = self.root / PREPROCESS
        if not path.exists():
            return None
        tensors, metadata = load_tensors_and_metadata(path, "buffer preprocessing file")
        try:
            meta = json.loads(metadata["meta"])
        except (KeyError, json.JSONDecodeError):
            raise DDError(f"buffer preprocessing file {path} lacks its metadata; delete it and rerun "
                          "python -m dd.buffer with the same flags") from None
        return tensors, meta

    # -- summary ---------------------------------------------------------------------------------

    def summary(self) -> dict:
        """Header plus one line per complete expert (seed, final test accuracy) and their mean."""
        experts = []
        for record in self.records():
            accs = [a for a in record.get("test_acc") or [] if a is not None]
            final = record.get("final_test_acc", accs[-1] if accs else None)
            experts.append({"index": record["index"], "seed": record.get("seed"), "final_test_acc": final,
                            "train_seconds": record.get("train_seconds")})
        finals = [e["final_test_acc"] for e in experts if e["final_test_acc"] is not None]
        return {**self.header, "root": str(self.root), "num_experts": len(experts),
                "final_test_acc_mean": sum(finals) / len(finals) if finals else None, "experts": experts}


def _dd_version() -> str:
    from dd import __version__  # at call time: dd/__init__ may still be running when this module loads

    return __version__
