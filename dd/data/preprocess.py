"""Map [0, 1] pixels to the model's input space and back: standard normalisation or ZCA whitening.

``standard``: ``(x - mean) / std`` per channel with the dataset's constants.
``zca``: MTT's full-image (cross-channel) ZCA, kornia ``ZCAWhitening(eps, compute_inv=True)`` fitted once
on the whole train set: ``(x - mu) T`` with ``T = U diag((S + eps)^-1/2) U^T`` of the unbiased covariance
``U S U^T``. The fitted statistics are plain tensors, so a stored preprocessor is re-applied, never refitted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from dd.data.registry import DatasetSpec
from dd.errors import DDError
from dd.io import load_tensors_and_metadata, save_tensors

KINDS = ("standard", "zca")
_KEYS = {"standard": ("mean", "std"), "zca": ("mean", "transform", "transform_inv")}


class Preprocessor:
    """A fitted, device-agnostic map between [0, 1] pixels and model inputs (see the module docstring)."""

    def __init__(self, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
        if kind not in KINDS:
            raise DDError(f"unknown preprocessing '{kind}'; choose from {', '.join(KINDS)}")
        missing = [k for k in _KEYS[kind] if k not in tensors]
        if missing:
            raise DDError(f"{kind} preprocessor state lacks tensors {missing}; the file is damaged, regenerate it")
        self.kind = kind
        self.tensors = {k: tensors[k].detach().to("cpu", torch.float32).contiguous() for k in _KEYS[kind]}
        self.meta = {"kind": kind, **{k: v for k, v in (meta or {}).items() if k != "kind"}}
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    @classmethod
    def fit(cls, kind: str, spec: DatasetSpec, train_images: torch.Tensor, zca_eps: float = 0.1) -> Preprocessor:
        """Fit ``kind`` for ``spec``. ``standard`` uses ``spec.mean``/``spec.std``; ``zca`` fits kornia's
        ZCA on all of ``train_images`` [N, C, H, W] in [0, 1] (on their device; pass GPU tensors for speed)."""
        if kind == "standard":
            return cls(kind, {"mean": torch.tensor(spec.mean), "std": torch.tensor(spec.std)})
        if kind != "zca":
            raise DDError(f"unknown preprocessing '{kind}'; choose from {', '.join(KINDS)}")
        from kornia.enhance import ZCAWhitening

        zca = ZCAWhitening(eps=float(zca_eps), compute_inv=True).fit(train_images.to(torch.float32))
        tensors = {"mean": zca.mean_vector.reshape(-1), "transform": zca.transform_matrix,
                   "transform_inv": zca.transform_inv}
        shape = ",".join(str(d) for d in train_images.shape[1:])
        return cls(kind, tensors, {"eps": repr(float(zca_eps)), "shape": shape, "dataset": spec.name})

    def _stats(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = {k: v.to(x.device, x.dtype) for k, v in self.tensors.items()}
        return self._cache[key]

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels [..., C, H, W] -> model input space, on ``x01``'s device and dtype."""
        s = self._stats(x01)
        if self.kind == "standard":
            return (x01 - s["mean"].view(-1, 1, 1)) / s["std"].view(-1, 1, 1)
        flat = x01.reshape(-1, s["mean"].numel())
        return ((flat - s["mean"]) @ s["transform"]).reshape(x01.shape)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels (about [0, 1]; not clamped), for display."""
        s = self._stats(x)
        if self.kind == "standard":
            return x * s["std"].view(-1, 1, 1) + s["mean"].view(-1, 1, 1)
        flat = x.reshape(-1, s["mean"].numel())
        return (flat @ s["transform_inv"] + s["mean"]).reshape(x.shape)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(CPU tensors, string metadata) that ``from_state`` turns back into this preprocessor."""
        return dict(self.tensors), dict(self.meta)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Preprocessor:
        """Rebuild a preprocessor from ``state()`` output (no refitting)."""
        if "kind" not in meta:
            raise DDError("preprocessor metadata has no 'kind'; the file is damaged, regenerate it")
        return cls(meta["kind"], tensors, meta)

    def save(self, path: str | Path) -> None:
        """Write the state as safetensors (atomic)."""
        save_tensors(path, *self.state())

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        """Read a file written by ``save``."""
        return cls.from_state(*load_tensors_and_metadata(path, "preprocessor"))

    def sha256(self) -> str:
        """Hex SHA-256 of the statistics (names, shapes and float32 bytes)."""
        h = hashlib.sha256()
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(f"{name}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """JSON-able summary for manifests: kind, metadata (eps, shape for ZCA) and the statistics' hash."""
        return {**self.meta, "sha256": self.sha256()}

    def __repr__(self) -> str:
        extra = f", eps={self.meta['eps']}" if "eps" in self.meta else ""
        return f"Preprocessor(kind={self.kind!r}{extra})"
