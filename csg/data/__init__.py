"""Data sets: the embedded `digits` and `digits-scenes`, CIFAR-10/100 pickles, and any ImageFolder tree.

Every data set yields images in [0, 1] (models normalise inside) and comes with the
mean/std its models should use. `describe` reads only what validation needs (class count,
training-set size) so bad input is caught before Ray starts.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from csg.data.scenes import scenes_split

DATASET_CHOICES = ("digits", "digits-scenes", "cifar10", "cifar100", "imagefolder")

CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta"),
}
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
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


def describe(name: str, root: str | None) -> DatasetInfo:
    if name == "digits":
        x_train, _, _, _ = _digits_split()
        return DatasetInfo(10, len(x_train), 1, *_digits_mean_std())
    if name == "digits-scenes":
        train = scenes_split()["train"]["images"]
        return DatasetInfo(10, len(train), 1, (float(train.mean()),), (float(train.std()),))
    if name in CIFAR_FILES:
        folder, train_files, test_files, _ = CIFAR_FILES[name]
        base = _cifar_dir(name, root)
        size = sum(len(_cifar_labels(_unpickle(base / f))) for f in train_files)
        return DatasetInfo(10 if name == "cifar10" else 100, size, 3, *CIFAR_MEAN_STD)
    if name == "imagefolder":
        classes = _imagefolder_classes(root)
        size = sum(
            1 for c in classes for p in (Path(root) / "train" / c).rglob("*") if p.is_file()
        )
        return DatasetInfo(len(classes), size, 3, *IMAGENET_MEAN_STD)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_CHOICES)}")


AUGMENTS = ("imagenet", "cifar", "crop", "none")
SMALL_IMAGE = 64  # below this side, ImageFolder defaults to the CIFAR recipe


def default_augment(image_size: int) -> str:
    """ImageNet's recipe crops and rescales freely, which loses small images' content; the
    CIFAR recipe keeps the whole image and only shifts it."""
    return "cifar" if image_size < SMALL_IMAGE else "imagenet"


def load(
    name: str, root: str | None, image_size: int = 224, skip_bad_images: bool = False, augment: str | None = None
) -> tuple[Dataset, Dataset]:
    """(train, test) with the standard augmentation of each data set on the training side.

    ImageFolder trees are augmented by `augment` (`train_transform`), by default the one that
    fits `image_size`. With `skip_bad_images`, an unreadable ImageFolder file yields None
    (dropped by `collate_skipping_bad`) instead of raising `BadImageError`.
    """
    if name == "digits":
        x_train, x_test, y_train, y_test = _digits_split()
        return (
            TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
            TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        )
    if name == "digits-scenes":
        return tuple(TensorDataset(torch.from_numpy(part["images"]), torch.from_numpy(part["labels"]))
                     for part in (scenes_split()["train"], scenes_split()["test"]))
    if name in CIFAR_FILES:
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
        return _cifar_split(name, root, True, train_tf), _cifar_split(name, root, False, None)
    if name == "imagefolder":
        _imagefolder_classes(root)
        augment = augment or default_augment(image_size)
        eval_tf = T.Compose([*evaluation_geometry(image_size, augment), T.ToTensor()])
        return (
            CheckedImageFolder(str(Path(root) / "train"), train_transform(image_size, augment), skip_bad_images),
            CheckedImageFolder(str(Path(root) / "val"), eval_tf, skip_bad=skip_bad_images),
        )
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_CHOICES)}")


def train_transform(image_size: int, augment: str) -> T.Compose:
    """`imagenet`: RandomResizedCrop + flip. `cifar`: the image resized whole, a random crop
    padded by an eighth of its side, flip. `crop`: the same without the flip, for classes whose
    mirror image is another class (digits, text). `none`: the image resized whole."""
    if augment == "imagenet":
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize((image_size, image_size))]
        if augment in ("cifar", "crop"):
            steps.append(T.RandomCrop(image_size, padding=image_size // 8))
        if augment == "cifar":
            steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor()])


def evaluation_geometry(image_size: int, augment: str | None = None,
                        interpolation=T.InterpolationMode.BILINEAR) -> list:
    """How an ImageFolder image is evaluated: after ImageNet's augmentation, its rule (short
    side to size*256/224, center crop); after the others, the whole image resized, so nothing
    a small image shows is cropped away."""
    if (augment or default_augment(image_size)) == "imagenet":
        return [T.Resize(round(image_size * 256 / 224), interpolation=interpolation), T.CenterCrop(image_size)]
    return [T.Resize((image_size, image_size), interpolation=interpolation)]


def evaluation_set(name: str, root: str | None, split: str = "test", image_size: int = 224,
                   skip_bad_images: bool = False, augment: str | None = None) -> Dataset:
    """One split as the model is evaluated on it: no augmentation, training split included
    (analyses that attack or probe training images must see them unaltered)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test (got {split!r})")
    if name == "imagefolder":
        eval_tf = T.Compose([*evaluation_geometry(image_size, augment), T.ToTensor()])
        folder = str(Path(root) / ("train" if split == "train" else "val"))
        return CheckedImageFolder(folder, eval_tf, skip_bad=skip_bad_images)
    if name in CIFAR_FILES:
        return _cifar_split(name, root, split == "train", None)
    train, test = load(name, root)
    return train if split == "train" else test


