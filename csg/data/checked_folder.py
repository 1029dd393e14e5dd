"""torchvision's ImageFolder, with decoding errors that name the file; its own module so that
csg.data imports without torchvision (see csg.data.cifar)."""
from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision import io as tv_io
from torchvision.transforms.v2 import functional as F

from csg.data.registry import BadImageError


class CheckedImageFolder(tv_datasets.ImageFolder):
    """ImageFolder whose decoding errors name the file, or skip it when asked. `loader` reads
    one file: PIL's by default, `read_uint8` for the uint8 decode path."""

    def __init__(self, root: str, transform, skip_bad: bool = False, loader=None):
        super().__init__(root, transform, **({} if loader is None else {"loader": loader}))
        self.skip_bad = skip_bad

    def __getitem__(self, index):
        path = self.samples[index][0]
        try:
            return super().__getitem__(index)
        except (OSError, ValueError) as exc:
            if self.skip_bad:
                return None
            raise BadImageError(f"unreadable image {path} ({exc}); --skip-bad-images skips such files") from exc


def read_uint8(path: str) -> torch.Tensor:
    """A file as a (3, H, W) uint8 RGB tensor: libjpeg-turbo (or libpng) through torchvision,
    without PIL's image object or a float copy. The few files torchvision cannot decode but PIL
    can (CMYK JPEGs in some torchvision builds, formats it lacks) go through PIL instead; a file
    neither reads raises OSError, which CheckedImageFolder names."""
    return decode_uint8(tv_io.read_file(path), path)


def decode_uint8(data: torch.Tensor, name: str) -> torch.Tensor:
    """Encoded bytes (a 1-D uint8 tensor) to (3, H, W) uint8 RGB; see `read_uint8`."""
    try:
        return tv_io.decode_image(data, mode=tv_io.ImageReadMode.RGB)
    except RuntimeError:
        try:
            return F.pil_to_tensor(decode_pil(data, name))
        except OSError as exc:
            raise OSError(f"{name}: {exc}") from None


def decode_pil(data: torch.Tensor, name: str) -> Image.Image:
    """Encoded bytes (a 1-D uint8 tensor) to a PIL RGB image: `--decode pil` from shards."""
    with Image.open(io.BytesIO(data.numpy())) as image:
        return image.convert("RGB")
