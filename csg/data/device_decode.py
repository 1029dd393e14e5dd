"""`--decode gpu`: a batch's JPEGs decoded together on the training device (nvJPEG through
torchvision's batched `decode_jpeg`), then cropped and flipped there by the uint8 transform of
`--decode uint8`. The loader workers only read bytes. The same code runs on a CPU device, which
is how the tests cover it; a file that is not a JPEG (or that the batched decoder refuses) is
decoded alone, on the CPU if need be, and one that nothing decodes is named."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import default_collate
from torchvision import io as tv_io

from csg.data.checked_folder import decode_uint8
from csg.data.registry import BadImageError

JPEG_MAGIC = (0xFF, 0xD8)


@dataclass
class Encoded:
    """One file's bytes (a 1-D uint8 tensor) and its name, for the messages."""

    data: torch.Tensor
    name: str


def read_encoded(path: str) -> Encoded:
    """A tree's file, read and left encoded (CheckedImageFolder's loader)."""
    return Encoded(tv_io.read_file(path), path)


def keep_encoded(data: torch.Tensor, name: str) -> Encoded:
    """A shard's image left encoded; copied out of the shard's range it was cut from."""
    return Encoded(data.clone(), name)


class EncodedBatch:
    """A batch still encoded; the engine calls `on_device` after choosing the device."""

    def __init__(self, items: list[Encoded], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def on_device(self, device: torch.device) -> torch.Tensor:
        """(N, 3, S, S) uint8 on `device`: decoded in one batched call, transformed image by image."""
        jpegs = [i for i, item in enumerate(self.items) if tuple(item.data[:2].tolist()) == JPEG_MAGIC]
        images = [None] * len(self.items)
        if jpegs:
            try:
                decoded = tv_io.decode_jpeg([self.items[i].data for i in jpegs], mode=tv_io.ImageReadMode.RGB,
                                            device=device)
            except RuntimeError:  # one bad file fails the batch: find it by decoding each alone
                decoded = [self._alone(self.items[i], device) for i in jpegs]
            for i, image in zip(jpegs, decoded):
                images[i] = image
        for i, image in enumerate(images):
            if image is None:
                images[i] = self._alone(self.items[i], device)
        return torch.stack([self.transform(image) for image in images])

    @staticmethod
    def _alone(item: Encoded, device: torch.device) -> torch.Tensor:
        try:
            return tv_io.decode_jpeg(item.data, mode=tv_io.ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
        try:
            return decode_uint8(item.data, item.name).to(device)
        except OSError as exc:
            raise BadImageError(f"unreadable image {item.name} ({exc}); --decode gpu cannot skip it: use --decode "
                                f"uint8 with --skip-bad-images") from None


class CollateEncoded:
    """Collation for `--decode gpu`: the encoded images as one EncodedBatch, the labels stacked."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, batch):
        return EncodedBatch([item for item, _ in batch], self.transform), default_collate([label for _, label in batch])