def evaluation_masks(name: str, split: str = "test", root: str | None = None, image_size: int = 224,
                     augment: str | None = None):
    """The ground-truth object masks of a split, indexed like its `evaluation_set`: item i is
    image i's (H, W) bool mask. digits-scenes carries them; an ImageFolder tree may, beside
    its images (`MaskFolder`)."""
    if name == "digits-scenes":
        return torch.from_numpy(scenes_split()[split]["masks"])
    if name == "imagefolder":
        images = evaluation_set(name, root, split, image_size, augment=augment)
        return MaskFolder(images, Path(root), image_size, augment)
    raise DataError(f"--dataset: {name} carries no object masks (digits-scenes does, and ImageFolder trees "
                    f"with a masks/ folder)")


def split_labels(dataset: Dataset) -> np.ndarray:
    """Every label of an `evaluation_set`, without decoding an image."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    if isinstance(dataset, CifarPickles):
        return dataset.labels.numpy()
    return np.asarray(dataset.targets)


def stacked(dataset: Dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The listed items of a data set as one (images, labels) batch."""
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([image for image, _ in pairs]), torch.as_tensor([int(label) for _, label in pairs])


def cifar_present(name: str, root: str | None) -> bool:
    try:
        _cifar_dir(name, root or DEFAULT_DATA_ROOT)
    except DataError:
        return False
    return True


def download_cifar(name: str, root: str) -> None:
    """Fetch CIFAR through torchvision when online; offline, say which files are expected."""
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    try:
        cls(root, train=True, download=True)
    except Exception as exc:  # torchvision raises URLError, OSError or RuntimeError offline
        raise DataError(f"{name}: cannot download ({exc}); {_cifar_expected(name, root)}") from exc


# -- digits -------------------------------------------------------------------------------


def _digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    return train_test_split(
        images,
        labels,
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )


def _digits_mean_std():
    x_train = _digits_split()[0]
    return (float(x_train.mean()),), (float(x_train.std()),)


# -- CIFAR --------------------------------------------------------------------------------


