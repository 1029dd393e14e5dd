"""CIFAR-10 and CIFAR-100 in their python-pickle format.

torchvision is imported where it is used, here and in the other data modules: importing it
costs about 2 s (it loads torch._dynamo), which a command on the embedded data never needs."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from csg.data.registry import (
    DEFAULT_DATA_ROOT,
    DataError,
    DatasetFamily,
    DatasetInfo,
    register,
)

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


@register
class Cifar(DatasetFamily):
    names = tuple(CIFAR_FILES)
    reads = ("data",)

    def describe(self, name, root):
        _, train_files, _, _ = CIFAR_FILES[name]
        base = _cifar_dir(name, root)
        size = sum(len(_cifar_labels(_unpickle(base / f))) for f in train_files)
        return DatasetInfo(10 if name == "cifar10" else 100, size, 3, *CIFAR_MEAN_STD)

    def load(self, name, root, image_size, skip_bad_images, augment, decode=None):
        from torchvision import transforms as T

        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
        return _cifar_split(name, root, True, train_tf), _cifar_split(name, root, False, None)

    def evaluation_set(self, name, root, split, image_size, skip_bad_images, augment):
        return _cifar_split(name, root, split == "train", None)

    def prepare(self, name, root):
        if not cifar_present(name, root):
            download_cifar(name, root)


class CifarPickles(Dataset):
    """The python-pickle CIFAR format read directly (torchvision's reader insists on the
    published checksums, which rules out subsets and test fixtures in the same format)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images = torch.from_numpy(images)  # (N, 3, 32, 32) uint8
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    @property
    def targets(self) -> np.ndarray:
        return self.labels.numpy()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def cifar_present(name: str, root: str | None) -> bool:
    try:
        _cifar_dir(name, root or DEFAULT_DATA_ROOT)
    except DataError:
        return False
    return True


def download_cifar(name: str, root: str) -> None:
    """Fetch CIFAR through torchvision when online; offline, say which files are expected. A
    download that fails leaves nothing behind: the folders it made and any partial archive go."""
    from torchvision import datasets as tv_datasets

    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    made = _first_missing(Path(root))
    before = set(Path(root).iterdir()) if made is None else set()
    try:
        cls(root, train=True, download=True)
    except Exception as exc:  # torchvision raises URLError, OSError or RuntimeError offline
        for path in [made] if made is not None else set(Path(root).iterdir()) - before:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        raise DataError(f"{name}: cannot download ({exc}); {_cifar_expected(name, root)}") from exc


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (None when `path` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


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
