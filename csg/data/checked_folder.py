"""torchvision's ImageFolder, with decoding errors that name the file; its own module so that
csg.data imports without torchvision (see csg.data.cifar)."""
from __future__ import annotations

from torchvision import datasets as tv_datasets

from csg.data.registry import BadImageError


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
