"""The buffer stage as a library: ``train_store(BufferConfig(...))`` trains the experts (or the KRR-ST teacher)
a store is missing and returns its folder; ``import_buffers(ImportConfig(...), paths)`` converts the original
code's replay buffers. ``python -m dd.buffer`` is the command around them."""

from dd.buffer.config import BufferConfig
from dd.buffer.legacy import ImportConfig, import_buffers
from dd.buffer.train import train_store

__all__ = ["BufferConfig", "ImportConfig", "import_buffers", "train_store"]
