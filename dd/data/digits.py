"""``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes), no download.

Pixels 0..16 are scaled to [0, 1]; the split is fixed (stratified 80/20, ``random_state=0``), so every
stage and every machine sees the same 1,437 train and 360 test images.
"""

from __future__ import annotations

import torch

from dd.data.registry import DatasetSpec, RealData, register_dataset

# Per-channel mean and (population) std of the [0, 1] train split; tests recompute them.
DIGITS_MEAN = 0.305383394
DIGITS_STD = 0.376119168

DIGITS = DatasetSpec(name="digits", channels=1, size=(8, 8), num_classes=10, mean=(DIGITS_MEAN,), std=(DIGITS_STD,))


@register_dataset(DIGITS)
def load_digits(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None) -> RealData:
    """The fixed stratified split of ``sklearn.datasets.load_digits``; ``data_path`` and ``download`` are unused."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = bunch.data.reshape(-1, 1, 8, 8) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(images, bunch.target, test_size=0.2, stratify=bunch.target,
                                                        random_state=0)

    def images_of(a) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32)

    def labels_of(a) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.int64)

    return RealData(spec, images_of(x_train), labels_of(y_train), images_of(x_test), labels_of(y_test))
