"""What every data set answers, and the registry that maps a `--dataset` name to its family."""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

DEFAULT_DATA_ROOT = "data"


class DataError(ValueError):
    """The data set is missing or malformed; the message names what was expected."""


class BadImageError(OSError):
    """An image file that cannot be decoded; the message names its path."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    train_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class DatasetFamily:
    """One family of data sets (`names`), read from one on-disk format or generated.

    A family implements `describe` and `load`; the other steps have defaults that fit data
    sets without augmentation, masks or anything to fetch."""

    names: tuple[str, ...] = ()
    # Of the data options (DATA_OPTIONS), those this family reads; a run records the others null.
    reads: tuple[str, ...] = ()

    def describe(self, name: str, root: str) -> DatasetInfo:
        """Only what validation needs (class count, training-set size), read cheaply."""
        raise NotImplementedError

    def load(self, name: str, root: str | None, image_size: int, skip_bad_images: bool,
             augment: str | None, decode: str | None = None) -> tuple[Dataset, Dataset]:
        """(train, test), the training side augmented."""
        raise NotImplementedError

    def evaluation_set(self, name: str, root: str | None, split: str, image_size: int,
                       skip_bad_images: bool, augment: str | None) -> Dataset:
        train, test = self.load(name, root, image_size, skip_bad_images, augment)
        return train if split == "train" else test

    def evaluation_masks(self, name: str, split: str, root: str | None, image_size: int, augment: str | None):
        raise DataError(f"--dataset: {name} carries no object masks (digits-scenes does, and ImageFolder trees "
                        f"with a masks/ folder)")

    def prepare(self, name: str, root: str) -> None:
        """Fetch what can be fetched before a run starts; nothing by default."""


DATA_OPTIONS = ("data", "image_size", "augment", "decode", "skip_bad_images")
FAMILIES: dict[str, DatasetFamily] = {}


def register(family: type[DatasetFamily]) -> type[DatasetFamily]:
    """Class decorator: one instance of `family` serves each of its names, in registration order."""
    instance = family()
    for name in family.names:
        FAMILIES[name] = instance
    return family


def family_of(name: str) -> DatasetFamily:
    if name not in FAMILIES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