class CifarPickles(Dataset):
    """The python-pickle CIFAR format read directly (torchvision's reader insists on the
    published checksums, which rules out subsets and test fixtures in the same format)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images = torch.from_numpy(images)  # (N, 3, 32, 32) uint8
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def _cifar_split(name, root, train, transform):
    _, train_files, test_files, _ = CIFAR_FILES[name]
    base = _cifar_dir(name, root)
    batches = [_unpickle(base / f) for f in (train_files if train else test_files)]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([_cifar_labels(b) for b in batches]).astype(np.int64)
    return CifarPickles(images, labels, transform)


def _cifar_labels(batch):
    return np.asarray(batch.get(b"labels", batch.get(b"fine_labels")))


def _cifar_dir(name, root) -> Path:
    folder, train_files, test_files, meta = CIFAR_FILES[name]
    root = root or DEFAULT_DATA_ROOT
    base = Path(root) / folder
    missing = [f for f in (*train_files, *test_files, meta) if not (base / f).is_file()]
    if missing:
        raise DataError(f"--data: {name} files missing under {root}; {_cifar_expected(name, root)}")
    return base


def _cifar_expected(name, root):
    folder, train_files, test_files, meta = CIFAR_FILES[name]
    files = ", ".join((*train_files, *test_files, meta))
    return f"expected {Path(root) / folder}/{{{files}}} (the python version of {name})"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


# -- ImageFolder --------------------------------------------------------------------------


class CheckedImageFolder(tv_datasets.ImageFolder):
    """ImageFolder whose decoding errors name the file, or skip it when asked."""

    def __init__(self, root: str, transform, skip_bad: bool = False):
        super().__init__(root, transform)
        self.skip_bad = skip_bad

    def __getitem__(self, index):
        path = self.samples[index][0]
        try:
            return super().__getitem__(index)
        except (OSError, ValueError) as exc:
            if self.skip_bad:
                return None
            raise BadImageError(f"unreadable image {path} ({exc}); --skip-bad-images skips such files") from exc


class MaskFolder(Dataset):
    """The object masks beside an ImageFolder split, for localization (training ignores them):
    `<root>/masks/<split>/<class>/<name>.png`, one binary mask per image and of its size, read
    in the images' order and cropped as the evaluation images are (nearest, so they stay binary)."""

    def __init__(self, images: CheckedImageFolder, root: Path, image_size: int, augment: str | None = None):
        self.images = images
        folder = Path(images.root)
        self.masks_root = Path(root) / "masks" / folder.name
        self.paths = [self.masks_root / Path(path).relative_to(folder).with_suffix(".png")
                      for path, _ in images.samples]
        missing = [path for path in self.paths if not path.is_file()]
        if missing:
            raise DataError(f"--data: {len(missing)} of {len(self.paths)} images in {folder} have no mask under "
                            f"{self.masks_root} (first: {missing[0].relative_to(self.masks_root)})")
        self.transform = T.Compose(evaluation_geometry(image_size, augment, T.InterpolationMode.NEAREST))

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index) -> torch.Tensor:
        from PIL import Image

        self._check_size(index)
        with Image.open(self.paths[index]) as mask:
            return torch.from_numpy(np.asarray(self.transform(mask.convert("L"))) > 0)

    def check_sizes(self) -> None:
        """Refuse the first mask whose size differs from its image's (headers only: fast)."""
        for index in range(len(self.paths)):
            self._check_size(index)

    def _check_size(self, index: int) -> None:
        from PIL import Image

        path, (image_path, _) = self.paths[index], self.images.samples[index]
        with Image.open(path) as mask, Image.open(image_path) as image:
            if mask.size != image.size:
                raise DataError(f"--data: mask {path} is {mask.size[0]}x{mask.size[1]}, its image {image_path} "
                                f"is {image.size[0]}x{image.size[1]}")


def loader_options(loader_workers: int, seed: int, rank: int, pin_memory: bool) -> dict:
    """DataLoader keywords for training: workers kept alive across epochs and prefetching,
    pinned memory on a GPU (the engine copies with non_blocking), and each rank's workers
    seeded from (seed, rank): PyTorch derives every worker's torch, random and numpy seeds
    from it, so augmentation differs across workers and ranks yet repeats from run to run."""
    options = dict(num_workers=loader_workers, pin_memory=pin_memory, collate_fn=collate_skipping_bad,
                   generator=torch.Generator().manual_seed(seed * 10_007 + rank))
    if loader_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def collate_skipping_bad(batch):
    """Default collation of the samples that decoded; skipped ones arrive as None."""
    return default_collate([sample for sample in batch if sample is not None])



def _imagefolder_classes(root) -> list[str]:
    if root is None:
        raise DataError("--data: imagefolder needs a directory holding train/ and val/")
    base = Path(root)
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DataError(f"--data: {base / split} is not a directory (need train/ and val/)")
    train = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    val = sorted(p.name for p in (base / "val").iterdir() if p.is_dir())
    if not train:
        raise DataError(f"--data: {base / 'train'} holds no class folders")
    if train != val:
        raise DataError(f"--data: class folders differ between {base}/train and {base}/val")
    return train
