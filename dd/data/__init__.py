"""Datasets as whole-split tensors, and the preprocessing between pixels and model inputs.

``load_dataset(name)`` returns ``RealData`` (CPU, [0, 1] pixels); ``Preprocessor.fit`` builds the
standard normalisation or ZCA. Importing this package registers every dataset loader.
"""

# Importing the loaders registers them; this order is the order of list_datasets().
from dd.data import digits, torchvision_sets, folder, imagenet_subsets  # noqa: F401  # isort: skip
from dd.data.preprocess import KINDS, Preprocessor
from dd.data.registry import (
    CHANNELS,
    CHANNELS_HELP,
    IMAGE_SIZE_HELP,
    DatasetSpec,
    RealData,
    class_indices,
    get_spec,
    list_datasets,
    load_dataset,
    register_dataset,
    shape_flags,
)

__all__ = [
    "CHANNELS",
    "CHANNELS_HELP",
    "IMAGE_SIZE_HELP",
    "KINDS",
    "DatasetSpec",
    "Preprocessor",
    "RealData",
    "class_indices",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "shape_flags",
]
