"""``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes), no download.

Pixels 0..16 are scaled to [0, 1]; the split is fixed (stratified 80/20, ``random_state=0``), so every
stage and every machine sees the same 1,437 train and 360 test images.

``digits-0to4`` and ``digits-5to9`` are the same split restricted to digits 0-4 and 5-9, labels remapped
to 0..4: a source and a target dataset for transfer experiments (KRR-ST) with no download.
"""

from __future__ import annotations

import functools

import torch

from dd.data.registry import DatasetSpec, RealData, register_dataset

# Per-channel mean and (population) std of the [0, 1] train split; tests recompute them.
DIGITS_MEAN = 0.305383394
DIGITS_STD = 0.376119168

DIGITS = DatasetSpec(name="digits", channels=1, size=(8, 8), num_classes=10, mean=(DIGITS_MEAN,), std=(DIGITS_STD,))
DIGITS_0TO4 = DatasetSpec(name="digits-0to4", channels=1, size=(8, 8), num_classes=5, mean=(0.305246890,),
                          std=(0.378383914,))
DIGITS_5TO9 = DatasetSpec(name="digits-5to9", channels=1, size=(8, 8), num_classes=5, mean=(0.305520852,),
                          std=(0.373824692,))


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


def load_digit_range(spec: DatasetSpec, data_path: str | None, download: bool, image_size: int | None,
                     first: int = 0) -> RealData:
    """The digits split restricted to classes ``first .. first + spec.num_classes - 1``, relabelled from 0."""
    full = load_digits(DIGITS, data_path, download, image_size)

    def keep(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (labels >= first) & (labels < first + spec.num_classes)
        return images[mask], labels[mask] - first

    return RealData(spec, *keep(full.train_images, full.train_labels), *keep(full.test_images, full.test_labels))


register_dataset(DIGITS_0TO4)(functools.partial(load_digit_range, first=0))
register_dataset(DIGITS_5TO9)(functools.partial(load_digit_range, first=5))
