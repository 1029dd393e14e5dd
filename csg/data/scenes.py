"""`digits-scenes`: scikit-learn's real handwritten digits, each placed at a random position and
size on a 32 x 32 canvas among fragments of other digits and noise, with the digit's pixel
mask as ground truth for localization (paper Sec. 5.1 at laptop scale). Generated in memory,
deterministic from a seed, on the fixed train/test split of `digits`.

Why 32 x 32 and digits of 12-20 px: a ResNet-20's last conv map is then 8 x 8, fine enough
for one filter's map to outline a digit that covers a few cells of it, and an epoch takes a
few seconds on 2 cores. The fragments (4 x 4 crops of other digits, enlarged to 6-10 px, kept
off the digit) are strokes like the digit's own, so a map must find the digit, not just ink.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from csg.data.digits import digits_split
from csg.data.registry import DatasetFamily, DatasetInfo, register

CANVAS = 32
DIGIT_SIZES = (12, 20)  # side of the enlarged digit, inclusive
FRAGMENTS = 2
FRAGMENT_SIZES = (6, 10)
NOISE_STD = 0.05
SEED = 0


def enlarge(patch: np.ndarray, size: int) -> np.ndarray:
    """A (h, w) patch in [0, 1] resized bilinearly to (size, size); zero stays exactly zero."""
    tensor = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def render(digit: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    """The (CANVAS, CANVAS) layer holding an (8, 8) digit enlarged to `size` at (top, left)."""
    layer = np.zeros((CANVAS, CANVAS), np.float32)
    layer[top:top + size, left:left + size] = enlarge(digit, size)
    return layer


def _overlaps(a, b) -> bool:
    (top_a, left_a, size_a), (top_b, left_b, size_b) = a, b
    return top_a < top_b + size_b and top_b < top_a + size_a and left_a < left_b + size_b and left_b < left_a + size_a


def make_scenes(digits: np.ndarray, rng: np.random.Generator) -> dict:
    """(N, 1, 8, 8) digits in [0, 1] -> images (N, 1, CANVAS, CANVAS) in [0, 1], masks
    (N, CANVAS, CANVAS) bool (the digit's nonzero pixels) and boxes (N, 3): top, left, size."""
    n = len(digits)
    images = np.zeros((n, 1, CANVAS, CANVAS), np.float32)
    masks = np.zeros((n, CANVAS, CANVAS), bool)
    boxes = np.zeros((n, 3), np.int64)
    for i in range(n):
        size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
        top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, 2))
        layer = render(digits[i, 0], size, top, left)
        canvas = layer.copy()
        for _ in range(FRAGMENTS):
            source = digits[int(rng.integers(n)), 0]
            row, col = (int(v) for v in rng.integers(0, 5, 2))
            piece = int(rng.integers(FRAGMENT_SIZES[0], FRAGMENT_SIZES[1] + 1))
            for _ in range(20):  # a place off the digit; a crowded canvas just gets fewer fragments
                at = tuple(int(v) for v in rng.integers(0, CANVAS - piece + 1, 2))
                if not _overlaps((*at, piece), (top, left, size)):
                    region = canvas[at[0]:at[0] + piece, at[1]:at[1] + piece]
                    np.maximum(region, 0.8 * enlarge(source[row:row + 4, col:col + 4], piece), out=region)
                    break
        noise = rng.normal(0.0, NOISE_STD, canvas.shape).astype(np.float32)
        images[i, 0] = np.clip(canvas + noise, 0.0, 1.0)
        masks[i] = layer > 0
        boxes[i] = (top, left, size)
    return {"images": images, "masks": masks, "boxes": boxes}


@lru_cache(maxsize=2)
def scenes_split(seed: int = SEED) -> dict:
    """{'train', 'test'} -> scenes of the `digits` split, with 'labels'; the same every call."""
    x_train, x_test, y_train, y_test = digits_split()
    out = {}
    for index, (split, digits, labels) in enumerate((("train", x_train, y_train), ("test", x_test, y_test))):
        out[split] = {**make_scenes(digits, np.random.default_rng([seed, index])), "labels": labels}
    return out


@register
class DigitsScenes(DatasetFamily):
    names = ("digits-scenes",)

    def describe(self, name, root):
        train = scenes_split()["train"]["images"]
        return DatasetInfo(10, len(train), 1, (float(train.mean()),), (float(train.std()),))

    def load(self, name, root, image_size, skip_bad_images, augment, decode=None):
        return tuple(TensorDataset(torch.from_numpy(part["images"]), torch.from_numpy(part["labels"]))
                     for part in (scenes_split()["train"], scenes_split()["test"]))

    def evaluation_masks(self, name, split, root, image_size, augment):
        return torch.from_numpy(scenes_split()[split]["masks"])
