"""Any ImageFolder tree (`train/` and `val/`, a folder per class), with object masks beside it
for localization, or the same tree as shards; and the augmentations that fit its image size."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from csg.data.registry import (
    DATA_OPTIONS,
    DataError,
    DatasetFamily,
    DatasetInfo,
    register,
)
from csg.data.shards import SPLITS, Manifest, ShardImages, ShardMasks, ShardStream, is_shard_dir

if TYPE_CHECKING:  # torchvision is imported where it is used (see csg.data.cifar)
    from torchvision.transforms import Compose

    from csg.data.checked_folder import CheckedImageFolder

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
AUGMENTS = ("imagenet", "cifar", "crop", "none")
# How training images are decoded: `uint8` (torchvision's decoder, augmentation on uint8 tensors,
# float on the device: bench/ingest.py), `pil` (PIL and float transforms on the host, the
# torchvision reference) or `gpu` (csg.data.device_decode: batched on the training device).
# Evaluation sets always go through PIL.
DECODES = ("uint8", "pil", "gpu")
SMALL_IMAGE = 64  # below this side, ImageFolder defaults to the CIFAR recipe


def default_augment(image_size: int) -> str:
    """ImageNet's recipe crops and rescales freely, which loses small images' content; the
    CIFAR recipe keeps the whole image and only shifts it."""
    return "cifar" if image_size < SMALL_IMAGE else "imagenet"


@register
class ImageFolderTree(DatasetFamily):
    """A tree on disk, or the same tree written as shards (`csg.data.shards`): `--data` names
    either, and a URI is always shards."""

    names = ("imagefolder",)
    reads = DATA_OPTIONS

    def describe(self, name, root):
        if is_shard_dir(root):
            manifest = Manifest.read(root)
            return DatasetInfo(len(manifest.classes), len(manifest.rows("train")["key"]), 3, *IMAGENET_MEAN_STD)
        classes = imagefolder_classes(root)
        size = sum(1 for c in classes for p in (Path(root) / "train" / c).rglob("*") if p.is_file())
        return DatasetInfo(len(classes), size, 3, *IMAGENET_MEAN_STD)

    def load(self, name, root, image_size, skip_bad_images, augment, decode=None):
        from csg.data.checked_folder import CheckedImageFolder, decode_pil, decode_uint8, read_uint8
        from csg.data.device_decode import CollateEncoded, keep_encoded, read_encoded

        augment = augment or default_augment(image_size)
        decode = decode or "uint8"
        transform = train_transform(image_size, augment) if decode == "pil" else train_transform_uint8(image_size,
                                                                                                        augment)
        # On the host: each image decoded and transformed; with --decode gpu, only read.
        on_host = None if decode == "gpu" else transform
        if is_shard_dir(root):
            decoder = {"uint8": decode_uint8, "pil": decode_pil, "gpu": keep_encoded}[decode]
            train = ShardStream(Manifest.read(root), "train", decoder, on_host, skip_bad_images)
        else:
            imagefolder_classes(root)
            reader = {"uint8": read_uint8, "pil": None, "gpu": read_encoded}[decode]
            train = CheckedImageFolder(str(Path(root) / "train"), on_host, skip_bad_images, reader)
        if decode == "gpu":
            train.collate_fn = CollateEncoded(transform)  # the training DataLoader's (csg.data.loading)
        return train, self.evaluation_set(name, root, "test", image_size, skip_bad_images, augment)

    def evaluation_set(self, name, root, split, image_size, skip_bad_images, augment):
        from torchvision import transforms as T

        eval_tf = T.Compose([*evaluation_geometry(image_size, augment), T.ToTensor()])
        if is_shard_dir(root):
            return ShardImages(Manifest.read(root), SPLITS[split], eval_tf, skip_bad_images)
        from csg.data.checked_folder import CheckedImageFolder

        folder = str(Path(root) / SPLITS[split])
        return CheckedImageFolder(folder, eval_tf, skip_bad=skip_bad_images)

    def evaluation_masks(self, name, split, root, image_size, augment):
        images = self.evaluation_set(name, root, split, image_size, False, augment)
        if is_shard_dir(root):
            from torchvision import transforms as T

            return ShardMasks(images, T.Compose(evaluation_geometry(image_size, augment, "nearest")))
        return MaskFolder(images, Path(root), image_size, augment)


def train_transform(image_size: int, augment: str) -> Compose:
    """`imagenet`: RandomResizedCrop + flip. `cifar`: the image resized whole, a random crop
    padded by an eighth of its side, flip. `crop`: the same without the flip, for classes whose
    mirror image is another class (digits, text). `none`: the image resized whole."""
    from torchvision import transforms as T

    if augment == "imagenet":
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize((image_size, image_size))]
        if augment in ("cifar", "crop"):
            steps.append(T.RandomCrop(image_size, padding=image_size // 8))
        if augment == "cifar":
            steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor()])


def train_transform_uint8(image_size: int, augment: str):
    """`train_transform` on (3, H, W) uint8 tensors, ending in uint8: the batch is copied to the
    device at a quarter of float's size and made float there (`engine.device_pixels`).
    Antialiased resizing, as PIL's, so the two paths agree to a few grey levels. ImageNet's
    recipe, the one that costs, is fused (`csg.data.crops`)."""
    from torchvision.transforms import v2

    if augment == "imagenet":
        from csg.data.crops import ResizedCropFlip

        return ResizedCropFlip(image_size)
    steps = [v2.Resize((image_size, image_size), antialias=True)]
    if augment in ("cifar", "crop"):
        steps.append(v2.RandomCrop(image_size, padding=image_size // 8))
    if augment == "cifar":
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def evaluation_geometry(image_size: int, augment: str | None = None, interpolation: str = "bilinear") -> list:
    """How an ImageFolder image is evaluated: after ImageNet's augmentation, its rule (short
    side to size*256/224, center crop); after the others, the whole image resized, so nothing
    a small image shows is cropped away. `interpolation` names a torchvision InterpolationMode."""
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(interpolation)
    if (augment or default_augment(image_size)) == "imagenet":
        return [T.Resize(round(image_size * 256 / 224), interpolation=interpolation), T.CenterCrop(image_size)]
    return [T.Resize((image_size, image_size), interpolation=interpolation)]


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
        from torchvision import transforms as T

        self.transform = T.Compose(evaluation_geometry(image_size, augment, "nearest"))

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


def imagefolder_classes(root) -> list[str]:
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
