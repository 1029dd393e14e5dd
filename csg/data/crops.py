"""ImageNet's training augmentation (RandomResizedCrop, then a horizontal flip) on uint8 images,
in one step that costs a loader core about 60 % of what transforms.v2's two transforms cost:
about 210 against 350 us for a 480 x 320 image at 224 px on one thread here, which with the
decode makes bench/decode.py's `fused_over_tv_v2` 1.2.

Two things make the difference. The crop is copied channels-last before it is resized: the
decoder's (3, H, W) images lie in (H, W, 3) memory, and torch's antialiased uint8 resize is
fastest on a channels-last input, whose output then stays channels-last with no repacking.
And the box and the flip are drawn in one call to torch's generator (which the DataLoader
seeds per worker) instead of a dozen. The boxes follow RandomResizedCrop's rule: ten tries at
an area of 8-100 % of the image and an aspect ratio of 3/4 to 4/3 (log-uniform), then the
largest centred crop within those ratios.
"""
from __future__ import annotations

import math

import torch
from torch.nn.functional import interpolate
from torchvision.transforms.v2 import functional as F

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
LOG_RATIO = (math.log(RATIO[0]), math.log(RATIO[1]))
TRIES = 10


def crop_box(height: int, width: int, draws: list[float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of RandomResizedCrop's box from 2 * TRIES + 2 uniform draws."""
    for k in range(TRIES):
        area = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[2 * k])
        ratio = math.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * draws[2 * k + 1])
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            top, left = draws[2 * TRIES] * (height - h + 1), draws[2 * TRIES + 1] * (width - w + 1)
            return min(int(top), height - h), min(int(left), width - w), h, w
    ratio = width / height  # no try fitted: the centred crop
    h, w = height, width
    if ratio < RATIO[0]:
        h = round(width / RATIO[0])
    elif ratio > RATIO[1]:
        w = round(height * RATIO[1])
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """The box of a (3, H, W) uint8 image resized to (3, size, size), antialiased as PIL does,
    flipped if asked; the result is laid out channels-last."""
    top, left, h, w = box
    crop = image[None, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
    if crop.is_cpu:  # torch resizes uint8 itself there, as F.resize would, without its dispatch
        out = interpolate(crop, size=[size, size], mode="bilinear", align_corners=False, antialias=True)[0]
    else:  # a GPU resizes in float: F.resize converts and rounds
        out = F.resize(crop, [size, size], antialias=True)[0]
    return out.flip(-1) if flip else out


class ResizedCropFlip:
    """RandomResizedCrop(size) and RandomHorizontalFlip() on a (3, H, W) uint8 tensor."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        draws = torch.rand(2 * TRIES + 3).tolist()  # the tries, the box's place, the flip
        box = crop_box(image.shape[-2], image.shape[-1], draws[:-1])
        return resized_crop(image, box, self.size, draws[-1] < 0.5)

    def __repr__(self) -> str:
        return f"ResizedCropFlip(size={self.size})"
