"""Data sets: the embedded `digits` and `digits-scenes`, CIFAR-10/100 pickles, and any ImageFolder tree.

Every data set yields images in [0, 1] (models normalise inside; ImageFolder training images
come as uint8 in [0, 255] unless `decode="pil"`) and comes with the mean/std its models
should use. `describe` reads only what validation needs (class count, training-set size) so
bad input is caught before Ray starts. Each family is one module that
registers itself (`csg.data.registry`); the functions here dispatch on the `--dataset` name.
"""
from __future__ import annotations

from torch.utils.data import Dataset

from csg.data.cifar import CIFAR_FILES, cifar_present, download_cifar
from csg.data.digits import digits_split
from csg.data.imagefolder import (
    AUGMENTS,
    DECODES,
    default_augment,
    evaluation_geometry,
    train_transform,
)
from csg.data.loading import collate_skipping_bad, loader_options, rank_input, split_labels, stacked
from csg.data.registry import (
    DATA_OPTIONS,
    DEFAULT_DATA_ROOT,
    BadImageError,
    DataError,
    DatasetInfo,
    family_of,
)
from csg.data.scenes import scenes_split

DATASET_CHOICES = ("digits", "digits-scenes", "cifar10", "cifar100", "imagefolder")  # as --help lists them

__all__ = [
    "AUGMENTS", "CIFAR_FILES", "DATASET_CHOICES", "DECODES", "DEFAULT_DATA_ROOT", "BadImageError", "DataError",
    "DatasetInfo", "cifar_present", "collate_skipping_bad", "default_augment", "describe", "digits_split", "download_cifar",
    "evaluation_geometry", "evaluation_masks", "evaluation_set", "load", "loader_options", "prepare", "rank_input",
    "scenes_split", "split_labels", "stacked", "train_transform", "unread_options",
]


def describe(name: str, root: str | None) -> DatasetInfo:
    return family_of(name).describe(name, root)


def load(name: str, root: str | None, image_size: int = 224, skip_bad_images: bool = False,
         augment: str | None = None, decode: str | None = None) -> tuple[Dataset, Dataset]:
    """(train, test) with the standard augmentation of each data set on the training side.

    ImageFolder trees are augmented by `augment` (`train_transform`), by default the one that
    fits `image_size`, and decoded by `decode` (`DECODES`; by default `uint8`: their training
    images are uint8 tensors, made float on the device by `engine.device_pixels`). With
    `skip_bad_images`, an unreadable ImageFolder file yields None (dropped by
    `collate_skipping_bad`) instead of raising `BadImageError`.
    """
    return family_of(name).load(name, root, image_size, skip_bad_images, augment, decode)


def evaluation_set(name: str, root: str | None, split: str = "test", image_size: int = 224,
                   skip_bad_images: bool = False, augment: str | None = None) -> Dataset:
    """One split as the model is evaluated on it: no augmentation, training split included
    (analyses that attack or probe training images must see them unaltered)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test (got {split!r})")
    return family_of(name).evaluation_set(name, root, split, image_size, skip_bad_images, augment)


def evaluation_masks(name: str, split: str = "test", root: str | None = None, image_size: int = 224,
                     augment: str | None = None):
    """The ground-truth object masks of a split, indexed like its `evaluation_set`: item i is
    image i's (H, W) bool mask. digits-scenes carries them; an ImageFolder tree may, beside
    its images (`csg.data.imagefolder.MaskFolder`)."""
    return family_of(name).evaluation_masks(name, split, root, image_size, augment)


def prepare(name: str, root: str) -> None:
    """Fetch what a data set can fetch before a run (CIFAR through torchvision, when online);
    otherwise a DataError saying which files are expected."""
    family_of(name).prepare(name, root)


def unread_options(name: str) -> tuple[str, ...]:
    """The data options (--data, --image-size, --augment, --skip-bad-images) that data set
    `name` ignores: a run on it records them null."""
    return tuple(option for option in DATA_OPTIONS if option not in family_of(name).reads)
